"""Input checks for token tensors ``(B, N, C)`` and image batches, and the 2D grid ``(H, W)`` of tokens.

Mixers that work on a map (depthwise convolutions, 2D scans, windows) take the grid from the
call, from construction, or a square ``N``, in that order: :func:`resolve_grid`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from neurostep.engine.checks import check_nonempty, check_tensor
from neurostep.layers.helpers import to_2tuple


def check_tokens(x: object, dim: int, name: str = "x") -> torch.Tensor:
    """Check a token tensor ``(B, N, C)`` with ``C == dim`` and at least one token; returns ``x``."""
    x = check_tensor(name, x, ndim=3)
    if x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (B, N, {dim}) (C={dim}, the module's dim), got {tuple(x.shape)}")
    check_nonempty(name, x, 1, "tokens")
    return x


def check_images(x: object, channels: int, size: int | None = None, name: str = "x") -> torch.Tensor:
    """Check an image batch ``(B, channels, H, W)``, square ``size x size`` when ``size`` is given."""
    x = check_tensor(name, x, ndim=4)
    if size is None:
        if x.shape[1] != channels:
            raise ValueError(f"{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")
    elif tuple(x.shape[1:]) != (channels, size, size):
        raise ValueError(f"{name} must have shape (B, {channels}, {size}, {size}), got {tuple(x.shape)}")
    return x


def as_grid(grid_size: int | Sequence[int] | None, name: str = "grid_size") -> tuple[int, int] | None:
    """Normalize ``grid_size`` to ``(H, W)`` (an int means a square grid) or ``None``."""
    return None if grid_size is None else to_2tuple(grid_size, name)


def resolve_grid(num_tokens: int, grid_size: int | Sequence[int] | None,
                 default: tuple[int, int] | None = None, who: str = "mixer") -> tuple[int, int]:
    """The ``(H, W)`` grid of ``num_tokens`` tokens laid out row-major.

    Order of preference: the call's ``grid_size``, the construction-time ``default`` (when it
    fits the token count) and a square grid. Anything that does not multiply out to
    ``num_tokens`` raises ``ValueError``.
    """
    hw = as_grid(grid_size)
    if hw is None and default is not None and default[0] * default[1] == num_tokens:
        hw = default
    if hw is None:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"{who} needs a 2D grid: {num_tokens} tokens are not a square; pass grid_size=(H, W)")
        hw = (side, side)
    if hw[0] * hw[1] != num_tokens:
        raise ValueError(f"{who}: grid_size {hw} has {hw[0] * hw[1]} cells, which does not match the "
                         f"{num_tokens} tokens of the input")
    return hw


def tokens_to_map(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B, H*W, C) -> (B, C, H, W)``."""
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1])


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W, C)``."""
    return x.flatten(2).transpose(1, 2)
