"""Sums of a vector for numba kernels, written so that LLVM vectorizes them.

A running sum ``acc += x[j]`` is a serial chain of float adds that LLVM may not reorder, so it stays
scalar: one add per element at the add's full latency. Where a kernel reduces a block's lanes at the
end (the weight gradient of a convolution channel, a neuron block's threshold gradient), that chain cost
as much as the rest of the block's work at small sizes. These functions allow reassociation, and only
for their own adds (each is a function of its own, so the flag does not reach the callers' arithmetic,
such as the rounding trick inside ``vexp``): LLVM then keeps several partial sums in vector lanes.
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@numba.njit(fastmath={"reassoc"}, error_model="numpy", cache=True)
def vsum(x, count):  # pragma: no cover - compiled
    """``x[:count].sum()`` in ``x``'s dtype, in vector lanes (the order of the adds is LLVM's)."""
    acc = x.dtype.type(0)
    for j in range(count):
        acc += x[j]
    return acc


@numba.njit(fastmath={"reassoc"}, error_model="numpy", cache=True)
def vsum64(x, count):  # pragma: no cover - compiled
    """``x[:count].sum()`` accumulated in float64, in vector lanes."""
    acc = 0.0
    for j in range(count):
        acc += x[j]
    return acc


TREE_LANES = 16
"""The lane count :func:`tree_sum16` reduces."""


def _indices(first: int, count: int) -> ir.Constant:
    """A shuffle mask selecting ``count`` consecutive elements from ``first``."""
    return ir.Constant(ir.VectorType(ir.IntType(32), count), [first + j for j in range(count)])


@intrinsic
def tree_sum16(typingctx, row):
    """The sum of a contiguous row of 16 floats by a fixed pairwise tree: ``s_j = x_j + x_{j+8}`` (j < 8),
    then ``s_j + s_{j+4}`` (j < 4), then ``s_j + s_{j+2}`` (j < 2), then the last two.

    The same adds in the same order as the tree written with scalar loops over ``j``, so the result is
    bit for bit the same, but as vector adds on halves of one vector register instead of fifteen scalar adds:
    LLVM fully unrolls those loops and leaves them scalar (and vectorizes the loop around them only for a
    lane stride of 1, which the callers' ``(..., N, 16)`` blocks never have). ``row`` is a C-contiguous 1-D
    float32 or float64 array of at least 16 elements (a view such as ``src[i, n]``); only its first 16 are
    read, and nothing checks the length."""
    if not (isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C"
            and row.dtype in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        [rowty] = signature.args
        arr = context.make_array(rowty)(context, builder, value=args[0])
        elem = context.get_data_type(rowty.dtype)
        vec_ptr = builder.bitcast(arr.data, ir.VectorType(elem, TREE_LANES).as_pointer())
        v = builder.load(vec_ptr, align=rowty.dtype.bitwidth // 8)
        width = TREE_LANES
        while width > 1:
            half = width // 2
            lo = builder.shuffle_vector(v, v, _indices(0, half))
            hi = builder.shuffle_vector(v, v, _indices(half, half))
            v = builder.fadd(lo, hi)
            width = half
        return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))

    return row.dtype(row), codegen
