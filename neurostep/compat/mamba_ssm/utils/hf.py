"""``mamba_ssm.utils.hf``: read a model's ``config.json`` and ``pytorch_model.bin`` from the Hugging Face hub.

Files are resolved through transformers' hub cache, so a repository id or a local directory both
work. transformers is imported on first use only, keeping ``import mamba_ssm`` light.
"""

from __future__ import annotations

import json

import torch

__all__ = ["load_config_hf", "load_state_dict_hf"]


def _resolve(model_name: str, filename: str) -> str:
    """Local path of ``filename`` in the hub repository (or directory) ``model_name``."""
    try:
        from transformers.utils.hub import cached_file
    except ImportError as exc:  # pragma: no cover - transformers is optional
        raise ImportError(f"reading {filename} of {model_name!r} needs transformers: {exc}") from exc
    return cached_file(model_name, filename, _raise_exceptions_for_missing_entries=False)


def load_config_hf(model_name: str) -> dict:
    """The parsed ``config.json`` of ``model_name``."""
    with open(_resolve(model_name, "config.json")) as handle:
        return json.load(handle)


def load_state_dict_hf(model_name: str, device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``pytorch_model.bin``, cast to ``dtype`` and then moved to ``device`` when given.

    A checkpoint that will be cast is read onto the CPU first, so the full-precision copy never
    occupies accelerator memory.
    """
    load_to = device if dtype in (None, torch.float32) else "cpu"
    tensors = torch.load(_resolve(model_name, "pytorch_model.bin"), map_location=load_to, weights_only=True)
    if dtype is not None:
        tensors = {name: t.to(dtype=dtype) for name, t in tensors.items()}
    if device is not None:
        tensors = {name: t.to(device=device) for name, t in tensors.items()}
    return tensors
