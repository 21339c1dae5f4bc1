"""Depthwise causal 1-D convolution on CPU with numba: fused forward and backward.

Each parallel work item is one channel ``d`` (all batch rows inside, so the weight and bias
gradients of ``d`` are written by one thread: no races). A row's input, with its causal history in
front, is copied into a local buffer of ``W - 1 + L`` steps; the taps loop outside and time inside,
so every inner loop is a contiguous multiply-add that vectorizes. SiLU uses the vectorizable
``vexp``. Nothing is saved: the backward recomputes the pre-activation (W multiply-adds per element).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from neurostep.kernels.numba_exp import vexp
from neurostep.kernels.numba_launch import serialized


@numba.njit(inline="always")
def _padded_row(x, init, has_init, bi, d, xp):
    """xp = [history of row (bi, d) (zeros without one), x[bi, d]]."""
    width_m1 = xp.shape[0] - x.shape[2]
    if has_init:
        irow = init[bi, d]
        for k in range(width_m1):
            xp[k] = irow[k]
    else:
        for k in range(width_m1):
            xp[k] = 0
    # rows as 1-D slices indexed from 0: numba cannot prove an index like ``width_m1 + t`` into a 3-D
    # array non-negative, and the wraparound select it then emits keeps the loop scalar
    xrow = x[bi, d]
    xt = xp[width_m1:]
    for t in range(x.shape[2]):
        xt[t] = xrow[t]


@numba.njit(inline="always")
def _pre_activation(xp, w_row, bias_d, pre):
    length = pre.shape[0]
    for t in range(length):
        pre[t] = bias_d
    for k in range(w_row.shape[0]):
        wk = w_row[k]
        for t in range(length):
            pre[t] += wk * xp[t + k]


@numba.njit(parallel=True, cache=True, fastmath=False)
def _forward_kernel(x, weight, bias, init, has_init, silu, out):
    batch, dim, length = x.shape
    width = weight.shape[1]
    for d in numba.prange(dim):
        xp = np.empty(length + width - 1, dtype=x.dtype)
        pre = np.empty(length, dtype=x.dtype)
        for bi in range(batch):
            _padded_row(x, init, has_init, bi, d, xp)
            _pre_activation(xp, weight[d], bias[d], pre)
            orow = out[bi, d]
            if silu:
                for t in range(length):
                    p = pre[t]
                    orow[t] = p / (1 + vexp(-p))
            else:
                for t in range(length):
                    orow[t] = pre[t]


@numba.njit(parallel=True, cache=True, fastmath=False)
def _backward_kernel(gout, x, weight, bias, init, has_init, silu, dx, dweight, dbias, dinit):
    batch, dim, length = x.shape
    width = weight.shape[1]
    for d in numba.prange(dim):
        xp = np.empty(length + width - 1, dtype=x.dtype)
        dxp = np.empty(length + width - 1, dtype=x.dtype)
        pre = np.empty(length, dtype=x.dtype)
        g = np.empty(length, dtype=x.dtype)
        # weight and bias gradients accumulate per time step and are summed once per channel at the
        # end: a running scalar sum is a serial chain of float adds that LLVM may not reorder (so
        # it stays scalar), measured 2x slower on the whole backward at (32, 64, 64)
        dw_t = np.zeros((width, length), dtype=x.dtype)
        db_t = np.zeros(length, dtype=x.dtype)
        for bi in range(batch):
            _padded_row(x, init, has_init, bi, d, xp)
            grow = gout[bi, d]
            if silu:
                _pre_activation(xp, weight[d], bias[d], pre)
                for t in range(length):
                    s = 1 / (1 + vexp(-pre[t]))
                    # d silu(p)/dp = s (1 + p (1 - s))
                    g[t] = grow[t] * s * (1 + pre[t] * (1 - s))
            else:
                for t in range(length):
                    g[t] = grow[t]
            for t in range(length + width - 1):
                dxp[t] = 0
            for k in range(width):
                wk = weight[d, k]
                dwk = dw_t[k]
                for t in range(length):
                    dxp[t + k] += wk * g[t]
                    dwk[t] += g[t] * xp[t + k]
            for t in range(length):
                db_t[t] += g[t]
            dxrow = dx[bi, d]
            dxt = dxp[width - 1:]
            for t in range(length):
                dxrow[t] = dxt[t]
            if has_init:
                for k in range(width - 1):
                    dinit[bi, d, k] = dxp[k]
        for k in range(width):
            dweight[d, k] = dw_t[k].sum()
        dbias[d] = db_t.sum()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


@serialized
def forward(x, weight, bias, initial_states, silu):
    """Same contract as :func:`neurostep.kernels.causal_conv1d.reference.forward`."""
    dim = x.shape[1]
    out = torch.empty_like(x)
    bias_ = x.new_zeros(dim) if bias is None else bias
    init = x.new_zeros(1, 1, 1) if initial_states is None else initial_states
    _forward_kernel(_np(x), _np(weight), _np(bias_), _np(init), initial_states is not None, bool(silu), _np(out))
    return out, x.new_empty(0)


@serialized
def backward(grad_out, x, weight, bias, initial_states, saved, silu):
    """Same contract as :func:`neurostep.kernels.causal_conv1d.reference.backward`."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    bias_ = x.new_zeros(dim) if bias is None else bias
    init = x.new_zeros(1, 1, 1) if initial_states is None else initial_states
    dx = torch.empty_like(x)
    dweight = torch.empty_like(weight)
    dbias = x.new_empty(dim)
    dinit = x.new_empty(batch, dim, width - 1) if initial_states is not None else x.new_empty(1, 1, 1)
    _backward_kernel(_np(grad_out), _np(x), _np(weight), _np(bias_), _np(init), initial_states is not None,
                     bool(silu), _np(dx), _np(dweight), _np(dbias), _np(dinit))
    return dx, dweight, (dbias if bias is not None else None), (dinit if initial_states is not None else None)
