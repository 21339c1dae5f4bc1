"""mamba-ssm's generation tests, ported to CPU and run against ``neurostep.compat.mamba_ssm``.

Upstream source: state-spaces/mamba, ``tests/test_generation.py`` at commit
e9594ce1c732d97440f0332fdc43170a2294dbfa (the file last changed in 4f77d5306e19f5c7ae37665a44c3e61e24cafcb5);
Apache-2.0. The imports are upstream's (``from mamba_ssm.models.mixer_seq_simple import ...``),
resolved through ``neurostep.compat.install()``. The three tests build a Mamba-2 language model
and check that decoding with the in-place recurrent state (``generate`` with teacher forcing, and
packed variable-length prefill with ``seq_idx`` / ``cu_seqlens`` followed by batched decode steps)
reproduces the logits of one parallel forward pass.

What changed, and why:

- ``device = "cpu"``, ``dtype = torch.float32`` (upstream: CUDA, float16).
- The model is smaller: ``d_model=1024, n_layer=4`` -> ``d_model=256, n_layer=2`` (the Mamba-2
  defaults ``d_state=128, headdim=64`` and the vocabulary are upstream's), so that the whole of
  tests/compat runs in about three minutes on two cores.
- ``cg=True`` is passed as upstream does; the stand-in runs the same decode steps eagerly (there are no
  CUDA graphs on CPU).
- ``einops.rearrange`` calls are written as torch ops (einops is not a neurostep dependency).
"""

import torch
import torch.nn.functional as F

import neurostep.compat

neurostep.compat.install(["mamba_ssm", "causal_conv1d"])
try:
    from mamba_ssm.models.config_mamba import MambaConfig  # noqa: E402
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel  # noqa: E402
    from mamba_ssm.utils.generation import InferenceParams  # noqa: E402
finally:
    neurostep.compat.uninstall()

D_MODEL, N_LAYER = 256, 2


def _config():
    return MambaConfig(
        d_model=D_MODEL,
        n_layer=N_LAYER,
        vocab_size=50277,
        ssm_cfg=dict(layer="Mamba2"),
        rms_norm=True,
        residual_in_fp32=True,
        fused_add_norm=True,
        pad_vocab_size_multiple=16,
    )


def test_generation():
    batch = 3
    seqlen = 20
    device = "cpu"
    dtype = torch.float32

    config = _config()
    torch.manual_seed(2357)
    model = MambaLMHeadModel(config, device=device, dtype=dtype)
    x = torch.randint(0, 1000, (batch, seqlen), device=device, dtype=torch.long)
    out_ref = model(x).logits
    prompt_len = seqlen // 2
    out = model.generate(
        input_ids=x[:, :prompt_len], max_length=seqlen, output_scores=True, return_dict_in_generate=True,
        cg=True,  # Can turn off CUDA graph for easier debugging
        # instead of sampling, we take output tokens from x, to get logits for testing
        # For actual generation, don't pass in teacher_outputs
        teacher_outputs=x,
    )
    out_scores = torch.stack(out.scores, dim=1)
    print(f"Max diff: {(out_scores - out_ref[:, prompt_len - 1: -1]).abs().max()}")
    assert torch.allclose(out_scores, out_ref[:, prompt_len - 1: -1], rtol=1e-3, atol=1e-2)


def test_generation_varlen():
    seqlens = [170, 65, 100]
    genlen = 20
    device = "cpu"
    dtype = torch.float32

    config = _config()
    torch.manual_seed(2357)
    model = MambaLMHeadModel(config, device=device, dtype=dtype)
    xs = [torch.randint(0, 1000, (1, seqlen), device=device, dtype=torch.long) for seqlen in seqlens]

    # Reference 1: Forward pass with seq_idx
    x = torch.cat(xs, dim=1)
    seq_idx = torch.cat([torch.full((ids.shape[1],), i, dtype=torch.int32, device=device)
                         for i, ids in enumerate(xs)], dim=0).unsqueeze(0)
    cu_seqlens = F.pad(torch.tensor(seqlens, device=device, dtype=torch.int32).cumsum(dim=0), (1, 0))
    out_ref = model(x, seq_idx=seq_idx).logits
    # Only take the last @genlen logits of each sequence
    out_ref = torch.cat([out_ref[:, cu_seqlens[i + 1] - genlen - 1:cu_seqlens[i + 1] - 1]
                         for i in range(len(seqlens))], dim=0)

    # Reference 2: Generate the last @genlen tokens of each sequence in a for loop
    out_loop = []
    for input_ids in xs:
        out = model.generate(
            input_ids=input_ids[:, :-genlen], max_length=input_ids.shape[1], output_scores=True,
            return_dict_in_generate=True, cg=True, teacher_outputs=input_ids,
        ).scores
        out_loop.append(torch.stack(out, dim=1))
    out_loop = torch.cat(out_loop, dim=0)
    print(f"Max diff between ref1 and ref2: {(out_loop - out_ref).abs().max()}")

    # Varlen generation
    input_ids = torch.cat([ids[:, :-genlen] for ids in xs], dim=1)
    prompt_seqlens = [seqlen - genlen for seqlen in seqlens]
    cu_seqlens = F.pad(torch.tensor(prompt_seqlens, device=device, dtype=torch.int32).cumsum(dim=0), (1, 0))
    seq_idx = torch.cat([torch.full((seqlen,), i, dtype=torch.int32, device=device)
                         for i, seqlen in enumerate(prompt_seqlens)], dim=0).unsqueeze(0)
    inference_params = InferenceParams(max_seqlen=2048, max_batch_size=len(seqlens))

    scores, sequences = [], []
    # Both seq_idx and cu_seqlens must be passed in for varlen generation
    logits = model(input_ids, inference_params=inference_params, seq_idx=seq_idx, cu_seqlens=cu_seqlens).logits
    logits = logits[0, cu_seqlens[1:] - 1].unsqueeze(1)  # "b d -> b 1 d"
    scores.append(logits)
    # In practice we should sample. In this case we take from the teacher_output for testing
    sampled_tokens = torch.stack([ids[0, -genlen] for ids in xs], dim=0).unsqueeze(1)
    sequences.append(sampled_tokens)
    for i in range(1, genlen):
        inference_params.seqlen_offset += 1
        logits = model(sampled_tokens, inference_params=inference_params, num_last_tokens=1).logits
        scores.append(logits)
        # In practice we should sample. In this case we take from the teacher_output for testing
        sampled_tokens = torch.stack([ids[0, -genlen + i] for ids in xs], dim=0).unsqueeze(1)
        sequences.append(sampled_tokens)
    out_varlen = torch.cat(scores, dim=1)
    print(f"Max diff: {(out_varlen - out_ref).abs().max()}")
    assert (out_varlen - out_ref).abs().max() < 2 * (out_loop - out_ref).abs().max()


def test_generation_varlen_with_padding():
    seqlens = [170, 65, 100]
    non_padded_seqlen = sum(seqlens)
    padded_seqlen = 512
    seqlens.append(padded_seqlen - non_padded_seqlen)
    genlen = 20
    total_seqlen = sum(seqlens)
    assert total_seqlen == padded_seqlen
    device = "cpu"
    dtype = torch.float32

    config = _config()
    torch.manual_seed(2357)
    model = MambaLMHeadModel(config, device=device, dtype=dtype)
    xs = [torch.randint(0, 1000, (1, seqlen), device=device, dtype=torch.long) for seqlen in seqlens]

    # Reference 1: Forward pass with seq_idx
    x = torch.cat(xs[:-1], dim=1)
    seq_idx = torch.cat([torch.full((ids.shape[1],), i, dtype=torch.int32, device=device)
                         for i, ids in enumerate(xs[:-1])], dim=0).unsqueeze(0)
    cu_seqlens = F.pad(torch.tensor(seqlens[:-1], device=device, dtype=torch.int32).cumsum(dim=0), (1, 0))

    out_ref = model(x, seq_idx=seq_idx).logits
    # Only take the last @genlen logits of each sequence
    out_ref = torch.cat([out_ref[:, cu_seqlens[i + 1] - genlen - 1:cu_seqlens[i + 1] - 1]
                         for i in range(len(seqlens) - 1)], dim=0)

    # Reference 2: Generate the last @genlen tokens of each sequence in a for loop
    out_loop = []
    for input_ids in xs[:-1]:
        out = model.generate(
            input_ids=input_ids[:, :-genlen], max_length=input_ids.shape[1], output_scores=True,
            return_dict_in_generate=True, cg=True, teacher_outputs=input_ids,
        ).scores
        out_loop.append(torch.stack(out, dim=1))
    out_loop = torch.cat(out_loop, dim=0)
    print(f"Max diff between ref1 and ref2: {(out_loop - out_ref).abs().max()}")

    # Varlen generation
    input_ids = torch.cat([ids[:, :-genlen] for ids in xs], dim=1)
    prompt_seqlens = [seqlen - genlen for seqlen in seqlens]
    cu_seqlens = F.pad(torch.tensor(prompt_seqlens, device=device, dtype=torch.int32).cumsum(dim=0), (1, 0))
    seq_idx = torch.cat([torch.full((seqlen,), i, dtype=torch.int32, device=device)
                         for i, seqlen in enumerate(prompt_seqlens)], dim=0).unsqueeze(0)
    inference_params = InferenceParams(max_seqlen=2048, max_batch_size=len(seqlens))

    # Account for padding
    offset = genlen * len(seqlens)
    seq_idx[non_padded_seqlen - offset : padded_seqlen - offset] = -1
    cu_seqlens[-1] = cu_seqlens[-2]

    scores, sequences = [], []
    # Both seq_idx and cu_seqlens must be passed in for varlen generation
    logits = model(input_ids, inference_params=inference_params, seq_idx=seq_idx, cu_seqlens=cu_seqlens).logits
    logits = logits[0, cu_seqlens[1:] - 1].unsqueeze(1)  # "b d -> b 1 d"
    scores.append(logits)
    # In practice we should sample. In this case we take from the teacher_output for testing
    sampled_tokens = torch.stack([ids[0, -genlen] for ids in xs], dim=0).unsqueeze(1)
    sequences.append(sampled_tokens)
    for i in range(1, genlen):
        inference_params.seqlen_offset += 1
        logits = model(sampled_tokens, inference_params=inference_params, num_last_tokens=1).logits
        scores.append(logits)
        # In practice we should sample. In this case we take from the teacher_output for testing
        sampled_tokens = torch.stack([ids[0, -genlen + i] for ids in xs], dim=0).unsqueeze(1)
        sequences.append(sampled_tokens)
    out_varlen = torch.cat(scores, dim=1)

    print(f"Max diff: {(out_varlen[:-1] - out_ref).abs().max()}")
    assert (out_varlen[:-1] - out_ref).abs().max() < 2 * (out_loop - out_ref).abs().max()
