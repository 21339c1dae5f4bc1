"""CPU backend of the spike convolution: event-driven accumulation where the input is sparse.

Each nonzero input ``x[n, c, i, j] = v`` adds ``v * weight[:, c, dy, dx]`` to the output pixels
``(i - dy + p, j - dx + p)`` it reaches, for all output channels at once: the output is built
channels-last ``(N, H, W, C_out)`` so that those adds run over contiguous rows, with the weight as
``(k, k, C_in, C_out)``, one image per task. The weight gradient is the same sum seen from the weight:
``dW[:, c, dy, dx]`` adds ``v * g[n, :, i - dy + p, j - dx + p]`` over the nonzeros of input channel
``c`` (one channel per task, a channels-last copy of the output gradient). Both cost
``nnz(x) * k^2 * C_out`` multiply-adds instead of ``N H W C_in k^2 C_out``. The input gradient is dense
(the spike gradient reaches every pixel) and stays torch's convolution backward.

Inputs with more than ``synapse_op.MAX_DENSITY`` nonzeros per element take torch's dense convolution.
The forward returns the pixel lists it built, and the backward's weight gradient reuses them
(``synapse_op``).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

from neurostep.engine import check_numba_input
from neurostep.kernels import synapse_op
from neurostep.kernels.numba_launch import serialized
from neurostep.kernels.spike_conv2d import reference
from neurostep.kernels.spike_linear.cpu import accumulate_rows, row_lists
from neurostep.memory import empty

LISTS_EVENTS = True
"""The forward returns its event lists (``synapse_op``)."""


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _count_pixels(x, counts):  # pragma: no cover - compiled
    """counts[n, q]: the nonzero channels of pixel ``q`` of image ``n``; x ``(N, C, H*W)``."""
    N, C, P = x.shape
    for n in prange(N):
        cn = counts[n]
        for q in range(P):
            cn[q] = 0
        for c in range(C):
            plane = x[n, c]
            for q in range(P):
                cn[q] += plane[q] != 0


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _fill_pixels(x, ptr, idx, val):  # pragma: no cover - compiled
    """Each pixel's nonzero channels and values, in channel order, at ``ptr[n * P + q]``."""
    N, C, P = x.shape
    for n in prange(N):
        pos = ptr[n * P:(n + 1) * P].copy()
        for c in range(C):
            plane = x[n, c]
            for q in range(P):
                v = plane[q]
                if v != 0:
                    p = pos[q]
                    idx[p] = c
                    val[p] = v
                    pos[q] = p + 1


@numba.njit(inline="always")
def _axpy(acc, row, v, width):  # pragma: no cover - compiled
    for o in range(width):
        acc[o] += v * row[o]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _forward_pixels(ptr, idx, val, wt, bias, has_bias, y, H, W, k, pad):  # pragma: no cover - compiled
    """y ``(N*H*W, C_out)``, one task per output row ``(n, i)`` of an image: for each kernel row ``dy``, each
    output pixel of the row lists the nonzeros its ``k`` taps reach (weight rows ``(dy*k + dx)*C_in + c``
    of ``wt``, with their values) and adds those rows to its ``C_out`` sums, four per pass
    (``accumulate_rows``). Every output element still adds its terms in the order ``dy, dx, c``. Row by
    row, the ``k`` taps of one ``dy`` (``k C_in C_out`` weights, 221 KB at 96 -> 192 channels) stay in L2
    while the row's pixels use them, where pixel by pixel all ``k^2`` taps (663 KB) cycled through it.
    2-core AMD EPYC, 2026-12-05, Spikformer's stem at batch 8: 96 -> 192 channels at 32 x 32 with 4.6%
    ones 15-18 against 20-22 ms per call, 48 -> 96 with 7% 6.0-6.2 against 7.3-7.8 ms, outputs bit for bit
    the same. Rows of 2-D arrays, not views of 4-D ones: taking a view of a many-dimensional array in the
    innermost loops cost 3-4x."""
    R, O = y.shape
    C = wt.shape[0] // (k * k)
    P = H * W
    for task in prange((R // P) * H):
        n, oi = task // H, task % H
        first = n * P + oi * W                 # the row's first output pixel
        rows = np.empty(k * C, dtype=np.int64)
        vals = np.empty(k * C, dtype=y.dtype)
        for oj in range(W):
            acc = y[first + oj]
            for o in range(O):
                acc[o] = bias[o] if has_bias else 0
        for dy in range(k):
            ii = oi + dy - pad
            if ii < 0 or ii >= H:
                continue
            for oj in range(W):
                m = 0
                for dx in range(k):
                    jj = oj + dx - pad
                    if jj >= 0 and jj < W:
                        q = n * P + ii * W + jj
                        t = (dy * k + dx) * C
                        for p in range(ptr[q], ptr[q + 1]):
                            rows[m] = t + idx[p]
                            vals[m] = val[p]
                            m += 1
                accumulate_rows(y[first + oj], rows, vals, wt, 0, m)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _weight_grad_pixels(ptr, idx, val, g, parts, H, W, k, pad):  # pragma: no cover - compiled
    """parts ``(S, C_in*k*k, C_out)``, zeros in: slot ``s`` adds the images ``s, s + S, ...``; each
    nonzero adds the gradient rows ``g (N*H*W, C_out)`` under the taps it reaches to its rows
    ``(c*k + dy)*k + dx``."""
    S = parts.shape[0]
    R, O = g.shape
    P = H * W
    for s in prange(S):
        part = parts[s]
        for n in range(s, R // P, S):
            for i in range(H):
                for j in range(W):
                    q = n * P + i * W + j
                    for p in range(ptr[q], ptr[q + 1]):
                        base = idx[p] * k * k
                        v = val[p]
                        for dy in range(k):
                            oi = i - dy + pad
                            if oi >= 0 and oi < H:
                                for dx in range(k):
                                    oj = j - dx + pad
                                    if oj >= 0 and oj < W:
                                        _axpy(part[base + dy * k + dx], g[n * P + oi * W + oj], v, O)


def _pixel_lists(x: torch.Tensor, ptr: np.ndarray, idx: np.ndarray, val: np.ndarray) -> bool:
    """Each pixel's nonzero channels and their values into ``ptr (N*H*W + 1)`` and the first ``nnz`` elements
    of ``idx`` and ``val``; False where they do not fit (above ``synapse_op.MAX_DENSITY``)."""
    N, C, H, W = x.shape
    if x.numel() == 0:
        return False
    if not x.is_contiguous():
        # channels-last: each pixel's channels are one contiguous row, listed as the linear layer lists
        # the rows of its input
        return row_lists(x.permute(0, 2, 3, 1).reshape(N * H * W, C).numpy(), ptr, idx, val)
    flat = x.reshape(N, C, H * W).numpy()
    counts = np.empty((N, H * W), dtype=np.int64)
    _count_pixels(flat, counts)
    ptr[0] = 0
    np.cumsum(counts.reshape(-1), out=ptr[1:])
    if ptr[-1] > idx.shape[0]:
        return False
    _fill_pixels(flat, ptr, idx, val)
    return True


@serialized
def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """See ``reference.forward``; the event lists hold the pixels' nonzero channels, for the backward."""
    check_numba_input(x, torch.channels_last)
    N, _, H, W = x.shape
    lists = synapse_op.empty_event_lists(x, N * H * W, True)
    ptr, idx, val = (t.numpy() for t in lists)
    has_lists = _pixel_lists(x, ptr, idx, val)
    synapse_op.settle_event_lists(lists, has_lists)
    if not has_lists:
        return reference.convolve(x, weight, bias), *lists   # channels-last too
    O = weight.shape[0]
    k = weight.shape[-1]
    wt = weight.detach().permute(2, 3, 1, 0).reshape(k * k * weight.shape[1], O).contiguous()
    y = empty((N * H * W, O), x.dtype)
    has_bias = bias is not None
    b = bias.detach() if has_bias else x.new_zeros(1)
    _forward_pixels(ptr, idx, val, wt.numpy(), b.numpy(), has_bias, y.numpy(), H, W, k, k // 2)
    return y.reshape(N, H, W, O).permute(0, 3, 1, 2), *lists   # built channels-last, returned so (the op's layout)


@serialized
def backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool,
             needs: tuple[bool, bool, bool], lists: tuple[torch.Tensor, ...]
             ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """See ``reference.backward``; the weight gradient sums over the forward's event lists."""
    check_numba_input(x, torch.channels_last)
    if not (needs[1] and synapse_op.has_event_lists(lists[0])):
        return reference.backward(grad_y, x, weight, has_bias, needs, lists)
    dx = reference.backward(grad_y, x, weight, False, (True, False, False), lists)[0] if needs[0] else None
    db = grad_y.sum((0, 2, 3)) if (has_bias and needs[2]) else None
    N, C, H, W = x.shape
    O, k = weight.shape[0], weight.shape[-1]
    g = grad_y.permute(0, 2, 3, 1).reshape(N * H * W, O).contiguous()      # channels-last rows
    slots = max(1, min(numba.get_num_threads(), N))
    parts = np.zeros((slots, C * k * k, O), dtype=g.numpy().dtype)
    _weight_grad_pixels(*(t.numpy() for t in lists), g.numpy(), parts, H, W, k, k // 2)
    dwt = torch.from_numpy(parts.sum(0) if slots > 1 else parts[0])         # (C_in*k*k, C_out)
    return dx, dwt.reshape(C, k, k, O).permute(3, 0, 1, 2).contiguous(), db
