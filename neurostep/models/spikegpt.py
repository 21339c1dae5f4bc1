"""SpikeGPT models and the spiking RWKV time-mix as a drop-in mixer.

Models: ``spikegpt_46m`` (12 layers x 512, character vocabulary 5455: see the note) and
``spikegpt_216m`` (18 layers x 768, GPT-NeoX vocabulary 50277). The architecture holds
``n_layer * (13 d^2 + 11 d) + 4 d + 2 V d`` parameters (untied embedding and head).
Mixers: ``spikegpt_timemix`` ``(B, N, C) -> (B, N, C)`` binary spikes, and ``rwkv_timemix``, the same
time-mix without the LIF (RWKV-4's, the non-spiking control).
"""

from __future__ import annotations

from typing import Any

import torch

from neurostep.models.registry import register_mixer, register_model
from neurostep.neuro.spikegpt import SpikeGPT, SpikingTimeMix

FAMILY = "spikegpt"
_SMALL = dict(vocab_size=40, n_embd=16, n_layer=2)

# 12 x 512 blocks hold 40,964,096 parameters and each vocabulary entry adds 2 x 512; the recount
# of 46.55M is met by V = 5455 (46,550,016). The full enwik8 file decoded as UTF-8 has 6064
# distinct characters (47,173,632 parameters, +1.3%), so the paper's vocabulary is a smaller
# character set (its training split's); 5455 is derived from the count, not read from the data.
ENWIK8_VOCAB_46M = 5455


def _token_input(model: SpikeGPT, batch: int) -> torch.Tensor:
    return torch.randint(0, model.vocab_size, (batch, 12))


@register_model("spikegpt_46m", family=FAMILY, paper_params=46.55e6, small_kwargs=_SMALL, example_input=_token_input,
                note="enwik8 character model, 12 x 512; vocabulary 5455 derived from the 46.55M recount")
def spikegpt_46m(**kwargs: Any) -> SpikeGPT:
    """SpikeGPT-46M: ``(B, L)`` character ids -> ``(B, L, 5455)`` logits."""
    return SpikeGPT(**{**dict(vocab_size=ENWIK8_VOCAB_46M, n_embd=512, n_layer=12), **kwargs})


@register_model("spikegpt_216m", family=FAMILY, paper_params=215.4e6, small_kwargs=_SMALL,
                example_input=_token_input, note="18 x 768, GPT-NeoX tokenizer (vocab 50277)")
def spikegpt_216m(**kwargs: Any) -> SpikeGPT:
    """SpikeGPT-216M: ``(B, L)`` token ids -> ``(B, L, 50277)`` logits."""
    return SpikeGPT(**{**dict(vocab_size=50277, n_embd=768, n_layer=18), **kwargs})


@register_mixer("spikegpt_timemix", family=FAMILY, causal="always",
                note="spiking RWKV-4 time-mix (fused WKV + LIF over tokens)")
def spikegpt_timemix(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
                     grid_size: tuple[int, int] | None = None, layer_id: int = 0, n_layer: int = 1,
                     spiking: bool = True, backend: str = "auto", lif_backend: str = "auto",
                     init: str = "threshold") -> SpikingTimeMix:
    """Spiking time-mix over the token axis; ``num_heads``/``seq_len``/``grid_size`` are not used
    (WKV is per channel and causal over any length).

    ``init="threshold"`` (the default here) scales the output projection so the LIF fires from
    the first step; ``init="paper"`` keeps the published code's init, under which no neuron
    fires at step 0 (see :mod:`neurostep.neuro.spikegpt`)."""
    return SpikingTimeMix(dim, layer_id, n_layer, spiking=spiking, backend=backend, lif_backend=lif_backend,
                          init=init)


@register_mixer("rwkv_timemix", family=FAMILY, causal="always",
                note="RWKV-4 time-mix: SpikeGPT's time-mix without the LIF (fused WKV)")
def rwkv_timemix(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
                 grid_size: tuple[int, int] | None = None, layer_id: int = 0, n_layer: int = 1,
                 backend: str = "auto") -> SpikingTimeMix:
    """RWKV-4 time-mix ``(B, N, C) -> (B, N, C)``; ``num_heads``/``seq_len``/``grid_size`` are not used."""
    return SpikingTimeMix(dim, layer_id, n_layer, spiking=False, backend=backend)
