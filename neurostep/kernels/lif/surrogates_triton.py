"""Triton device functions of the surrogate derivatives (same formulas and ids as ``surrogates.py``).

Kept apart from ``surrogates.py`` because decorating with ``triton.jit`` fixes whether the
functions run compiled or under Triton's CPU interpreter (``TRITON_INTERPRET=1``) at import
time; only ``triton.py``, which the backend registry imports lazily, imports this module.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

# kernels may only read globals that are constexpr
_HALF_PI = tl.constexpr(math.pi / 2.0)
_INV_SQRT_PI = tl.constexpr(1.0 / math.sqrt(math.pi))


@triton.jit
def sg_grad(z, a, SID: tl.constexpr):
    """surrogate'(z) for surrogate id SID (see surrogates.SURROGATES) and alpha ``a``; z: a block."""
    if SID == 0:  # sigmoid, as a*u/(1+u)^2 with u = exp(-a|z|)
        u = tl.exp(-a * tl.abs(z))
        d = 1.0 + u
        g = a * u / (d * d)
    elif SID == 1:  # atan
        c = (a * _HALF_PI) * z
        g = a / (2.0 * (1.0 + c * c))
    elif SID == 2:  # piecewise quadratic
        g = tl.maximum(a - a * a * tl.abs(z), 0.0)
    elif SID == 3:  # piecewise exp
        g = (a / 2.0) * tl.exp(-a * tl.abs(z))
    elif SID == 4:  # soft sign
        d = 1.0 + a * tl.abs(z)
        g = a / (2.0 * d * d)
    elif SID == 5:  # super spike
        d = 1.0 + tl.abs(z)
        g = a / (d * d)
    elif SID == 6:  # erf
        az = a * z
        g = (a * _INV_SQRT_PI) * tl.exp(-(az * az))
    else:  # fast sigmoid
        d = 1.0 + a * tl.abs(z)
        g = 1.0 / (d * d)
    return g
