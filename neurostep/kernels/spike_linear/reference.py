"""Linear layer on spike (mostly zero) inputs, pure torch: the ground truth of every backend.

``y = x @ weight.T + bias`` with ``x (R, K)`` (rows are tokens, time steps and batch flattened),
``weight (O, K)``, ``bias (O,)`` or None. The function is an ordinary linear layer; backends differ
only in how they exploit zeros in ``x``. Every backend exports ``forward`` and ``backward`` with these
signatures, on contiguous tensors of one dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x ``(R, K)``, weight ``(O, K)``, bias ``(O,)`` or None. Returns ``y (R, O)``."""
    return F.linear(x, weight, bias)


def backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool,
             needs: tuple[bool, bool, bool]) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(dx (R, K), dweight (O, K), dbias (O,))`` from ``grad_y (R, O)``; None where ``needs``
    (for x, weight, bias) is False or there is no bias."""
    dx = grad_y @ weight if needs[0] else None
    dw = grad_y.t() @ x if needs[1] else None
    db = grad_y.sum(0) if (has_bias and needs[2]) else None
    return dx, dw, db
