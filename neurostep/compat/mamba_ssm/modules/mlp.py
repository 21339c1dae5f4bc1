"""``mamba_ssm.modules.mlp``: the gated feed-forward layer that optionally follows a mixer in a ``Block``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class GatedMLP(nn.Module):
    """``fc2(value * activation(gate))`` with ``value, gate`` the two halves of ``fc1(x)``.

    Args: ``in_features``; ``hidden_features`` (default ``int(8 * in_features / 3)``), rounded up
    to a multiple of ``multiple_of``; ``out_features`` (default ``in_features``); ``activation``
    applied to the gate; ``bias`` of both linears; ``device``, ``dtype``.
    Shapes: ``fc1.weight (2 hidden, in)``, ``fc2.weight (out, hidden)``; ``x (..., in) -> (..., out)``.
    """

    def __init__(
        self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
        activation: Callable[[Tensor], Tensor] = F.silu, bias: bool = False, multiple_of: int = 128,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = int(8 * in_features / 3) if hidden_features is None else hidden_features
        hidden = _round_up(hidden, multiple_of)
        out = in_features if out_features is None else out_features
        self.fc1 = nn.Linear(in_features, 2 * hidden, bias=bias, device=device, dtype=dtype)
        self.activation = activation
        self.fc2 = nn.Linear(hidden, out, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(value * self.activation(gate))
