"""Decayed linear attention, pure torch, one token at a time: the ground truth of every backend.

Per batch row and head, with the state ``S`` a ``(K, V)`` matrix::

    S_t = exp(g_t) S_{t-1} + k_t^T v_t,      o_t = scale * q_t S_t,      S_{-1} = h0 (zeros if None)

This is the recurrence of Mamba-2's SSD with a scalar decay per head (``g = dt * A``, ``k = B``,
``v = dt * x``, ``q = C``; Dao and Gu 2024, eq. 2 with ``A_t = exp(dt_t A)``), of RetNet and
Lightning Attention-2 with one constant decay per head, and of flash-linear-attention's
``simple_gla``.

The contract every backend module (``reference``, ``cpu``, ``triton``) implements, on contiguous
tensors of one dtype (float32, or float64 for float64 inputs)::

    forward(q, k, v, g, h0, scale, chunk_size, v_scale=None) -> (o, final_state, saved)
    backward(grad_o, grad_final, q, k, v, g, h0, final_state, saved, scale, chunk_size, v_scale=None)
        -> (dq, dk, dv, dg, dh0 or None, dv_scale or None)
    saved_shapes(q_shape, v_shape, chunk_size) -> tuple of SAVED_TENSORS shapes

with ``q, k (B, L, G, K)`` (``G`` groups, dividing ``H``: head ``h`` reads group ``h // (H / G)``; ``G = H``
gives each head its own), ``v (B, L, H, V)``, ``g (B, L, H)`` (the log-decays, ``<= 0``), ``h0`` and
``final_state (B, H, K, V)`` (``h0`` may be None), ``o (B, L, H, V)``, ``v_scale (B, L, H)`` or None: a
factor on each step's and head's ``v`` (the recurrence then reads ``v_scale_t * v_t``: Mamba-2's
``dt * x``); ``dv_scale`` is None where ``v_scale`` is; ``dq`` and ``dk`` have q's shape (summed over the heads of
a group); ``grad_final`` may be None (no gradient reaches the final state). ``saved`` is a tuple of
:data:`SAVED_TENSORS` tensors, of the shapes ``saved_shapes`` gives, that the backend's forward hands to its
own backward (empty here); a backend that keeps q, k and v in it (the cpu backend keeps its chunked copies)
gets, in its backward, q, k and v as tensors with no elements, of shapes ``(B, L, G, 0)`` and
``(B, L, H, 0)``, so that autograd holds them once (``v`` comes whole where ``v_scale``'s gradient is wanted: it reads
the unscaled ``v``; else that backend returns None for it).
``chunk_size`` is the length of the chunks a chunked backend works on; this backend steps token by
token and ignores it.
"""

from __future__ import annotations

import torch

SAVED_TENSORS = 5
"""How many tensors every backend's forward returns as ``saved`` (a backend that needs fewer returns
empty ones): the op's schema has one output per saved tensor."""
CHUNK_SIZE = 64
"""Not used by this backend (it steps token by token); the chunk size the cost formula counts when
the reference runs (as on the meta device)."""


def scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, h0: torch.Tensor,
         scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence as a plain time loop (differentiable with autograd). Returns ``(o, S_last)``."""
    state = h0
    outs = []
    for t in range(q.shape[1]):
        # S_t = exp(g_t) S_{t-1} + k_t^T v_t  (an outer product per batch row and head)
        state = torch.exp(g[:, t])[:, :, None, None] * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        # o_t = scale * q_t S_t
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    return torch.stack(outs, dim=1), state


def per_head(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, L, G, D) -> (B, L, H, D)``: group ``h // (H / G)`` for head ``h`` (``x`` itself when ``G = H``)."""
    groups = x.shape[2]
    return x if groups == heads else x.repeat_interleave(heads // groups, dim=2)


def _initial(q: torch.Tensor, v: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    B, _, H, V = v.shape
    return q.new_zeros(B, H, q.shape[-1], V) if h0 is None else h0


def scaled_v(v: torch.Tensor, v_scale: torch.Tensor | None) -> torch.Tensor:
    """The values the recurrence reads: ``v * v_scale[..., None]``, or ``v`` when ``v_scale`` is None."""
    return v if v_scale is None else v * v_scale[..., None]


def _scan_groups(q, k, v, g, h0, scale, v_scale=None):
    H = v.shape[2]
    return scan(per_head(q, H), per_head(k, H), scaled_v(v, v_scale), g, h0, scale)


def saved_shapes(q_shape: tuple[int, ...], v_shape: tuple[int, ...],
                 chunk_size: int) -> tuple[tuple[int, ...], ...]:
    """This backend saves nothing of its own (its backward reads q, k and v): empty tensors."""
    return ((0,),) * SAVED_TENSORS


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None,
            scale: float, chunk_size: int, v_scale: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Backend forward: see the module docstring for the contract."""
    o, state = _scan_groups(q, k, v, g, _initial(q, v, h0), scale, v_scale)
    return o, state.clone(), tuple(q.new_empty(0) for _ in range(SAVED_TENSORS))


def backward(grad_o: torch.Tensor, grad_final: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None, final_state: torch.Tensor,
             saved: tuple[torch.Tensor, ...], scale: float, chunk_size: int,
             v_scale: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...]:
    """Backend backward by reverse-mode differentiation of :func:`scan` (it keeps every state: a
    reference, not a kernel). ``final_state`` and ``saved`` are accepted for the shared signature."""
    # torch.func.vjp, not torch.autograd: custom-op implementations run below the autograd
    # dispatch key, where a plain autograd graph is not recorded. The expansion of the groups to heads
    # is inside the differentiated function, so dq and dk come back summed over each group's heads.
    leaves = (q, k, v, g, _initial(q, v, h0)) + ((v_scale,) if v_scale is not None else ())
    _, vjp_fn = torch.func.vjp(lambda q, k, v, g, h0, *s: _scan_groups(q, k, v, g, h0, scale, *s), *leaves)
    grad_final = torch.zeros_like(final_state) if grad_final is None else grad_final
    dq, dk, dv, dg, dh0, *ds = vjp_fn((grad_o, grad_final))
    return dq, dk, dv, dg, (dh0 if h0 is not None else None), (ds[0] if ds else None)
