"""NiNformer classifier with the paper's CIFAR-10 default: ``ninformer_cifar`` (2.65M parameters).

Choices not fixed by the paper's text (documented in docs/mixers.md): patch embedding by a
strided conv, no positional embedding, final LayerNorm, mean pooling over tokens.
"""

from __future__ import annotations

from typing import Any

from neurostep.mixers.ninformer import NiNformer
from neurostep.models._inputs import image_input
from neurostep.registry import register_model


@register_model("ninformer_cifar", family="ninformer", paper_params=2.65e6,
                small_kwargs=dict(img_size=8, patch_size=2, dim=16, d_ffn=24, depth=2),
                example_input=image_input(), note="CIFAR-10: patch 4, d 256, d_ffn 512, 4 layers")
def ninformer_cifar(**kwargs: Any) -> NiNformer:
    """NiNformer for 32x32 CIFAR-10 ``(B, 3, 32, 32) -> (B, 10)``; kwargs override the config."""
    cfg: dict[str, Any] = dict(img_size=32, patch_size=4, num_classes=10, dim=256, d_ffn=512, depth=4)
    return NiNformer(**{**cfg, **kwargs})
