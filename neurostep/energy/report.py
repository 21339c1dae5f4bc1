"""Counting results per module and in total, priced by an :class:`EnergyProfile`.

Two pricing conventions (``mode``):

* ``"ops"``: every counted operation at its profile price: ``macs * mac_pj + acs * ac_pj``
  plus the elementwise adds, multiplies, exps, compares and state updates.
* ``"spikformer"``: the Spikformer paper's convention, ``E = mac_pj * FLOPs(first layer) +
  ac_pj * sum SOP`` with ``SOP_l = firing_rate(input of layer l) * T * FLOPs_l`` (the measured
  dense MACs of a layer already include the T timesteps it ran). Elementwise work is not priced.

Memory traffic (``bytes_read + bytes_written``) is priced separately at ``memory_pj_per_byte``
in both modes, so compute-only and memory-inclusive energies can be compared.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from neurostep.energy.profiles import EnergyProfile

MODES = ("ops", "spikformer")


@dataclass
class Counts:
    """Operation counts of one module (inclusive of its children), one op kind, or the total."""

    calls: int = 0
    macs: float = 0.0
    acs: float = 0.0
    adds: float = 0.0
    muls: float = 0.0
    exps: float = 0.0
    compares: float = 0.0
    state_updates: float = 0.0
    bytes_read: float = 0.0
    bytes_written: float = 0.0
    param_bytes_read: float = 0.0
    spike_nnz: float = 0.0
    spike_numel: float = 0.0
    dense_macs: float = 0.0
    sops: float = 0.0
    first_layer_macs: float = 0.0

    @classmethod
    def from_vector(cls, names: tuple[str, ...], values: list[float], calls: int = 0) -> Counts:
        c = cls(calls=calls)
        for name, v in zip(names, values):
            setattr(c, name, float(v))
        return c

    def add_vector(self, names: tuple[str, ...], values: list[float]) -> None:
        for name, v in zip(names, values):
            if v:
                setattr(self, name, getattr(self, name) + float(v))

    @property
    def spike_rate(self) -> float | None:
        """Fraction of ones in the binary inputs of this module's dense ops (None if there were none)."""
        return self.spike_nnz / self.spike_numel if self.spike_numel else None

    @property
    def elementwise_ops(self) -> float:
        return self.adds + self.muls + self.exps + self.compares

    @property
    def bytes_total(self) -> float:
        return self.bytes_read + self.bytes_written

    def energy(self, profile: EnergyProfile, mode: str = "ops") -> dict[str, float]:
        """Energy in pJ: ``mac``, ``ac``, ``elementwise``, ``compute``, ``memory`` and ``total``."""
        if mode == "spikformer":
            mac = self.first_layer_macs * profile.mac_pj
            ac = self.sops * profile.ac_pj
            elementwise = 0.0
        else:
            mac = self.macs * profile.mac_pj
            ac = self.acs * profile.ac_pj
            elementwise = (self.adds * profile.add_pj + self.muls * profile.mul_pj + self.exps * profile.exp_pj
                           + self.compares * profile.compare_pj + self.state_updates * profile.state_update_pj)
        compute = mac + ac + elementwise
        memory = self.bytes_total * profile.memory_pj_per_byte
        return {
            "energy_mac_pj": mac,
            "energy_ac_pj": ac,
            "energy_elementwise_pj": elementwise,
            "energy_compute_pj": compute,
            "energy_memory_pj": memory,
            "energy_total_pj": compute + memory,
        }

    def as_dict(self, profile: EnergyProfile | None = None, mode: str = "ops") -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["spike_rate"] = self.spike_rate
        if profile is not None:
            out.update(self.energy(profile, mode))
        return out


def format_count(n: float) -> str:
    """``1234567 -> '1.23M'``."""
    if n == 0:
        return "0"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.2f}"


def format_energy(pj: float) -> str:
    """Picojoules in the largest unit below the value: ``7.73e9 -> '7.730 mJ'``."""
    if pj == 0:
        return "0"
    for unit, scale in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3f} {unit}"
    return f"{pj:.3f} pJ"


@dataclass
class Report:
    """Result of :func:`neurostep.energy.count`.

    Attributes:
        total: counts over the whole forward.
        modules: inclusive counts per module path (``"blocks.0.attn.q"``), in first-call order.
        ops: counts per op overload (``"aten::addmm"``, ``"neurostep::lif_forward"``).
        profile, mode: how energy is priced (see the module docstring).
        unknown_ops: ops with no rule and no declared formula (counted for bytes only).
        notes: how the count was taken (e.g. "counted on model._orig_mod").
    """

    model: str
    total: Counts
    modules: dict[str, Counts]
    ops: dict[str, Counts]
    profile: EnergyProfile
    mode: str = "ops"
    unknown_ops: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    # energy shortcuts --------------------------------------------------------------------
    def energy(self, path: str | None = None) -> dict[str, float]:
        """Energy breakdown in pJ of one module path, or of the total when ``path`` is None."""
        counts = self.total if path is None else self._module(path)
        return counts.energy(self.profile, self.mode)

    @property
    def energy_pj(self) -> float:
        """Total energy in pJ (compute plus memory) under the report's profile and mode."""
        return self.energy()["energy_total_pj"]

    @property
    def compute_energy_pj(self) -> float:
        return self.energy()["energy_compute_pj"]

    @property
    def memory_energy_pj(self) -> float:
        return self.energy()["energy_memory_pj"]

    def _module(self, path: str) -> Counts:
        if path not in self.modules:
            raise KeyError(f"no module {path!r} in the report; modules: {list(self.modules)[:20]}")
        return self.modules[path]

    def with_profile(self, profile: EnergyProfile | None = None, mode: str | None = None) -> Report:
        """The same counts priced by another profile and/or mode (no recount needed)."""
        return Report(self.model, self.total, self.modules, self.ops, profile or self.profile,
                      mode or self.mode, dict(self.unknown_ops), list(self.notes))

    # export ------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists (JSON-serialisable, no pandas)."""
        return {
            "model": self.model,
            "mode": self.mode,
            "profile": self.profile.as_dict(),
            "total": self.total.as_dict(self.profile, self.mode),
            "modules": {p: c.as_dict(self.profile, self.mode) for p, c in self.modules.items()},
            "ops": {p: c.as_dict(self.profile, self.mode) for p, c in self.ops.items()},
            "unknown_ops": dict(self.unknown_ops),
            "notes": list(self.notes),
        }

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        return path

    def to_csv(self, path: str | Path) -> Path:
        """One row per module plus a ``<total>`` row; columns are the counts and energies."""
        path = Path(path)
        header = ["module", *self.total.as_dict(self.profile, self.mode).keys()]
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerow(["<total>", *self.total.as_dict(self.profile, self.mode).values()])
            for p, c in self.modules.items():
                writer.writerow([p, *c.as_dict(self.profile, self.mode).values()])
        return path

    def table(self, max_depth: int | None = None) -> str:
        """A fixed-width table: the total, then each module indented by its depth."""
        spik = self.mode == "spikformer"
        cols = (["module", "calls", "MACs(1st)", "SOPs", "rate", "bytes", "energy"] if spik else
                ["module", "calls", "MACs", "ACs", "rate", "elem ops", "state upd", "bytes", "energy"])
        rows = []

        def row(name: str, c: Counts) -> list[str]:
            rate = "-" if c.spike_rate is None else f"{c.spike_rate:.3f}"
            e = format_energy(c.energy(self.profile, self.mode)["energy_total_pj"])
            if spik:
                return [name, str(c.calls), format_count(c.first_layer_macs), format_count(c.sops), rate,
                        format_count(c.bytes_total), e]
            return [name, str(c.calls), format_count(c.macs), format_count(c.acs), rate,
                    format_count(c.elementwise_ops), format_count(c.state_updates), format_count(c.bytes_total), e]

        rows.append(row(f"<total> {self.model}", self.total))
        for p, c in self.modules.items():
            depth = p.count(".") + 1
            if max_depth is not None and depth > max_depth:
                continue
            rows.append(row("  " * depth + p.rsplit(".", 1)[-1] if depth > 1 else "  " + p, c))
        widths = [max(len(cols[i]), *(len(r[i]) for r in rows)) for i in range(len(cols))]
        lines = [
            f"energy report: profile {self.profile.name}, mode {self.mode}",
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))),
            "  ".join("-" * w for w in widths),
        ]
        for r in rows:
            lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
        e = self.energy()
        lines.append(f"compute {format_energy(e['energy_compute_pj'])} (MAC {format_energy(e['energy_mac_pj'])}, "
                     f"AC {format_energy(e['energy_ac_pj'])}, elementwise {format_energy(e['energy_elementwise_pj'])})"
                     f"; memory {format_energy(e['energy_memory_pj'])}; total {format_energy(e['energy_total_pj'])}")
        if self.unknown_ops:
            lines.append("ops without a cost rule (bytes only): "
                         + ", ".join(f"{k} x{v}" for k, v in sorted(self.unknown_ops.items())))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def spikformer_energy(first_layer_flops: float, layer_flops: list[float] | tuple[float, ...],
                      firing_rates: list[float] | tuple[float, ...], T: int,
                      profile: EnergyProfile | None = None) -> dict[str, float]:
    """The Spikformer paper's energy formula from per-layer numbers (no model needed).

    ``E = mac_pj * first_layer_flops + ac_pj * sum_l firing_rates[l] * T * layer_flops[l]``,
    with ``layer_flops`` the dense MACs of one timestep of each later layer and
    ``firing_rates`` the firing rate of each layer's input. ``first_layer_flops`` is taken as
    given (pass the per-step FLOPs times the number of steps it runs, if it runs every step).

    Returns ``{"sops", "energy_mac_pj", "energy_ac_pj", "energy_total_pj"}``.
    """
    from neurostep.energy.profiles import PROFILES

    prof = profile or PROFILES["45nm_fp32"]
    if len(layer_flops) != len(firing_rates):
        raise ValueError(f"layer_flops and firing_rates must have one entry per layer, got {len(layer_flops)} "
                         f"and {len(firing_rates)}")
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")
    for r in firing_rates:
        if r < 0:
            raise ValueError(f"firing rates must be >= 0, got {list(firing_rates)}")
    sops = sum(r * T * f for r, f in zip(firing_rates, layer_flops))
    mac = first_layer_flops * prof.mac_pj
    ac = sops * prof.ac_pj
    return {"sops": sops, "energy_mac_pj": mac, "energy_ac_pj": ac, "energy_total_pj": mac + ac}
