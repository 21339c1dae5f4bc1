"""RWKV-4 WKV on CPU: numba forward and backward, fused over time.

Same contract as :mod:`neurostep.kernels.wkv.reference` (read its docstring). Layout: the
``(B, T, C)`` tensors are C-contiguous, so the parallel loop runs over blocks of contiguous
channels of one sequence, the time loop sits inside it and the innermost loop walks the
channels of the block. Each block keeps its state in registers/local arrays; per step it
touches one contiguous row of ``k``, ``v`` and ``y``.

Exponentials dominate the cost, and in the max-shifted form one of each pair ``exp(a - max(a,
b))``, ``exp(b - max(a, b))`` is exactly 1: each step evaluates one ``exp(-|a - b|)`` per pair,
2 exps per step forward and 2 in the backward (instead of 4 + 4).

Backward (per-step formulas in the package docstring): the adjoints of ``aa`` and ``bb`` are carried
in the shifted scale (``dL/daa``, ``dL/dbb``, bounded because every factor is ``<= 1``); the
gradient of the output with respect to the running max is exactly zero (the shift cancels in
``y``), so only the part of ``dL/dpp`` that is not explained by ``aa`` and ``bb`` (``delta``,
nonzero only when the caller's loss reads the final ``pp`` directly) is routed through the max.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from neurostep.kernels.numba_launch import as_array as _np
from neurostep.kernels.numba_launch import serialized
from neurostep.memory import empty, empty_like

# Channels per parallel work item: at most 256 and at least 64, and few enough that every thread gets
# two items. Each step of an item reads a row segment of ``block`` channels from every (B, T, C) input; 64
# channels (256 bytes) were short streams for the prefetchers: at B=1, C=768, L=1024 with 2 threads,
# forward+backward took 9.0 and 11.2-12.6 ms with 64-channel blocks against 7.1 and 8.8-10.7 ms with this
# rule's 192 (2-core AMD EPYC, 2026-12-04, alternating in one process). The channels are independent, so
# the block size changes no result.
_MAX_BLOCK = 256
_MIN_BLOCK = 64


def _channel_block(batch: int, channels: int) -> int:
    """Channels per work item for ``batch`` rows of ``channels`` (see :data:`_MAX_BLOCK`)."""
    per_row = -(-2 * numba.get_num_threads() // batch)  # items per batch row for two items per thread
    block = -(-channels // per_row)
    return max(_MIN_BLOCK, min(_MAX_BLOCK, -(-block // 16) * 16))


# exp(x) for x <= 0 in fp32: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-7 Taylor
# polynomial (truncation error 0.35^8/8! < 6e-9, below fp32 eps) and 2^n built in the exponent
# bits. numba's np.exp is a scalar libm call here (no SVML), and it is what bounds this kernel:
# this form vectorizes. fp64 inputs (gradcheck) keep the exact libm exp.
_EXP_CONSTS = np.array([1.4426950408889634, 0.693359375, -2.12194440e-4, -87.0, 0.5,
                        1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040], dtype=np.float32)


@numba.njit(cache=True, inline="always")
def _exp_nonpositive(x, out, m, accurate, cst, ibuf, fbuf):  # pragma: no cover - numba
    """out[:m] = exp(x[:m]) for x <= 0 (NaN propagates); ``fbuf`` is ``ibuf`` viewed as float32."""
    if accurate:
        for j in range(m):
            out[j] = np.exp(x[j])
        return
    log2e, ln2_hi, ln2_lo, lo, half = cst[0], cst[1], cst[2], cst[3], cst[4]
    for j in range(m):
        xj = x[j]
        xj = xj if xj > lo else lo
        t = np.floor(xj * log2e + half)
        r = (xj - t * ln2_hi) - t * ln2_lo
        p = cst[12]
        p = p * r + cst[11]
        p = p * r + cst[10]
        p = p * r + cst[9]
        p = p * r + cst[8]
        p = p * r + cst[7]
        p = p * r + cst[6]
        p = p * r + cst[5]
        ibuf[j] = (np.int32(t) + 127) << 23
        out[j] = p
    for j in range(m):
        xj = x[j]
        e = out[j] * fbuf[j]
        e = e if xj > lo else e - e  # below -87 exp underflows: 0 (e is finite here, x was clamped)
        out[j] = xj if xj != xj else e


@numba.njit(parallel=True, cache=True, fastmath=False)
def _forward_kernel(w, u, k, v, aa0, bb0, pp0, y, aa_out, bb_out, pp_out, hist, save, accurate,
                    cst, block):  # pragma: no cover - numba
    B, T, C = k.shape
    nblk = (C + block - 1) // block
    # Typed constants: a float64 literal would silently promote fp32 lanes to fp64. Made as a scalar, and
    # buffers filled with loops, not as array expressions (np.ones, np.zeros): each of those is a parallel
    # loop of its own nested in the prange body, which only costs compile time (first calls from a cold cache,
    # float32: forward 6.1 s against 6.7-6.9 s, backward 5.0-5.5 s against 6.0-6.7 s; 2-core AMD EPYC,
    # 2026-12-05, two runs each).
    one = k.dtype.type(1)
    for item in numba.prange(B * nblk):
        # Unsigned indices: numba then skips its negative-index wraparound branch, which
        # otherwise blocks vectorization of the channel loops (measured 5-9x slower).
        b = np.uint64(item // nblk)
        c0 = np.uint64((item % nblk) * block)
        n = min(block, C - (item % nblk) * block)
        aa = np.empty(n, dtype=k.dtype)
        bb = np.empty(n, dtype=k.dtype)
        pp = np.empty(n, dtype=k.dtype)
        d1s = np.empty(n, dtype=k.dtype)
        d2s = np.empty(n, dtype=k.dtype)
        x1s = np.empty(n, dtype=k.dtype)
        x2s = np.empty(n, dtype=k.dtype)
        e1s = np.empty(n, dtype=k.dtype)
        e2s = np.empty(n, dtype=k.dtype)
        ibuf = np.empty(n, dtype=np.int32)
        fbuf = ibuf.view(np.float32)
        for j in range(n):
            c = c0 + np.uint64(j)
            aa[j] = aa0[b, c]
            bb[j] = bb0[b, c]
            pp[j] = pp0[b, c]
        for t in range(T):
            for j in range(n):
                c = c0 + np.uint64(j)
                kt = k[b, t, c]
                d1 = pp[j] - (u[c] + kt)      # output: shift by max(pp, u + k)
                d2 = (w[c] + pp[j]) - kt      # state: shift by max(w + pp, k)
                d1s[j] = d1
                d2s[j] = d2
                x1s[j] = -abs(d1)
                x2s[j] = -abs(d2)
            # one exp per max-shifted pair: the larger side's factor is exactly 1
            _exp_nonpositive(x1s, e1s, n, accurate, cst, ibuf, fbuf)
            _exp_nonpositive(x2s, e2s, n, accurate, cst, ibuf, fbuf)
            if save:
                for j in range(n):
                    c = c0 + np.uint64(j)
                    hist[0, b, t, c] = aa[j]
                    hist[1, b, t, c] = bb[j]
                    hist[2, b, t, c] = pp[j]
            # Every load is done unconditionally before the selects: LLVM cannot if-convert a
            # conditional load from a numba array, and the loop would stay scalar.
            for j in range(n):
                c = c0 + np.uint64(j)
                a = aa[j]
                bt = bb[j]
                p = pp[j]
                kt = k[b, t, c]
                vt = v[b, t, c]
                wc = w[c]
                x1 = e1s[j]
                x2 = e2s[j]
                pos = d1s[j] > 0   # NaN compares false and its exp is NaN, so NaN propagates
                e1 = one if pos else x1
                e2 = x1 if pos else one
                y[b, t, c] = (e1 * a + e2 * vt) / (e1 * bt + e2)
                pos = d2s[j] > 0
                e1 = one if pos else x2
                e2 = x2 if pos else one
                aa[j] = e1 * a + e2 * vt
                bb[j] = e1 * bt + e2
                pp[j] = (wc + p) if pos else kt
        for j in range(n):
            c = c0 + np.uint64(j)
            aa_out[b, c] = aa[j]
            bb_out[b, c] = bb[j]
            pp_out[b, c] = pp[j]


@numba.njit(parallel=True, cache=True, fastmath=False)
def _backward_kernel(w, u, k, v, y, hist, aa_T, bb_T, gy, g_aa, g_bb, g_pp,
                     gw, gu, gk, gv, g_aa0, g_bb0, g_pp0, accurate, cst, block):  # pragma: no cover - numba
    B, T, C = k.shape
    nblk = (C + block - 1) // block
    one = k.dtype.type(1)
    half = one / (one + one)
    zero = one - one
    for item in numba.prange(B * nblk):
        b = np.uint64(item // nblk)
        c0 = np.uint64((item % nblk) * block)
        n = min(block, C - (item % nblk) * block)
        ga = np.empty(n, dtype=k.dtype)    # dL/daa_t (after step t)
        gb = np.empty(n, dtype=k.dtype)    # dL/dbb_t
        dl = np.empty(n, dtype=k.dtype)    # dL/dpp_t not explained by aa, bb
        sw = np.empty(n, dtype=k.dtype)
        su = np.empty(n, dtype=k.dtype)
        d1s = np.empty(n, dtype=k.dtype)
        d2s = np.empty(n, dtype=k.dtype)
        x1s = np.empty(n, dtype=k.dtype)
        x2s = np.empty(n, dtype=k.dtype)
        e1s = np.empty(n, dtype=k.dtype)
        e2s = np.empty(n, dtype=k.dtype)
        ibuf = np.empty(n, dtype=np.int32)
        fbuf = ibuf.view(np.float32)
        for j in range(n):
            c = c0 + np.uint64(j)
            ga[j] = g_aa[b, c]
            gb[j] = g_bb[b, c]
            dl[j] = g_pp[b, c] - (g_aa[b, c] * aa_T[b, c] + g_bb[b, c] * bb_T[b, c])
            sw[j] = zero
            su[j] = zero
        for i in range(T):
            t = np.uint64(T - 1 - i)
            for j in range(n):
                c = c0 + np.uint64(j)
                kt = k[b, t, c]
                p = hist[2, b, t, c]
                d1 = p - (u[c] + kt)
                d2 = (w[c] + p) - kt
                d1s[j] = d1
                d2s[j] = d2
                x1s[j] = -abs(d1)
                x2s[j] = -abs(d2)
            _exp_nonpositive(x1s, e1s, n, accurate, cst, ibuf, fbuf)
            _exp_nonpositive(x2s, e2s, n, accurate, cst, ibuf, fbuf)
            for j in range(n):
                c = c0 + np.uint64(j)
                a = hist[0, b, t, c]
                bt = hist[1, b, t, c]
                vt = v[b, t, c]
                yt = y[b, t, c]
                gyt = gy[b, t, c]
                x1 = e1s[j]
                x2 = e2s[j]
                # output part (loads above, unconditionally: see the forward)
                pos = d1s[j] > 0
                e1 = one if pos else x1
                e2 = x1 if pos else one
                q = gyt / (e1 * bt + e2)
                gww = q * e2 * (vt - yt)
                # state part; r is the share of d(max)/d(w + pp) (torch.maximum splits ties evenly)
                d2 = d2s[j]
                pos = d2 > 0
                f1 = one if pos else x2
                f2 = x2 if pos else one
                r = one if pos else (half if d2 == 0 else zero)
                gat = ga[j]
                gbt = gb[j]
                dlt = dl[j]
                sw[j] += (gat * a + gbt * bt) * f1 + dlt * r
                su[j] += gww
                gk[b, t, c] = gww + (gat * vt + gbt) * f2 + dlt * (one - r)
                gv[b, t, c] = q * e2 + gat * f2
                ga[j] = q * e1 + gat * f1
                gb[j] = gbt * f1 - q * yt * e1
                dl[j] = dlt * r
        for j in range(n):
            c = c0 + np.uint64(j)
            gw[b, c] = sw[j]
            gu[b, c] = su[j]
            g_aa0[b, c] = ga[j]
            g_bb0[b, c] = gb[j]
            g_pp0[b, c] = ga[j] * hist[0, b, 0, c] + gb[j] * hist[1, b, 0, c] + dl[j]


@serialized
def forward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor,
            pp: torch.Tensor, save_history: bool) -> tuple[torch.Tensor, ...]:
    """Backend forward (contiguous CPU tensors of one float dtype): ``(y, aa_T, bb_T, pp_T, hist)``."""
    B, T, C = k.shape
    y = empty_like(k)
    aa_T, bb_T, pp_T = empty_like(aa), empty_like(bb), empty_like(pp)
    hist = empty((3, B, T, C) if save_history else (3, 0, 0, 0), k.dtype)
    _forward_kernel(_np(w), _np(u), _np(k), _np(v), _np(aa), _np(bb), _np(pp), _np(y), _np(aa_T), _np(bb_T),
                    _np(pp_T), _np(hist), bool(save_history), k.dtype != torch.float32, _EXP_CONSTS,
                    _channel_block(B, C))
    return y, aa_T, bb_T, pp_T, hist


@serialized
def backward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, y: torch.Tensor,
             hist: torch.Tensor, aa_T: torch.Tensor, bb_T: torch.Tensor, gy: torch.Tensor, g_aa: torch.Tensor,
             g_bb: torch.Tensor, g_pp: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Backend backward: ``(gw (B, C), gu (B, C), gk, gv, g_aa0, g_bb0, g_pp0)``."""
    B, T, C = k.shape
    gw = k.new_empty((B, C))
    gu = k.new_empty((B, C))
    gk = empty_like(k)
    gv = empty_like(v)
    g_aa0, g_bb0, g_pp0 = k.new_empty((B, C)), k.new_empty((B, C)), k.new_empty((B, C))
    _backward_kernel(_np(w), _np(u), _np(k), _np(v), _np(y), _np(hist), _np(aa_T), _np(bb_T), _np(gy), _np(g_aa),
                     _np(g_bb), _np(g_pp), _np(gw), _np(gu), _np(gk), _np(gv), _np(g_aa0), _np(g_bb0), _np(g_pp0),
                     k.dtype != torch.float32, _EXP_CONSTS, _channel_block(B, C))
    return gw, gu, gk, gv, g_aa0, g_bb0, g_pp0
