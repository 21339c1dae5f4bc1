"""CRATE classifiers with the paper's configs (patch 16, 224px): ``crate_tiny`` .. ``crate_large``,
and the overcomplete CRATE-alpha variants ``crate_alpha_*`` (no paper count is checked for them).
"""

from __future__ import annotations

from typing import Any

import torch

from neurostep.mixers.crate import CRATE
from neurostep.registry import register_model

_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=384, depth=12, num_heads=6),
    "small": dict(dim=576, depth=12, num_heads=12),
    "base": dict(dim=768, depth=12, num_heads=12),
    "large": dict(dim=1024, depth=24, num_heads=16),
}
_PAPER_PARAMS = {"tiny": 6.09e6, "small": 13.12e6, "base": 22.80e6, "large": 77.64e6}
_SMALL = dict(img_size=16, patch_size=4, dim=24, depth=2, num_heads=3, num_classes=5)


def _image_input(model: CRATE, batch: int) -> torch.Tensor:
    return torch.randn(batch, model.in_chans, model.img_size, model.img_size)


def _make(size: str, alpha: bool) -> None:
    name = f"crate_alpha_{size}" if alpha else f"crate_{size}"
    extra: dict[str, Any] = dict(overcomplete=4, ista_steps=2) if alpha else {}

    @register_model(name, family="crate", paper_params=None if alpha else _PAPER_PARAMS[size],
                    small_kwargs=_SMALL, example_input=_image_input,
                    note="CRATE-alpha: overcomplete 4x dictionary, 2 ISTA steps, residual" if alpha else "")
    def factory(**kwargs: Any) -> CRATE:
        return CRATE(**{**_CONFIGS[size], **extra, **kwargs})

    factory.__name__ = name
    factory.__doc__ = f"{name}: CRATE ``(B, 3, 224, 224) -> (B, num_classes)``; kwargs override the config."


for _size in _CONFIGS:
    _make(_size, alpha=False)
    _make(_size, alpha=True)
