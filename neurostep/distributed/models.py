"""Whole models over a sequence-parallel group.

Models whose mixing along the sequence goes only through the fused ops (Mamba, MambaLM, networks of
LIF neurons) need nothing beyond ``with sp: model(x_chunk)``. SpikeGPT also mixes tokens with
RWKV's token shift (each token is interpolated with the one before it), plain tensor code that the
fused-op routing cannot see; :func:`spikegpt_scan` runs its blocks with the shifted token taken from
the rank before.
"""

from __future__ import annotations

import dataclasses

import torch

from neurostep.distributed.parallel import SequenceParallel
from neurostep.neuro.spikegpt import SpikeGPT


def spikegpt_scan(sp: SequenceParallel, model: SpikeGPT, idx: torch.Tensor) -> torch.Tensor:
    """SpikeGPT logits for this rank's chunk of token ids, from a fresh state.

    WKV runs two-pass, the LIF neurons pipelined, and each token-shift reads the last token of the
    previous rank's chunk (:meth:`SequenceParallel.previous_tokens`).

    Args:
        sp: the sequence-parallel group. model: a :class:`~neurostep.neuro.spikegpt.SpikeGPT`.
        idx: ``(B, L/P)`` int64 token ids of this rank's chunk.
    Returns:
        ``(B, L/P, vocab_size)`` logits, equal to the matching slice of ``model(idx_whole)``.
    """
    if not isinstance(model, SpikeGPT):
        raise TypeError(f"model must be a SpikeGPT, got {type(model).__name__}")
    model.check_input(idx, False)
    with sp:
        x = model.emb(idx) if model.spike_embedding is None else model.spike_embedding(model.emb(idx))
        batch, dim = x.shape[0], x.shape[-1]
        for block in model.blocks:
            if block.ln0 is not None:
                x = block.ln0(x)
            for mixer, norm in ((block.att, block.ln1), (block.ffn, block.ln2)):
                h = norm(x)
                prev, h = sp.previous_tokens(h, 1, dim=1)
                fresh = mixer.init_state((batch, dim), h.device, h.dtype)
                y, _ = mixer.scan(h, dataclasses.replace(fresh, shift=prev[:, 0]))
                x = x + y
            x = block.drop(x)
        return model.head(model.ln_out(x))


__all__ = ["spikegpt_scan"]
