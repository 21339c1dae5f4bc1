"""Spikformer family: the paper's ImageNet and CIFAR configs (the ``spikformer_ssa`` mixer is in
:mod:`neurostep.models.mixers`).

Parameter counts (paper, ImageNet 224, T=4): 8-384 16.81M, 8-512 29.68M, 8-768 66.34M;
CIFAR-10 4-384 (patch 4, 12 heads) 9.32M. The structure here is spikingjelly 2.0's port of the
official code (bias-free projections, no unused LayerNorms); see docs/spiking-transformers.md for
how each count arises.
"""

from __future__ import annotations

from typing import Any

import torch

from neurostep.neuro.spikformer import Spikformer
from neurostep.registry import register_model

FAMILY = "spikformer"

# Tiny instance for smoke tests: 32x32 input, D=32, one block, T=2.
SMALL: dict[str, Any] = {"img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2, "T": 2, "num_classes": 10}


def _example_input(model: Spikformer, batch: int = 2) -> torch.Tensor:
    """A random image batch ``(batch, C, H, W)`` at the model's nominal size."""
    return torch.randn(batch, model.in_channels, *model.img_size)


def _build(config: dict[str, Any], overrides: dict[str, Any]) -> Spikformer:
    return Spikformer(**{**config, **overrides})


_IMAGENET = {"img_size": 224, "patch_size": 16, "in_channels": 3, "num_classes": 1000, "depth": 8, "num_heads": 8,
             "mlp_ratio": 4.0, "T": 4, "attn_order": "q(kv)"}
_CIFAR = {"img_size": 32, "patch_size": 4, "in_channels": 3, "num_classes": 10, "depth": 4, "num_heads": 12,
          "mlp_ratio": 4.0, "T": 4, "attn_order": "(qk)v"}


@register_model("spikformer_8_384", family=FAMILY, paper_params=16.81e6, small_kwargs=SMALL,
                example_input=_example_input, note="ImageNet, 224 -> 196 tokens, T=4")
def spikformer_8_384(**kwargs: Any) -> Spikformer:
    """Spikformer-8-384 (ImageNet)."""
    return _build({**_IMAGENET, "embed_dim": 384}, kwargs)


@register_model("spikformer_8_512", family=FAMILY, paper_params=29.68e6, small_kwargs=SMALL,
                example_input=_example_input, note="ImageNet, 224 -> 196 tokens, T=4")
def spikformer_8_512(**kwargs: Any) -> Spikformer:
    """Spikformer-8-512 (ImageNet)."""
    return _build({**_IMAGENET, "embed_dim": 512}, kwargs)


@register_model("spikformer_8_768", family=FAMILY, paper_params=66.34e6, small_kwargs=SMALL,
                example_input=_example_input, note="ImageNet, 224 -> 196 tokens, T=4")
def spikformer_8_768(**kwargs: Any) -> Spikformer:
    """Spikformer-8-768 (ImageNet)."""
    return _build({**_IMAGENET, "embed_dim": 768}, kwargs)


@register_model("spikformer_4_384_cifar", family=FAMILY, paper_params=9.32e6, small_kwargs=SMALL,
                example_input=_example_input, note="CIFAR-10, patch 4, 32 -> 64 tokens, 12 heads, T=4")
def spikformer_4_384_cifar(**kwargs: Any) -> Spikformer:
    """Spikformer-4-384 (CIFAR-10; the official CIFAR code computes ``(Q K^T) V``)."""
    return _build({**_CIFAR, "embed_dim": 384}, kwargs)


@register_model("spikformer_scs_8_384", family=FAMILY, small_kwargs=SMALL, example_input=_example_input,
                note="Spikformer V2-style convolutional stem (stride-2 convs; V2's stem is unpublished)")
def spikformer_scs_8_384(**kwargs: Any) -> Spikformer:
    """Spikformer-8-384 with the V2-style convolutional stem (no paper count: its details are unverified)."""
    return _build({**_IMAGENET, "embed_dim": 384, "stem": "scs"}, kwargs)


@register_model("spikformer_tiny", family=FAMILY, small_kwargs={"T": 2}, example_input=_example_input,
                note="tiny test config: CIFAR-size input, D=64, 2 blocks, 4 heads")
def spikformer_tiny(**kwargs: Any) -> Spikformer:
    """A tiny Spikformer for tests and quick experiments (32x32 input, patch 4, D=64, 2 blocks)."""
    return _build({**_CIFAR, "embed_dim": 64, "depth": 2, "num_heads": 4, "T": 2}, kwargs)
