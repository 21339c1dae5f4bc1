"""Linear layer on spike (mostly zero) inputs, pure torch: the ground truth of every backend.

``y = x @ weight.T + bias`` with ``x (R, K)`` (rows are tokens, time steps and batch flattened),
``weight (O, K)``, ``bias (O,)`` or None. The function is an ordinary linear layer; backends differ
only in how they exploit zeros in ``x``. Every backend exports ``forward``, ``backward`` and
``LISTS_EVENTS`` with these signatures, on contiguous tensors of one dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neurostep.kernels import synapse_op

LISTS_EVENTS = False
"""This backend keeps no event lists (``synapse_op``)."""


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x ``(R, K)``, weight ``(O, K)``, bias ``(O,)`` or None. Returns ``y (R, O)`` and the event lists of ``x``
    (``synapse_op``), here empty."""
    return F.linear(x, weight, bias), *synapse_op.empty_event_lists(x, x.shape[0], False)


def backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool,
             needs: tuple[bool, bool, bool], lists: tuple[torch.Tensor, ...]
             ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(dx (R, K), dweight (O, K), dbias (O,))`` from ``grad_y (R, O)``; None where ``needs``
    (for x, weight, bias) is False or there is no bias. ``lists`` (the forward's) are not read."""
    dx = grad_y @ weight if needs[0] else None
    dw = grad_y.t() @ x if needs[1] else None
    db = grad_y.sum(0) if (has_bias and needs[2]) else None
    return dx, dw, db
