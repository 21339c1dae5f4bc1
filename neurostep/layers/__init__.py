"""Layers and helpers shared by the blocks, each defined once (timm's ``layers/`` style).

- :mod:`~neurostep.layers.norm`: ``RMSNorm``, ``BatchNormTokens``.
- :mod:`~neurostep.layers.create`: sub-layers by name (``norm_layer="layernorm"``, ``act_layer="gelu"``).
- :mod:`~neurostep.layers.mlp`: the channel ``MLP`` and ``LazyMLP`` (sized on its first input).
- :mod:`~neurostep.layers.drop`: ``DropPath`` (stochastic depth).
- :mod:`~neurostep.layers.tokens`: token and image checks, the ``(H, W)`` grid of a token sequence.
- :mod:`~neurostep.layers.helpers`: size checks (``check_size``, ``to_2tuple``) and head arithmetic.
- :mod:`~neurostep.layers.ssm_init`: initial state-space parameters (log-uniform steps, S4D-Real ``A``).

This package sits below every block package (it imports only torch and ``neurostep.engine``).
"""

from neurostep.layers.create import ACT_LAYERS, NORM_LAYERS, resolve_act, resolve_norm
from neurostep.layers.drop import DropPath
from neurostep.layers.helpers import check_size, default_heads, resolve_head_dim, to_2tuple
from neurostep.layers.mlp import MLP, LazyMLP
from neurostep.layers.norm import BatchNormTokens, RMSNorm
from neurostep.layers.ssm_init import inverse_softplus, log_uniform_steps, s4d_real_log_A
from neurostep.layers.tokens import (
    as_grid,
    check_images,
    check_tokens,
    map_to_tokens,
    resolve_grid,
    tokens_to_map,
)

__all__ = [
    "ACT_LAYERS",
    "MLP",
    "NORM_LAYERS",
    "BatchNormTokens",
    "DropPath",
    "LazyMLP",
    "RMSNorm",
    "as_grid",
    "check_images",
    "check_size",
    "check_tokens",
    "default_heads",
    "inverse_softplus",
    "log_uniform_steps",
    "map_to_tokens",
    "resolve_act",
    "resolve_grid",
    "s4d_real_log_A",
    "resolve_head_dim",
    "resolve_norm",
    "to_2tuple",
    "tokens_to_map",
]
