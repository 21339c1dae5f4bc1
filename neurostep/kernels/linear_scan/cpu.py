"""Diagonal linear recurrence on CPU with numba: fused forward and backward.

Time loop outside, contiguous lanes inside: each work item (items ``lo`` to ``hi - 1`` per
thread, see :func:`~neurostep.kernels.numba_launch.launch`) is one batch row and a block
of ``BLOCK`` consecutive lanes of the ``(batch, L, M)`` layout, so every step reads and writes
contiguous memory and the lane loop vectorizes. The forward's output (every state ``h``) is all the
backward needs: ``da_t = db_t * h_{t-1}``.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from neurostep.kernels.numba_launch import launch

BLOCK = 256


@numba.njit(inline="always")
def _block_lanes(item, n_blocks, lanes):
    """Batch row and lane range ``[m0, m1)`` of work item ``item``, as unsigned integers: with a
    signed lane index numba adds a negative-index wraparound to every access, which keeps the lane
    loops scalar (measured 15% slower than with unsigned indices)."""
    it = np.uint64(item)
    nb = np.uint64(n_blocks)
    bi = it // nb
    m0 = (it - bi * nb) * np.uint64(BLOCK)
    return bi, m0, min(np.uint64(lanes), m0 + np.uint64(BLOCK))


@numba.njit(nogil=True, cache=True, fastmath=False)
def _forward_kernel(a, b, h0, h, lo, hi):
    batch, length, lanes = b.shape
    n_blocks = (lanes + BLOCK - 1) // BLOCK
    for item in range(lo, hi):
        bi, m0, m1 = _block_lanes(item, n_blocks, lanes)
        for m in range(m0, m1):
            h[bi, 0, m] = a[bi, 0, m] * h0[bi, m] + b[bi, 0, m]
        for t in range(1, length):
            for m in range(m0, m1):
                h[bi, t, m] = a[bi, t, m] * h[bi, t - 1, m] + b[bi, t, m]


@numba.njit(nogil=True, cache=True, fastmath=False)
def _backward_kernel(gh, a, h, h0, da, db, dh0, lo, hi):
    batch, length, lanes = gh.shape
    n_blocks = (lanes + BLOCK - 1) // BLOCK
    for item in range(lo, hi):
        bi, m0, m1 = _block_lanes(item, n_blocks, lanes)
        carry = np.zeros(m1 - m0, dtype=gh.dtype)
        for t in range(length - 1, -1, -1):
            for m in range(m0, m1):
                # dL/dh_t: its own gradient plus what flows back through h_{t+1} = a_{t+1} h_t + b_{t+1}
                c = gh[bi, t, m] + carry[m - m0]
                db[bi, t, m] = c
                prev = h[bi, t - 1, m] if t > 0 else h0[bi, m]
                da[bi, t, m] = c * prev
                carry[m - m0] = c * a[bi, t, m]
        for m in range(m0, m1):
            dh0[bi, m] = carry[m - m0]


def _n_items(t: torch.Tensor) -> int:
    """Work items of a ``(batch, L, M)`` scan: batch rows times blocks of ``BLOCK`` lanes."""
    return t.shape[0] * -(-t.shape[2] // BLOCK)


def forward(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """Same contract as :func:`neurostep.kernels.linear_scan.reference.forward`."""
    h = torch.empty_like(b)
    h0_ = b.new_zeros(b.shape[0], b.shape[2]) if h0 is None else h0
    launch(_forward_kernel, _n_items(b), a.detach().numpy(), b.detach().numpy(), h0_.detach().numpy(),
           h.numpy())
    return h


def backward(grad_h: torch.Tensor, a: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None):
    """Same contract as :func:`neurostep.kernels.linear_scan.reference.backward`."""
    da, db = torch.empty_like(a), torch.empty_like(a)
    dh0 = a.new_empty(a.shape[0], a.shape[2])
    h0_ = a.new_zeros(a.shape[0], a.shape[2]) if h0 is None else h0
    launch(_backward_kernel, _n_items(a), grad_h.detach().numpy(), a.detach().numpy(), h.detach().numpy(),
           h0_.detach().numpy(), da.numpy(), db.numpy(), dh0.numpy())
    return da, db, (dh0 if h0 is not None else None)
