"""``mamba_ssm.utils.generation``: the decode cache, logit filters, ``sample``, ``decode`` and ``GenerationMixin``.

A model that generates through this module takes ``(input_ids, position_ids=..., inference_params=...,
num_last_tokens=...)`` and returns an object with ``.logits (B, L, V)``; its layers keep their
recurrent states in ``inference_params.key_value_memory_dict`` and update them in place.
``decode`` runs the prompt once, then one token per call, until ``max_length`` tokens or every
row emitted ``eos_token_id``. ``cg=True`` (CUDA graphs upstream) is accepted and decodes eagerly.
The result is transformers' ``GenerateDecoderOnlyOutput`` when transformers is installed, else a
dataclass with the same two fields.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "GenerationMixin",
    "InferenceParams",
    "decode",
    "modify_logit_for_repetition_penalty",
    "modify_logits_for_min_p_filtering",
    "modify_logits_for_top_k_filtering",
    "modify_logits_for_top_p_filtering",
    "sample",
]

_NEG_INF = float("-inf")


@dataclass
class InferenceParams:
    """Decode-time cache passed down to every layer.

    ``seqlen_offset``: tokens already consumed (0 while the prompt runs, after which layers take
    their single-token step). ``key_value_memory_dict``: ``layer_idx -> states``, owned and
    updated in place by the layers. ``lengths_per_sample (B,)``: optional per-row lengths.
    """

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)
    lengths_per_sample: Tensor | None = None

    def reset(self, max_seqlen: int, max_batch_size: int) -> None:
        """Start a new generation with these limits; the cached state tensors are kept for reuse."""
        self.max_seqlen, self.max_batch_size, self.seqlen_offset = max_seqlen, max_batch_size, 0
        lengths = self.lengths_per_sample
        if lengths is not None:
            lengths.zero_()


@dataclass
class _DecoderOnlyOutput:
    """Used in place of transformers' ``GenerateDecoderOnlyOutput`` when transformers is not installed."""

    sequences: Tensor
    scores: tuple | None = None


def _output_class() -> type:
    try:
        from transformers.generation import GenerateDecoderOnlyOutput
    except ImportError:  # pragma: no cover - transformers is optional
        return _DecoderOnlyOutput
    return GenerateDecoderOnlyOutput


# -- logit filters (all in place on ``logits (B, V)``) ---------------------------------------------

def modify_logits_for_min_p_filtering(logits: Tensor, min_p: float) -> None:
    """Mask (to -inf, in place) every logit below the value ``min_p``; a no-op unless ``0 < min_p < 1``."""
    if 0.0 < min_p < 1.0:
        logits.masked_fill_(logits < min_p, _NEG_INF)


def modify_logits_for_top_k_filtering(logits: Tensor, top_k: int) -> None:
    """Keep (in place) the ``top_k`` largest logits of each row, ties with the k-th included; mask the rest."""
    kth = logits.topk(top_k, dim=-1).values[..., -1:]
    logits.masked_fill_(logits < kth, _NEG_INF)


def modify_logits_for_top_p_filtering(logits: Tensor, top_p: float) -> None:
    """Nucleus filter, in place: keep the most likely tokens whose probabilities sum to ``top_p``.

    A token is dropped when the probability mass of the tokens no more likely than itself
    (itself included) is at most ``1 - top_p``; the most likely token always stays. No-op
    unless ``0 < top_p < 1``. ``logits``: ``(B, V)``.
    """
    if not 0.0 < top_p < 1.0:
        return
    ascending, order = logits.sort(dim=-1)
    mass_up_to = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = mass_up_to <= 1 - top_p
    drop = drop_sorted.scatter(1, order, drop_sorted)
    logits.masked_fill_(drop, _NEG_INF)


def modify_logit_for_repetition_penalty(logits: Tensor, prev_output_tokens: Tensor,
                                        repetition_penalty: float = 1.0) -> Tensor:
    """Make tokens already in ``prev_output_tokens (B, T)`` less likely (CTRL's penalty), in place.

    A seen token's logit is divided by ``repetition_penalty`` when positive and multiplied by it
    when negative. ``logits``: ``(B, V)``; returned as well.
    """
    if repetition_penalty == 1.0:
        return logits
    seen = logits.gather(1, prev_output_tokens)
    seen = torch.where(seen >= 0, seen / repetition_penalty, seen * repetition_penalty)
    return logits.scatter_(1, prev_output_tokens, seen)


def _draw(logits: Tensor) -> Tensor:
    """One index per row of ``logits (B, V)``, drawn from its softmax: ``(B,)``."""
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1)[:, 0]


def sample(logits: Tensor, top_k: int = 1, top_p: float = 0.0, min_p: float = 0.0,
           temperature: float = 1.0) -> Tensor:
    """Next token of each row of ``logits (B, V)``: ``(B,)`` int64.

    ``top_k == 1`` is greedy. ``top_k > 1`` samples among the ``top_k`` largest logits (then
    nucleus-filtered by ``top_p``); ``top_k == 0`` samples from the whole vocabulary, filtered by
    ``min_p`` when it is set (relative to the first row's first logit) and by ``top_p`` otherwise.
    Logits are divided by ``temperature``. ``logits`` itself is left unchanged.
    """
    if top_k == 1:
        return logits.argmax(dim=-1)
    if top_p > 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if top_k > 0:
        values, indices = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
        if temperature != 1.0:
            values /= temperature
        modify_logits_for_top_p_filtering(values, top_p)
        return indices.gather(-1, _draw(values)[:, None])[:, 0]
    if min_p > 0.0:
        scaled = logits.clone()
        modify_logits_for_min_p_filtering(scaled, scaled[..., 0].item() * min_p)
        if temperature != 1.0:
            scaled /= temperature
        return _draw(scaled)
    scaled = logits / temperature if temperature != 1.0 else logits.clone()
    modify_logits_for_top_p_filtering(scaled, top_p)
    return _draw(scaled)


# -- the decoding loop ----------------------------------------------------------------------------

def _next_logits(model: nn.Module, tokens: Tensor, params: InferenceParams, vocab_size: int | None) -> Tensor:
    """The model's logits for the position after ``tokens (B, T)``: ``(B, V)``, cut to ``vocab_size``."""
    position_ids = None
    if params.seqlen_offset > 0:
        position_ids = torch.full((tokens.shape[0], 1), params.seqlen_offset, dtype=torch.long,
                                  device=tokens.device)
    logits = model(tokens, position_ids=position_ids, inference_params=params, num_last_tokens=1).logits[:, -1]
    return logits if vocab_size is None else logits[..., :vocab_size]


def _finished(last: Tensor, params: InferenceParams, max_length: int, eos_token_id: int | None) -> bool:
    if params.seqlen_offset == 0:
        return False  # the prompt has not been read yet
    if params.seqlen_offset >= max_length - 1:
        return True
    return eos_token_id is not None and bool((last == eos_token_id).all())


@torch.inference_mode()
def decode(
    input_ids: Tensor, model: nn.Module, max_length: int, top_k: int = 1, top_p: float = 0.0, min_p: float = 0.0,
    temperature: float = 1.0, repetition_penalty: float = 1.0, eos_token_id: int | None = None,
    teacher_outputs: Tensor | None = None, vocab_size: int | None = None, cg: bool = False,
    enable_timing: bool = False, output_scores: bool = False, streamer: object | None = None,
) -> object:
    """Generate from the prompt ``input_ids (B, T)`` (every row the same length) up to ``max_length`` tokens.

    Sampling follows :func:`sample` (``top_k``, ``top_p``, ``min_p``, ``temperature``), after
    ``repetition_penalty`` over the tokens so far. ``teacher_outputs (B, T')``: while it reaches,
    its token at each position is taken instead of a sampled one (for tests). ``vocab_size`` cuts
    padded logits. ``streamer`` receives the prompt, each new token and ``end()``, as transformers'
    streamers expect. ``cg`` is accepted and decoding runs eagerly; ``enable_timing`` prints the
    wall time.

    Returns ``GenerateDecoderOnlyOutput(sequences (B, L), scores)`` with ``L <= max_length`` and
    ``scores`` one ``(B, V)`` tensor per generated token (empty unless ``output_scores``).
    """
    if streamer is not None:
        streamer.put(input_ids.cpu())
    params = InferenceParams(max_seqlen=max_length, max_batch_size=input_ids.shape[0])
    forced = 0 if teacher_outputs is None else teacher_outputs.shape[1]
    pieces, scores = [input_ids], []
    so_far = input_ids  # kept up to date only when the repetition penalty needs it
    started = time.perf_counter()
    while not _finished(pieces[-1], params, max_length, eos_token_id):
        logits = _next_logits(model, pieces[-1], params, vocab_size)
        if output_scores:
            scores.append(logits.clone())
        params.seqlen_offset += pieces[-1].shape[1]
        if repetition_penalty != 1.0:
            logits = modify_logit_for_repetition_penalty(logits, so_far, repetition_penalty)
        if params.seqlen_offset < forced:
            token = teacher_outputs[:, params.seqlen_offset]
        else:
            token = sample(logits, top_k=top_k, top_p=top_p, min_p=min_p, temperature=temperature)
        token = token[:, None]
        if repetition_penalty != 1.0:
            so_far = torch.cat([so_far, token], dim=1)
        if streamer is not None:
            streamer.put(token.cpu())
        pieces.append(token)
    if enable_timing:
        if input_ids.device.type == "cuda":
            torch.cuda.synchronize(input_ids.device)
        print(f"generation took {(time.perf_counter() - started) * 1e3:.0f} ms (prompt and decoding)")
    if streamer is not None:
        streamer.end()
    return _output_class()(sequences=torch.cat(pieces, dim=1), scores=tuple(scores))


class GenerationMixin:
    """Adds :meth:`generate` to a model that follows the calling convention of this module."""

    def allocate_inference_cache(
        self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None, **kwargs: object,
    ) -> dict:
        """Per-layer decode states; a model that generates must provide it."""
        raise NotImplementedError(f"{type(self).__name__} cannot generate without allocate_inference_cache")

    def generate(
        self, input_ids: Tensor, max_length: int, top_k: int = 1, top_p: float = 0.0, min_p: float = 0.0,
        temperature: float = 1.0, return_dict_in_generate: bool = False, output_scores: bool = False, **kwargs: object,
    ) -> Tensor | object:
        """:func:`decode` on this model: the token ids ``(B, L)``, or the whole output with ``return_dict_in_generate``.

        Further keyword arguments go to :func:`decode`; ``scores`` is None unless ``output_scores``.
        """
        result = decode(input_ids, self, max_length, top_k=top_k, top_p=top_p, min_p=min_p,
                        temperature=temperature, output_scores=output_scores, **kwargs)
        if not output_scores:
            result.scores = None
        return result if return_dict_in_generate else result.sequences
