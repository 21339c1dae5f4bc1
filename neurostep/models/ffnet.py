"""FFNet (MetaMixer) classifiers with the paper's configs: ``ffnet_1`` .. ``ffnet_4``.

Structure (stem, downsampling, head) follows the authors' release: a stride-4 stem of two
3x3 ConvBN with GELU (64 channels in between), stride-2 downsampling by a 7x7+3x3 depthwise
pair with channel multiplier 2 followed by ``x + Conv1x1(BN(x))``, and BN + average pool +
Linear as head. Token-mixer kernels are 3, 3, 7, 7 per stage; the channel mixer uses 3x3
(FFNet-1) or 7x7 pairs (FFNet-2..4); layer scale 1e-6 on FFNet-3/4. ``paper_params`` are
the fused (deploy) counts, declared with ``paper_params_fused=True`` so that the registry test
calls ``fuse()`` before counting; train-time counts are 0.1-0.7M higher, as the paper says.
"""

from __future__ import annotations

from typing import Any

from neurostep.mixers.ffnet import FFNet
from neurostep.models._inputs import image_input
from neurostep.registry import register_config

_CONFIGS: dict[str, dict[str, Any]] = {
    "ffnet_1": dict(depths=(2, 2, 8, 2), widths=(80, 160, 320, 640), channel_kernels=(3, 3, 3, 3)),
    "ffnet_2": dict(depths=(3, 3, 15, 3), widths=(88, 176, 352, 704)),
    "ffnet_3": dict(depths=(4, 4, 22, 5), widths=(96, 192, 384, 768), layer_scale=1e-6),
    "ffnet_4": dict(depths=(4, 4, 27, 3), widths=(128, 256, 512, 1024), layer_scale=1e-6),
}
_PAPER_PARAMS = {"ffnet_1": 13.7e6, "ffnet_2": 26.9e6, "ffnet_3": 48.3e6, "ffnet_4": 79.2e6}
_SMALL = dict(depths=(1, 1, 1, 1), widths=(8, 16, 16, 32), stem_dim=8, num_classes=5)


for _name, _config in _CONFIGS.items():
    register_config(_name, FFNet, _config, family="ffnet", paper_params=_PAPER_PARAMS[_name], paper_params_fused=True,
                    small_kwargs=_SMALL, example_input=image_input(32),
                    note="paper_params are fused (deploy) counts at 256px",
                    doc=f"{_name}: FFNet classifier ``(B, 3, H, W) -> (B, num_classes)``; kwargs override the config.")
