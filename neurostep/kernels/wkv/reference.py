"""RWKV-4 WKV in plain torch: the ground truth the fused backends are tested against.

All functions here take ``w`` already as the *decay* ``w = -exp(time_decay)`` (shape ``(C,)``,
negative), ``u = time_first`` ``(C,)``, ``k, v`` ``(B, T, C)`` and the numerically stable
state ``(aa, bb, pp)``, each ``(B, C)``. With ``A = aa * exp(pp)`` and ``B = bb * exp(pp)`` the
recurrence is (SpikeGPT / RWKV-4)::

    y_t = (A_{t-1} + e^{u + k_t} v_t) / (B_{t-1} + e^{u + k_t})
    A_t = e^w A_{t-1} + e^{k_t} v_t,        B_t = e^w B_{t-1} + e^{k_t}

and is evaluated in the max-shifted form below, so that no exponent ever exceeds 0.

Backend contract shared with ``cpu.py`` and ``triton.py`` (contiguous tensors, compute dtype
fp32 or fp64):

- ``forward(w, u, k, v, aa, bb, pp, save_history) -> (y, aa_T, bb_T, pp_T, hist)``; ``hist`` is
  ``(3, B, T, C)``, the state *before* each step (what the backward needs), or an empty
  ``(3, 0, 0, 0)`` tensor when ``save_history`` is false.
- ``backward(w, u, k, v, y, hist, aa_T, bb_T, gy, g_aa, g_bb, g_pp) -> (gw, gu, gk, gv, g_aa0,
  g_bb0, g_pp0)`` with ``gw, gu`` of shape ``(B, C)`` (per-sequence partial sums, summed over B
  by the caller) and the gradient w.r.t. the decay ``w`` itself (not ``time_decay``).
"""

from __future__ import annotations

import torch

PP_INIT = -1e38  # "no history yet": exp(PP_INIT - anything finite) underflows to exactly 0


def step(w: torch.Tensor, u: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, aa: torch.Tensor,
         bb: torch.Tensor, pp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token of the stable recurrence (differentiable with autograd).

    ``w, u``: (C,); ``k_t, v_t, aa, bb, pp``: (B, C). Returns ``(y_t, aa, bb, pp)``, each (B, C).
    """
    ww = u + k_t
    p = torch.maximum(pp, ww)
    e1 = torch.exp(pp - p)
    e2 = torch.exp(ww - p)
    y = (e1 * aa + e2 * v_t) / (e1 * bb + e2)
    ww = w + pp
    p = torch.maximum(ww, k_t)
    e1 = torch.exp(ww - p)
    e2 = torch.exp(k_t - p)
    return y, e1 * aa + e2 * v_t, e1 * bb + e2, p


def scan(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor,
         pp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole sequence as a plain time loop (differentiable with autograd).

    ``k, v``: (B, T, C). Returns ``(y (B, T, C), aa, bb, pp)`` with the final state.
    """
    ys = []
    for t in range(k.shape[1]):
        y, aa, bb, pp = step(w, u, k[:, t], v[:, t], aa, bb, pp)
        ys.append(y)
    return torch.stack(ys, dim=1), aa, bb, pp


def forward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor,
            pp: torch.Tensor, save_history: bool) -> tuple[torch.Tensor, ...]:
    """Backend forward: see the module docstring for the contract."""
    B, T, C = k.shape
    hist = k.new_empty((3, B, T, C) if save_history else (3, 0, 0, 0))
    ys = []
    for t in range(T):
        if save_history:
            hist[0, :, t], hist[1, :, t], hist[2, :, t] = aa, bb, pp
        y, aa, bb, pp = step(w, u, k[:, t], v[:, t], aa, bb, pp)
        ys.append(y)
    return torch.stack(ys, dim=1), aa.clone(), bb.clone(), pp.clone(), hist


def backward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, y: torch.Tensor,
             hist: torch.Tensor, aa_T: torch.Tensor, bb_T: torch.Tensor, gy: torch.Tensor, g_aa: torch.Tensor,
             g_bb: torch.Tensor, g_pp: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Backend backward by reverse-mode differentiation of :func:`scan` from the saved initial state.

    Only ``hist[:, :, 0]`` (the initial state) is used; ``y``, ``aa_T``, ``bb_T`` are accepted
    for the shared signature. Returns ``(gw (B, C), gu (B, C), gk, gv, g_aa0, g_bb0, g_pp0)``.
    """
    B, T, C = k.shape

    def run(wb, ub, kk, vv, aa0, bb0, pp0):
        return scan(wb, ub, kk, vv, aa0, bb0, pp0)

    # torch.func.vjp, not torch.autograd: custom-op implementations run below the autograd
    # dispatch key, where a plain autograd graph is not recorded. w and u are expanded to
    # per-sequence copies so that their gradients come out per batch row (B, C).
    primals = (w.expand(B, C).contiguous(), u.expand(B, C).contiguous(), k, v, hist[0, :, 0], hist[1, :, 0],
               hist[2, :, 0])
    _, vjp_fn = torch.func.vjp(run, *primals)
    return tuple(vjp_fn((gy, g_aa, g_bb, g_pp)))
