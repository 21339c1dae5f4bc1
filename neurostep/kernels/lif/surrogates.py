"""Surrogate gradients of the spike (Heaviside) function, in one place for every backend.

The forward of a spike is a step function; its backward uses the derivative of a smooth
*primitive* instead. Each surrogate here has an integer id (what the kernels switch on), a
default ``alpha`` (spikingjelly 2.0's defaults; snntorch's ``fast_sigmoid`` slope 25), the
torch derivative used by the reference backend, the torch primitive whose derivative it is
(so tests can check the pair by finite differences), and the same derivative for numba
(:func:`sg_block_function`). The triton version lives in ``surrogates_triton.py`` because importing
triton here would freeze triton's interpreter setting for every importer of this module.

All functions take ``x = H - theta`` (membrane minus threshold) and ``alpha`` and work
elementwise on any shape.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import torch
from numba import types
from numba.extending import intrinsic, overload

from neurostep.kernels.numba_exp import vexp, vexp2_neg
from neurostep.kernels.numba_launch import CompiledFunction, compiled_function, function_at, numba_type

_PI = math.pi
_SQRT_PI = math.sqrt(math.pi)


@dataclass(frozen=True)
class Surrogate:
    """One surrogate: ``derivative(x, alpha)`` is d/dx ``primitive(x, alpha)``."""

    name: str
    sid: int
    default_alpha: float
    derivative: Callable[[torch.Tensor, float], torch.Tensor]
    primitive: Callable[[torch.Tensor, float], torch.Tensor]


def _sigmoid_d(x: torch.Tensor, a: float) -> torch.Tensor:
    # a*s*(1-s) with s = sigmoid(a x), written as a*u/(1+u)^2 with u = exp(-a|x|): 1 - s cancels in the tails
    u = torch.exp(-a * x.abs())
    d = 1.0 + u
    return a * u / (d * d)


def _sigmoid_p(x: torch.Tensor, a: float) -> torch.Tensor:
    return torch.sigmoid(a * x)


def _atan_d(x: torch.Tensor, a: float) -> torch.Tensor:
    c = (_PI / 2.0 * a) * x
    return a / (2.0 * (1.0 + c * c))


def _atan_p(x: torch.Tensor, a: float) -> torch.Tensor:
    return torch.atan((_PI / 2.0 * a) * x) / _PI + 0.5


def _pq_d(x: torch.Tensor, a: float) -> torch.Tensor:
    return torch.clamp(a - a * a * x.abs(), min=0.0)


def _pq_p(x: torch.Tensor, a: float) -> torch.Tensor:
    inner = -0.5 * a * a * x * x.abs() + a * x + 0.5
    return torch.where(x < -1.0 / a, torch.zeros_like(x), torch.where(x > 1.0 / a, torch.ones_like(x), inner))


def _pexp_d(x: torch.Tensor, a: float) -> torch.Tensor:
    return (a / 2.0) * torch.exp(-a * x.abs())


def _pexp_p(x: torch.Tensor, a: float) -> torch.Tensor:
    e = 0.5 * torch.exp(-a * x.abs())
    return torch.where(x < 0, e, 1.0 - e)


def _softsign_d(x: torch.Tensor, a: float) -> torch.Tensor:
    d = 1.0 + a * x.abs()
    return a / (2.0 * d * d)


def _softsign_p(x: torch.Tensor, a: float) -> torch.Tensor:
    return 0.5 * (a * x / (1.0 + (a * x).abs()) + 1.0)


def _superspike_d(x: torch.Tensor, a: float) -> torch.Tensor:
    d = 1.0 + x.abs()
    return a / (d * d)


def _superspike_p(x: torch.Tensor, a: float) -> torch.Tensor:
    return a * x / (1.0 + x.abs())


def _erf_d(x: torch.Tensor, a: float) -> torch.Tensor:
    ax = a * x
    return (a / _SQRT_PI) * torch.exp(-(ax * ax))


def _erf_p(x: torch.Tensor, a: float) -> torch.Tensor:
    return 0.5 * torch.erfc(-a * x)


def _fastsig_d(x: torch.Tensor, a: float) -> torch.Tensor:
    d = 1.0 + a * x.abs()
    return 1.0 / (d * d)


def _fastsig_p(x: torch.Tensor, a: float) -> torch.Tensor:
    return x / (1.0 + a * x.abs())


SURROGATES: dict[str, Surrogate] = {
    s.name: s
    for s in (
        Surrogate("sigmoid", 0, 4.0, _sigmoid_d, _sigmoid_p),
        Surrogate("atan", 1, 2.0, _atan_d, _atan_p),
        Surrogate("piecewise_quadratic", 2, 1.0, _pq_d, _pq_p),
        Surrogate("piecewise_exp", 3, 1.0, _pexp_d, _pexp_p),
        Surrogate("soft_sign", 4, 2.0, _softsign_d, _softsign_p),
        Surrogate("super_spike", 5, 1.0, _superspike_d, _superspike_p),
        Surrogate("erf", 6, 2.0, _erf_d, _erf_p),
        Surrogate("fast_sigmoid", 7, 25.0, _fastsig_d, _fastsig_p),
    )
}


def get_surrogate(name: str) -> Surrogate:
    """Look a surrogate up by name; ``ValueError`` listing the choices otherwise."""
    if not isinstance(name, str) or name not in SURROGATES:
        raise ValueError(f"surrogate must be one of {tuple(SURROGATES)}, got {name!r}")
    return SURROGATES[name]


# ---------------------------------------------------------------------------------------------
# numba: the derivative per lane (sg_value) and over a contiguous block of lanes (sg_block_function).
#
# numba's math.exp is a scalar libm call (no SVML here), so the exp-based surrogates use
# kernels.numba_exp.vexp, which vectorizes in float32 (and is math.exp in float64).

_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_ZERO = np.float32(0.0)
_EXP_LO = np.float32(-69.0)  # see _exp_flushed


@numba.njit(inline="always")
def _exp_flushed(w):  # pragma: no cover - compiled
    """``exp(w)``, flushed to 0 below ``e^-69`` (about 1e-30): negligible as a gradient, while the
    denormals that the far tails would otherwise give make every later multiply ~100x slower."""
    return _ZERO if w < _EXP_LO else vexp(w)


_LOG2E = math.log2(math.e)
_W_FLUSH = np.float32(-float(_EXP_LO) * _LOG2E)  # _exp_flushed's flush as a power of 2


def _sigmoid_tail(a, c, z):
    """``exp(-a |z|)`` flushed as :func:`_exp_flushed` does, given ``c = a log2(e)``."""
    return _exp_flushed(-a * abs(z))


@overload(_sigmoid_tail, inline="always")
def _sigmoid_tail_overload(a, c, z):
    # float32: 2^-(c |z|), whose reduction is shorter than exp's (numba_exp.vexp2_neg). Rounding the product
    # c |z| costs the surrogate relative error: up to 7e-7 where it is above 1e-3 of its peak, 2e-6 down to
    # 1e-15 of it, 4e-6 in the far tails, against 3e-7 everywhere with exp(-a |z|). float64 keeps the exp.
    if z == types.float32:

        def impl(a, c, z):
            w = c * abs(z)
            return _ZERO if w > _W_FLUSH else vexp2_neg(w)

        return impl
    if isinstance(z, types.Float):
        return _sigmoid_tail
    return None


@numba.njit(inline="always")
def sg_value(sid, a, c, z):  # pragma: no cover - compiled
    """``surrogate'(z)`` of one lane for surrogate id ``sid``, alpha ``a`` and ``c = sg_constant(sid, a)``.

    Scalars of one float dtype (constants are exact float32 numbers, so float32 stays float32).
    Call it with a constant ``sid`` inside a loop (as :func:`sg_block_function`'s loop does): the switch then folds
    away and the loop vectorizes; a run-time ``sid`` inside a lane loop is not unswitched by LLVM.
    """
    if sid == 0:  # sigmoid: a*s*(1-s) = a*u/(1+u)^2 with u = exp(-a|z|) <= 1 (no overflow), c = a log2(e)
        u = _sigmoid_tail(a, c, z)
        d = _ONE + u
        return a * u / (d * d)
    if sid == 1:  # atan, c = pi/2*a
        w = c * z
        return a / (_TWO * (_ONE + w * w))
    if sid == 2:  # piecewise quadratic, c = a^2
        g = a - c * abs(z)
        return g if g > _ZERO else _ZERO
    if sid == 3:  # piecewise exp, c = a/2
        return c * _exp_flushed(-a * abs(z))
    if sid == 4:  # soft sign
        d = _ONE + a * abs(z)
        return a / (_TWO * d * d)
    if sid == 5:  # super spike
        d = _ONE + abs(z)
        return a / (d * d)
    if sid == 6:  # erf, c = a/sqrt(pi)
        az = a * z
        return c * _exp_flushed(-(az * az))
    d = _ONE + a * abs(z)  # fast sigmoid
    return _ONE / (d * d)


def sg_constant(sid: int, alpha: float) -> float:
    """The per-surrogate constant that :func:`sg_block_function` takes (computed on the host in the data dtype)."""
    if sid == 0:
        return alpha * _LOG2E
    if sid == 1:
        return _PI / 2.0 * alpha
    if sid == 3:
        return alpha / 2.0
    if sid == 6:
        return alpha / _SQRT_PI
    return alpha * alpha


def _sg_block_source(sid: int) -> Callable[..., None]:
    """``sg_block(a, c, z, out, n)``: ``out[:n] = surrogate'(z[:n])`` for surrogate ``sid`` (a closure: numba
    reads ``sid`` as a constant and folds the switch of :func:`sg_value`, so the loop vectorizes)."""

    def sg_block(a, c, z, out, n):  # pragma: no cover - compiled
        for j in range(n):
            out[j] = sg_value(sid, a, c, z[j])

    return sg_block


@intrinsic
def sg_block_at(typingctx, address, a):
    """Inside a kernel: the ``sg_block`` function whose C wrapper is at ``address`` (``sg_block_function(sid,
    dtype).address``, passed in as an integer), for scalars of ``a``'s type. Taking the address, not the function,
    spares every call of the kernel numba's unboxing of a function argument (:func:`~neurostep.kernels.
    numba_launch.function_at`)."""
    vector = types.Array(a, 1, "C")
    function_type = types.FunctionType(types.void(a, a, vector, vector, types.int64))

    def codegen(context, builder, signature, args):
        return function_at(context, builder, function_type, args[0])

    return function_type(address, a), codegen


@functools.cache
def sg_block_function(sid: int, dtype: str) -> CompiledFunction:
    """``sg_block(a, c, z, out, n)`` of surrogate ``sid`` for ``dtype`` ("float32" or "float64"): ``out[:n] =
    surrogate'(z[:n])`` with alpha ``a`` and ``c = sg_constant(sid, a)`` (scalars of the data dtype), ``z`` and
    ``out`` distinct contiguous vectors of length >= n. Compiled (or loaded from numba's disk cache) on first
    use and kept for the process; kernels take its address and call it as a first-class function
    (:func:`sg_block_at`), so a kernel compiles once for every surrogate and a first call compiles only the
    surrogate it uses. ``.dispatcher`` calls it from Python. FMA contraction (only) is allowed: it shortens the
    exp polynomial and is more accurate, and nothing compares a surrogate bit-exactly."""
    f, v = numba_type("f", dtype), numba_type("f1", dtype)
    signature = types.void(f, f, v, v, types.int64)
    return compiled_function(_sg_block_source(sid), signature, error_model="numpy", fastmath={"contract"})
