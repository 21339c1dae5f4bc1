"""A vectorizable ``exp`` (and ``log1p`` on [0, 1], ``2^-w`` for ``w >= 0``) for numba kernels.

numba's ``math.exp`` lowers to a scalar libm call here (SVML is not operational), which caps an
exp-bound kernel such as the selective scan at about 0.15 G exp/s per core. :func:`vexp` is a
drop-in ``exp`` that, for float32, is built only from multiplies, adds, a rounding and a bit cast,
so LLVM vectorizes loops that call it (8 lanes with AVX2). float64 keeps ``math.exp`` (float64
users want exact results, e.g. ``gradcheck``). The polynomials' multiply-adds are fused (``llvm.fmuladd``:
one FMA instruction where the CPU has one) whatever the caller's fastmath flags, so the functions round
the same in every kernel and run about a third faster than as separate multiplies and adds.

float32 algorithm (relative error below 2e-7 on the whole range), emitted as LLVM IR by one intrinsic:
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


_F32_IR = ir.FloatType()


def _c(value: np.float32) -> ir.Constant:
    """A float32 constant in LLVM IR."""
    return ir.Constant(_F32_IR, float(value))


def _fmuladd(builder: ir.IRBuilder, a, b, c):
    """``a * b + c``, one fused multiply-add where the target has one (``llvm.fmuladd``, which LLVM's loop
    vectorizer widens like a plain multiply and add)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32_IR, [_F32_IR] * 3), "llvm.fmuladd.f32")
    return builder.call(fn, [a, b, c])


def _rint(builder: ir.IRBuilder, x):
    """``x`` rounded to the nearest integer in the current rounding mode (``llvm.rint``: one ``vroundps``)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32_IR, [_F32_IR]), "llvm.rint.f32")
    return builder.call(fn, [x])


def _float32_fast_path(pyfunc, fast32) -> None:
    """Give ``pyfunc`` its numba version: the intrinsic ``fast32`` for float32, ``pyfunc``'s own exact Python
    body (libm, compiled by numba) for other floats."""

    @overload(pyfunc, inline="always")
    def _overload(x):
        if x == types.float32:
            return lambda x: fast32(x)
        if isinstance(x, types.Float):
            return pyfunc
        return None


# Each function is one intrinsic that emits its LLVM IR directly: written as numba code, every kernel that
# inlines it types and lowers its two dozen operations again, which made the selective scan's first float32
# backward call from a cold cache 1-1.5 s slower (2-core AMD EPYC, 2026-12-05).
@intrinsic
def _vexp32(typingctx, x):
    """float32 ``exp(x)`` by the algorithm of the module docstring."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        (x,) = args
        # clamped by selects; NaN fails both comparisons and passes through
        lo, hi = _c(_LO), _c(_HI)
        xc = builder.select(builder.fcmp_ordered("<", x, lo), lo, x)
        xc = builder.select(builder.fcmp_ordered(">", xc, hi), hi, xc)
        # rint by the magic-number trick: exact under round-to-nearest, no int conversion needed
        n = builder.fsub(_fmuladd(builder, xc, _c(_LOG2E), _c(_MAGIC)), _c(_MAGIC))
        neg_n = builder.fneg(n)
        # n * _LN2_HI is exact, so the first step is exact with or without fusing
        r = _fmuladd(builder, neg_n, _c(_LN2_LO), _fmuladd(builder, neg_n, _c(_LN2_HI), xc))
        q = _c(_Q4)
        for coefficient in (_Q3, _Q2, _Q1, _Q0):
            q = _fmuladd(builder, q, r, _c(coefficient))
        p = builder.fadd(_fmuladd(builder, builder.fmul(r, r), q, r), _c(_ONE))
        # 2^n from its bit pattern (n + 127) * 2^23
        bits = builder.fptosi(builder.fmul(builder.fadd(n, _c(_EXP_BIAS)), _c(_BIAS_SHIFT)), ir.IntType(32))
        return builder.fmul(p, builder.bitcast(bits, _F32_IR))

    return types.float32(types.float32), codegen


def vexp(x):
    """``exp(x)``; inside numba-compiled code a vectorizable float32 version (see module doc)."""
    return math.exp(x)


_float32_fast_path(vexp, _vexp32)


# 2^-w for 0 <= w <= 126 (float32): n = rint(w), g = n - w in [-1/2, 1/2] (exact), 2^g = 1 + g p(g) with p
# a degree-4 polynomial fitted here for minimal relative error (9e-8 in exact arithmetic; the constant term
# is exactly 1, so 2^0 = 1), 2^-n in the exponent bits. Unlike exp's argument reduction it needs no split
# constant and no clamps, so its chain of dependent operations is four shorter: the LIF's reverse step with
# the sigmoid surrogate, a latency-bound loop, took 1.17-1.21 ns per lane on data in L1 with it against
# 1.43-1.49 ns with exp(-a|z|) (2-core AMD EPYC, 2026-12-05, load 0.8). It rounds with :func:`_rint` rather
# than the magic-number add and subtract, which round alike but add a step to the chain.
_P2 = tuple(_F32(c) for c in (0.693146977597295, 0.24022242084121279, 0.05550733745936501, 0.009671512697169534,
                             0.0013264726389876184))


@intrinsic
def _vexp2_neg32(typingctx, w):
    """float32 ``2^-w`` for ``0 <= w <= 126`` (see above); NaN propagates."""
    if w != types.float32:
        return None

    def codegen(context, builder, signature, args):
        (w,) = args
        n = _rint(builder, w)
        g = builder.fsub(n, w)
        p = _c(_P2[4])
        for coefficient in (_P2[3], _P2[2], _P2[1], _P2[0], _ONE):
            p = _fmuladd(builder, p, g, _c(coefficient))
        # 2^-n from its bit pattern (127 - n) * 2^23
        bits = builder.fptosi(builder.fmul(builder.fsub(_c(_EXP_BIAS), n), _c(_BIAS_SHIFT)), ir.IntType(32))
        return builder.fmul(p, builder.bitcast(bits, _F32_IR))

    return types.float32(types.float32), codegen


def vexp2_neg(x):
    """``2^-x`` for ``0 <= x <= 126``; inside numba-compiled code a vectorizable float32 version (relative
    error below 2e-7; outside that range the float32 result is undefined, so callers flush large ``x``)."""
    return 2.0 ** -x


_float32_fast_path(vexp2_neg, _vexp2_neg32)


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


@intrinsic
def _vlog1p32(typingctx, u):
    """float32 ``log1p(u)`` for ``0 <= u <= 1`` as ``2 atanh(u / (2 + u))`` (see above)."""
    if u != types.float32:
        return None

    def codegen(context, builder, signature, args):
        (u,) = args
        t = builder.fdiv(u, builder.fadd(_c(_TWO), u))
        t2 = builder.fmul(t, t)
        p = _c(_T13)
        for coefficient in (_T11, _T9, _T7, _T5, _T3, _ONE):
            p = _fmuladd(builder, p, t2, _c(coefficient))
        return builder.fmul(builder.fmul(_c(_TWO), t), p)

    return types.float32(types.float32), codegen


def vlog1p_unit(x):
    """``log1p(x)`` for ``0 <= x <= 1``; inside numba-compiled code a vectorizable float32 version."""
    return math.log1p(x)


_float32_fast_path(vlog1p_unit, _vlog1p32)
