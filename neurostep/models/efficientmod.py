"""EfficientMod hybrid classifiers with the paper's configs: ``efficientmod_xxs``, ``_xs``, ``_s``.

Structural facts from the authors' release: 7x7/4 stem and 3x3/2 downsampling convs, each
followed by LayerNorm; value expansion alternating 1 and r (6 for xxs and s, 4 for xs);
attention blocks with MLP ratio 4 (5 in stage 4 of ``s``); layer scale 1e-4.
"""

from __future__ import annotations

from typing import Any

from neurostep.mixers.efficientmod import EfficientMod
from neurostep.models._inputs import image_input
from neurostep.registry import register_config

_CONFIGS: dict[str, dict[str, Any]] = {
    "efficientmod_xxs": dict(depths=(2, 2, 6, 2), attention_depths=(0, 0, 1, 2), widths=(32, 64, 128, 256),
                             mlp_ratios=(6, 6, 6, 6), att_ratios=(4, 4, 4, 4)),
    "efficientmod_xs": dict(depths=(3, 3, 4, 2), attention_depths=(0, 0, 3, 3), widths=(32, 64, 144, 288),
                            mlp_ratios=(4, 4, 4, 4), att_ratios=(4, 4, 4, 4)),
    "efficientmod_s": dict(depths=(4, 4, 8, 4), attention_depths=(0, 0, 4, 4), widths=(32, 64, 144, 312),
                           mlp_ratios=(6, 6, 6, 6), att_ratios=(4, 4, 4, 5)),
}
_PAPER_PARAMS = {"efficientmod_xxs": 4.7e6, "efficientmod_xs": 6.6e6, "efficientmod_s": 12.9e6}
_SMALL = dict(depths=(2, 1, 1, 1), attention_depths=(0, 0, 1, 1), widths=(8, 8, 16, 16), num_classes=5)


for _name, _config in _CONFIGS.items():
    register_config(_name, EfficientMod, _config, family="efficientmod", paper_params=_PAPER_PARAMS[_name],
                    small_kwargs=_SMALL, example_input=image_input(64),
                    note="ImageNet 224px hybrid (attention in stages 3-4)",
                    doc=f"{_name}: EfficientMod ``(B, 3, H, W) -> (B, num_classes)``; kwargs override the config.")
