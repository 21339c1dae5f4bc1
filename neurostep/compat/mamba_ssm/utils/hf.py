"""``mamba_ssm.utils.hf``: load a config / state_dict from the Hugging Face hub (or its local cache).

Mirrors mamba-ssm (``mamba_ssm/utils/hf.py`` at e9594ce; Apache-2.0). Needs ``transformers``; imported
when called, so ``import mamba_ssm`` stays light.
"""

from __future__ import annotations

import json

import torch

__all__ = ["load_config_hf", "load_state_dict_hf"]


def _cached_file(model_name, filename):
    try:
        from transformers.utils.hub import cached_file
    except ImportError as exc:  # pragma: no cover - transformers is optional
        raise ImportError(f"loading {model_name!r} from the hub needs transformers ({exc})") from exc
    return cached_file(model_name, filename, _raise_exceptions_for_missing_entries=False)


def load_config_hf(model_name):
    resolved_archive_file = _cached_file(model_name, "config.json")
    with open(resolved_archive_file) as f:
        return json.load(f)


def load_state_dict_hf(model_name, device=None, dtype=None):
    # If not fp32, then we don't want to load directly to the GPU
    mapped_device = "cpu" if dtype not in [torch.float32, None] else device
    resolved_archive_file = _cached_file(model_name, "pytorch_model.bin")
    state_dict = torch.load(resolved_archive_file, map_location=mapped_device, weights_only=True)
    # Convert dtype before moving to GPU to save memory (upstream returns before doing it; same result
    # once load_state_dict copies into the model's parameters)
    if dtype is not None:
        state_dict = {k: v.to(dtype=dtype) for k, v in state_dict.items()}
    if device is not None:
        state_dict = {k: v.to(device=device) for k, v in state_dict.items()}
    return state_dict
