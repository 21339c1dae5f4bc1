"""Plain-scalar parameters of one LIF scan, shared by the reference, cpu and triton backends."""

from __future__ import annotations

from dataclasses import dataclass

CONVENTIONS = ("spikingjelly", "snntorch")
SNN_RESETS = ("subtract", "zero", "none")


@dataclass(frozen=True)
class LIFParams:
    """Everything a backend needs besides tensors (values already validated by the public op).

    k: tau_inv (1/tau, or 1 - beta for the snntorch convention); vth: threshold; vr: reset
    potential (used by hard reset); vr_charge: the V_r of the charge equation (0 for soft reset);
    hard: hard (True) or soft/subtract (False) reset; snn: snntorch convention; snn_reset:
    index into SNN_RESETS; sid/alpha: surrogate; rho/beta: threshold adaptation
    (``a_p = rho*a``, ``theta = vth + a_p``, ``a = a_p + beta*S``) when ``adaptive``.
    """

    k: float
    vth: float
    vr: float
    hard: bool
    decay_input: bool
    detach_reset: bool
    sid: int
    alpha: float
    snn: bool
    snn_reset: int
    adaptive: bool
    rho: float
    beta: float

    @property
    def vr_charge(self) -> float:
        return self.vr if self.hard else 0.0
