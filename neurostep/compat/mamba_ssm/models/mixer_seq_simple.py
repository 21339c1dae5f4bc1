"""``mamba_ssm.models.mixer_seq_simple``: ``create_block``, ``MixerModel`` and ``MambaLMHeadModel``.

The language model is ``embedding -> n_layer x Block -> norm_f -> lm_head``, each ``Block`` a
Mamba-1 or Mamba-2 mixer (``ssm_cfg["layer"]``) with an optional ``GatedMLP``. Module tree,
state_dict keys and the initialisation (including its RNG order: every module built with
PyTorch's defaults, then two re-initialisation passes, one by ``MixerModel`` and one by
``MambaLMHeadModel``) are the ones mamba-ssm checkpoints and seeded runs expect. Attention layers
(``attn_layer_idx``) and ``"Mamba3"`` are importable but refuse to be built.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections import namedtuple
from functools import partial
from types import MappingProxyType

import torch
import torch.nn as nn
from torch import Tensor

from neurostep.compat.mamba_ssm.models.config_mamba import MambaConfig
from neurostep.compat.mamba_ssm.modules.block import Block
from neurostep.compat.mamba_ssm.modules.mamba2 import Mamba2
from neurostep.compat.mamba_ssm.modules.mamba3 import Mamba3
from neurostep.compat.mamba_ssm.modules.mamba_simple import Mamba
from neurostep.compat.mamba_ssm.modules.mha import MHA
from neurostep.compat.mamba_ssm.modules.mlp import GatedMLP
from neurostep.compat.mamba_ssm.ops.triton.layer_norm import RMSNorm, layer_norm_fn
from neurostep.compat.mamba_ssm.utils.generation import GenerationMixin, InferenceParams
from neurostep.compat.mamba_ssm.utils.hf import load_config_hf, load_state_dict_hf

__all__ = ["MambaLMHeadModel", "MixerModel", "create_block"]

_MIXERS = MappingProxyType({"Mamba1": Mamba, "Mamba2": Mamba2, "Mamba3": Mamba3})

# the parameters that feed the residual stream, whose init is scaled down with depth
_RESIDUAL_OUTPUTS = ("out_proj.weight", "fc2.weight")

CausalLMOutput = namedtuple("CausalLMOutput", ["logits"])


def create_block(
    d_model: int, d_intermediate: int, ssm_cfg: dict | None = None, attn_layer_idx: list[int] | None = None,
    attn_cfg: dict | None = None, norm_epsilon: float = 1e-5, rms_norm: bool = False, residual_in_fp32: bool = False,
    fused_add_norm: bool = False, layer_idx: int | None = None, device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Block:
    """One residual block of a ``MixerModel``: its mixer, norm(s) and optional MLP, tagged with ``layer_idx``.

    ``ssm_cfg`` (copied, never modified) holds the mixer's keyword arguments; its ``"layer"``
    entry, default ``"Mamba1"``, picks the class. A ``layer_idx`` listed in ``attn_layer_idx``
    gets an ``MHA`` mixer built from ``attn_cfg``. ``d_intermediate > 0`` adds a ``GatedMLP``.
    """
    factory = {"device": device, "dtype": dtype}
    if layer_idx in (attn_layer_idx or ()):
        mixer_cls = partial(MHA, layer_idx=layer_idx, **(attn_cfg or {}), **factory)
    else:
        options = copy.deepcopy(ssm_cfg) if ssm_cfg else {}
        kind = options.pop("layer", "Mamba1")
        if kind not in _MIXERS:
            raise ValueError(f"ssm_cfg['layer'] must be one of {sorted(_MIXERS)}, got {kind!r}")
        mixer_cls = partial(_MIXERS[kind], layer_idx=layer_idx, **options, **factory)
    norm_cls = partial(RMSNorm if rms_norm else nn.LayerNorm, eps=norm_epsilon, **factory)
    if d_intermediate == 0:
        mlp_cls = nn.Identity
    else:
        mlp_cls = partial(GatedMLP, hidden_features=d_intermediate, out_features=d_model, **factory)
    block = Block(d_model, mixer_cls, mlp_cls, norm_cls=norm_cls, fused_add_norm=fused_add_norm,
                  residual_in_fp32=residual_in_fp32)
    block.layer_idx = layer_idx
    return block


def _init_weights(
    module: nn.Module, n_layer: int, initializer_range: float = 0.02, rescale_prenorm_residual: bool = True,
    n_residuals_per_layer: int = 1,
) -> None:
    """Re-initialise one module (called on every module through ``nn.Module.apply``).

    Linear biases are zeroed unless flagged ``_no_reinit``; embeddings are drawn from
    ``N(0, initializer_range^2)``. With ``rescale_prenorm_residual`` a module's own
    ``out_proj.weight`` / ``fc2.weight`` is redrawn with PyTorch's default Linear init and divided
    by ``sqrt(n_residuals_per_layer * n_layer)``, so that the residual stream's variance does not
    grow with depth (the scheme of GPT-2). Redrawing rather than scaling keeps repeated calls
    from compounding.
    """
    if isinstance(module, nn.Linear):
        bias = module.bias
        if bias is not None and not getattr(bias, "_no_reinit", False):
            nn.init.zeros_(bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=initializer_range)
    if not rescale_prenorm_residual:
        return
    divisor = math.sqrt(n_residuals_per_layer * n_layer)
    for name, param in module.named_parameters():
        if name in _RESIDUAL_OUTPUTS:
            nn.init.kaiming_uniform_(param, a=math.sqrt(5))
            with torch.no_grad():
                param.div_(divisor)


class MixerModel(nn.Module):
    """Token ids ``(B, L)`` -> final hidden states ``(B, L, d_model)``: embedding, blocks, final norm.

    The blocks pass a separate residual stream (see ``Block``); the final norm adds the last
    block's output to it. Extra keyword arguments of :meth:`forward` go to every mixer.
    """

    def __init__(
        self, d_model: int, n_layer: int, d_intermediate: int, vocab_size: int, ssm_cfg: dict | None = None,
        attn_layer_idx: list[int] | None = None, attn_cfg: dict | None = None, norm_epsilon: float = 1e-5,
        rms_norm: bool = False, initializer_cfg: dict | None = None, fused_add_norm: bool = False,
        residual_in_fp32: bool = False, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.residual_in_fp32 = residual_in_fp32
        self.embedding = nn.Embedding(vocab_size, d_model, **factory)
        self.fused_add_norm = fused_add_norm
        block_kwargs = dict(d_intermediate=d_intermediate, ssm_cfg=ssm_cfg, attn_layer_idx=attn_layer_idx,
                            attn_cfg=attn_cfg, norm_epsilon=norm_epsilon, rms_norm=rms_norm,
                            residual_in_fp32=residual_in_fp32, fused_add_norm=fused_add_norm, **factory)
        self.layers = nn.ModuleList(create_block(d_model, layer_idx=i, **block_kwargs) for i in range(n_layer))
        self.norm_f = (RMSNorm if rms_norm else nn.LayerNorm)(d_model, eps=norm_epsilon, **factory)
        # with an MLP each block adds two branches to the residual stream
        residual_branches = 1 if d_intermediate == 0 else 2
        self.apply(partial(_init_weights, n_layer=n_layer, **(initializer_cfg or {}),
                           n_residuals_per_layer=residual_branches))

    def allocate_inference_cache(
        self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None, **kwargs: object,
    ) -> dict:
        """``{layer index: that layer's decode states}``."""
        return {i: block.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)
                for i, block in enumerate(self.layers)}

    def forward(
        self, input_ids: torch.Tensor, inference_params: InferenceParams | None = None, **mixer_kwargs: object,
    ) -> torch.Tensor:
        hidden, residual = self.embedding(input_ids), None
        for block in self.layers:
            hidden, residual = block(hidden, residual, inference_params=inference_params, **mixer_kwargs)
        norm = self.norm_f
        if self.fused_add_norm:
            # prenorm=False: only the normalised sum is needed after the last block
            return layer_norm_fn(hidden, norm.weight, norm.bias, eps=norm.eps, residual=residual, prenorm=False,
                                 residual_in_fp32=self.residual_in_fp32, is_rms_norm=isinstance(norm, RMSNorm))
        total = hidden if residual is None else hidden + residual
        return norm(total.to(norm.weight.dtype))


class MambaLMHeadModel(nn.Module, GenerationMixin):
    """``MixerModel`` plus a bias-free ``lm_head`` (tied to the embedding by default): ids ``(B, L)`` -> logits.

    The vocabulary is padded up to a multiple of ``config.pad_vocab_size_multiple``.
    ``initializer_cfg`` overrides the keyword arguments of the weight re-initialisation.
    """

    def __init__(
        self, config: MambaConfig, initializer_cfg: dict | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        factory = {"device": device, "dtype": dtype}
        multiple = config.pad_vocab_size_multiple
        vocab = -(-config.vocab_size // multiple) * multiple
        self.backbone = MixerModel(
            d_model=config.d_model, n_layer=config.n_layer, d_intermediate=config.d_intermediate,
            vocab_size=vocab, ssm_cfg=config.ssm_cfg, attn_layer_idx=config.attn_layer_idx,
            attn_cfg=config.attn_cfg, rms_norm=config.rms_norm, initializer_cfg=initializer_cfg,
            fused_add_norm=config.fused_add_norm, residual_in_fp32=config.residual_in_fp32, **factory)
        self.lm_head = nn.Linear(config.d_model, vocab, bias=False, **factory)
        # a second pass over the whole model (default residual count), as mamba-ssm does
        self.apply(partial(_init_weights, n_layer=config.n_layer, **(initializer_cfg or {})))
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding matrix with ``lm_head`` when ``config.tie_embeddings``."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def allocate_inference_cache(
        self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None, **kwargs: object,
    ) -> dict:
        """``{layer index: that layer's decode states}`` (see ``MixerModel``)."""
        return self.backbone.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)

    def forward(
        self, input_ids: torch.Tensor, position_ids: Tensor | None = None,
        inference_params: InferenceParams | None = None, num_last_tokens: int = 0, **mixer_kwargs: object,
    ) -> CausalLMOutput:
        """Logits ``(B, L, V)`` in a ``CausalLMOutput`` namedtuple (only the last ``num_last_tokens`` when > 0).

        ``position_ids`` is accepted for transformers-style callers and ignored: the mixers are
        recurrent and need no positions.
        """
        hidden = self.backbone(input_ids, inference_params=inference_params, **mixer_kwargs)
        if num_last_tokens > 0:
            hidden = hidden[:, -num_last_tokens:]
        return CausalLMOutput(logits=self.lm_head(hidden))

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
        **kwargs: object,
    ) -> MambaLMHeadModel:
        """Build from the hub repository (or directory) ``pretrained_model_name``: its config, then its weights."""
        model = cls(MambaConfig(**load_config_hf(pretrained_model_name)), device=device, dtype=dtype, **kwargs)
        model.load_state_dict(load_state_dict_hf(pretrained_model_name, device=device, dtype=dtype))
        return model

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``pytorch_model.bin`` (the state_dict) and ``config.json`` into ``save_directory`` (created if needed).

        :meth:`from_pretrained` reads the directory back.
        """
        os.makedirs(save_directory, exist_ok=True)
        torch.save(self.state_dict(), os.path.join(save_directory, "pytorch_model.bin"))
        with open(os.path.join(save_directory, "config.json"), "w") as handle:
            json.dump(vars(self.config), handle, indent=4)
