"""Depthwise causal 1-D convolution, pure torch: the ground truth of every backend.

With ``W = weight.shape[1]`` taps and the input left-padded by ``W - 1`` steps (zeros, or the
``initial_states`` carried from a previous chunk)::

    pre[b, d, t] = bias[d] + sum_k weight[d, k] * xpad[b, d, t + k]
    out = silu(pre) if activation == "silu" else pre

This equals ``conv1d(x, weight[:, None], bias, padding=W-1, groups=D)[..., :L]``. Every backend
exports ``forward`` and ``backward`` with these signatures, on contiguous tensors of one dtype. With
``channels_last``, ``x``, ``out``, their gradients and ``grad_out`` are ``(B, L, D)`` (time before channels:
a Mamba-2 layer's token-major layout); ``weight`` and the history keep their shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from neurostep.engine.layout import swapped_time_and_channels


def padded_input(x: torch.Tensor, width: int, initial_states: torch.Tensor | None) -> torch.Tensor:
    """``(B, D, L) -> (B, D, W - 1 + L)``: the input with its causal history in front."""
    if initial_states is None:
        return F.pad(x, (width - 1, 0))
    return torch.cat([initial_states, x], dim=-1)


def forward_via_channels_first(forward_first: Callable[..., tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
                               *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A channels-last ``(B, L, D)`` forward on a backend's channels-first one: ``x`` transposed to
    ``(B, D, L)``, ``out`` transposed back; ``args`` are the forward's after ``x``, ``channels_last`` excluded."""
    out, saved = forward_first(swapped_time_and_channels(x), *args, False)
    return swapped_time_and_channels(out), saved


def backward_via_channels_first(backward_first: Callable[..., tuple], grad_out: torch.Tensor, x: torch.Tensor,
                                *args: Any) -> tuple:
    """The channels-last backward on a channels-first one, as :func:`forward_via_channels_first`: ``grad_out``
    and ``x`` transposed in, ``dx`` transposed back; the other gradients keep their shapes."""
    dx, *rest = backward_first(swapped_time_and_channels(grad_out), swapped_time_and_channels(x), *args, False)
    return (swapped_time_and_channels(dx), *rest)


def _pre_activation(xpad: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, length: int) -> torch.Tensor:
    pre = torch.zeros_like(xpad[..., :length]) if bias is None else bias[:, None].expand(xpad.shape[0], -1, length)
    for k in range(weight.shape[1]):
        pre = pre + weight[:, k, None] * xpad[..., k:k + length]
    return pre


def forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    initial_states: torch.Tensor | None,
    silu: bool,
    channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``(B, D, L)`` (``(B, L, D)`` with ``channels_last``), weight ``(D, W)``, bias ``(D,)``,
    initial_states ``(B, D, W-1)``.

    Returns ``out`` in ``x``'s layout and the saved tensor (empty: the backward recomputes).
    """
    if channels_last:
        return forward_via_channels_first(forward, x, weight, bias, initial_states, silu)
    length = x.shape[-1]
    pre = _pre_activation(padded_input(x, weight.shape[1], initial_states), weight, bias, length)
    return (F.silu(pre) if silu else pre), x.new_empty(0)


def backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    initial_states: torch.Tensor | None,
    saved: torch.Tensor,
    silu: bool,
    channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(dx, dweight, dbias, dinitial_states)``, None where the input is None; ``dx`` in ``x``'s
    layout."""
    if channels_last:
        return backward_via_channels_first(backward, grad_out, x, weight, bias, initial_states, saved, silu)
    width = weight.shape[1]
    length = x.shape[-1]
    xpad = padded_input(x, width, initial_states)
    g = grad_out
    if silu:
        pre = _pre_activation(xpad, weight, bias, length)
        s = torch.sigmoid(pre)
        g = g * s * (1 + pre * (1 - s))
    dxpad = torch.zeros_like(xpad)
    dweight = torch.empty_like(weight)
    for k in range(width):
        dxpad[..., k:k + length] += weight[:, k, None] * g
        dweight[:, k] = (g * xpad[..., k:k + length]).sum((0, 2))
    dbias = None if bias is None else g.sum((0, 2))
    dinit = None if initial_states is None else dxpad[..., :width - 1].clone()
    return dxpad[..., width - 1:].clone(), dweight, dbias, dinit
