"""Operation and energy counter: MACs, ACs on spikes, elementwise ops, bytes, per module.

>>> import torch
>>> from neurostep.energy import count
>>> report = count(torch.nn.Linear(16, 8), (torch.rand(4, 16) < 0.25).float())
>>> print(report)                      # doctest: +SKIP
>>> report.to_csv("energy.csv")        # doctest: +SKIP
"""

from neurostep.energy.cli import cli_main
from neurostep.energy.counter import FIELDS, CostRecord, OpCounter, count
from neurostep.energy.profiles import PROFILES, EnergyProfile, get_profile
from neurostep.energy.report import MODES, Counts, Report, format_count, format_energy, spikformer_energy

__all__ = [
    "FIELDS",
    "MODES",
    "PROFILES",
    "CostRecord",
    "Counts",
    "EnergyProfile",
    "OpCounter",
    "Report",
    "cli_main",
    "count",
    "format_count",
    "format_energy",
    "get_profile",
    "spikformer_energy",
]
