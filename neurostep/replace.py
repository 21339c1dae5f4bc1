"""Swap the self-attention layers of an existing model for any registered neurostep mixer.

``replace_attention(model, kind, **options)`` finds the self-attention modules it knows,
builds one mixer per layer with ``neurostep.models.create_mixer(kind, dim, num_heads=...,
seq_len=..., grid_size=...)`` and puts it in place behind a small adapter that keeps the
host's call signature and return convention:

============================================  ============================================
host attention                                 adapter keeps
============================================  ============================================
timm ``Attention`` (``VisionTransformer``)     ``attn(x, attn_mask=None, is_causal=False)``
``torch.nn.MultiheadAttention`` (also inside   ``mha(query, key, value, key_padding_mask,``
``nn.TransformerEncoderLayer``)                ``need_weights, attn_mask, ...) -> (y, None)``
Hugging Face ``ViTAttention``                  ``(hidden_states, attention_mask) -> (y, None)``
Hugging Face ``GPT2Attention``                 ``(hidden_states, past_key_values, ...) -> (y, None)``
============================================  ============================================

What is inferred: the width ``dim`` and the head count from the attention module; for vision
transformers the patch grid ``(H, W)`` and the number of prefix (class / register) tokens.

Class tokens: the mixer runs on the patch tokens only, with their grid, so 2D mixers see an
image. Each prefix token's mixer output is the mean of the patch tokens' mixer outputs
(``prefix_mode="mean"``, the default: the class token keeps gathering a global summary of the
image through the residual stream, as attention's class query does) or zero
(``prefix_mode="zero"``: prefix tokens only change in the MLPs).

What cannot be honoured raises ``ValueError`` naming the module: cross-attention (``key`` or
``value`` not the query, ``encoder_hidden_states``), padding masks and arbitrary attention
masks, KV-cache continuation, and a causal host (GPT-2, ``is_causal=True``, a causal mask)
with a mixer that is not causal. The registry declares whether each mixer is, can be or cannot
be causal (``neurostep.models.mixer_causality``) and whether it needs a 2D token grid
(``neurostep.models.mixer_entry(kind).needs_grid``); a causal host gets the mixer's causal form
(``create_mixer(..., causal=True)``), and a 2D mixer that meets a token count with no grid (not
the inferred or given one, and not a square) raises naming the module. A model in which no known
attention is found, or which holds an attention module this function does not know, raises
``TypeError`` naming the module. ``need_weights=True`` returns ``None`` weights (a mixer has no
attention matrix), as ``MultiheadAttention`` does for ``need_weights=False``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neurostep.layers import as_grid, resolve_grid, to_2tuple

__all__ = ["replace_attention"]

_PREFIX_MODES = ("mean", "zero")


# ---------------------------------------------------------------------------------------------
# Adapters


class _MixerCore(nn.Module):
    """A mixer plus the prefix-token and grid handling shared by every adapter. ``(B, T, C) -> (B, T, C)``.

    ``causal`` and ``needs_grid`` are the registry's declarations for the built mixer, not
    guesses from its attributes.
    """

    def __init__(self, mixer: nn.Module, where: str, kind: str, num_prefix_tokens: int,
                 grid_size: tuple[int, int] | None, prefix_mode: str, *, causal: bool, needs_grid: bool) -> None:
        super().__init__()
        self.mixer = mixer
        self.where, self.kind = where, kind
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = grid_size
        self.prefix_mode = prefix_mode
        self.causal, self.needs_grid = causal, needs_grid

    def _grid_for(self, n: int) -> tuple[int, int] | None:
        """The grid handed to the mixer for ``n`` patch tokens: the known grid when it fits; for a 2D
        mixer otherwise a square, else an error naming this module."""
        fits = self.grid_size is not None and self.grid_size[0] * self.grid_size[1] == n
        if not self.needs_grid:
            return self.grid_size if fits else None
        try:
            return resolve_grid(n, None, self.grid_size)
        except ValueError:
            raise self.fail(f"{n} tokens without a 2D grid (not {self.grid_size or 'inferred'} and not a square): "
                            "pass grid_size=(H, W) to replace_attention") from None

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        p = self.num_prefix_tokens
        tokens = x[:, p:] if p else x
        y = self.mixer(tokens, grid_size=self._grid_for(tokens.shape[1]))
        if not p:
            return y
        if self.prefix_mode == "mean":
            prefix = y.mean(1, keepdim=True).expand(-1, p, -1)
        else:
            prefix = y.new_zeros(y.shape[0], p, y.shape[2])
        return torch.cat([prefix, y], 1)

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.where}: the {self.kind!r} mixer that replaced this attention cannot honour {what}")

    def require_causal(self, why: str) -> None:
        if not self.causal:
            raise self.fail(f"{why}: the mixer is not causal (it has no causal=True)")


def _is_causal_mask(mask: torch.Tensor, n_q: int, n_k: int) -> bool:
    """True when ``mask`` (bool: True = attend, or additive float: 0 = attend; any leading dims)
    allows exactly the causal pattern. ``nn.MultiheadAttention``'s bool masks mean *blocked*, so
    its adapter inverts them first."""
    allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=mask.device).tril(n_k - n_q)
    if mask.dtype == torch.bool:
        return bool((mask == allowed).all())
    return bool(((mask == 0) == allowed).all())


class _TimmAttentionAdapter(nn.Module):
    """Stands in for timm's ``Attention``: ``forward(x, attn_mask=None, is_causal=False) -> (B, N, C)``."""

    def __init__(self, core: _MixerCore) -> None:
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                **kwargs: Any) -> torch.Tensor:
        if attn_mask is not None:
            n = x.shape[1]
            if not _is_causal_mask(attn_mask, n, n):
                raise self.core.fail("an attention mask")
            self.core.require_causal("a causal attention mask")
        if is_causal:
            self.core.require_causal("is_causal=True")
        return self.core.mix(x)


class _MultiheadAttentionAdapter(nn.Module):
    """Stands in for ``nn.MultiheadAttention`` in self-attention use; returns ``(output, None)``.

    The attributes read by ``nn.TransformerEncoderLayer`` are kept; ``in_proj_bias = None``
    steers it away from its fused fast path (which would need the attention's own weights).
    """

    in_proj_bias = None
    in_proj_weight = None
    _qkv_same_embed_dim = False

    def __init__(self, core: _MixerCore, embed_dim: int, num_heads: int, batch_first: bool) -> None:
        super().__init__()
        self.core = core
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if not (_same_tensor(key, query) and _same_tensor(value, query)):
            raise self.core.fail("cross-attention (key/value differ from the query)")
        if key_padding_mask is not None and bool(_blocked(key_padding_mask).any()):
            raise self.core.fail("a key_padding_mask that masks tokens")
        unbatched = query.dim() == 2
        x = query.unsqueeze(1) if unbatched else query  # (N, B, C) or (B, N, C)
        if not self.batch_first:
            x = x.transpose(0, 1)
        n = x.shape[1]
        if attn_mask is not None:
            if not _is_causal_mask(~_blocked(attn_mask), n, n):
                raise self.core.fail("an attn_mask other than the causal mask")
            self.core.require_causal("a causal attn_mask")
        elif is_causal:
            self.core.require_causal("is_causal=True")
        y = self.core.mix(x)
        if not self.batch_first:
            y = y.transpose(0, 1)
        return (y.squeeze(1) if unbatched else y), None


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and a.stride() == b.stride() and a.data_ptr() == b.data_ptr())


def _blocked(mask: torch.Tensor) -> torch.Tensor:
    """``nn.MultiheadAttention`` masks: bool True = blocked; float = additive (nonzero = changed)."""
    return mask if mask.dtype == torch.bool else mask != 0


class _HFViTAttentionAdapter(nn.Module):
    """Stands in for Hugging Face ``ViTAttention``: ``(hidden_states, attention_mask=None) -> (y, None)``."""

    def __init__(self, core: _MixerCore) -> None:
        super().__init__()
        self.core = core

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        if attention_mask is not None:
            raise self.core.fail("an attention_mask")
        return self.core.mix(hidden_states), None


class _HFGPT2AttentionAdapter(nn.Module):
    """Stands in for Hugging Face ``GPT2Attention`` (causal self-attention): returns ``(y, None)``."""

    def __init__(self, core: _MixerCore, layer_idx: int | None) -> None:
        super().__init__()
        self.core = core
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, past_key_values: Any = None,
                attention_mask: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, output_attentions: bool | None = False,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        if encoder_hidden_states is not None:
            raise self.core.fail("cross-attention (encoder_hidden_states)")
        if kwargs.get("use_cache") or (past_key_values is not None and past_key_values.get_seq_length() > 0):
            raise self.core.fail("a KV cache (call the model with use_cache=False)")
        if attention_mask is not None:
            n = hidden_states.shape[1]
            if attention_mask.dim() != 4 or not _is_causal_mask(attention_mask, n, n):
                raise self.core.fail("a padding or custom attention_mask (only the causal mask)")
        return self.core.mix(hidden_states), None


# ---------------------------------------------------------------------------------------------
# Finding attention modules


@dataclass
class _Site:
    """One attention module to replace and what the mixer needs to know about it."""

    parent: nn.Module
    attr: str
    where: str
    host: str          # "timm" | "mha" | "hf_vit" | "hf_gpt2"
    dim: int
    num_heads: int
    causal: bool = False
    num_prefix_tokens: int = 0
    grid_size: tuple[int, int] | None = None
    seq_len: int | None = None
    extra: dict[str, Any] | None = None


def _timm_classes() -> tuple[type, type] | None:
    if "timm" not in sys.modules:
        return None
    from timm.layers import Attention
    from timm.models.vision_transformer import VisionTransformer

    return Attention, VisionTransformer


def _hf_classes() -> dict[str, type]:
    out: dict[str, type] = {}
    if "transformers" not in sys.modules:
        return out
    try:
        from transformers.models.vit.modeling_vit import ViTAttention

        out["hf_vit"] = ViTAttention
    except ImportError:  # pragma: no cover - depends on the installed transformers
        pass
    try:
        from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

        out["hf_gpt2"] = GPT2Attention
    except ImportError:  # pragma: no cover
        pass
    return out


def _vit_context(model: nn.Module, path: str) -> tuple[int, tuple[int, int] | None]:
    """Prefix-token count and patch grid of the timm ``VisionTransformer`` enclosing ``path``."""
    classes = _timm_classes()
    best: nn.Module | None = None
    for name, module in model.named_modules():
        if classes and isinstance(module, classes[1]) and (not name or path.startswith(name + ".")):
            best = module
    if best is None:
        return 0, None
    grid = getattr(best.patch_embed, "grid_size", None)
    return int(getattr(best, "num_prefix_tokens", 1)), as_grid(grid)


def _hf_vit_context(model: nn.Module) -> tuple[int, tuple[int, int] | None]:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "image_size"):
        return 1, None
    img, patch = to_2tuple(config.image_size, "image_size"), to_2tuple(config.patch_size, "patch_size")
    return 1, (img[0] // patch[0], img[1] // patch[1])


def _find_sites(model: nn.Module) -> tuple[list[_Site], list[str]]:
    """Known self-attention modules, and unknown attention-like modules (by class name)."""
    timm_cls = _timm_classes()
    hf = _hf_classes()
    sites: list[_Site] = []
    unknown: list[str] = []
    covered: list[str] = []

    def inside(name: str) -> bool:
        return any(name.startswith(c + ".") for c in covered)

    for name, module in model.named_modules():
        if not name or inside(name):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if isinstance(module, nn.MultiheadAttention):
            if isinstance(parent, nn.TransformerDecoderLayer) and attr == "multihead_attn":
                covered.append(name)  # the decoder's cross-attention stays; only self-attention is swapped
                continue
            if not module._qkv_same_embed_dim:
                raise TypeError(f"replace_attention: {name} ({type(module).__name__}) has kdim/vdim != embed_dim, "
                                "i.e. it is cross-attention; only self-attention can be replaced")
            sites.append(_Site(parent, attr, name, "mha", module.embed_dim, module.num_heads,
                               extra={"batch_first": module.batch_first}))
            covered.append(name)
        elif timm_cls is not None and isinstance(module, timm_cls[0]):
            prefix, grid = _vit_context(model, name)
            sites.append(_Site(parent, attr, name, "timm", module.qkv.in_features, module.num_heads,
                               num_prefix_tokens=prefix, grid_size=grid,
                               seq_len=grid[0] * grid[1] if grid else None))
            covered.append(name)
        elif "hf_vit" in hf and isinstance(module, hf["hf_vit"]):
            prefix, grid = _hf_vit_context(model)
            sites.append(_Site(parent, attr, name, "hf_vit", module.q_proj.in_features, module.num_attention_heads,
                               num_prefix_tokens=prefix, grid_size=grid,
                               seq_len=grid[0] * grid[1] if grid else None))
            covered.append(name)
        elif "hf_gpt2" in hf and isinstance(module, hf["hf_gpt2"]):
            covered.append(name)
            if module.is_cross_attention:
                continue  # cross-attention stays
            sites.append(_Site(parent, attr, name, "hf_gpt2", module.embed_dim, module.num_heads, causal=True,
                               extra={"layer_idx": module.layer_idx}))
        elif "Attention" in type(module).__name__ and not type(module).__module__.startswith("neurostep."):
            unknown.append(f"{name} ({type(module).__module__}.{type(module).__name__})")
    return sites, unknown


# ---------------------------------------------------------------------------------------------
# Public entry point


def replace_attention(model: nn.Module, kind: str, *, grid_size: int | Sequence[int] | None = None,
                      seq_len: int | None = None, num_prefix_tokens: int | None = None,
                      prefix_mode: str = "mean", allow_noncausal: bool = False, **mixer_options: Any) -> nn.Module:
    """Replace every self-attention layer of ``model`` by the registered mixer ``kind``, in place.

    Args:
        model: a timm ``VisionTransformer``, a model holding ``nn.MultiheadAttention`` /
            ``nn.TransformerEncoderLayer``, or a Hugging Face ViT or GPT-2 model.
        kind: a name from ``neurostep.models.list_mixers()``.
        grid_size: token grid ``(H, W)``; overrides the inferred patch grid (needed for 2D
            mixers where no grid can be inferred, e.g. inside ``nn.MultiheadAttention``).
        seq_len: token count for mixers with a fixed length; defaults to the patch count.
        num_prefix_tokens: class/register tokens before the patch tokens; overrides inference.
        prefix_mode: ``"mean"`` or ``"zero"``: the mixer output given to prefix tokens.
        allow_noncausal: accept a non-causal mixer in a causal host (GPT-2); future tokens then leak.
        **mixer_options: passed to the mixer factory.

    Returns:
        ``model`` (modified in place), with the same forward signature.

    Raises:
        TypeError: no known self-attention in ``model``, or an attention module it cannot handle.
        ValueError: bad arguments, or a causal host with a non-causal mixer.
    """
    from neurostep.models import create_mixer, list_mixers, mixer_entry

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if kind not in list_mixers():
        raise ValueError(f"unknown mixer kind {kind!r}; registered mixers: {list_mixers()}")
    if prefix_mode not in _PREFIX_MODES:
        raise ValueError(f"prefix_mode must be one of {_PREFIX_MODES}, got {prefix_mode!r}")
    user_grid = as_grid(grid_size)
    sites, unknown = _find_sites(model)
    if unknown:
        raise TypeError(f"replace_attention cannot handle {', '.join(unknown[:4])} in {type(model).__name__}: "
                        "supported are timm Attention, nn.MultiheadAttention, Hugging Face ViT and GPT-2 attention")
    if not sites:
        raise TypeError(f"replace_attention found no self-attention in {type(model).__name__} that it can replace "
                        "(supported: timm Attention, nn.MultiheadAttention, Hugging Face ViT and GPT-2 attention)")

    built: list[tuple[_Site, nn.Module]] = []
    for site in sites:  # build every mixer before touching the model, so a failure leaves it unchanged
        old = getattr(site.parent, site.attr)
        grid = user_grid or site.grid_size
        prefix = site.num_prefix_tokens if num_prefix_tokens is None else int(num_prefix_tokens)
        n_tokens = seq_len if seq_len is not None else (grid[0] * grid[1] if grid else site.seq_len)
        context = dict(num_heads=site.num_heads, seq_len=n_tokens, grid_size=grid)
        mixer, causal = _build_mixer(create_mixer, kind, site, context, mixer_options, allow_noncausal)
        param = next(old.parameters(), None)
        if param is not None:
            mixer = mixer.to(device=param.device, dtype=param.dtype)
        core = _MixerCore(mixer, site.where, kind, prefix, grid, prefix_mode, causal=causal,
                          needs_grid=mixer_entry(kind).needs_grid)
        if site.host == "timm":
            adapter: nn.Module = _TimmAttentionAdapter(core)
        elif site.host == "mha":
            adapter = _MultiheadAttentionAdapter(core, site.dim, site.num_heads, site.extra["batch_first"])
        elif site.host == "hf_vit":
            adapter = _HFViTAttentionAdapter(core)
        else:
            adapter = _HFGPT2AttentionAdapter(core, site.extra["layer_idx"])
        adapter.train(old.training)
        built.append((site, adapter))

    for site, adapter in built:
        setattr(site.parent, site.attr, adapter)
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False  # the nested-tensor fast path reads the attention's own weights
    config = getattr(model, "config", None)
    if any(site.host == "hf_gpt2" for site in sites) and config is not None and hasattr(config, "use_cache"):
        config.use_cache = False  # the mixers keep no KV cache
    return model


def _build_mixer(create_mixer: Any, kind: str, site: _Site, context: dict[str, Any], options: dict[str, Any],
                 allow_noncausal: bool) -> tuple[nn.Module, bool]:
    """Build the mixer for one site and say whether it is causal, as the registry declares it; a causal
    host gets the mixer's causal form."""
    from neurostep.models import mixer_causality

    declared = mixer_causality(kind)
    wants_causal = site.causal and "causal" not in options
    if wants_causal and declared == "never":
        if not allow_noncausal:
            raise ValueError(f"{site.where} is causal self-attention but mixer {kind!r} is not causal (it has no "
                             "causal form); pass allow_noncausal=True to replace it anyway")
        wants_causal = False
    options = dict(options)
    causal = bool(options.pop("causal")) if "causal" in options else wants_causal
    mixer = create_mixer(kind, site.dim, causal=causal, **context, **options)
    is_causal = declared == "always" or (declared == "option" and causal)
    if site.causal and not is_causal and not allow_noncausal:
        raise ValueError(f"{site.where} is causal self-attention but mixer {kind!r} was built without its causal "
                         "form (causal=False); pass allow_noncausal=True to replace it anyway")
    return mixer, is_causal
