"""Triton backend of the LIF scan: fused forward and backward kernels.

One program owns a block of ``BLOCK`` contiguous lanes and loops over time inside, keeping the
membrane (and adaptation) state in registers; every step reads/writes one coalesced row
segment. Same contract as ``reference.forward`` / ``reference.backward`` (contiguous ``(T, N)``
float32/float64 tensors). The scalar parameters travel in a small tensor of the data dtype so
that float64 data is computed with float64 parameters (Triton types Python floats as fp32).
FMA contraction is disabled so that the GPU rounds like the reference (spikes are compared
exactly). On CPU tensors these kernels run only under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from neurostep.kernels.lif.common import LIFParams
from neurostep.kernels.lif.surrogates_triton import sg_grad

_BLOCK = 256


@triton.jit
def _lif_fwd_kernel(x_ptr, v0_ptr, a0_ptr, s_ptr, h_ptr, th_ptr, vseq_ptr, vlast_ptr, alast_ptr, par_ptr, T, N,
                    HARD: tl.constexpr, DECAY: tl.constexpr, SNN: tl.constexpr, SNN_RESET: tl.constexpr,
                    ADAPTIVE: tl.constexpr, WRITE_VSEQ: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    k = tl.load(par_ptr + 0)
    omk = tl.load(par_ptr + 1)
    vth = tl.load(par_ptr + 2)
    vr = tl.load(par_ptr + 3)
    vr_c = tl.load(par_ptr + 4)
    rho = tl.load(par_ptr + 5)
    beta = tl.load(par_ptr + 6)
    v = tl.load(v0_ptr + offs, mask=mask, other=0.0)
    a = tl.zeros([BLOCK], dtype=v.dtype)
    if ADAPTIVE:
        a = tl.load(a0_ptr + offs, mask=mask, other=0.0)
    # row pointers advance by N per step (64-bit pointer arithmetic: no int32 overflow of t*N)
    row = offs
    for _t in range(T):
        xt = tl.load(x_ptr + row, mask=mask, other=0.0)
        if SNN:
            r = (v > vth).to(v.dtype)
            if SNN_RESET == 0:
                h = omk * v + xt - r * vth
            elif SNN_RESET == 1:
                h = omk * ((1.0 - r) * v) + xt
            else:
                h = omk * v + xt
            s = (h - vth > 0.0).to(v.dtype)
            v = h
        else:
            if DECAY:
                h = v + k * (xt - (v - vr_c))
            else:
                h = v - k * (v - vr_c) + xt
            if ADAPTIVE:
                a = rho * a
                th = vth + a
                tl.store(th_ptr + row, th, mask=mask)
            else:
                th = tl.zeros([BLOCK], dtype=v.dtype) + vth
            s = (h - th >= 0.0).to(v.dtype)
            if HARD:
                v = s * vr + (1.0 - s) * h
            else:
                v = h - s * th
            if ADAPTIVE:
                a = a + beta * s
        tl.store(s_ptr + row, s, mask=mask)
        tl.store(h_ptr + row, h, mask=mask)
        if WRITE_VSEQ:
            tl.store(vseq_ptr + row, v, mask=mask)
        x_ptr += N
        s_ptr += N
        h_ptr += N
        th_ptr += N
        vseq_ptr += N
    tl.store(vlast_ptr + offs, v, mask=mask)
    if ADAPTIVE:
        tl.store(alast_ptr + offs, a, mask=mask)


@triton.jit
def _lif_bwd_kernel(x_ptr, v0_ptr, h_ptr, th_ptr, gs_ptr, gvs_ptr, gvl_ptr, gal_ptr, gx_ptr, gv0_ptr, ga0_ptr,
                    gk_ptr, gvth_ptr, par_ptr, T, N, last_row,
                    HARD: tl.constexpr, DECAY: tl.constexpr, DETACH: tl.constexpr, SNN: tl.constexpr,
                    SNN_RESET: tl.constexpr, ADAPTIVE: tl.constexpr, HAS_GS: tl.constexpr, HAS_GVSEQ: tl.constexpr,
                    HAS_GVLAST: tl.constexpr, HAS_GALAST: tl.constexpr, NEED_K: tl.constexpr, SID: tl.constexpr,
                    BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    k = tl.load(par_ptr + 0)
    omk = tl.load(par_ptr + 1)
    vth = tl.load(par_ptr + 2)
    vr = tl.load(par_ptr + 3)
    vr_c = tl.load(par_ptr + 4)
    rho = tl.load(par_ptr + 5)
    beta = tl.load(par_ptr + 6)
    alpha = tl.load(par_ptr + 7)
    v0 = tl.load(v0_ptr + offs, mask=mask, other=0.0)
    zero = tl.zeros([BLOCK], dtype=v0.dtype)
    cv = zero
    if HAS_GVLAST:
        cv = tl.load(gvl_ptr + offs, mask=mask, other=0.0)
    ca = zero
    if HAS_GALAST:
        ca = tl.load(gal_ptr + offs, mask=mask, other=0.0)
    gk_acc = zero
    gvth_acc = zero
    # walk the rows backwards from row T-1 (last_row = (T-1)*N, passed from the host as a 64-bit-safe int)
    x_ptr += last_row
    h_ptr += last_row
    th_ptr += last_row
    gs_ptr += last_row
    gvs_ptr += last_row
    gx_ptr += last_row
    row = offs
    prow = offs - N
    for i in range(T):
        t = T - 1 - i
        # the previous step's row exists only for t > 0 (v0 is used at t = 0)
        pmask = mask & (t > 0)
        h = tl.load(h_ptr + row, mask=mask, other=0.0)
        gst = zero
        if HAS_GS:
            gst = tl.load(gs_ptr + row, mask=mask, other=0.0)
        gvs = zero
        if HAS_GVSEQ:
            gvs = tl.load(gvs_ptr + row, mask=mask, other=0.0)
        if SNN:
            hp = tl.load(h_ptr + prow, mask=pmask, other=0.0)
            vp = tl.where(t > 0, hp, v0)
            r = (vp > vth).to(h.dtype)
            sg = sg_grad(h - vth, alpha, SID)
            gh = gst * sg + cv + gvs
            gth = -gst * sg
            if SNN_RESET == 0:
                gth = gth - r * gh
            gvth_acc += gth
            tl.store(gx_ptr + row, gh, mask=mask)
            if SNN_RESET == 1:
                cv = gh * omk * (1.0 - r)
                gk_acc -= gh * ((1.0 - r) * vp)
            else:
                cv = gh * omk
                gk_acc -= gh * vp
        else:
            if ADAPTIVE:
                th = tl.load(th_ptr + row, mask=mask, other=0.0)
            else:
                th = vth + zero
            z = h - th
            s = (z >= 0.0).to(h.dtype)
            sg = sg_grad(z, alpha, SID)
            gv = cv + gvs
            if DETACH:
                gs_tot = gst
            elif HARD:
                gs_tot = gst + gv * (vr - h)
            else:
                gs_tot = gst + gv * (-th)
            if ADAPTIVE:
                gs_tot = gs_tot + beta * ca
            if HARD:
                gh = gs_tot * sg + gv * (1.0 - s)
            else:
                gh = gs_tot * sg + gv
            gth = -gs_tot * sg
            if not HARD:
                gth = gth - s * gv
            if ADAPTIVE:
                ca = rho * (ca + gth)
            gvth_acc += gth
            if DECAY:
                tl.store(gx_ptr + row, gh * k, mask=mask)
            else:
                tl.store(gx_ptr + row, gh, mask=mask)
            cv = gh * omk
            if NEED_K:
                hp = tl.load(h_ptr + prow, mask=pmask, other=0.0)
                if ADAPTIVE:
                    thp = tl.load(th_ptr + prow, mask=pmask, other=0.0)
                else:
                    thp = vth + zero
                sp = (hp - thp >= 0.0).to(h.dtype)
                if HARD:
                    vp = sp * vr + (1.0 - sp) * hp
                else:
                    vp = hp - sp * thp
                vp = tl.where(t > 0, vp, v0)
                if DECAY:
                    xt = tl.load(x_ptr + row, mask=mask, other=0.0)
                    gk_acc += gh * (xt - vp + vr_c)
                else:
                    gk_acc += gh * (vr_c - vp)
        x_ptr -= N
        h_ptr -= N
        th_ptr -= N
        gs_ptr -= N
        gvs_ptr -= N
        gx_ptr -= N
    tl.store(gv0_ptr + offs, cv, mask=mask)
    if ADAPTIVE:
        tl.store(ga0_ptr + offs, ca, mask=mask)
    tl.store(gk_ptr + pid, tl.sum(tl.where(mask, gk_acc, 0.0), axis=0))
    tl.store(gvth_ptr + pid, tl.sum(tl.where(mask, gvth_acc, 0.0), axis=0))


def _params_tensor(p: LIFParams, like: torch.Tensor) -> torch.Tensor:
    """The kernels' scalar table, built on the device: k and vth are device tensors and are never read
    back to the host. ``1 - k`` is rounded from float64, as the CPU backend rounds it."""
    device_part = torch.stack([p.k.to(like.dtype), p.one_minus_k.to(like.dtype), p.vth.to(like.dtype)])
    host_part = torch.tensor([p.vr, p.vr_charge, p.rho, p.beta, p.alpha], dtype=like.dtype).to(like.device)
    return torch.cat([device_part, host_part])


def _launch_opts() -> dict:
    # the interpreter accepts no compile options; on GPUs turn off FMA contraction (see module doc)
    return {} if os.environ.get("TRITON_INTERPRET") == "1" else {"enable_fp_fusion": False}


def _check(x: torch.Tensor) -> None:
    if x.dtype not in (torch.float32, torch.float64) or not x.is_contiguous():
        raise TypeError(f"triton backend expects contiguous float32/float64 tensors, got {x.dtype}")


def recomputes_h(convention: str, adaptive: bool) -> bool:
    """Whether :func:`backward` recomputes h from x instead of reading a saved one: never here."""
    return False


def forward(x: torch.Tensor, v0: torch.Tensor | None, a0: torch.Tensor | None, p: LIFParams, need_vseq: bool):
    """Fused forward on contiguous ``x (T, N)``; see ``reference.forward`` for the contract."""
    _check(x)
    T, N = x.shape
    v0 = p.initial_membrane(v0, x)   # at rest where none was given: one fill on the device
    adaptive = p.adaptive and not p.snn
    spikes = torch.empty_like(x)
    h = torch.empty_like(x)
    theta = torch.empty_like(x) if adaptive else x.new_empty(1)
    vseq = torch.empty_like(x) if need_vseq else x.new_empty(1)
    v_last = x.new_empty(N)
    a_last = x.new_empty(N) if adaptive else x.new_empty(1)
    a0_arr = a0 if (adaptive and a0 is not None) else v0
    grid = (triton.cdiv(N, _BLOCK),)
    _lif_fwd_kernel[grid](
        x, v0, a0_arr, spikes, h, theta, vseq, v_last, a_last, _params_tensor(p, x), T, N,
        HARD=p.hard, DECAY=p.decay_input, SNN=p.snn, SNN_RESET=p.snn_reset, ADAPTIVE=adaptive,
        WRITE_VSEQ=need_vseq, BLOCK=_BLOCK, **_launch_opts(),
    )
    return spikes, v_last, (a_last if adaptive else None), (vseq if need_vseq else None), h, \
        (theta if adaptive else None)


def backward(x: torch.Tensor | None, v0: torch.Tensor | None, h: torch.Tensor, theta: torch.Tensor | None,
             g_spikes: torch.Tensor | None, g_vseq: torch.Tensor | None, g_vlast: torch.Tensor | None,
             g_alast: torch.Tensor | None, p: LIFParams, need_k_grad: bool, need_threshold_grad: bool = True):
    """Fused backward; see ``reference.backward`` for the contract (it computes the threshold's gradient
    whatever ``need_threshold_grad`` says)."""
    _check(h)
    T, N = h.shape
    given_v0 = v0 is not None
    v0 = p.initial_membrane(v0, h)
    adaptive = theta is not None
    dummy = h.new_empty(1)
    nprog = triton.cdiv(N, _BLOCK)
    gx = torch.empty_like(h)
    gv0 = h.new_empty(N)
    ga0 = h.new_empty(N) if adaptive else dummy
    gk_part = h.new_empty(nprog)
    gvth_part = h.new_empty(nprog)
    need_k = bool(need_k_grad) and not p.snn
    x_arr = x if (need_k and p.decay_input and x is not None) else dummy

    def opt(g):
        return g if g is not None else dummy

    _lif_bwd_kernel[(nprog,)](
        x_arr, v0, h, theta if adaptive else dummy, opt(g_spikes), opt(g_vseq), opt(g_vlast),
        opt(g_alast if adaptive else None), gx, gv0, ga0, gk_part, gvth_part, _params_tensor(p, h), T, N, (T - 1) * N,
        HARD=p.hard, DECAY=p.decay_input, DETACH=p.detach_reset, SNN=p.snn, SNN_RESET=p.snn_reset,
        ADAPTIVE=adaptive, HAS_GS=g_spikes is not None, HAS_GVSEQ=g_vseq is not None,
        HAS_GVLAST=g_vlast is not None, HAS_GALAST=adaptive and g_alast is not None, NEED_K=need_k, SID=p.sid,
        BLOCK=_BLOCK, **_launch_opts(),
    )
    return gx, (gv0 if given_v0 else None), (ga0 if adaptive else None), gk_part.sum(), gvth_part.sum()
