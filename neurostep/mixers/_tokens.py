"""Shared helpers for token mixers: input checks and the token <-> 2D-map reshapes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from neurostep.engine.checks import check_nonempty, check_tensor


def check_tokens(x: object, dim: int, name: str = "x") -> torch.Tensor:
    """Check a token tensor ``(B, N, C)`` with ``C == dim`` and at least one token."""
    x = check_tensor(name, x, ndim=3)
    if x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (B, N, {dim}) (channels = dim), got {tuple(x.shape)}")
    check_nonempty(name, x, 1, "tokens")
    return x


def as_grid(grid_size: int | Sequence[int] | None, name: str = "grid_size") -> tuple[int, int] | None:
    """Normalize ``grid_size`` to ``(H, W)`` (an int means a square grid) or ``None``."""
    if grid_size is None:
        return None
    if isinstance(grid_size, int):
        grid_size = (grid_size, grid_size)
    try:
        h, w = (int(g) for g in grid_size)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair (H, W), got {grid_size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    return h, w


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
        raise ValueError(f"{who}: grid_size {hw} has {hw[0] * hw[1]} cells but the input has {num_tokens} tokens")
    return hw


def tokens_to_map(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B, H*W, C) -> (B, C, H, W)``."""
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1])


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W, C)``."""
    return x.flatten(2).transpose(1, 2)


def default_heads(dim: int, head_dim: int = 64) -> int:
    """A head count for ``dim`` channels: about ``dim / head_dim`` heads that divide ``dim``."""
    h = max(1, dim // head_dim)
    while dim % h:
        h -= 1
    return h


def resolve_head_dim(dim: int, num_heads: int, head_dim: int | None) -> int:
    """``head_dim`` if given, else ``dim / num_heads`` (which must divide evenly)."""
    if head_dim is not None:
        return head_dim
    if dim % num_heads:
        raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads} (or pass head_dim)")
    return dim // num_heads
