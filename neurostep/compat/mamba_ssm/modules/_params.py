"""Parameter builders shared by the compat ``Mamba`` and ``Mamba2`` (initial values as mamba-ssm's)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from neurostep.layers.ssm_init import inverse_softplus, log_uniform_steps

__all__ = ["cached_decode_states", "depthwise_conv", "inverse_softplus", "log_uniform_steps", "no_weight_decay"]


def depthwise_conv(channels: int, width: int, bias: bool, factory: dict) -> nn.Conv1d:
    """A per-channel conv of ``width`` taps, left-padded by ``width - 1`` (its output is trimmed to be causal)."""
    return nn.Conv1d(channels, channels, width, padding=width - 1, groups=channels, bias=bias, **factory)


def no_weight_decay(values: Tensor) -> nn.Parameter:
    """``values`` as a Parameter flagged ``_no_weight_decay`` (read by mamba-ssm's optimiser grouping)."""
    param = nn.Parameter(values)
    param._no_weight_decay = True
    return param


def cached_decode_states(layer: nn.Module, cache: dict, batch_size: int, initialize_states: bool,
                         ssm_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``layer``'s decode states in ``cache`` (an ``InferenceParams.key_value_memory_dict``).

    Created by ``layer._zero_states`` when missing, and recreated when the cached ones were made for
    another batch size; ``initialize_states`` zeroes reused ones.
    """
    if layer.layer_idx is None:
        raise ValueError(f"a {type(layer).__name__} layer needs a layer_idx to keep decode states in "
                         "inference_params")
    states = cache.get(layer.layer_idx)
    if states is not None and states[0].shape[0] == batch_size:
        if initialize_states:
            for s in states:
                s.zero_()
        return states
    states = layer._zero_states(batch_size, layer.conv1d.weight.device, layer.conv1d.weight.dtype, ssm_dtype)
    cache[layer.layer_idx] = states
    return states
