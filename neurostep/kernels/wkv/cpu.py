"""RWKV-4 WKV on CPU: numba forward and backward, fused over time.

Same contract as :mod:`neurostep.kernels.wkv.reference` (read its docstring). Layout: the
``(B, T, C)`` tensors are C-contiguous, so the parallel loop runs over blocks of contiguous
channels of one sequence, the time loop sits inside it and the innermost loop walks the
channels of the block. Each block keeps its state in registers/local arrays; per step it
touches one contiguous row of ``k``, ``v`` and ``y``.

Exponentials dominate the cost, and in the max-shifted form one of each pair ``exp(a - max(a,
b))``, ``exp(b - max(a, b))`` is exactly 1: each step evaluates one ``exp(-|a - b|)`` per pair,
2 exps per step forward and 2 in the backward (instead of 4 + 4).

Backward (derivation in the package docstring): the adjoints of ``aa`` and ``bb`` are carried
in the shifted scale (``dL/daa``, ``dL/dbb``, bounded because every factor is ``<= 1``); the
gradient of the output with respect to the running max is exactly zero (the shift cancels in
``y``), so only the part of ``dL/dpp`` that is not explained by ``aa`` and ``bb`` (``delta``,
nonzero only when the caller's loss reads the final ``pp`` directly) is routed through the max.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

_BLOCK = 32  # channels per parallel work item: one or two cache lines of each row


@numba.njit(parallel=True, cache=True, fastmath=False)
def _forward_kernel(w, u, k, v, aa0, bb0, pp0, y, aa_out, bb_out, pp_out, hist, save):  # pragma: no cover - numba
    B, T, C = k.shape
    nblk = (C + _BLOCK - 1) // _BLOCK
    # Typed constants: a float64 literal would silently promote fp32 lanes to fp64.
    one = np.ones(1, dtype=k.dtype)[0]
    half = one / (one + one)
    zero = one - one
    for item in numba.prange(B * nblk):
        b = item // nblk
        c0 = (item % nblk) * _BLOCK
        c1 = min(c0 + _BLOCK, C)
        n = c1 - c0
        aa = np.empty(n, dtype=k.dtype)
        bb = np.empty(n, dtype=k.dtype)
        pp = np.empty(n, dtype=k.dtype)
        for j in range(n):
            aa[j] = aa0[b, c0 + j]
            bb[j] = bb0[b, c0 + j]
            pp[j] = pp0[b, c0 + j]
        for t in range(T):
            for j in range(n):
                c = c0 + j
                a = aa[j]
                bt = bb[j]
                p = pp[j]
                if save:
                    hist[0, b, t, c] = a
                    hist[1, b, t, c] = bt
                    hist[2, b, t, c] = p
                kt = k[b, t, c]
                vt = v[b, t, c]
                # output: shift by max(pp, u + k); NaN in d falls to the else branch and propagates.
                d = p - (u[c] + kt)
                if d > 0:
                    e1 = one
                    e2 = np.exp(-d)
                else:
                    e1 = np.exp(d)
                    e2 = one
                y[b, t, c] = (e1 * a + e2 * vt) / (e1 * bt + e2)
                # state: shift by max(w + pp, k)
                d = (w[c] + p) - kt
                if d > 0:
                    e1 = one
                    e2 = np.exp(-d)
                    pn = w[c] + p
                else:
                    e1 = np.exp(d)
                    e2 = one
                    pn = kt
                aa[j] = e1 * a + e2 * vt
                bb[j] = e1 * bt + e2
                pp[j] = pn
        for j in range(n):
            aa_out[b, c0 + j] = aa[j]
            bb_out[b, c0 + j] = bb[j]
            pp_out[b, c0 + j] = pp[j]


@numba.njit(parallel=True, cache=True, fastmath=False)
def _backward_kernel(w, u, k, v, y, hist, aa_T, bb_T, gy, g_aa, g_bb, g_pp,
                     gw, gu, gk, gv, g_aa0, g_bb0, g_pp0):  # pragma: no cover - numba
    B, T, C = k.shape
    nblk = (C + _BLOCK - 1) // _BLOCK
    # Typed constants: a float64 literal would silently promote fp32 lanes to fp64.
    one = np.ones(1, dtype=k.dtype)[0]
    half = one / (one + one)
    zero = one - one
    for item in numba.prange(B * nblk):
        b = item // nblk
        c0 = (item % nblk) * _BLOCK
        c1 = min(c0 + _BLOCK, C)
        n = c1 - c0
        ga = np.empty(n, dtype=k.dtype)    # dL/daa_t (after step t)
        gb = np.empty(n, dtype=k.dtype)    # dL/dbb_t
        dl = np.empty(n, dtype=k.dtype)    # dL/dpp_t not explained by aa, bb
        sw = np.zeros(n, dtype=k.dtype)
        su = np.zeros(n, dtype=k.dtype)
        for j in range(n):
            c = c0 + j
            ga[j] = g_aa[b, c]
            gb[j] = g_bb[b, c]
            dl[j] = g_pp[b, c] - (g_aa[b, c] * aa_T[b, c] + g_bb[b, c] * bb_T[b, c])
        for t in range(T - 1, -1, -1):
            for j in range(n):
                c = c0 + j
                a = hist[0, b, t, c]
                bt = hist[1, b, t, c]
                p = hist[2, b, t, c]
                kt = k[b, t, c]
                vt = v[b, t, c]
                yt = y[b, t, c]
                # output part
                d = p - (u[c] + kt)
                if d > 0:
                    e1 = one
                    e2 = np.exp(-d)
                else:
                    e1 = np.exp(d)
                    e2 = one
                q = gy[b, t, c] / (e1 * bt + e2)
                gww = q * e2 * (vt - yt)
                gvt = q * e2
                na = q * e1
                nb = -q * yt * e1
                # state part; r is the share of d(max)/d(w + pp) (torch.maximum splits ties evenly)
                d = (w[c] + p) - kt
                if d > 0:
                    f1 = one
                    f2 = np.exp(-d)
                    r = one
                elif d == 0:
                    f1 = one
                    f2 = one
                    r = half
                else:
                    f1 = np.exp(d)
                    f2 = one
                    r = zero
                gat = ga[j]
                gbt = gb[j]
                dlt = dl[j]
                sw[j] += (gat * a + gbt * bt) * f1 + dlt * r
                su[j] += gww
                gk[b, t, c] = gww + (gat * vt + gbt) * f2 + dlt * (one - r)
                gv[b, t, c] = gvt + gat * f2
                ga[j] = na + gat * f1
                gb[j] = nb + gbt * f1
                dl[j] = dlt * r
        for j in range(n):
            c = c0 + j
            gw[b, c] = sw[j]
            gu[b, c] = su[j]
            g_aa0[b, c] = ga[j]
            g_bb0[b, c] = gb[j]
            g_pp0[b, c] = ga[j] * hist[0, b, 0, c] + gb[j] * hist[1, b, 0, c] + dl[j]


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy()


def forward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor,
            pp: torch.Tensor, save_history: bool) -> tuple[torch.Tensor, ...]:
    """Backend forward (contiguous CPU tensors of one float dtype): ``(y, aa_T, bb_T, pp_T, hist)``."""
    B, T, C = k.shape
    y = torch.empty_like(k)
    aa_T, bb_T, pp_T = torch.empty_like(aa), torch.empty_like(bb), torch.empty_like(pp)
    hist = k.new_empty((3, B, T, C) if save_history else (3, 0, 0, 0))
    _forward_kernel(_np(w), _np(u), _np(k), _np(v), _np(aa), _np(bb), _np(pp), _np(y), _np(aa_T), _np(bb_T),
                    _np(pp_T), _np(hist), bool(save_history))
    return y, aa_T, bb_T, pp_T, hist


def backward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, y: torch.Tensor,
             hist: torch.Tensor, aa_T: torch.Tensor, bb_T: torch.Tensor, gy: torch.Tensor, g_aa: torch.Tensor,
             g_bb: torch.Tensor, g_pp: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Backend backward: ``(gw (B, C), gu (B, C), gk, gv, g_aa0, g_bb0, g_pp0)``."""
    B, T, C = k.shape
    gw = k.new_empty((B, C))
    gu = k.new_empty((B, C))
    gk = torch.empty_like(k)
    gv = torch.empty_like(v)
    g_aa0, g_bb0, g_pp0 = k.new_empty((B, C)), k.new_empty((B, C)), k.new_empty((B, C))
    _backward_kernel(_np(w), _np(u), _np(k), _np(v), _np(y), _np(hist), _np(aa_T), _np(bb_T), _np(gy), _np(g_aa),
                     _np(g_bb), _np(g_pp), _np(gw), _np(gu), _np(gk), _np(gv), _np(g_aa0), _np(g_bb0), _np(g_pp0))
    return gw, gu, gk, gv, g_aa0, g_bb0, g_pp0
