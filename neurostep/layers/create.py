"""Sub-layers passed as classes or names (``norm_layer="layernorm"``, ``act_layer="gelu"``), as timm does."""

from __future__ import annotations

from torch import nn

from neurostep.layers.norm import BatchNormTokens, RMSNorm

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
