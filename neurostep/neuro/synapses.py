"""Synapses whose input is spikes, computed from the spikes' nonzeros: ``SpikeLinear``, ``SpikeConv2d``."""

from __future__ import annotations

import torch
from torch import nn

from neurostep.kernels.spike_conv2d import spike_conv2d
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


class SpikeConv2d(nn.Conv2d):
    """``nn.Conv2d`` for a spiking layer's input ``(N, C_in, H, W) -> (N, C_out, H', W')``.

    The same parameters, state dict and function as ``nn.Conv2d``. A "same" convolution (stride 1, odd
    square kernel, padding ``k // 2``, one group, no dilation) runs
    :func:`~neurostep.kernels.spike_conv2d.spike_conv2d`, whose CPU kernel adds the weights each nonzero
    input reaches into the output (the forward and the weight gradient then cost in proportion to the
    spikes); any other configuration, device or dtype is ``nn.Conv2d``'s own forward. The event-driven
    path returns its output channels-last (the layout it builds, and the one batch norm, pooling and the
    next convolution read fastest), as ``nn.Conv2d`` does for a channels-last input: reshape it rather
    than ``view`` it.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, bias: as ``nn.Conv2d``.
        backend: ``"auto"``, ``"cpu"`` or ``"reference"`` (the op's backends).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, backend: str = "auto") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.backend = backend

    def _same(self) -> bool:
        k = self.kernel_size[0]
        return (self.kernel_size == (k, k) and k % 2 == 1 and self.stride == (1, 1) and self.padding == (k // 2, k // 2)
                and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or not self._same():
            return super().forward(x)
        return spike_conv2d(x, self.weight, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"
