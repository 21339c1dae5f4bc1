"""CRATE classifiers with the paper's configs (patch 16, 224px): ``crate_tiny`` .. ``crate_large``,
and the overcomplete CRATE-alpha variants ``crate_alpha_*`` (no paper count is checked for them).
"""

from __future__ import annotations

from typing import Any

from neurostep.mixers.crate import CRATE
from neurostep.models._inputs import image_input
from neurostep.registry import register_config

_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=384, depth=12, num_heads=6),
    "small": dict(dim=576, depth=12, num_heads=12),
    "base": dict(dim=768, depth=12, num_heads=12),
    "large": dict(dim=1024, depth=24, num_heads=16),
}
_PAPER_PARAMS = {"tiny": 6.09e6, "small": 13.12e6, "base": 22.80e6, "large": 77.64e6}
_SMALL = dict(img_size=16, patch_size=4, dim=24, depth=2, num_heads=3, num_classes=5)


_ALPHA: dict[str, Any] = dict(overcomplete=4, ista_steps=2)

for _size, _config in _CONFIGS.items():
    for _name, _extra in ((f"crate_{_size}", {}), (f"crate_alpha_{_size}", _ALPHA)):
        register_config(_name, CRATE, {**_config, **_extra}, family="crate",
                        paper_params=None if _extra else _PAPER_PARAMS[_size], small_kwargs=_SMALL,
                        example_input=image_input(),
                        note="CRATE-alpha: overcomplete 4x dictionary, 2 ISTA steps, residual" if _extra else "",
                        doc=f"{_name}: CRATE ``(B, 3, 224, 224) -> (B, num_classes)``; kwargs override the config.")
