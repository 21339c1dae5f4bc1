"""Surrogate gradients of the spike (Heaviside) function, in one place for every backend.

The forward of a spike is a step function; its backward uses the derivative of a smooth
*primitive* instead. Each surrogate here has an integer id (what the kernels switch on), a
default ``alpha`` (spikingjelly 2.0's defaults; snntorch's ``fast_sigmoid`` slope 25), the
torch derivative used by the reference backend, the torch primitive whose derivative it is
(so tests can check the pair by finite differences), and the same derivative for numba
(:func:`sg_block`). The triton version lives in ``surrogates_triton.py`` because importing
triton here would freeze triton's interpreter setting for every importer of this module.

All functions take ``x = H - theta`` (membrane minus threshold) and ``alpha`` and work
elementwise on any shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import torch

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
# numba: the derivative over a contiguous block of lanes.
#
# The switch on the surrogate id sits outside the lane loops so that each loop is branch-free
# and LLVM vectorizes it. numba's math.exp is a scalar libm call (no SVML here), so the exp-based
# surrogates use a polynomial exp that vectorizes (see _vexp_neg_f32).

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # Cody-Waite split of ln 2: hi has few mantissa bits, so n*hi is exact
_LN2_LO = np.float32(-2.12194440e-4)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_ZERO = np.float32(0.0)
_EXP_LO = np.float32(-69.0)  # exp flushes to 0 below this (see _vexp_neg_f32)
_ROUND = np.float32(12582912.0)  # 1.5 * 2^23: (x + R) - R rounds x to the nearest integer in float32
_C2 = np.float32(1.0 / 2.0)
_C3 = np.float32(1.0 / 6.0)
_C4 = np.float32(1.0 / 24.0)
_C5 = np.float32(1.0 / 120.0)
_C6 = np.float32(1.0 / 720.0)
_C7 = np.float32(1.0 / 5040.0)


# FMA contraction (only) is allowed here: it halves the polynomial's instruction count and is more
# accurate, and nothing compares this exp bit-exactly.
@numba.njit(cache=True, error_model="numpy", fastmath={"contract"})
def _exp_surrogate_f32(z, out, ibuf, n, kind, a, c):  # pragma: no cover - compiled
    """An exp-based surrogate derivative (or a plain exp) over a block, in float32, vectorizable.

    kind 0: sigmoid ``a*u/(1+u)^2`` with ``u = exp(-a|z|)``; 1: ``c*exp(-a|z|)`` (piecewise exp);
    2: ``c*exp(-(a z)^2)`` (erf); 3: ``exp(z)`` for ``z <= 0``. z and out must not overlap (LLVM
    checks at run time and falls back to scalar code when they do).

    exp(w) = 2^m * exp(r) with m = round(w*log2 e) and |r| <= ln2/2; exp(r) by a degree-7 Taylor
    polynomial (truncation < 1e-8 relative, < 3e-7 overall); 2^m is built from its IEEE exponent
    bits in an int32 buffer viewed as float32 (numba has no scalar bit-cast). Rounding uses the
    1.5*2^23 trick (np.floor is a scalar libm call here). exp(w) below e^-69 (~1e-30) is flushed
    to 0: negligible as a gradient, and denormals would make the arithmetic ~100x slower. The
    kind switch is a select between computed values, so the loops have no branches.
    """
    for j in range(n):
        zj = z[j]
        az = a * zj
        w = -(az * az) if kind == 2 else (zj if kind == 3 else -a * abs(zj))
        w = np.float32(w)
        wc = _EXP_LO if w < _EXP_LO else w  # written so that NaN passes through
        m = (wc * _LOG2E + _ROUND) - _ROUND
        r = (wc - m * _LN2_HI) - m * _LN2_LO
        p = _C7
        p = p * r + _C6
        p = p * r + _C5
        p = p * r + _C4
        p = p * r + _C3
        p = p * r + _C2
        p = p * r + _ONE
        p = p * r + _ONE
        out[j] = _ZERO if w < _EXP_LO else p
        ibuf[j] = (np.int32(m) + np.int32(127)) << np.int32(23)
    scale = ibuf.view(np.float32)
    for j in range(n):
        u = out[j] * scale[j]
        d = _ONE + u
        out[j] = a * u / (d * d) if kind == 0 else (u if kind == 3 else c * u)


@numba.njit(cache=True, error_model="numpy")
def _vexp_neg_f32(z, out, ibuf, n):  # pragma: no cover - compiled
    """out[:n] = exp(z[:n]) for z <= 0 in float32 (see _exp_surrogate_f32); z, out distinct."""
    _exp_surrogate_f32(z, out, ibuf, n, 3, _ONE, _ONE)


def sg_constant(sid: int, alpha: float) -> float:
    """The per-surrogate constant that :func:`sg_block` takes (computed on the host in the data dtype)."""
    if sid == 1:
        return _PI / 2.0 * alpha
    if sid == 3:
        return alpha / 2.0
    if sid == 6:
        return alpha / _SQRT_PI
    return alpha * alpha


@numba.njit(cache=True, error_model="numpy")
def sg_block(sid, a, c, z, out, ibuf, n, fast):  # pragma: no cover - compiled
    """out[:n] = surrogate'(z[:n]) for surrogate id ``sid``, alpha ``a`` and ``c = sg_constant(sid, a)``.

    z, out: distinct 1-d float arrays (same dtype) of length >= n; ibuf: int32 scratch (>= n);
    a, c: scalars of the data dtype; fast: use the float32 polynomial exp (float32 data only).
    All constants are exact float32 numbers or come in through ``c``, so float32 data is computed
    in float32 (8 lanes per AVX2 vector) and float64 data in float64.
    """
    if sid == 0:  # sigmoid: a*s*(1-s) = a*u/(1+u)^2 with u = exp(-a|z|) <= 1 (no overflow)
        if fast:
            _exp_surrogate_f32(z, out, ibuf, n, 0, a, c)
        else:
            for j in range(n):
                u = math.exp(-a * abs(z[j]))
                d = _ONE + u
                out[j] = a * u / (d * d)
    elif sid == 1:  # atan, c = pi/2*a
        for j in range(n):
            w = c * z[j]
            out[j] = a / (_TWO * (_ONE + w * w))
    elif sid == 2:  # piecewise quadratic, c = a^2
        for j in range(n):
            g = a - c * abs(z[j])
            out[j] = g if g > _ZERO else _ZERO
    elif sid == 3:  # piecewise exp, c = a/2
        if fast:
            _exp_surrogate_f32(z, out, ibuf, n, 1, a, c)
        else:
            for j in range(n):
                out[j] = c * math.exp(-a * abs(z[j]))
    elif sid == 4:  # soft sign
        for j in range(n):
            d = _ONE + a * abs(z[j])
            out[j] = a / (_TWO * d * d)
    elif sid == 5:  # super spike
        for j in range(n):
            d = _ONE + abs(z[j])
            out[j] = a / (d * d)
    elif sid == 6:  # erf, c = a/sqrt(pi)
        if fast:
            _exp_surrogate_f32(z, out, ibuf, n, 2, a, c)
        else:
            for j in range(n):
                az = a * z[j]
                out[j] = c * math.exp(-(az * az))
    else:  # fast sigmoid
        for j in range(n):
            d = _ONE + a * abs(z[j])
            out[j] = _ONE / (d * d)
