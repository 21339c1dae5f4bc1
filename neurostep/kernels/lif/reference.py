"""Reference LIF scan: plain torch time loops, the ground truth of every backend.

Two things live here:

* :func:`lif_loop`, the model written as the papers write it, differentiated by torch autograd
  (only the spike's surrogate derivative is hand-written). Tests compare every backend's
  forward *and explicit backward* against it.
* :func:`forward` / :func:`backward`, the ``reference`` backend of the public op: the same
  model with the backward derived by hand, vectorized over lanes, looping over time. They share
  the signature of ``cpu.py`` and ``triton.py``.

Shapes: ``x`` is ``(T, *lanes)`` for :func:`lif_loop` and ``(T, N)`` (contiguous, fp32/fp64) for
the backend functions; states are ``(*lanes)`` / ``(N,)``.
"""

from __future__ import annotations

import torch

from neurostep.kernels.lif.common import SNN_RESETS, LIFParams
from neurostep.kernels.lif.surrogates import SURROGATES, get_surrogate

_BY_ID = {s.sid: s for s in SURROGATES.values()}


class _Spike(torch.autograd.Function):
    """Heaviside forward (``>= 0``, or ``> 0`` when ``strict``), surrogate derivative backward."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, sid: int, alpha: float, strict: bool) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.sid, ctx.alpha = sid, alpha
        return (z > 0).to(z.dtype) if strict else (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (z,) = ctx.saved_tensors
        return grad * _BY_ID[ctx.sid].derivative(z, ctx.alpha), None, None, None


def spike(z: torch.Tensor, surrogate: str = "sigmoid", alpha: float | None = None,
          strict: bool = False) -> torch.Tensor:
    """Spike function with a surrogate gradient: ``(z >= 0)`` forward (``z > 0`` if ``strict``).

    ``z``: any shape (membrane minus threshold). Returns a tensor of 0/1 in ``z``'s dtype.
    """
    sur = get_surrogate(surrogate)
    return _Spike.apply(z, sur.sid, sur.default_alpha if alpha is None else float(alpha), strict)


# The step equations, written once and used by both lif_loop and the backend forward/backward so
# that every path rounds identically (spikes are compared exactly across backends).

def _charge(v, xt, k, vr_charge, decay_input):
    if decay_input:
        return v + k * (xt - (v - vr_charge))
    return v - k * (v - vr_charge) + xt


def _reset(h, s, theta, vr, hard):
    if hard:
        return s * vr + (1.0 - s) * h
    return h - s * theta


def _snn_charge(v, xt, k, vth, r, mode):
    beta = 1.0 - k
    if mode == 0:  # subtract
        return beta * v + xt - r * vth
    if mode == 1:  # zero
        return beta * ((1.0 - r) * v) + xt
    return beta * v + xt


def lif_loop(x: torch.Tensor, v0: torch.Tensor | None = None, a0: torch.Tensor | None = None, *,
             tau_inv: float | torch.Tensor, v_threshold: float | torch.Tensor, v_reset: float | None = 0.0,
             decay_input: bool = True, detach_reset: bool = False, surrogate: str = "sigmoid",
             alpha: float | None = None, convention: str = "spikingjelly", snn_reset: str = "subtract",
             adapt_rho: float = 0.0, adapt_beta: float = 0.0):
    """Multi-step LIF as a plain autograd-able torch loop (no validation; the ground truth).

    x: ``(T, *lanes)``; v0, a0: ``(*lanes)`` or None; tau_inv, v_threshold: floats or 0-d tensors
    (may require grad). Returns ``(spikes (T,*lanes), v_last (*lanes), a_last (*lanes) or None,
    v_seq (T,*lanes))`` with the semantics of :func:`neurostep.kernels.lif.lif_scan`.
    """
    sur = get_surrogate(surrogate)
    a_val = sur.default_alpha if alpha is None else float(alpha)
    k, vth = tau_inv, v_threshold
    spikes, vseq = [], []
    if convention == "snntorch":
        mode = SNN_RESETS.index(snn_reset)
        v = torch.zeros_like(x[0]) if v0 is None else v0
        for t in range(x.shape[0]):
            r = (v > vth).to(x.dtype).detach()
            h = _snn_charge(v, x[t], k, vth, r, mode)
            spikes.append(_Spike.apply(h - vth, sur.sid, a_val, True))
            vseq.append(h)
            v = h
        return torch.stack(spikes), v, None, torch.stack(vseq)
    hard = v_reset is not None
    vr = float(v_reset) if hard else 0.0
    adaptive = adapt_beta != 0.0 or a0 is not None
    v = (torch.full_like(x[0], vr) if v0 is None else v0)
    a = (torch.zeros_like(x[0]) if a0 is None else a0) if adaptive else None
    for t in range(x.shape[0]):
        h = _charge(v, x[t], k, vr, decay_input)
        if adaptive:
            a_p = adapt_rho * a
            theta = vth + a_p
        else:
            theta = vth
        s = _Spike.apply(h - theta, sur.sid, a_val, False)
        s_r = s.detach() if detach_reset else s
        v = _reset(h, s_r, theta, vr, hard)
        if adaptive:
            a = a_p + adapt_beta * s
        spikes.append(s)
        vseq.append(v)
    return torch.stack(spikes), v, a, torch.stack(vseq)


# ---------------------------------------------------------------------------------------------
# The reference backend of the public op.


def recomputes_h(convention: str, adaptive: bool) -> bool:
    """Whether :func:`backward` recomputes h from x instead of reading a saved one: never here."""
    return False


def forward(x: torch.Tensor, v0: torch.Tensor | None, a0: torch.Tensor | None, p: LIFParams, need_vseq: bool):
    """Forward scan on contiguous ``x (T, N)``; ``v0``, ``a0`` ``(N,)`` in x's dtype, ``v0`` None for a membrane
    at rest (:attr:`LIFParams.rest`).

    Returns ``(spikes (T,N), v_last (N,), a_last (N,) | None, v_seq (T,N) | None, h (T,N),
    theta (T,N) | None)``; ``h`` (pre-reset membrane) and ``theta`` (adaptive threshold) are
    what :func:`backward` needs.
    """
    T = x.shape[0]
    spikes = torch.empty_like(x)
    h_all = torch.empty_like(x)
    vseq = torch.empty_like(x) if need_vseq else None
    theta_all = torch.empty_like(x) if (p.adaptive and not p.snn) else None
    v = p.initial_membrane(v0, x).clone()
    a = a0.clone() if theta_all is not None else None
    with torch.no_grad():
        for t in range(T):
            if p.snn:
                r = (v > p.vth).to(x.dtype)
                h = _snn_charge(v, x[t], p.k, p.vth, r, p.snn_reset)
                s = (h - p.vth > 0).to(x.dtype)
                v = h
            else:
                h = _charge(v, x[t], p.k, p.vr_charge, p.decay_input)
                if theta_all is not None:
                    a_p = p.rho * a
                    theta = p.vth + a_p
                    theta_all[t] = theta
                else:
                    theta = p.vth
                s = (h - theta >= 0).to(x.dtype)
                v = _reset(h, s, theta, p.vr, p.hard)
                if theta_all is not None:
                    a = a_p + p.beta * s
            spikes[t] = s
            h_all[t] = h
            if vseq is not None:
                vseq[t] = v
    return spikes, v, a, vseq, h_all, theta_all


def backward(x: torch.Tensor | None, v0: torch.Tensor | None, h: torch.Tensor, theta: torch.Tensor | None,
             g_spikes: torch.Tensor | None, g_vseq: torch.Tensor | None, g_vlast: torch.Tensor | None,
             g_alast: torch.Tensor | None, p: LIFParams, need_k_grad: bool, need_threshold_grad: bool = True):
    """Hand-derived backward of :func:`forward` (all tensors contiguous, x's compute dtype).

    x: ``(T, N)`` (read only for the tau_inv gradient with ``decay_input``; may be None
    otherwise); v0 ``(N,)``, or None for a membrane that started at rest; h, theta: saved by :func:`forward`;
    g_*: output gradients or None (= zero). Returns ``(gx (T,N), gv0 (N,) | None, ga0 (N,) | None, g_tau_inv (),
    g_v_threshold ())``, ``gv0`` None when ``v0`` is.
    ``need_k_grad`` / ``need_threshold_grad`` False: the caller discards ``g_tau_inv`` / ``g_v_threshold``, and a
    backend may skip computing it and return None in its place (the cpu backend's recomputing kernel does; this
    one computes both).
    """
    T, N = h.shape
    sur = _BY_ID[p.sid]
    given_v0 = v0 is not None
    v0 = p.initial_membrane(v0, h)
    gx = torch.empty_like(h)
    zeros = torch.zeros(N, dtype=h.dtype, device=h.device)
    cv = g_vlast.clone() if g_vlast is not None else zeros.clone()
    adaptive = theta is not None
    ca = (g_alast.clone() if g_alast is not None else zeros.clone()) if adaptive else None
    gk = zeros.clone()
    gvth = zeros.clone()
    for t in range(T - 1, -1, -1):
        ht = h[t]
        gst = g_spikes[t] if g_spikes is not None else zeros
        if p.snn:
            vprev = h[t - 1] if t > 0 else v0
            r = (vprev > p.vth).to(h.dtype)
            z = ht - p.vth
            sg = sur.derivative(z, p.alpha)
            gh = gst * sg + cv
            if g_vseq is not None:
                gh = gh + g_vseq[t]
            gth = -gst * sg
            if p.snn_reset == 0:
                gth = gth - r * gh
            gvth += gth
            gx[t] = gh
            if p.snn_reset == 1:
                cv = gh * p.one_minus_k * (1.0 - r)
                gk -= gh * ((1.0 - r) * vprev)
            else:
                cv = gh * p.one_minus_k
                gk -= gh * vprev
            continue
        th = theta[t] if adaptive else p.vth
        z = ht - th
        s = (z >= 0).to(h.dtype)
        sg = sur.derivative(z, p.alpha)
        gv = cv + g_vseq[t] if g_vseq is not None else cv
        if p.hard:
            dv_dh = 1.0 - s
            gs_tot = gst if p.detach_reset else gst + gv * (p.vr - ht)
        else:
            dv_dh = 1.0
            gs_tot = gst if p.detach_reset else gst - gv * th
        if adaptive:
            gs_tot = gs_tot + p.beta * ca
        gh = gs_tot * sg + gv * dv_dh
        gth = -gs_tot * sg
        if not p.hard:
            gth = gth - s * gv
        if adaptive:
            ca = p.rho * (ca + gth)
        gvth += gth
        gx[t] = gh * p.k if p.decay_input else gh
        if need_k_grad:
            if t > 0:
                th_prev = theta[t - 1] if adaptive else p.vth
                s_prev = (h[t - 1] - th_prev >= 0).to(h.dtype)
                vprev = _reset(h[t - 1], s_prev, th_prev, p.vr, p.hard)
            else:
                vprev = v0
            if p.decay_input:
                gk += gh * (x[t] - vprev + p.vr_charge)
            else:
                gk += gh * (p.vr_charge - vprev)
        cv = gh * p.one_minus_k
    return gx, (cv if given_v0 else None), ca, gk.sum(), gvth.sum()
