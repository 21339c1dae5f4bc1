"""Depthwise causal 1-D convolution on CPU with numba: fused forward and backward.

Each parallel work item is a group of contiguous channels (all batch rows inside, so the weight and
bias gradients of a channel are written by one thread: no races). A row's input, with its causal
history in front, is copied into a local buffer of ``W - 1 + L`` steps, and every loop then runs over
time, contiguous, and vectorizes: width 4 (Mamba's) in one pass with four loads per output, other widths
one tap per pass. SiLU uses the vectorizable ``vexp``. Nothing is saved: the backward recomputes the
pre-activation (W multiply-adds per element).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from neurostep.kernels.numba_exp import vexp
from neurostep.kernels.numba_launch import NoAliasCompiler, serialized
from neurostep.kernels.numba_launch import as_array as _np
from neurostep.kernels.numba_sum import vsum
from neurostep.memory import empty_like


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


# The per-row loops are functions of their own, compiled with their arrays declared not to overlap
# (they never do: block-local buffers and distinct rows), so LLVM needs no run-time overlap checks in
# front of each short loop. Against the same one-pass taps inline in the kernel, the forward without SiLU
# took 0.49 against 0.53 ns per element at the main experiment's (32, 64, 48) and 0.27 against 0.37 at
# (1, 1536, 1024) (one thread, 2-core AMD EPYC, 2026-12-04).
_row_jit = numba.njit(error_model="numpy", pipeline_class=NoAliasCompiler)


@_row_jit
def _taps_row(xp, pre, w, bias_d, length):  # pragma: no cover - compiled
    """``pre[t] = bias_d + sum_k w[k] xp[t + k]``, the taps added in order ``k = 0, 1, ...``.

    Width 4 (Mamba's) is one pass with four loads per output; other widths add one tap per pass."""
    width = w.shape[0]
    if width == 4:
        w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
        x1, x2, x3 = xp[1:], xp[2:], xp[3:]
        for t in range(length):
            pre[t] = (((bias_d + w0 * xp[t]) + w1 * x1[t]) + w2 * x2[t]) + w3 * x3[t]
        return
    w0 = w[0]
    for t in range(length):
        pre[t] = bias_d + w0 * xp[t]
    for k in range(1, width):
        wk = w[k]
        xk = xp[k:]
        for t in range(length):
            pre[t] += wk * xk[t]


@_row_jit
def _silu_row(pre, out, one, length):  # pragma: no cover - compiled
    """``out[t] = silu(pre[t])``; ``one`` is 1 in the data dtype."""
    for t in range(length):
        p = pre[t]
        out[t] = p / (one + vexp(-p))


@_row_jit
def _silu_grad_row(pre, grow, g, one, length):  # pragma: no cover - compiled
    """``g[t] = grow[t] silu'(pre[t])`` with ``silu'(p) = s (1 + p (1 - s))``, ``s = sigmoid(p)``."""
    for t in range(length):
        p = pre[t]
        s = one / (one + vexp(-p))
        g[t] = grow[t] * s * (one + p * (one - s))


@_row_jit
def _grads_row(gz, xp, w, dxp, dw_t, db_t, length):  # pragma: no cover - compiled
    """One row's share of the backward, from its output gradient ``g`` held in ``gz`` between ``W - 1``
    zeros on each side (``gz[W - 1 + t] = g[t]``): ``dxp[j] = sum_k w[k] g[j - k]`` over the padded input,
    and the per-step sums ``dw_t[k, t] += g[t] xp[t + k]``, ``db_t[t] += g[t]``."""
    width = w.shape[0]
    g = gz[width - 1:]
    if width == 4:
        w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
        g1, g2 = gz[1:], gz[2:]
        for j in range(length + 3):
            dxp[j] = ((w0 * g[j] + w1 * g2[j]) + w2 * g1[j]) + w3 * gz[j]
    else:
        for j in range(length + width - 1):
            dxp[j] = w[0] * g[j]
        for k in range(1, width):
            wk = w[k]
            gk = gz[width - 1 - k:]
            for j in range(length + width - 1):
                dxp[j] += wk * gk[j]
    for k in range(width):
        dwk = dw_t[k]
        xk = xp[k:]
        for t in range(length):
            dwk[t] += g[t] * xk[t]
    for t in range(length):
        db_t[t] += g[t]


# Channels are split into at most this many contiguous groups, one parallel work item each, so that
# the row buffers are allocated (and the gradient buffers zeroed) once per group rather than once per
# channel: at (1, 1536, 1024) the per-channel allocations were a tenth of the backward.
_MAX_GROUPS = 64


@numba.njit(inline="always")
def _group_span(group, groups, dim):  # pragma: no cover - compiled
    return group * dim // groups, (group + 1) * dim // groups


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _forward_kernel(x, weight, bias, init, has_init, silu, out):  # pragma: no cover - compiled
    batch, dim, length = x.shape
    width = weight.shape[1]
    one = np.ones(1, dtype=x.dtype)[0]  # 1 in the data dtype: a literal 1 would make float32 math float64
    groups = min(dim, _MAX_GROUPS)
    for group in numba.prange(groups):
        lo, hi = _group_span(group, groups, dim)
        xp = np.empty(length + width - 1, dtype=x.dtype)
        pre = np.empty(length, dtype=x.dtype)
        for d in range(lo, hi):
            w = weight[d]
            for bi in range(batch):
                _padded_row(x, init, has_init, bi, d, xp)
                if silu:
                    _taps_row(xp, pre, w, bias[d], length)
                    _silu_row(pre, out[bi, d], one, length)
                else:
                    _taps_row(xp, out[bi, d], w, bias[d], length)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _backward_kernel(gout, x, weight, bias, init, has_init, silu, dx, dweight, dbias,
                     dinit):  # pragma: no cover - compiled
    batch, dim, length = x.shape
    width = weight.shape[1]
    one = np.ones(1, dtype=x.dtype)[0]
    groups = min(dim, _MAX_GROUPS)
    for group in numba.prange(groups):
        lo, hi = _group_span(group, groups, dim)
        xp = np.empty(length + width - 1, dtype=x.dtype)
        dxp = np.empty(length + width - 1, dtype=x.dtype)
        pre = np.empty(length, dtype=x.dtype)
        gz = np.zeros(length + 2 * (width - 1), dtype=x.dtype)  # the ends stay 0
        g = gz[width - 1:width - 1 + length]
        # weight and bias gradients accumulate per time step and are summed once per channel at the
        # end, in vector lanes (vsum): a running scalar sum per row was 2x slower at (32, 64, 64), and the
        # per-channel sums as serial adds were half of the backward at batch 1
        dw_t = np.empty((width, length), dtype=x.dtype)
        db_t = np.empty(length, dtype=x.dtype)
        for d in range(lo, hi):
            w = weight[d]
            dw_t[:] = 0
            db_t[:] = 0
            for bi in range(batch):
                _padded_row(x, init, has_init, bi, d, xp)
                grow = gout[bi, d]
                if silu:
                    _taps_row(xp, pre, w, bias[d], length)
                    _silu_grad_row(pre, grow, g, one, length)
                else:
                    for t in range(length):
                        g[t] = grow[t]
                _grads_row(gz, xp, w, dxp, dw_t, db_t, length)
                dxrow = dx[bi, d]
                dxt = dxp[width - 1:]
                for t in range(length):
                    dxrow[t] = dxt[t]
                if has_init:
                    for k in range(width - 1):
                        dinit[bi, d, k] = dxp[k]
            for k in range(width):
                dweight[d, k] = vsum(dw_t[k], length)
            dbias[d] = vsum(db_t, length)


# -- channels-last layout: x (B, L, D), channels contiguous -------------------------------------------------
#
# A step's output needs only inputs, so the work items are runs of ``_CL_STEPS`` steps of one batch row, and
# every loop runs over a whole row of D channels, contiguous: it vectorizes, and the calls are few. (Spans of
# 64 channels as items made a call per 64 channels and step: 2-3x slower at batch 1 and 1,792 channels.)
# The rows a step's taps read are picked before its loops: the history's for padded steps before the first
# input, else the input's. The taps and the SiLU are added in the same order as in the channels-first
# kernels above, so both layouts give the same outputs and input gradients to the bit; the weight and bias
# gradients are summed in another order (per run of steps, then over the runs in order).

_CL_STEPS = 32
_CL_MAX_SLOTS = 64  # the backward's runs are grouped into at most this many slots, one partial sum each


@_row_jit
def _cl_taps4(r0, r1, r2, r3, w0, w1, w2, w3, bias, pre, n):  # pragma: no cover - compiled
    """Width 4: ``pre = (((bias + w0 r0) + w1 r1) + w2 r2) + w3 r3`` over a row of channels."""
    for c in range(n):
        pre[c] = (((bias[c] + w0[c] * r0[c]) + w1[c] * r1[c]) + w2[c] * r2[c]) + w3[c] * r3[c]


@_row_jit
def _cl_tap_first(r, w, bias, pre, n):  # pragma: no cover - compiled
    """The first tap of any width: ``pre = bias + w r``."""
    for c in range(n):
        pre[c] = bias[c] + w[c] * r[c]


@_row_jit
def _cl_tap_add(r, w, pre, n):  # pragma: no cover - compiled
    """A later tap: ``pre = pre + w r`` (one array read and written: the row functions' arrays must not overlap)."""
    for c in range(n):
        pre[c] = pre[c] + w[c] * r[c]


@_row_jit
def _cl_accumulate(g, r, dw, n):  # pragma: no cover - compiled
    """``dw += g r``: one tap's share of the weight gradient."""
    for c in range(n):
        dw[c] += g[c] * r[c]


@_row_jit
def _cl_add(g, db, n):  # pragma: no cover - compiled
    for c in range(n):
        db[c] += g[c]


@_row_jit
def _cl_dx4(g0, g1, g2, g3, w0, w1, w2, w3, out, n):  # pragma: no cover - compiled
    """Width 4: ``out = ((w0 g0 + w1 g1) + w2 g2) + w3 g3``, the gradient of one padded input step."""
    for c in range(n):
        out[c] = ((w0[c] * g0[c] + w1[c] * g1[c]) + w2[c] * g2[c]) + w3[c] * g3[c]


@_row_jit
def _cl_dx_tap(g, w, out, first, n):  # pragma: no cover - compiled
    """One tap of any width: ``out = w g`` for the first tap, else ``out += w g``."""
    if first:
        for c in range(n):
            out[c] = w[c] * g[c]
    else:
        for c in range(n):
            out[c] = out[c] + w[c] * g[c]


@numba.njit(inline="always")
def _cl_history(init, has_init, bi, hist):  # pragma: no cover - compiled
    """``hist[k, d] = init[bi, d, k]``: the history of batch row ``bi`` (zeros without one)."""
    for k in range(hist.shape[0]):
        row = hist[k]
        for d in range(row.shape[0]):
            row[d] = init[bi, d, k] if has_init else 0


# Rows are taken as ``a[i, j]``, never ``a[i, j, :]``: numba types the latter as of unknown layout, and the
# row loops compiled for it do not vectorize.
@numba.njit(inline="always")
def _cl_row(x, hist, bi, tau):  # pragma: no cover - compiled
    """Padded step ``tau`` of batch row ``bi``: the history for ``tau < W - 1``, else an input step."""
    width_m1 = hist.shape[0]
    return hist[tau] if tau < width_m1 else x[bi, tau - width_m1]


@numba.njit(inline="always")
def _cl_step(x, hist, weight_t, bias, bi, t, pre):  # pragma: no cover - compiled
    """The pre-activation of output step ``t``, taps in order ``k = 0, 1, ...``."""
    n = x.shape[2]
    width = weight_t.shape[0]
    if width == 4:
        _cl_taps4(_cl_row(x, hist, bi, t), _cl_row(x, hist, bi, t + 1), _cl_row(x, hist, bi, t + 2),
                  _cl_row(x, hist, bi, t + 3), weight_t[0], weight_t[1], weight_t[2], weight_t[3], bias, pre, n)
    else:
        _cl_tap_first(_cl_row(x, hist, bi, t), weight_t[0], bias, pre, n)
        for k in range(1, width):
            _cl_tap_add(_cl_row(x, hist, bi, t + k), weight_t[k], pre, n)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _forward_cl_kernel(x, weight_t, bias, init, has_init, silu, out):  # pragma: no cover - compiled
    batch, length, dim = x.shape
    width_m1 = weight_t.shape[0] - 1
    one = np.ones(1, dtype=x.dtype)[0]
    runs = (length + _CL_STEPS - 1) // _CL_STEPS
    for item in numba.prange(batch * runs):
        bi = item // runs
        t0 = (item % runs) * _CL_STEPS
        hist = np.empty((width_m1, dim), dtype=x.dtype)
        if t0 < width_m1:
            _cl_history(init, has_init, bi, hist)
        pre = np.empty(dim, dtype=x.dtype)
        for t in range(t0, min(t0 + _CL_STEPS, length)):
            orow = out[bi, t]
            _cl_step(x, hist, weight_t, bias, bi, t, pre if silu else orow)
            if silu:
                _silu_row(pre, orow, one, dim)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _backward_cl_kernel(gout, x, weight_t, bias, init, has_init, silu, dx, dw_parts, db_parts,
                        dinit):  # pragma: no cover - compiled
    """Per run of steps ``[t0, t1)`` of one batch row: the gradient of the pre-activation ``g`` for steps
    ``t0 - (W - 1) .. t1 - 1`` (the ``W - 1`` before the run recomputed) into ``gz``, whose rows outside
    ``[0, L)`` stay zero; the weight and bias gradients of the run's own steps into its slot's partial sums;
    then ``dxpad[j] = sum_k w[k] g[j - k]`` for ``j`` in ``[t0, t1)`` (the last run up to ``L + W - 2``), whose
    first ``W - 1`` steps are the history's gradient."""
    batch, length, dim = x.shape
    width = weight_t.shape[0]
    width_m1 = width - 1
    one = np.ones(1, dtype=x.dtype)[0]
    runs = (length + _CL_STEPS - 1) // _CL_STEPS
    items = batch * runs
    slots = dw_parts.shape[0]
    for slot in numba.prange(slots):
        hist = np.empty((width_m1, dim), dtype=x.dtype)
        pre = np.empty(dim, dtype=x.dtype)
        acc = np.empty(dim, dtype=x.dtype)
        gz = np.empty((_CL_STEPS + 2 * width_m1, dim), dtype=x.dtype)  # row i is step t0 - (W - 1) + i
        dw = dw_parts[slot]
        db = db_parts[slot]
        # fills as loops: in a prange body every array expression becomes a parallel loop of its own to compile
        for k in range(width):
            dwk = dw[k]
            for d in range(dim):
                dwk[d] = 0
        for d in range(dim):
            db[d] = 0
        for item in range(slot * items // slots, (slot + 1) * items // slots):
            bi = item // runs
            t0 = (item % runs) * _CL_STEPS
            t1 = min(t0 + _CL_STEPS, length)
            base = t0 - width_m1
            if base < width_m1:
                _cl_history(init, has_init, bi, hist)
            for i in range(t1 - t0 + 2 * width_m1):
                t = base + i
                g = gz[i]
                if t < 0 or t >= t1:
                    for d in range(dim):
                        g[d] = 0
                    continue
                grow = gout[bi, t]
                if silu:
                    _cl_step(x, hist, weight_t, bias, bi, t, pre)
                    _silu_grad_row(pre, grow, g, one, dim)
                else:
                    for d in range(dim):
                        g[d] = grow[d]
                if t >= t0:
                    _cl_add(g, db, dim)
                    for k in range(width):
                        _cl_accumulate(g, _cl_row(x, hist, bi, t + k), dw[k], dim)
            j1 = t1 if t1 < length else length + width_m1
            for j in range(t0, j1):
                target = acc if j < width_m1 else dx[bi, j - width_m1]
                i = j - base
                if width == 4:
                    _cl_dx4(gz[i], gz[i - 1], gz[i - 2], gz[i - 3], weight_t[0], weight_t[1], weight_t[2],
                            weight_t[3], target, dim)
                else:
                    for k in range(width):
                        _cl_dx_tap(gz[i - k], weight_t[k], target, k == 0, dim)
                if j < width_m1 and has_init:
                    for d in range(dim):
                        dinit[bi, d, j] = acc[d]


def _cl_slots(batch: int, length: int) -> int:
    return min(batch * -(-length // _CL_STEPS), _CL_MAX_SLOTS)


@serialized
def forward(x, weight, bias, initial_states, silu, channels_last):
    """Same contract as :func:`neurostep.kernels.causal_conv1d.reference.forward`."""
    dim = x.shape[2] if channels_last else x.shape[1]
    out = empty_like(x)
    bias_ = x.new_zeros(dim) if bias is None else bias
    init = x.new_zeros(1, 1, 1) if initial_states is None else initial_states
    if channels_last:
        _forward_cl_kernel(_np(x), _np(weight.t().contiguous()), _np(bias_), _np(init), initial_states is not None,
                           bool(silu), _np(out))
    else:
        _forward_kernel(_np(x), _np(weight), _np(bias_), _np(init), initial_states is not None, bool(silu),
                        _np(out))
    return out, x.new_empty(0)


@serialized
def backward(grad_out, x, weight, bias, initial_states, saved, silu, channels_last):
    """Same contract as :func:`neurostep.kernels.causal_conv1d.reference.backward`."""
    batch, dim = x.shape[0], (x.shape[2] if channels_last else x.shape[1])
    width = weight.shape[1]
    bias_ = x.new_zeros(dim) if bias is None else bias
    init = x.new_zeros(1, 1, 1) if initial_states is None else initial_states
    dx = empty_like(x)
    dinit = x.new_empty(batch, dim, width - 1) if initial_states is not None else x.new_empty(1, 1, 1)
    if channels_last:
        # per slot partial sums of the weight and bias gradients, added in slot order
        slots = _cl_slots(batch, x.shape[1])
        np_dtype = _np(x).dtype
        dw_parts = np.empty((slots, width, dim), dtype=np_dtype)
        db_parts = np.empty((slots, dim), dtype=np_dtype)
        _backward_cl_kernel(_np(grad_out), _np(x), _np(weight.t().contiguous()), _np(bias_), _np(init),
                            initial_states is not None, bool(silu), _np(dx), dw_parts, db_parts, _np(dinit))
        dweight = torch.from_numpy(dw_parts.sum(0).T.copy())
        dbias = torch.from_numpy(db_parts.sum(0))
    else:
        dweight = empty_like(weight)
        dbias = x.new_empty(dim)
        _backward_kernel(_np(grad_out), _np(x), _np(weight), _np(bias_), _np(init), initial_states is not None,
                         bool(silu), _np(dx), _np(dweight), _np(dbias), _np(dinit))
    return dx, dweight, (dbias if bias is not None else None), (dinit if initial_states is not None else None)
