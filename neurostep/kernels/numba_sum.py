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
