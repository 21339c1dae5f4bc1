"""Initial values of state-space parameters, shared by every SSM block (mamba-ssm's and S4D's inits)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def inverse_softplus(y: Tensor) -> Tensor:
    """``x`` with ``softplus(x) == y`` for ``y > 0``, written without overflow for small ``y``."""
    return y + torch.log(-torch.expm1(-y))


def log_uniform_steps(size: int | tuple[int, ...], dt_min: float, dt_max: float, floor: float,
                      factory: dict | None = None) -> Tensor:
    """Step sizes of shape ``size`` drawn log-uniformly in ``[dt_min, dt_max]`` (one ``torch.rand``),
    floored at ``floor``; ``factory`` holds ``device``/``dtype`` for the draw."""
    lo, hi = math.log(dt_min), math.log(dt_max)
    u = torch.rand(size, **(factory or {}))
    return torch.exp(lo + u * (hi - lo)).clamp(min=floor)


def s4d_real_log_A(rows: int, d_state: int) -> Tensor:
    """``log(1..d_state)`` in each of ``rows`` rows: ``A = -exp(A_log) = -(n + 1)``, S4D-Real's init."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(rows, 1)
