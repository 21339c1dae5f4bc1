"""``mamba_ssm.models.config_mamba``: the hyper-parameters of ``MambaLMHeadModel`` (defaults: mamba-2.8b's)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MambaConfig"]


@dataclass
class MambaConfig:
    """Sizes and switches of a Mamba language model; ``config.json`` of a saved model holds these fields.

    ``d_intermediate``: hidden width of the MLP after each mixer (0 = none). ``ssm_cfg``: keyword
    arguments of every mixer (``layer`` picks ``"Mamba1"`` or ``"Mamba2"``). ``attn_layer_idx`` /
    ``attn_cfg``: attention layers (not offered here). ``vocab_size`` is padded up to a multiple of
    ``pad_vocab_size_multiple``; ``tie_embeddings`` shares the embedding with the output head.
    """

    d_model: int = 2560
    d_intermediate: int = 0
    n_layer: int = 64
    vocab_size: int = 50277
    ssm_cfg: dict = field(default_factory=dict)
    attn_layer_idx: list = field(default_factory=list)
    attn_cfg: dict = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
