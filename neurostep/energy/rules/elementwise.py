"""Elementwise ops: a fixed number of adds, multiplies, exps and compares per output element."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from neurostep.energy.record import CostRecord

if TYPE_CHECKING:
    from neurostep.energy.dispatch import OpCounter

# Per output element: (adds, muls, exps, compares). Names are aten overload packets without
# a trailing in-place underscore. Transcendentals count one exp each; a comparison-based
# activation counts its compares (and the multiply of its negative branch).
POINTWISE: dict[str, tuple[float, float, float, float]] = {
    "add": (1, 0, 0, 0), "sub": (1, 0, 0, 0), "rsub": (1, 0, 0, 0),
    "mul": (0, 1, 0, 0), "div": (0, 1, 0, 0), "reciprocal": (0, 1, 0, 0), "square": (0, 1, 0, 0),
    "true_divide": (0, 1, 0, 0), "floor_divide": (0, 1, 0, 0), "remainder": (1, 1, 0, 0),
    "addcmul": (1, 2, 0, 0), "addcdiv": (1, 2, 0, 0), "lerp": (2, 1, 0, 0),
    "exp": (0, 0, 1, 0), "exp2": (0, 0, 1, 0), "expm1": (0, 0, 1, 0), "log": (0, 0, 1, 0),
    "log2": (0, 0, 1, 0), "log10": (0, 0, 1, 0), "log1p": (0, 0, 1, 0), "sqrt": (0, 0, 1, 0),
    "rsqrt": (0, 0, 1, 0), "sigmoid": (0, 0, 1, 0), "tanh": (0, 0, 1, 0), "erf": (0, 0, 1, 0),
    "erfc": (0, 0, 1, 0), "erfinv": (0, 0, 1, 0), "sin": (0, 0, 1, 0), "cos": (0, 0, 1, 0),
    "tan": (0, 0, 1, 0), "atan": (0, 0, 1, 0), "atan2": (0, 0, 1, 0), "asin": (0, 0, 1, 0),
    "acos": (0, 0, 1, 0), "sinh": (0, 0, 1, 0), "cosh": (0, 0, 1, 0), "logit": (0, 0, 1, 0),
    "softplus": (1, 0, 2, 1), "silu": (0, 1, 1, 0), "gelu": (1, 3, 1, 0), "mish": (1, 1, 3, 0),
    "elu": (1, 1, 1, 1), "selu": (1, 2, 1, 1), "celu": (1, 1, 1, 1), "log_sigmoid_forward": (1, 0, 2, 0),
    "hardswish": (1, 2, 0, 2), "hardsigmoid": (1, 1, 0, 2), "leaky_relu": (0, 1, 0, 1),
    "relu": (0, 0, 0, 1), "relu6": (0, 0, 0, 2), "threshold": (0, 0, 0, 1), "hardtanh": (0, 0, 0, 2),
    "clamp_min": (0, 0, 0, 1), "clamp_max": (0, 0, 0, 1), "maximum": (0, 0, 0, 1), "minimum": (0, 0, 0, 1),
    "fmax": (0, 0, 0, 1), "fmin": (0, 0, 0, 1),
    "ge": (0, 0, 0, 1), "gt": (0, 0, 0, 1), "le": (0, 0, 0, 1), "lt": (0, 0, 0, 1), "eq": (0, 0, 0, 1),
    "ne": (0, 0, 0, 1), "heaviside": (0, 0, 0, 1), "sign": (0, 0, 0, 1), "sgn": (0, 0, 0, 1),
}
# add/sub with alpha != 1 scale their second operand first: one more multiply per element
ALPHA_OPS = frozenset({"add", "sub", "rsub"})


def pointwise(adds: float, muls: float, exps: float, compares: float,
              scalar_alpha: bool) -> Callable[..., CostRecord]:
    """The rule of one :data:`POINTWISE` entry: its per-element counts times the output size."""

    def rule(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
        o = out[0] if isinstance(out, (tuple, list)) else out
        n = float(o.numel()) if isinstance(o, torch.Tensor) else 1.0
        cost = CostRecord()
        cost.adds = adds * n
        extra_mul = 1.0 if scalar_alpha and kwargs.get("alpha", 1) != 1 else 0.0
        cost.muls = (muls + extra_mul) * n
        cost.exps = exps * n
        cost.compares = compares * n
        c.add_bytes(cost, args, kwargs, out)
        return cost

    return rule


def clamp(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    """One compare per element and given bound."""
    bounds = [b for b in (args[1] if len(args) > 1 else kwargs.get("min"),
                          args[2] if len(args) > 2 else kwargs.get("max")) if b is not None]
    cost = CostRecord()
    cost.compares = float(out.numel()) * len(bounds)
    c.add_bytes(cost, args, kwargs, out)
    return cost


def power(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    """x ** e: a square is one multiply, a (reciprocal) square root one exp, a small integer power
    ``|e| - 1`` multiplies (plus a division if negative), anything else exp(e * log x)."""
    e = args[1] if len(args) > 1 else kwargs.get("exponent")
    n = float(out.numel())
    cost = CostRecord()
    if isinstance(e, (int, float)) and not isinstance(e, bool):
        if abs(e) in (0.5,):
            cost.exps = n
        elif float(e).is_integer() and 1 <= abs(e) <= 8:
            cost.muls = n * (abs(e) - 1 + (1 if e < 0 else 0))
        else:
            cost.muls = n
            cost.exps = 2 * n
    else:   # tensor exponent
        cost.muls = n
        cost.exps = 2 * n
    c.add_bytes(cost, args, kwargs, out)
    return cost
