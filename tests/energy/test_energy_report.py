"""Report export, pricing and the Spikformer paper convention on a hand-worked example."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from neurostep.energy import count, get_profile, spikformer_energy


class _FixedSpikes(nn.Module):
    """Stands in for a spiking neuron layer: emits a fixed spike train ``(T, B, C)``."""

    def __init__(self, spikes: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("spikes", spikes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spikes.clone()


def _hand_model() -> tuple[nn.Module, torch.Tensor]:
    # T = 2, B = 1. Layer FLOPs per step: fc1 4x3 = 12, fc2 3x2 = 6, fc3 2x5 = 10.
    s1 = torch.tensor([[[1.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]])   # 3 of 6 spikes: rate 0.5
    s2 = torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]]])             # 1 of 4 spikes: rate 0.25
    model = nn.Sequential(nn.Linear(4, 3, bias=False), _FixedSpikes(s1), nn.Linear(3, 2, bias=False),
                          _FixedSpikes(s2), nn.Linear(2, 5, bias=False))
    return model, torch.randn(2, 1, 4)


def test_spikformer_convention_hand_worked():
    T = 2
    # by hand: E = 4.6 * (T * 12) + 0.9 * (0.5 * T * 6 + 0.25 * T * 10) = 110.4 + 0.9 * 11 = 120.3 pJ
    expected = 4.6 * 24 + 0.9 * (0.5 * 2 * 6 + 0.25 * 2 * 10)
    assert expected == pytest.approx(120.3)
    formula = spikformer_energy(first_layer_flops=T * 12, layer_flops=[6, 10], firing_rates=[0.5, 0.25], T=T)
    assert formula["sops"] == pytest.approx(11.0)
    assert formula["energy_total_pj"] == pytest.approx(120.3)

    model, x = _hand_model()
    r = count(model, x, mode="spikformer")
    assert r.total.first_layer_macs == 24
    assert r.total.sops == pytest.approx(11.0)
    assert r.energy_pj == pytest.approx(120.3)
    assert r.modules["2"].sops == pytest.approx(0.5 * 2 * 6)
    assert r.modules["4"].sops == pytest.approx(0.25 * 2 * 10)
    assert any("first layer = '0'" in n for n in r.notes)
    # with exact binary ACs, a Linear's SOPs equal its ACs: rate x dense MACs = nnz x fan-out
    assert r.total.acs == pytest.approx(r.total.sops)
    # ops mode prices the same counts differently (first layer MACs plus exact ACs, no elementwise work here)
    ops = r.with_profile(mode="ops")
    assert ops.energy_pj == pytest.approx(4.6 * 24 + 0.9 * 11)


def test_first_layer_can_be_named():
    model, x = _hand_model()
    r = count(model, x, mode="spikformer", first_layer="2")
    assert r.total.first_layer_macs == 12          # fc2 dense MACs over T = 2 (3 x 2 per step)
    assert r.total.sops == pytest.approx(1.0 * 24 + 0.25 * 20)   # fc1's input is dense: rate = its nonzero share


def test_spikformer_energy_validates():
    with pytest.raises(ValueError, match="one entry per layer"):
        spikformer_energy(1.0, [1.0, 2.0], [0.5], T=4)
    with pytest.raises(ValueError, match="T must be a positive int"):
        spikformer_energy(1.0, [1.0], [0.5], T=0)


def test_exports_roundtrip(tmp_path):
    model, x = _hand_model()
    r = count(model, x, profile="45nm_fp32_memory")
    d = r.as_dict()
    assert d["profile"]["memory_pj_per_byte"] == 24.96
    assert d["total"]["acs"] == r.total.acs
    assert set(d["modules"]) == {"0", "1", "2", "3", "4"}
    assert d["total"]["energy_total_pj"] == pytest.approx(
        d["total"]["energy_compute_pj"] + d["total"]["energy_memory_pj"])
    assert d["total"]["energy_memory_pj"] > d["total"]["energy_compute_pj"]   # memory dominates a toy net

    loaded = json.loads(r.to_json(tmp_path / "r.json").read_text())
    assert loaded == json.loads(json.dumps(d))

    rows = list(csv.DictReader(r.to_csv(tmp_path / "r.csv").open()))
    assert [row["module"] for row in rows] == ["<total>", "0", "1", "2", "3", "4"]
    assert float(rows[0]["macs"]) == r.total.macs
    assert float(rows[3]["acs"]) == r.modules["2"].acs


def test_table_lists_modules_and_energy():
    model, x = _hand_model()
    text = str(count(model, x))
    assert "<total> Sequential" in text and "profile 45nm_fp32, mode ops" in text
    assert "MACs" in text and "ACs" in text and "total" in text
    spik = count(model, x, mode="spikformer").table()
    assert "SOPs" in spik


def test_profiles_rescale_without_recounting():
    model, x = _hand_model()
    r32 = count(model, x)
    r8 = r32.with_profile(get_profile("45nm_int8"))
    assert r8.total is r32.total
    assert r8.energy()["energy_mac_pj"] == pytest.approx(r32.total.macs * 0.23)
    with pytest.raises(KeyError, match="no module"):
        r32.energy("missing")
