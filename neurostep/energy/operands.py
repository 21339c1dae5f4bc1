"""An op's tensor operands as the counter's rules read them: bytes, nesting, activation statistics."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements of ``t`` (an expanded, stride-0 dim holds one element)."""
    if t.layout != torch.strided:   # sparse/nested: no strides; count the logical elements
        return t.numel() * t.element_size()
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size() if t.numel() else 0


def iter_tensors(items: Sequence[Any]) -> Iterator[torch.Tensor]:
    """The tensors among ``items`` and inside their list/tuple members (one level, as aten passes them)."""
    for a in items:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            for b in a:
                if isinstance(b, torch.Tensor):
                    yield b


def first_tensor(out: Any) -> torch.Tensor | None:
    """``out`` itself, or the first tensor of an op's tuple output (values of ``max``, ``var_mean``)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    return None


class ActStats:
    """What the counter knows about an activation operand: binary or not, and its nonzeros."""

    __slots__ = ("binary", "nnz", "numel")

    def __init__(self, binary: bool, nnz: int, numel: int) -> None:
        self.binary = binary
        self.nnz = nnz
        self.numel = numel

    @property
    def rate(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0
