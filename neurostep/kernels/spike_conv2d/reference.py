"""2-D convolution of spike (mostly zero) inputs, pure torch: the ground truth of every backend.

``y = conv2d(x, weight, bias, stride=1, padding=kernel // 2)`` with ``x (N, C_in, H, W)``,
``weight (C_out, C_in, k, k)`` (odd ``k``), ``bias (C_out,)`` or None: a "same" convolution, as
Spikformer's stem uses. Backends differ only in how they exploit zeros in ``x``. Every backend exports
``forward``, ``backward`` and ``LISTS_EVENTS`` with these signatures, on tensors of one dtype; ``x`` is
contiguous or channels-last, ``y`` and ``grad_y`` are channels-last (the layout the event-driven forward
builds, and the one in which batch norm, max-pooling and the next convolution read it fastest).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neurostep.kernels import synapse_op

LISTS_EVENTS = False
"""This backend keeps no event lists (``synapse_op``)."""


def convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The dense convolution, channels-last: ``(N, C_out, H, W)``."""
    return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2).contiguous(memory_format=torch.channels_last)


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x ``(N, C_in, H, W)``, weight ``(C_out, C_in, k, k)``, bias ``(C_out,)`` or None -> ``(N, C_out, H, W)``,
    channels-last, and the event lists of ``x`` (``synapse_op``), here empty."""
    return convolve(x, weight, bias), *synapse_op.empty_event_lists(x, 0, False)


def backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool,
             needs: tuple[bool, bool, bool], lists: tuple[torch.Tensor, ...]
             ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(dx, dweight, dbias)`` from ``grad_y (N, C_out, H, W)``; None where ``needs`` (for x,
    weight, bias) is False or there is no bias. ``lists`` (the forward's) are not read."""
    pad = weight.shape[-1] // 2
    dx, dw, db = torch.ops.aten.convolution_backward(
        grad_y, x, weight, [weight.shape[0]] if has_bias else None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
        [needs[0], needs[1], has_bias and needs[2]])
    return dx, dw, db
