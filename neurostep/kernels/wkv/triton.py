"""RWKV-4 WKV in Triton: fused forward and backward, one program per (sequence, channel block).

Same contract and the same algorithm as :mod:`neurostep.kernels.wkv.cpu` (read its docstring
for the backward derivation); branches become ``tl.where``. Runs on CUDA tensors, or on CPU
tensors under ``TRITON_INTERPRET=1`` (how the tests run it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK_C = 32


@triton.jit
def _wkv_forward_kernel(w_ptr, u_ptr, k_ptr, v_ptr, aa0_ptr, bb0_ptr, pp0_ptr, y_ptr, aa_ptr, bb_ptr, pp_ptr,
                        hist_ptr, T, C, BLOCK_C: tl.constexpr, SAVE: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)  # 64-bit offsets: 3*B*T*C can pass 2**31
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cs < C
    w = tl.load(w_ptr + cs, mask=mask, other=0.0)
    u = tl.load(u_ptr + cs, mask=mask, other=0.0)
    aa = tl.load(aa0_ptr + b * C + cs, mask=mask, other=0.0)
    bb = tl.load(bb0_ptr + b * C + cs, mask=mask, other=1.0)
    pp = tl.load(pp0_ptr + b * C + cs, mask=mask, other=0.0)
    BTC = tl.num_programs(0).to(tl.int64) * T * C
    for t in range(T):
        off = b * T * C + t * C + cs
        if SAVE:
            tl.store(hist_ptr + off, aa, mask=mask)
            tl.store(hist_ptr + BTC + off, bb, mask=mask)
            tl.store(hist_ptr + 2 * BTC + off, pp, mask=mask)
        kt = tl.load(k_ptr + off, mask=mask, other=0.0)
        vt = tl.load(v_ptr + off, mask=mask, other=0.0)
        # one exp per max-shifted pair: the larger side's factor is exactly 1
        d = pp - (u + kt)
        e = tl.exp(-tl.abs(d))
        e1 = tl.where(d > 0, 1.0, e)
        e2 = tl.where(d > 0, e, 1.0)
        tl.store(y_ptr + off, (e1 * aa + e2 * vt) / (e1 * bb + e2), mask=mask)
        d = (w + pp) - kt
        e = tl.exp(-tl.abs(d))
        e1 = tl.where(d > 0, 1.0, e)
        e2 = tl.where(d > 0, e, 1.0)
        aa = e1 * aa + e2 * vt
        bb = e1 * bb + e2
        pp = tl.where(d > 0, w + pp, kt)
    tl.store(aa_ptr + b * C + cs, aa, mask=mask)
    tl.store(bb_ptr + b * C + cs, bb, mask=mask)
    tl.store(pp_ptr + b * C + cs, pp, mask=mask)


@triton.jit
def _wkv_backward_kernel(w_ptr, u_ptr, k_ptr, v_ptr, y_ptr, hist_ptr, aaT_ptr, bbT_ptr, gy_ptr, gaa_ptr, gbb_ptr,
                         gpp_ptr, gw_ptr, gu_ptr, gk_ptr, gv_ptr, gaa0_ptr, gbb0_ptr, gpp0_ptr, T, C,
                         BLOCK_C: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)  # 64-bit offsets: 3*B*T*C can pass 2**31
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cs < C
    sc = b * C + cs
    w = tl.load(w_ptr + cs, mask=mask, other=0.0)
    u = tl.load(u_ptr + cs, mask=mask, other=0.0)
    ga = tl.load(gaa_ptr + sc, mask=mask, other=0.0)
    gb = tl.load(gbb_ptr + sc, mask=mask, other=0.0)
    dl = tl.load(gpp_ptr + sc, mask=mask, other=0.0) - (ga * tl.load(aaT_ptr + sc, mask=mask, other=0.0)
                                                        + gb * tl.load(bbT_ptr + sc, mask=mask, other=0.0))
    sw = tl.zeros_like(ga)
    su = tl.zeros_like(ga)
    BTC = tl.num_programs(0).to(tl.int64) * T * C
    a = sw
    bt = sw
    for i in range(T):
        t = T - 1 - i
        off = b * T * C + t * C + cs
        a = tl.load(hist_ptr + off, mask=mask, other=0.0)
        bt = tl.load(hist_ptr + BTC + off, mask=mask, other=1.0)
        p = tl.load(hist_ptr + 2 * BTC + off, mask=mask, other=0.0)
        kt = tl.load(k_ptr + off, mask=mask, other=0.0)
        vt = tl.load(v_ptr + off, mask=mask, other=0.0)
        yt = tl.load(y_ptr + off, mask=mask, other=0.0)
        gyt = tl.load(gy_ptr + off, mask=mask, other=0.0)
        d = p - (u + kt)
        e = tl.exp(-tl.abs(d))
        e1 = tl.where(d > 0, 1.0, e)
        e2 = tl.where(d > 0, e, 1.0)
        q = gyt / (e1 * bt + e2)
        gww = q * e2 * (vt - yt)
        d = (w + p) - kt
        e = tl.exp(-tl.abs(d))
        f1 = tl.where(d > 0, 1.0, e)
        f2 = tl.where(d > 0, e, 1.0)
        r = tl.where(d > 0, 1.0, tl.where(d == 0, 0.5, 0.0))
        sw += (ga * a + gb * bt) * f1 + dl * r
        su += gww
        tl.store(gk_ptr + off, gww + (ga * vt + gb) * f2 + dl * (1.0 - r), mask=mask)
        tl.store(gv_ptr + off, q * e2 + ga * f2, mask=mask)
        ga = q * e1 + ga * f1
        gb = -q * yt * e1 + gb * f1
        dl = dl * r
    tl.store(gw_ptr + sc, sw, mask=mask)
    tl.store(gu_ptr + sc, su, mask=mask)
    tl.store(gaa0_ptr + sc, ga, mask=mask)
    tl.store(gbb0_ptr + sc, gb, mask=mask)
    tl.store(gpp0_ptr + sc, ga * a + gb * bt + dl, mask=mask)


def forward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor,
            pp: torch.Tensor, save_history: bool) -> tuple[torch.Tensor, ...]:
    """Backend forward (contiguous tensors of one float dtype): ``(y, aa_T, bb_T, pp_T, hist)``."""
    B, T, C = k.shape
    y = torch.empty_like(k)
    aa_T, bb_T, pp_T = torch.empty_like(aa), torch.empty_like(bb), torch.empty_like(pp)
    hist = k.new_empty((3, B, T, C) if save_history else (3, 0, 0, 0))
    grid = (B, triton.cdiv(C, _BLOCK_C))
    # hist is only dereferenced when SAVE; pass y as a valid stand-in pointer otherwise.
    _wkv_forward_kernel[grid](w, u, k, v, aa, bb, pp, y, aa_T, bb_T, pp_T, hist if save_history else y, T, C,
                              BLOCK_C=_BLOCK_C, SAVE=bool(save_history))
    return y, aa_T, bb_T, pp_T, hist


def backward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, y: torch.Tensor,
             hist: torch.Tensor, aa_T: torch.Tensor, bb_T: torch.Tensor, gy: torch.Tensor, g_aa: torch.Tensor,
             g_bb: torch.Tensor, g_pp: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Backend backward: ``(gw (B, C), gu (B, C), gk, gv, g_aa0, g_bb0, g_pp0)``."""
    B, T, C = k.shape
    gw, gu = k.new_empty((B, C)), k.new_empty((B, C))
    gk, gv = torch.empty_like(k), torch.empty_like(v)
    g_aa0, g_bb0, g_pp0 = k.new_empty((B, C)), k.new_empty((B, C)), k.new_empty((B, C))
    grid = (B, triton.cdiv(C, _BLOCK_C))
    _wkv_backward_kernel[grid](w, u, k, v, y, hist, aa_T, bb_T, gy, g_aa, g_bb, g_pp, gw, gu, gk, gv, g_aa0, g_bb0,
                               g_pp0, T, C, BLOCK_C=_BLOCK_C)
    return gw, gu, gk, gv, g_aa0, g_bb0, g_pp0
