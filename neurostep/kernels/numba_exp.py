"""A vectorizable ``exp`` (and ``log1p`` on [0, 1]) for numba kernels.

numba's ``math.exp`` lowers to a scalar libm call here (SVML is not operational), which caps an
exp-bound kernel such as the selective scan at about 0.15 G exp/s per core. :func:`vexp` is a
drop-in ``exp`` that, for float32, is built only from multiplies, adds, a rounding and a bit cast,
so LLVM vectorizes loops that call it (8 lanes with AVX2). float64 keeps ``math.exp`` (float64
users want exact results, e.g. ``gradcheck``). The polynomials' multiply-adds are fused (``llvm.fmuladd``:
one FMA instruction where the CPU has one) whatever the caller's fastmath flags, so the functions round
the same in every kernel and run about a third faster than as separate multiplies and adds.

float32 algorithm (relative error below 2e-7 on the whole range):
``exp(x) = 2^n * exp(r)`` with ``n = rint(x / ln 2)`` and ``r = x - n ln 2`` (two-constant split
of ln 2 so that ``n ln 2`` is exact), ``|r| <= ln2 / 2``; ``exp(r) = 1 + r + r^2 q(r)`` with ``q`` a
degree-4 polynomial fitted here for minimal relative error (3e-9 in exact arithmetic); ``2^n``
is assembled directly in the float's exponent bits. Inputs are clamped to [-87.3, 88.3] so ``2^n``
stays a normal float (below -87.3 the result is ~1e-38 instead of 0; above 88.3, ~2e38 instead of
inf); NaN propagates.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

_F32 = np.float32
_LOG2E = _F32(1.4426950408889634)
# ln 2 split into a high part with few mantissa bits (n * _LN2_HI is exact for |n| < 256)
# and the float32 remainder.
_LN2_HI = _F32(0.693359375)
_LN2_LO = _F32(math.log(2.0) - 0.693359375)
_MAGIC = _F32(12582912.0)  # 1.5 * 2^23: adding it rounds a float32 of magnitude < 2^22 to an integer
_BIAS_SHIFT = _F32(8388608.0)  # 2^23: (n + 127) * 2^23 is the bit pattern of 2^n
_EXP_BIAS = _F32(127.0)
_LO = _F32(-87.3)
_HI = _F32(88.3)
_ONE = _F32(1.0)
_Q4 = _F32(0.0013814613184045795)
_Q3 = _F32(0.008368709928115337)
_Q2 = _F32(0.04166838737027088)
_Q1 = _F32(0.16666520688957462)
_Q0 = _F32(0.4999999345164764)


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """Reinterpret an int32 bit pattern as a float32 (free: a register bit cast)."""
    if bits != types.int32:
        return None
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _fma32(typingctx, a, b, c):
    """``a * b + c`` for float32, as one fused multiply-add where the target has one (``llvm.fmuladd``,
    which LLVM's loop vectorizer widens like a plain multiply and add)."""
    if not (a == b == c == types.float32):
        return None
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32, f32]),
                                            "llvm.fmuladd.f32")
        return builder.call(fn, args)

    return sig, codegen


def vexp(x):
    """``exp(x)``; inside numba-compiled code a vectorizable float32 version (see module doc)."""
    return math.exp(x)


@overload(vexp, inline="always")
def _vexp_overload(x):
    if x == types.float32:

        def impl(x):
            # min/max rather than branches or conditional expressions, whose phi nodes numba's SSA
            # pass mishandles when this is inlined into other inlined functions; NaN passes through
            xc = min(max(x, _LO), _HI)
            # rint by the magic-number trick: exact under round-to-nearest, no int conversion needed
            n = _fma32(xc, _LOG2E, _MAGIC) - _MAGIC
            # n * _LN2_HI is exact, so the first step is exact with or without fusing
            r = _fma32(-n, _LN2_LO, _fma32(-n, _LN2_HI, xc))
            q = _fma32(_fma32(_fma32(_fma32(_Q4, r, _Q3), r, _Q2), r, _Q1), r, _Q0)
            p = _fma32(r * r, q, r) + _ONE
            scale = _int32_bits_as_float32(np.int32((n + _EXP_BIAS) * _BIAS_SHIFT))
            return p * scale

        return impl
    if isinstance(x, types.Float):
        return lambda x: math.exp(x)
    return None


# log1p(u) for u in [0, 1] as 2 atanh(t), t = u / (2 + u) in [0, 1/3]: the odd series in t has
# only positive terms, and truncating after t^13 leaves a relative error below (1/9)^7 / 15 < 2e-8.
# Dividing u itself (not 1 + u, which rounds away u's low bits) keeps small u exact: log1p(u) ~ u.
_T3 = _F32(1.0 / 3.0)
_T5 = _F32(1.0 / 5.0)
_T7 = _F32(1.0 / 7.0)
_T9 = _F32(1.0 / 9.0)
_T11 = _F32(1.0 / 11.0)
_T13 = _F32(1.0 / 13.0)
_TWO = _F32(2.0)


def vlog1p_unit(u):
    """``log1p(u)`` for ``0 <= u <= 1``; inside numba-compiled code a vectorizable float32 version."""
    return math.log1p(u)


@overload(vlog1p_unit, inline="always")
def _vlog1p_unit_overload(u):
    if u == types.float32:

        def impl(u):
            t = u / (_TWO + u)
            t2 = t * t
            p = _fma32(_fma32(_fma32(_fma32(_fma32(_fma32(_T13, t2, _T11), t2, _T9), t2, _T7), t2, _T5), t2, _T3),
                       t2, _ONE)
            return _TWO * t * p

        return impl
    if isinstance(u, types.Float):
        return lambda u: math.log1p(u)
    return None
