"""Energy profiles: presets, dicts, TOML files and their validation."""

from __future__ import annotations

import pytest

from neurostep.energy import PROFILES, EnergyProfile, get_profile


@pytest.mark.parametrize(("name", "mac", "ac", "memory"), [
    ("45nm_fp32", 4.6, 0.9, 0.0),
    ("45nm_fp16", 1.5, 0.4, 0.0),
    ("45nm_int8", 0.23, 0.03, 0.0),
    ("45nm_fp32_memory", 4.6, 0.9, 24.96),
])
def test_presets(name, mac, ac, memory):
    p = get_profile(name)
    assert (p.mac_pj, p.ac_pj, p.memory_pj_per_byte) == (mac, ac, memory)
    # an elementwise add is one AC, a multiply the rest of a MAC (Horowitz: 0.9 + 3.7 = 4.6 at fp32)
    assert p.add_pj == ac and p.mul_pj == pytest.approx(mac - ac)
    assert p is PROFILES[name]


def test_from_dict_defaults_and_errors():
    p = EnergyProfile.from_dict({"mac_pj": 2.0, "ac_pj": 0.5})
    assert p.name == "custom" and p.exp_pj == 0.0 and p.memory_pj_per_byte == 0.0
    assert get_profile({"mac_pj": 1, "ac_pj": 1, "name": "x"}).name == "x"
    with pytest.raises(ValueError, match="unknown energy profile keys \\['mac'\\]"):
        EnergyProfile.from_dict({"mac": 1.0, "ac_pj": 0.5})
    with pytest.raises(ValueError, match="missing required keys \\['ac_pj'\\]"):
        EnergyProfile.from_dict({"mac_pj": 1.0})
    with pytest.raises(ValueError, match="mac_pj must be finite and >= 0"):
        EnergyProfile.from_dict({"mac_pj": -1.0, "ac_pj": 0.5})
    with pytest.raises(ValueError, match="ac_pj must be finite"):
        EnergyProfile.from_dict({"mac_pj": 1.0, "ac_pj": float("nan")})
    with pytest.raises(TypeError, match="exp_pj must be a number"):
        EnergyProfile.from_dict({"mac_pj": 1.0, "ac_pj": 0.5, "exp_pj": "3"})
    with pytest.raises(TypeError, match="profile must be"):
        get_profile(3.0)


def test_from_toml(tmp_path):
    flat = tmp_path / "asic.toml"
    flat.write_text('mac_pj = 2.0\nac_pj = 0.25\nmemory_pj_per_byte = 10.0\n')
    p = EnergyProfile.from_toml(flat)
    assert (p.name, p.mac_pj, p.ac_pj, p.memory_pj_per_byte) == ("asic", 2.0, 0.25, 10.0)
    table = tmp_path / "t.toml"
    table.write_text('[profile]\nname = "chip"\nmac_pj = 1\nac_pj = 0.1\nexp_pj = 5\n')
    q = get_profile(str(table))
    assert (q.name, q.mac_pj, q.exp_pj) == ("chip", 1.0, 5.0)
    bad = tmp_path / "bad.toml"
    bad.write_text('mac_pj = 1\nac_pj = 1\nadd = 3\n')
    with pytest.raises(ValueError, match="unknown energy profile keys"):
        EnergyProfile.from_toml(bad)


def test_with_memory():
    p = get_profile("45nm_fp16").with_memory(24.96)
    assert p.memory_pj_per_byte == 24.96 and p.mac_pj == 1.5
