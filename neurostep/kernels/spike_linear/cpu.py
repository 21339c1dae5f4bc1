"""CPU backend of the spike linear layer: event-driven accumulation where the input is sparse.

A spiking layer's input is mostly zeros (Spikformer's MLP and projection inputs: 0.2-3% ones at
initialisation), so ``y = x W^T`` is cheaper as a sum, per row, of the weight columns that its nonzeros
select: ``nnz(x) * O`` multiply-adds instead of ``R * K * O``. The forward lists each row's nonzeros
(two passes over ``x``: count, then fill) and accumulates, for each output row, the ``W^T`` rows they
select; it returns the lists, which the backward reuses (``synapse_op``). The weight gradient
``dW = g^T x`` is the same sum seen from the columns of ``x``: the row lists are regrouped by column (a
counting sort) and each ``dW^T`` row sums the gradient rows its column's nonzeros select. The input
gradient ``g W`` is dense (the spike gradient flows everywhere) and stays a torch matrix product.

Above ``synapse_op.MAX_DENSITY`` nonzeros per element, or for narrow layers (fewer than ``MIN_WIDTH``
inputs or outputs), the dense product is faster and is used: the result is the same function, rounded
as torch's GEMM rounds it. The sparse sums add each row's terms in the order of their input index.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import prange

from neurostep.engine import check_numba_input
from neurostep.kernels import synapse_op
from neurostep.kernels.numba_launch import serialized
from neurostep.kernels.spike_linear import MIN_WIDTH, reference
from neurostep.memory import empty

LISTS_EVENTS = True
"""The forward returns its event lists (``synapse_op``)."""


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _count_rows(x, counts):  # pragma: no cover - compiled
    R, K = x.shape
    for r in prange(R):
        row = x[r]
        c = 0
        for k in range(K):
            c += row[k] != 0
        counts[r] = c


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _fill_rows(x, indptr, idx, val):  # pragma: no cover - compiled
    R, K = x.shape
    for r in prange(R):
        row = x[r]
        p = indptr[r]
        for k in range(K):
            v = row[k]
            if v != 0:
                idx[p] = k
                val[p] = v
                p += 1


@numba.njit(inline="always")
def accumulate_rows(acc, rows, vals, src, start, stop):  # pragma: no cover - compiled
    """``acc += vals[p] * src[rows[p]]`` for ``p`` in ``[start, stop)``, one term after the other.

    Four source rows per pass over ``acc``: each element is loaded, given its four terms in order and
    stored once, instead of once per term. The additions are the same, so the result is bit for bit
    that of one row per pass, and the sparse kernels' loads and stores of ``acc`` drop fourfold: 1.2-1.4x
    faster (2-core AMD EPYC, 2026-12-05, 3% ones: Spikformer's ``fc2`` forward at (2048, 1536) -> 384
    2.7 against 2.1 ms, its weight gradient 1.7 against 1.3-1.6 ms). Eight rows per pass were no faster."""
    width = acc.shape[0]
    p = start
    while p + 4 <= stop:
        v0, v1, v2, v3 = vals[p], vals[p + 1], vals[p + 2], vals[p + 3]
        r0, r1, r2, r3 = src[rows[p]], src[rows[p + 1]], src[rows[p + 2]], src[rows[p + 3]]
        for o in range(width):
            a = acc[o]
            a += v0 * r0[o]
            a += v1 * r1[o]
            a += v2 * r2[o]
            a += v3 * r3[o]
            acc[o] = a
        p += 4
    while p < stop:
        v0 = vals[p]
        r0 = src[rows[p]]
        for o in range(width):
            acc[o] += v0 * r0[o]
        p += 1


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _forward_rows(indptr, idx, val, wt, bias, has_bias, y):  # pragma: no cover - compiled
    """y ``(R, O)``: each row sums the rows of ``wt (K, O)`` that its nonzeros select, in input order.

    Whole output rows, not column blocks: the row (``O`` floats) stays in L1 while the selected ``W^T``
    rows stream through. Blocks of 128 columns, meant to keep their ``K x 128`` slice of ``W^T`` in L2,
    were 1.4-1.8x slower at every size measured (2-core AMD EPYC with 512 KB of L2 per core,
    2026-12-05, caches flushed between calls, 2-3% ones): 3.6 against 2.4 ms at (2048, 1536) -> 384,
    15.4 against 9.1 ms at (2048, 1536) -> 1536, 61 against 33 ms at (8192, 768) -> 3072."""
    R, O = y.shape
    for r in prange(R):
        yr = y[r]
        for o in range(O):
            yr[o] = bias[o] if has_bias else 0
        accumulate_rows(yr, idx, val, wt, indptr[r], indptr[r + 1])


@numba.njit(cache=True, error_model="numpy")
def _rows_to_columns(indptr, idx, val, cptr, ridx, cval):  # pragma: no cover - compiled
    """Counting sort of the row lists by column: ``cptr (K + 1)``, ``ridx``/``cval`` (nnz)."""
    R = indptr.shape[0] - 1
    K = cptr.shape[0] - 1
    for k in range(K + 1):
        cptr[k] = 0
    for p in range(indptr[R]):
        cptr[idx[p] + 1] += 1
    for k in range(K):
        cptr[k + 1] += cptr[k]
    nxt = cptr[:K].copy()
    for r in range(R):
        for p in range(indptr[r], indptr[r + 1]):
            k = idx[p]
            q = nxt[k]
            ridx[q] = r
            cval[q] = val[p]
            nxt[k] = q + 1


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _weight_grad_columns(cptr, ridx, cval, g, dwt):  # pragma: no cover - compiled
    K, O = dwt.shape
    for k in prange(K):
        d = dwt[k]
        for o in range(O):
            d[o] = 0
        accumulate_rows(d, ridx, cval, g, cptr[k], cptr[k + 1])


def row_lists(x: np.ndarray, indptr: np.ndarray, idx: np.ndarray, val: np.ndarray) -> bool:
    """Each row's nonzeros of ``x (R, K)``, in column order, into ``indptr (R + 1)`` and the first ``nnz``
    elements of ``idx`` and ``val``; False, with ``idx`` and ``val`` untouched, where they do not fit (above
    ``synapse_op.MAX_DENSITY``, where the dense product is faster). The spike convolution lists a
    channels-last input's pixels with it."""
    R = x.shape[0]
    counts = np.empty(R, dtype=np.int64)
    _count_rows(x, counts)
    indptr[0] = 0
    np.cumsum(counts, out=indptr[1:])
    if indptr[R] > idx.shape[0]:
        return False
    _fill_rows(x, indptr, idx, val)
    return True


def _sparse_worth_it(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return x.shape[0] > 0 and min(weight.shape) >= MIN_WIDTH


@serialized
def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """See ``reference.forward``; the event lists hold the rows' nonzeros, for the backward."""
    check_numba_input(x)
    lists = synapse_op.empty_event_lists(x, x.shape[0], True)
    indptr, idx, val = (t.numpy() for t in lists)
    has_lists = _sparse_worth_it(x, weight) and row_lists(x.numpy(), indptr, idx, val)
    synapse_op.settle_event_lists(lists, has_lists)
    if not has_lists:
        return F.linear(x, weight, bias), *lists
    y = empty((x.shape[0], weight.shape[0]), x.dtype)
    wt = weight.detach().t().contiguous()
    has_bias = bias is not None
    b = bias.detach().numpy() if has_bias else np.zeros(1, dtype=wt.numpy().dtype)
    _forward_rows(indptr, idx, val, wt.numpy(), b, has_bias, y.numpy())
    return y, *lists


@serialized
def backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool,
             needs: tuple[bool, bool, bool], lists: tuple[torch.Tensor, ...]
             ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """See ``reference.backward``; the weight gradient sums over the forward's event lists."""
    check_numba_input(x)
    if not (needs[1] and synapse_op.has_event_lists(lists[0])):
        return reference.backward(grad_y, x, weight, has_bias, needs, lists)
    dx, _, db = reference.backward(grad_y, x, weight, has_bias, (needs[0], False, needs[2]), lists)
    indptr, idx, val = (t.numpy() for t in lists)
    K = x.shape[1]
    nnz = int(indptr[-1])
    cptr = np.empty(K + 1, dtype=np.int64)
    ridx = np.empty(nnz, dtype=np.int32)
    cval = np.empty(nnz, dtype=val.dtype)
    _rows_to_columns(indptr, idx, val, cptr, ridx, cval)
    dwt = x.new_empty((K, weight.shape[0]))
    _weight_grad_columns(cptr, ridx, cval, grad_y.numpy(), dwt.numpy())
    return dx, dwt.t(), db
