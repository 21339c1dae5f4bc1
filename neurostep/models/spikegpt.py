"""SpikeGPT models.

Models: ``spikegpt_46m`` (12 layers x 512, character vocabulary 5455: see the note) and
``spikegpt_216m`` (18 layers x 768, GPT-NeoX vocabulary 50277). The architecture holds
``n_layer * (13 d^2 + 11 d) + 4 d + 2 V d`` parameters (untied embedding and head).
Its mixers, ``spikegpt_timemix`` (binary spikes) and ``rwkv_timemix`` (the same time-mix without the
LIF, RWKV-4's), are registered in :mod:`neurostep.models.mixers`.
"""

from __future__ import annotations

from typing import Any

import torch

from neurostep.neuro.spikegpt import SpikeGPT
from neurostep.registry import register_model

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
