"""``neurostep energy MODEL`` through ``neurostep.energy.cli_main``."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from neurostep.energy import cli_main
from neurostep.models import REGISTRY


class _TinySNN(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, width)
        self.fc2 = nn.Linear(width, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2((self.fc1(x) > 0).float())


def _example(model: nn.Module, batch: int) -> torch.Tensor:
    return torch.randn(batch, 4)


@pytest.fixture(autouse=True)
def _throwaway_models():
    """Register two test-only models for the duration of each test, so that the registry test
    (which covers every registered model) never sees them."""
    REGISTRY.register_model("energytest_tiny_snn", family="energytest", small_kwargs={"width": 3},
                            example_input=_example)(_TinySNN)
    REGISTRY.register_model("energytest_no_input", family="energytest")(_TinySNN)
    yield
    REGISTRY.unregister_model("energytest_tiny_snn")
    REGISTRY.unregister_model("energytest_no_input")


def test_cli_prints_and_writes_reports(tmp_path, capsys):
    csv_path, json_path = tmp_path / "e.csv", tmp_path / "e.json"
    rc = cli_main(["energytest_tiny_snn", "--batch", "3", "--small", "--csv", str(csv_path), "--json", str(json_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "<total> _TinySNN" in out and "fc1" in out
    data = json.loads(json_path.read_text())
    assert data["total"]["macs"] == 3 * 4 * 3            # --small: width 3
    assert data["modules"]["fc2"]["acs"] == data["modules"]["fc2"]["spike_nnz"] * 2   # binary input: nnz x 2
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0]["module"] == "<total>"


def test_cli_profile_mode_and_overrides(capsys):
    assert cli_main(["energytest_tiny_snn", "--profile", "45nm_int8", "--mode", "spikformer", "--set", "width=5"]) == 0
    out = capsys.readouterr().out
    assert "profile 45nm_int8, mode spikformer" in out and "SOPs" in out


def test_cli_errors(capsys):
    assert cli_main(["energytest_no_such_model"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert cli_main(["energytest_no_input"]) == 2
    assert "no example input" in capsys.readouterr().err
    assert cli_main(["energytest_tiny_snn", "--batch", "0"]) == 2
    assert "--batch must be >= 1" in capsys.readouterr().err
    assert cli_main(["energytest_tiny_snn", "--set", "width"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--profile", "45nm_fp99"], "profile"),
    (["--set", "width='wide'"], "width"),
    (["--csv", "/no/such/dir/out.csv"], "No such file"),
    (["--device", "cuda:0"], "CUDA is not available"),
])
def test_cli_usage_errors_are_one_line(argv, message, capsys):
    if "cuda" in argv[-1] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli_main(["energytest_tiny_snn", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neurostep energy: error:") and message in err and "\n" not in err


def _registered_models() -> list[str]:
    from neurostep.models import list_models

    return [m for m in list_models() if not m.startswith("energytest")]


@pytest.mark.parametrize("name", _registered_models())
def test_every_registered_model_counts_on_the_meta_device(name, capsys):
    """No value is read on the way (token-range and finiteness checks skip meta tensors)."""
    assert cli_main([name, "--small", "--device", "meta"]) == 0, capsys.readouterr().err
    assert "total" in capsys.readouterr().out
