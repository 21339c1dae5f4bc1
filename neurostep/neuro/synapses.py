"""``SpikeLinear``: a linear layer whose input is spikes, computed from the spikes' nonzeros."""

from __future__ import annotations

import torch
from torch import nn

from neurostep.kernels.spike_linear import spike_linear


class SpikeLinear(nn.Linear):
    """``nn.Linear`` for a spiking layer's input ``(..., in_features) -> (..., out_features)``.

    The same parameters, state dict and function as ``nn.Linear``; the forward runs
    :func:`~neurostep.kernels.spike_linear.spike_linear`, whose CPU kernel adds up the weight columns
    that the input's nonzeros select (the forward and the weight gradient then cost in proportion to
    the spikes, not to the layer's size). Where no such kernel applies (another device, a dtype other
    than float32/float64, a layer narrower than ``MIN_WIDTH``) it is ``F.linear``.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        backend: ``"auto"``, ``"cpu"`` or ``"reference"`` (the op's backends).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, backend: str = "auto",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spike_linear(x, self.weight, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"
