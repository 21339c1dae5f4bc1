"""Size arguments: checked positive integers, ``(H, W)`` pairs and attention-head arithmetic.

Every constructor that takes a size (``dim``, ``num_heads``, ``seq_len``, a grid, a kernel) checks
it here, so a bad value raises one ``ValueError`` naming the argument instead of a torch error
from deep inside ``nn.Linear`` (``negative dimension -12``, ``float modulo``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any


def check_size(name: str, value: Any) -> int:
    """``value`` as an ``int`` if it is a positive integer, else ``ValueError`` naming ``name``.

    Integers of any kind are accepted (``int``, numpy integers, 0-dim integer tensors: anything
    with ``__index__``); ``bool`` and floats are not, even when whole (``4.0``), because a size
    that arrives as a float is a bug upstream.
    """
    if not isinstance(value, bool):
        try:
            size = operator.index(value)
        except TypeError:
            pass
        else:
            if size > 0:
                return size
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def to_2tuple(value: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """``(H, W)`` from an int (a square) or a pair of positive integers; ``ValueError`` naming ``name``."""
    try:
        pair = (value, value) if isinstance(value, str) else tuple(value)
    except TypeError:  # not iterable: one size for both sides
        pair = (value, value)
    if len(pair) == 2:
        try:
            return check_size(name, pair[0]), check_size(name, pair[1])
        except ValueError:
            pass
    raise ValueError(f"{name} must be a positive integer or a pair (H, W) of them, got {value!r}")


def default_heads(dim: int, head_dim: int = 64) -> int:
    """A head count for ``dim`` channels: about ``dim / head_dim`` heads that divide ``dim``."""
    h = max(1, dim // head_dim)
    while dim % h:
        h -= 1
    return h


def resolve_head_dim(dim: int, num_heads: int, head_dim: int | None) -> int:
    """``head_dim`` if given, else ``dim / num_heads`` (which must divide evenly); sizes are checked."""
    check_size("dim", dim)
    check_size("num_heads", num_heads)
    if head_dim is not None:
        return check_size("head_dim", head_dim)
    if dim % num_heads:
        raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads} (or pass head_dim)")
    return dim // num_heads
