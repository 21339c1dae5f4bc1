"""Sub-layers that blocks take as classes or names (``norm_layer="layernorm"``), as timm does."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim (Mamba's residual norm). ``(..., C) -> (..., C)``."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class BatchNormTokens(nn.Module):
    """BatchNorm1d over the channel dim of token tensors ``(..., N, C)`` (Spikformer's BN)."""

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return self.bn(x.reshape(-1, shape[-1])).reshape(shape)


NORM_LAYERS: dict[str, type[nn.Module]] = {
    "layernorm": nn.LayerNorm,
    "rmsnorm": RMSNorm,
    "batchnorm": BatchNormTokens,
    "identity": nn.Identity,
}

ACT_LAYERS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def _resolve(kind: str, table: dict[str, type[nn.Module]], layer: str | type[nn.Module]) -> type[nn.Module]:
    if isinstance(layer, str):
        key = layer.lower().replace("_", "")
        if key not in table:
            raise ValueError(f"unknown {kind} {layer!r}; choose one of {sorted(table)} or pass a class")
        return table[key]
    if isinstance(layer, type) and issubclass(layer, nn.Module):
        return layer
    raise TypeError(f"{kind} must be a name or an nn.Module class, got {layer!r}")


def resolve_norm(layer: str | type[nn.Module]) -> type[nn.Module]:
    """Return a norm class from a name in ``NORM_LAYERS`` or a class."""
    return _resolve("norm_layer", NORM_LAYERS, layer)


def resolve_act(layer: str | type[nn.Module]) -> type[nn.Module]:
    """Return an activation class from a name in ``ACT_LAYERS`` or a class."""
    return _resolve("act_layer", ACT_LAYERS, layer)
