"""Hardware energy profiles: picojoules per elementary operation and per memory byte.

The presets use Horowitz (ISSCC 2014, 45 nm) figures, as the SNN literature does:
a MAC is a multiply plus an add (fp32 3.7 + 0.9 = 4.6 pJ), an AC is the add alone (0.9 pJ).
Elementwise adds cost one AC and elementwise multiplies the multiply part of a MAC, so a
scale-and-shift (a folded BatchNorm) costs the same as one MAC. A comparison is a
subtraction and costs an add. Horowitz gives no figure for transcendental functions, so
``exp_pj`` is 0 in the presets (the counts are still reported; set it in a custom profile).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EnergyProfile:
    """Energy per operation (pJ) and per byte of memory traffic (pJ/byte).

    ``mac_pj``/``ac_pj`` price the dense-op counts (MACs on dense operands, ACs on spikes);
    ``add_pj``/``mul_pj``/``exp_pj``/``compare_pj`` the elementwise counts; ``state_update_pj``
    each recurrent-state element written by a neurostep op; ``memory_pj_per_byte`` every byte
    read or written by an op (0 in the compute-only presets).
    """

    name: str
    mac_pj: float
    ac_pj: float
    add_pj: float = 0.0
    mul_pj: float = 0.0
    exp_pj: float = 0.0
    compare_pj: float = 0.0
    state_update_pj: float = 0.0
    memory_pj_per_byte: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"profile name must be a non-empty string, got {self.name!r}")
        for f in fields(self):
            if f.name == "name":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"profile field {f.name} must be a number (pJ), got {type(value).__name__}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"profile field {f.name} must be finite and >= 0, got {value}")
            object.__setattr__(self, f.name, float(value))

    # construction ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str | None = None) -> EnergyProfile:
        """Build a profile from a mapping of field names to pJ values.

        ``mac_pj`` and ``ac_pj`` are required; other fields default to 0. Unknown keys raise
        ``ValueError`` (a typo would otherwise silently price an operation at zero).
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"profile data must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown energy profile keys {unknown}; known keys: {sorted(known)}")
        missing = [k for k in ("mac_pj", "ac_pj") if k not in data]
        if missing:
            raise ValueError(f"energy profile is missing required keys {missing} (got {sorted(data)})")
        values = dict(data)
        values["name"] = str(values.get("name", name or "custom"))
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path) -> EnergyProfile:
        """Read a profile from a TOML file: top-level keys, or a ``[profile]`` table.

        Example file::

            name = "my_asic"
            mac_pj = 2.0
            ac_pj = 0.5
            memory_pj_per_byte = 10.0
        """
        try:
            import tomllib
        except ModuleNotFoundError as exc:  # Python 3.10: tomllib arrived in 3.11
            raise RuntimeError("reading TOML profiles needs Python >= 3.11 (tomllib)") from exc
        path = Path(path)
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        if "profile" in data and isinstance(data["profile"], dict):
            data = data["profile"]
        return cls.from_dict(data, name=path.stem)

    def with_memory(self, pj_per_byte: float) -> EnergyProfile:
        """The same profile with a memory cost per byte."""
        return replace(self, name=f"{self.name}_memory", memory_pj_per_byte=pj_per_byte)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _horowitz(name: str, mac: float, ac: float, memory: float = 0.0) -> EnergyProfile:
    # The multiply part of a MAC is MAC - AC; a compare is priced as an add (a subtraction).
    return EnergyProfile(name=name, mac_pj=mac, ac_pj=ac, add_pj=ac, mul_pj=mac - ac, compare_pj=ac,
                         memory_pj_per_byte=memory)


PROFILES: dict[str, EnergyProfile] = {
    "45nm_fp32": _horowitz("45nm_fp32", 4.6, 0.9),
    "45nm_fp16": _horowitz("45nm_fp16", 1.5, 0.4),
    "45nm_int8": _horowitz("45nm_int8", 0.23, 0.03),
    # spikingjelly 2.0's memory-inclusive preset: 3.12 pJ/bit = 24.96 pJ per byte.
    "45nm_fp32_memory": _horowitz("45nm_fp32_memory", 4.6, 0.9, memory=24.96),
}


def get_profile(profile: str | EnergyProfile | Mapping[str, Any] | Path) -> EnergyProfile:
    """Resolve a preset name, an :class:`EnergyProfile`, a dict, or a path to a ``.toml`` file."""
    if isinstance(profile, EnergyProfile):
        return profile
    if isinstance(profile, Mapping):
        return EnergyProfile.from_dict(profile)
    if isinstance(profile, Path) or (isinstance(profile, str) and profile.endswith(".toml")):
        return EnergyProfile.from_toml(profile)
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"unknown energy profile {profile!r}; presets: {sorted(PROFILES)} "
                             "(or pass a dict, an EnergyProfile or a .toml path)")
        return PROFILES[profile]
    raise TypeError(f"profile must be a preset name, an EnergyProfile, a dict or a .toml path, "
                    f"got {type(profile).__name__}")
