"""Diagonal linear recurrence on CPU with numba: fused forward and backward.

Time loop outside, contiguous lanes inside: each parallel work item is one batch row and a block
of ``BLOCK`` consecutive lanes of the ``(batch, L, M)`` layout, so every step reads and writes
contiguous memory and the lane loop vectorizes. The forward's output (every state ``h``) is all the
backward needs: ``da_t = db_t * h_{t-1}``.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from neurostep.kernels.numba_launch import as_array, serialized
from neurostep.memory import empty_like

BLOCK = 256


@numba.njit(parallel=True, cache=True, fastmath=False)
def _forward_kernel(a, b, h0, h):
    batch, length, lanes = b.shape
    n_blocks = (lanes + BLOCK - 1) // BLOCK
    for item in numba.prange(batch * n_blocks):
        bi = item // n_blocks
        m0 = (item - bi * n_blocks) * BLOCK
        m1 = min(lanes, m0 + BLOCK)
        for m in range(m0, m1):
            h[bi, 0, m] = a[bi, 0, m] * h0[bi, m] + b[bi, 0, m]
        for t in range(1, length):
            for m in range(m0, m1):
                h[bi, t, m] = a[bi, t, m] * h[bi, t - 1, m] + b[bi, t, m]


@numba.njit(parallel=True, cache=True, fastmath=False)
def _backward_kernel(gh, a, h, h0, da, db, dh0):
    batch, length, lanes = gh.shape
    n_blocks = (lanes + BLOCK - 1) // BLOCK
    for item in numba.prange(batch * n_blocks):
        bi = item // n_blocks
        m0 = (item - bi * n_blocks) * BLOCK
        m1 = min(lanes, m0 + BLOCK)
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


@serialized
def forward(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """Same contract as :func:`neurostep.kernels.linear_scan.reference.forward`."""
    h = empty_like(b)
    h0_ = b.new_zeros(b.shape[0], b.shape[2]) if h0 is None else h0
    _forward_kernel(as_array(a), as_array(b), as_array(h0_), h.numpy())
    return h


@serialized
def backward(grad_h: torch.Tensor, a: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None):
    """Same contract as :func:`neurostep.kernels.linear_scan.reference.backward`."""
    da, db = empty_like(a), empty_like(a)
    dh0 = a.new_empty(a.shape[0], a.shape[2])
    h0_ = a.new_zeros(a.shape[0], a.shape[2]) if h0 is None else h0
    _backward_kernel(as_array(grad_h), as_array(a), as_array(h), as_array(h0_), da.numpy(), db.numpy(), dh0.numpy())
    return da, db, (dh0 if h0 is not None else None)
