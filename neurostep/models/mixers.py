"""Every drop-in token mixer, registered by name with the facts callers read before building it.

One table, one rule: blocks never register themselves; each mixer's factory and declared facts
(``causal``, ``needs_grid``) are here. Every factory has the contract's signature
``factory(dim, *, num_heads=None, seq_len=None, grid_size=None, **own_options)`` and returns a
module whose ``forward(x, grid_size=None)`` maps ``(B, N, C) -> (B, N, C)`` and returns only the
token-mixing term (the host owns norm and residual). ``create_mixer`` has checked ``dim`` and the
context sizes before a factory runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neurostep.layers import as_grid, default_heads
from neurostep.mixers.attention import SoftmaxAttention
from neurostep.mixers.crate import MSSA
from neurostep.mixers.efficientmod import EfficientModulation
from neurostep.mixers.ffnet import FFNifiedAttention
from neurostep.mixers.lightning import LightningAttention
from neurostep.mixers.ninformer import NiNGating
from neurostep.neuro.spikegpt import SpikingTimeMix
from neurostep.neuro.ssa import SpikingSelfAttentionMixer
from neurostep.registry import register_mixer
from neurostep.ssm.lamamba import LaMamba
from neurostep.ssm.mamba import Mamba, MambaLTI, inner_width
from neurostep.ssm.mamba2 import Mamba2
from neurostep.ssm.s4d import S4D
from neurostep.ssm.vision_mamba import BidirectionalMamba

Grid = int | Sequence[int] | None

# -- attention and white-box attention ------------------------------------------------------


@register_mixer("softmax_attention", family="attention", causal="option",
                note="multi-head softmax attention (SDPA); the baseline; causal=True masks future tokens")
def softmax_attention(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
                      grid_size: Grid = None, **options: Any) -> SoftmaxAttention:
    """:class:`~neurostep.mixers.attention.SoftmaxAttention`; ``num_heads`` defaults to about ``dim / 64``."""
    return SoftmaxAttention(dim, num_heads or default_heads(dim), **options)


@register_mixer("crate_mssa", family="crate", causal="option",
                note="CRATE multi-head subspace self-attention (Q = K = V); causal=True masks future tokens")
def crate_mssa(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
               grid_size: Grid = None, **options: Any) -> MSSA:
    """:class:`~neurostep.mixers.crate.MSSA`; ``num_heads`` defaults to about ``dim / 64``."""
    return MSSA(dim, num_heads or default_heads(dim), **options)


@register_mixer("spikformer_ssa", family="spikformer", causal="option",
                note="spiking self-attention, input repeated over T, mean decode; causal=True masks Q K^T")
def spikformer_ssa(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
                   grid_size: Grid = None, T: int = 4, **options: Any) -> SpikingSelfAttentionMixer:
    """:class:`~neurostep.neuro.ssa.SpikingSelfAttentionMixer` over ``T`` steps (``seq_len``, ``grid_size`` unused)."""
    return SpikingSelfAttentionMixer(dim, num_heads=num_heads, T=T, **options)


# -- token MLPs and convolutions on the grid -------------------------------------------------


@register_mixer("ffnified_attention", family="ffnet", needs_grid=True,
                note="MetaMixer FFNified attention (depthwise convs on the token grid); needs a 2D grid")
def ffnified_attention(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
                       grid_size: Grid = None, **options: Any) -> FFNifiedAttention:
    """:class:`~neurostep.mixers.ffnet.FFNifiedAttention` (convolutions have no heads and no fixed length)."""
    return FFNifiedAttention(dim, grid_size=grid_size, **options)


@register_mixer("efficientmod", family="efficientmod", needs_grid=True,
                note="EfficientMod modulation (7x7 depthwise context * value); needs a 2D grid")
def efficientmod(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
                 grid_size: Grid = None, **options: Any) -> EfficientModulation:
    """:class:`~neurostep.mixers.efficientmod.EfficientModulation`; ``mlp_ratio`` (1) and ``kernel_size`` (7)."""
    return EfficientModulation(dim, grid_size=grid_size, **options)


@register_mixer("ninformer", family="ninformer",
                note="NiNformer gating Linear(x) * MixerBlock(x); a fixed token count (seq_len, or the first batch's)")
def ninformer(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
              grid_size: Grid = None, **options: Any) -> NiNGating:
    """:class:`~neurostep.mixers.ninformer.NiNGating` for ``seq_len`` tokens (else ``H * W`` of
    ``grid_size``); with neither, its token MLP is sized on the first batch it sees."""
    grid = as_grid(grid_size)
    if seq_len is None and grid is not None:
        seq_len = grid[0] * grid[1]
    return NiNGating(dim, seq_len, **options)


# -- recurrences and scans -------------------------------------------------------------------


@register_mixer("mamba", family="mamba", causal="always", note="selective SSM (Mamba); scan/step recurrence")
def mamba(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
          grid_size: Grid = None, **options: Any) -> Mamba:
    """:class:`~neurostep.ssm.Mamba` (heads, length and grid unused)."""
    return Mamba(dim, **options)


@register_mixer("mamba_lti", family="mamba", causal="always",
                note="Mamba block with selection off (LTI, S4D-like): delta, B, C are parameters")
def mamba_lti(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
              grid_size: Grid = None, **options: Any) -> MambaLTI:
    """:class:`~neurostep.ssm.MambaLTI` (heads, length and grid unused)."""
    return MambaLTI(dim, **options)


@register_mixer("s4d", family="mamba", causal="always",
                note="bare LTI diagonal SSM (S4D-Real), no gate: SSM -> GELU -> Linear")
def s4d(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
        grid_size: Grid = None, **options: Any) -> S4D:
    """:class:`~neurostep.ssm.S4D` (heads, length and grid unused)."""
    return S4D(dim, **options)


@register_mixer("mamba2", family="mamba", causal="always",
                note="Mamba-2 (SSD): a scalar decay per head, on the chunked decayed linear-attention op")
def mamba2(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
           grid_size: Grid = None, **options: Any) -> Mamba2:
    """:class:`~neurostep.ssm.Mamba2` (length and grid unused). ``headdim`` defaults to Mamba-2's 64 where the
    inner width (``expand * dim``, or ``d_inner``) is a multiple of 64, else to the inner width divided by
    ``num_heads`` (the attention heads the block replaces) where it divides, else to the whole inner width
    (one head)."""
    if "headdim" not in options:
        inner = inner_width(dim, options.get("expand", 2), options.get("d_inner"))
        heads = num_heads if num_heads and inner % num_heads == 0 else 1
        options["headdim"] = 64 if inner % 64 == 0 else inner // heads
    return Mamba2(dim, **options)


@register_mixer("lightning_attention", family="lightning", causal="always",
                note="TransNormerLLM's gated linear attention, a constant decay per head (Lightning Attention-2)")
def lightning_attention(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
                        grid_size: Grid = None, **options: Any) -> LightningAttention:
    """:class:`~neurostep.mixers.lightning.LightningAttention` on the chunked decayed linear-attention op;
    ``num_heads`` defaults to about ``dim / 64`` (length and grid unused)."""
    return LightningAttention(dim, num_heads or default_heads(dim), **options)


@register_mixer("vim", family="mamba", note="Vision Mamba bidirectional selective SSM (v2)")
def vim(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
        grid_size: Grid = None, **options: Any) -> BidirectionalMamba:
    """:class:`~neurostep.ssm.BidirectionalMamba` over the token sequence (heads, length and grid unused)."""
    return BidirectionalMamba(dim, **options)


@register_mixer("lamamba", family="mamba", needs_grid=True,
                note="LaMamba token mixing: SS2D then window attention, no MLP")
def lamamba(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
            grid_size: Grid = None, **options: Any) -> LaMamba:
    """A :class:`~neurostep.ssm.LaMamba` block without MLP returning only its updates
    (``residual=False``), so the host's residual adds them. Heads default to ``dim / 32``."""
    heads = num_heads or max(dim // 32, 1)
    return LaMamba(dim, num_heads=heads, **{**dict(mlp_ratio=0.0, residual=False, grid_size=as_grid(grid_size)),
                                            **options})


@register_mixer("spikegpt_timemix", family="spikegpt", causal="always",
                note="spiking RWKV-4 time-mix (fused WKV + LIF over tokens)")
def spikegpt_timemix(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
                     grid_size: Grid = None, layer_id: int = 0, n_layer: int = 1, spiking: bool = True,
                     backend: str = "auto", lif_backend: str = "auto", init: str = "threshold") -> SpikingTimeMix:
    """Spiking time-mix over the token axis; ``num_heads``/``seq_len``/``grid_size`` are not used
    (WKV is per channel and causal over any length).

    ``init="threshold"`` (the default here) scales the output projection so the LIF fires from
    the first step; ``init="paper"`` keeps the published code's init, under which no neuron
    fires at step 0 (see :mod:`neurostep.neuro.spikegpt`)."""
    return SpikingTimeMix(dim, layer_id, n_layer, spiking=spiking, backend=backend, lif_backend=lif_backend,
                          init=init)


@register_mixer("rwkv_timemix", family="spikegpt", causal="always",
                note="RWKV-4 time-mix: SpikeGPT's time-mix without the LIF (fused WKV)")
def rwkv_timemix(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
                 grid_size: Grid = None, layer_id: int = 0, n_layer: int = 1,
                 backend: str = "auto") -> SpikingTimeMix:
    """RWKV-4 time-mix ``(B, N, C) -> (B, N, C)``; ``num_heads``/``seq_len``/``grid_size`` are not used."""
    return SpikingTimeMix(dim, layer_id, n_layer, spiking=False, backend=backend)
