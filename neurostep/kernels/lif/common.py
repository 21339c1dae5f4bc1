"""Plain-scalar parameters of one LIF scan, shared by the reference, cpu and triton backends."""

from __future__ import annotations

from typing import NamedTuple

import torch

CONVENTIONS = ("spikingjelly", "snntorch")
SNN_RESETS = ("subtract", "zero", "none")


def resting_potential(snn: bool, hard: bool, v_reset: float | None) -> float:
    """The membrane at rest, where a scan without an initial state starts: ``v_reset`` for spikingjelly's hard
    reset, else 0 (soft reset, and the snntorch convention)."""
    return float(v_reset) if (hard and not snn) else 0.0


class LIFParams(NamedTuple):
    """Everything a backend needs besides the data (values already validated by the public op).

    k: tau_inv (1/tau, or 1 - beta for the snntorch convention) and vth: threshold, both 0-d tensors
    in the compute dtype on the data's device, so that no backend has to read them back from a GPU
    (the CPU backend reads them: on the CPU that is a memory read, not a transfer); vr: reset
    potential (used by hard reset); vr_charge: the V_r of the charge equation (0 for soft reset);
    hard: hard (True) or soft/subtract (False) reset; snn: snntorch convention; snn_reset:
    index into SNN_RESETS; sid/alpha: surrogate; rho/beta: threshold adaptation
    (``a_p = rho*a``, ``theta = vth + a_p``, ``a = a_p + beta*S``) when ``adaptive``.

    A named tuple (immutable, like a frozen dataclass, for a fifth of its construction time: the op builds one
    in its forward and one in its backward).
    """

    k: torch.Tensor
    vth: torch.Tensor
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
    def one_minus_k(self) -> torch.Tensor:
        """``1 - k`` rounded once from float64 (as every backend computes it), in k's dtype."""
        return (1.0 - self.k.to(torch.float64)).to(self.k.dtype)

    @property
    def vr_charge(self) -> float:
        return self.vr if self.hard else 0.0

    @property
    def rest(self) -> float:
        """The membrane at rest (:func:`resting_potential`)."""
        return resting_potential(self.snn, self.hard, self.vr)

    def initial_membrane(self, v0: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """``v0``, or where the scan got none the membrane at rest as an ``(N,)`` tensor for ``like (T, N)``: what the
        torch-level backends (reference, triton) start from and differentiate against."""
        if v0 is not None:
            return v0
        return torch.full((like.shape[1],), self.rest, dtype=like.dtype, device=like.device)
