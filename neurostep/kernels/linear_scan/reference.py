"""Diagonal linear recurrence, pure torch: the ground truth of every backend.

Layout: ``a`` and ``b`` are ``(batch, L, M)`` with time on dim 1 and ``M`` independent lanes
(the public op flattens any trailing lane dims into ``M``)::

    h_t = a_t * h_{t-1} + b_t,   h_{-1} = h0 (zeros if None)

Every backend exports ``forward`` and ``backward`` with these signatures, on contiguous tensors
of one dtype.
"""

from __future__ import annotations

import torch


def forward(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """a, b ``(batch, L, M)``, h0 ``(batch, M)`` or None. Returns every state ``h (batch, L, M)``."""
    h = torch.empty_like(b)
    state = torch.zeros_like(b[:, 0]) if h0 is None else h0
    for t in range(b.shape[1]):
        state = a[:, t] * state + b[:, t]
        h[:, t] = state
    return h


def backward(
    grad_h: torch.Tensor, a: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients ``(da, db, dh0)`` from ``grad_h (batch, L, M)`` (the last state's gradient is
    already added into ``grad_h[:, -1]``) and the forward's states ``h``."""
    length = a.shape[1]
    db = torch.empty_like(grad_h)
    carry = torch.zeros_like(grad_h[:, 0])
    for t in reversed(range(length)):
        # dL/dh_t collects its own gradient and what flows back from h_{t+1} = a_{t+1} h_t + ...
        carry = grad_h[:, t] + carry
        db[:, t] = carry
        carry = carry * a[:, t]
    h_prev = torch.cat([(torch.zeros_like(h[:, :1]) if h0 is None else h0[:, None]), h[:, :-1]], dim=1)
    da = db * h_prev
    return da, db, (carry if h0 is not None else None)
