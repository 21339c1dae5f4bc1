"""Memory layouts of tensors whose elements an op treats independently (the lanes of a scan).

An op that runs the same recurrence in every lane does not care in which order the lanes lie in
memory, only that its input, state and outputs agree on it. Taking a tensor in its own memory order
(contiguous, channels-last, any permutation of its dims) instead of copying it to the contiguous order
saves a copy on the way in and another on the way out: the channels-last activations of a
convolutional stage then stay channels-last through the neuron, and the max-pooling and convolution
that follow read them without a layout change.
"""

from __future__ import annotations

import torch


def dense_strides(t: torch.Tensor) -> tuple[int, ...] | None:
    """``t``'s strides when its elements fill one block of memory without gaps or overlap, in any order of
    its dims (contiguous, channels-last, a transpose), else None (an expanded or sliced view)."""
    expected = 1
    for size, stride in sorted(((s, st) for s, st in zip(t.shape, t.stride()) if s != 1), key=lambda p: p[1]):
        if stride != expected:
            return None
        expected *= size
    return tuple(t.stride())


def same_layout(shape: tuple[int, ...] | torch.Size, a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether strides ``a`` and ``b`` place the elements of a tensor of ``shape`` alike (the stride of a
    dim of size 1 does not matter)."""
    return all(size == 1 or sa == sb for size, sa, sb in zip(shape, a, b))


def in_layout(t: torch.Tensor, strides: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` in ``dtype`` laid out with ``strides`` (dense strides of ``t.shape``): ``t`` itself when it
    already is, else a copy (differentiable, like any ``copy_``)."""
    dtype = t.dtype if dtype is None else dtype
    if t.dtype == dtype and same_layout(t.shape, tuple(t.stride()), strides):
        return t
    return torch.empty_strided(t.shape, strides, dtype=dtype, device=t.device).copy_(t)


def channels_last_layout(x: torch.Tensor) -> bool:
    """Whether ``x (B, D, L)`` has its channels, not its time steps, contiguous: the transpose of a token-major
    ``(B, L, D)`` block, which the causal convolution and the selective scan read as such (their kernels then
    run on ``x.transpose(1, 2)`` without a transposing copy)."""
    return not x.is_contiguous() and x.stride(1) == 1 and x.shape[1] > 1


def swapped_time_and_channels(t: torch.Tensor | None) -> torch.Tensor | None:
    """A ``(B, L, D)`` tensor as a contiguous ``(B, D, L)`` one, or back (None stays None): how a backend
    whose kernels read channels-first blocks runs a channels-last call (transposed copies in and out)."""
    return None if t is None else t.transpose(1, 2).contiguous()


__all__ = ["channels_last_layout", "dense_strides", "in_layout", "same_layout", "swapped_time_and_channels"]
