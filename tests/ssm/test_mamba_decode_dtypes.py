"""MambaLM decoding with bf16 and int8 weight copies (prepare_decode / generate(decode_weights=...))."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neurostep.ssm import Mamba2LM, MambaLM
from neurostep.ssm.mamba import DECODE_WEIGHT_DTYPES, DecodeLinear, MambaDecodeWeights

REDUCED = ("bf16", "int8")
VOCAB = 32


def _train(lm: MambaLM, steps: int = 80) -> MambaLM:
    """Train ``lm`` until greedy decoding follows a fixed random successor table on tokens ``0..VOCAB-1``.

    Random-init language models have near-uniform logits, so rounding flips their argmax and a
    token-identity check says nothing about them; training gives the logit margins real models
    have. Sets ``lm.successor (VOCAB,)``.
    """
    torch.manual_seed(0)
    successor = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        seq = [torch.randint(0, VOCAB, (16,), generator=gen)]
        for _ in range(15):
            seq.append(successor[seq[-1]])
        ids = torch.stack(seq, 1)  # (16, 16): each row walks the successor table
        logits = lm(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    lm.eval()
    lm.successor = successor
    return lm


@pytest.fixture(scope="module")
def trained() -> MambaLM:
    """A small random-init MambaLM (the reference kernels: plain torch autograd, nothing to compile), trained."""
    torch.manual_seed(0)
    return _train(MambaLM(vocab_size=VOCAB, d_model=32, n_layer=2, d_state=8, backend="reference"))


@pytest.fixture(scope="module")
def trained_hf() -> MambaLM:
    """transformers' MambaModelTester config with a fixed seed, loaded through ``from_hf``, then trained."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    cfg = transformers.MambaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, intermediate_size=32,
                                   tie_word_embeddings=True)
    return _train(MambaLM.from_hf(transformers.MambaForCausalLM(cfg), backend="reference"), steps=160)


def _prompts(n: int = 6, length: int = 5, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def _teacher_forced_logits(lm: MambaLM, ids: torch.Tensor, tokens: torch.Tensor, weights) -> torch.Tensor:
    """Decode-step logits ``(steps, B, V)`` feeding ``tokens (B, steps)`` after prefilling ``ids``."""
    with torch.inference_mode():
        _, states = lm.scan(ids)
        neg_A = [-torch.exp(layer.mixer.A_log.float()) for layer in lm.backbone.layers]
        out = [lm._fast_step(tokens[:, i], states, neg_A, weights) for i in range(tokens.shape[1])]
    return torch.stack(out)


@pytest.mark.parametrize("dtype", REDUCED)
def test_trained_model_greedy_tokens_identical(trained, dtype):
    """Same greedy tokens as fp32; the logits differ, by much less than the top-2 margins."""
    ids = _prompts()
    ref = trained.generate(ids, 12)
    # the model learned its task: greedy decoding walks the successor table
    assert torch.equal(ref[:, 6:], trained.successor[ref[:, 5:-1]])
    weights = trained.prepare_decode(dtype)
    assert weights.weight_dtype == dtype
    assert torch.equal(trained.generate(ids, 12, decode_weights=weights), ref)
    assert torch.equal(trained.generate(ids, 12, decode_weights=dtype), ref)
    # the reduced weights are in use: the logits move, but by much less than the margins
    fp32 = _teacher_forced_logits(trained, ids, ref[:, 5:], None)
    low = _teacher_forced_logits(trained, ids, ref[:, 5:], weights)
    err = (low - fp32).abs().max()
    top2 = fp32.topk(2, dim=-1).values
    margin = (top2[..., 0] - top2[..., 1]).min()
    assert err > 0
    assert err < 0.25 * margin, f"{dtype}: logit error {err:.3g} against a top-2 margin of {margin:.3g}"
    assert torch.equal(low.argmax(-1), fp32.argmax(-1))


def test_hf_tester_config_greedy_tokens_identical(trained_hf):
    ids = _prompts(seed=6)
    ref = trained_hf.generate(ids, 12)
    assert torch.equal(ref[:, 6:], trained_hf.successor[ref[:, 5:-1]])  # the decoded tokens walk the table
    for dtype in REDUCED:
        assert torch.equal(trained_hf.generate(ids, 12, decode_weights=dtype), ref), dtype


@pytest.mark.parametrize("dtype", REDUCED)
def test_decode_linear_is_the_dequantized_product(dtype):
    torch.manual_seed(4)
    lin = nn.Linear(37, 40, bias=True)             # 37 inputs: the int8 kernel needs (and gets) padding to 48
    with torch.no_grad():
        lin.weight[3] = 0.0                      # an all-zero row (int8 scale would be 0)
        lin.weight[5] *= 50.0                    # one row far larger than the rest: per-row scales matter
    dec = DecodeLinear(lin, dtype)
    w = dec.dequantized()
    assert w.shape == lin.weight.shape
    # the copy is close to the weight, to the format's resolution (per row, for int8)
    step = lin.weight.abs().amax(1, keepdim=True) / 127 if dtype == "int8" else lin.weight.abs() * 2 ** -8 / 0.6
    assert ((w - lin.weight).abs() <= step * 0.6 + 1e-12).all()
    x = torch.randn(3, 37)
    y = dec(x)
    assert y.dtype == torch.float32 and y.shape == (3, 40)
    # what the kernel computes: bf16 input, the copy's weight, fp32 accumulation, bf16 output, fp32 bias
    ref = F.linear(x.to(torch.bfloat16).float(), w)
    torch.testing.assert_close(y - lin.bias, ref, rtol=2 ** -7, atol=1e-5)
    torch.testing.assert_close(dec(x[:1]), y[:1], rtol=2 ** -7, atol=1e-5)  # batch 1 has its own kernel
    assert not torch.allclose(y, lin(x), rtol=1e-6, atol=1e-7)  # reduced precision is really in use


def test_fp32_path_unchanged_and_nbytes(trained):
    ids = _prompts(n=3, seed=5)
    ref = trained.generate(ids, 8)
    fp32 = trained.prepare_decode("fp32")
    assert torch.equal(trained.generate(ids, 8, decode_weights="fp32"), ref)
    assert torch.equal(trained.generate(ids, 8, decode_weights=fp32), ref)
    # the fp32 snapshot refers to the model's own tensors, the reduced ones are copies
    assert fp32.layers[0].in_proj.weight is not None
    assert fp32.layers[0].in_proj.weight.data_ptr() == trained.backbone.layers[0].mixer.in_proj.weight.data_ptr()
    # a decode token streams every parameter once (the tied head is the embedding table)
    n_params = sum(p.numel() for p in trained.parameters())
    assert fp32.nbytes == 4 * n_params
    sizes = {d: trained.prepare_decode(d).nbytes for d in DECODE_WEIGHT_DTYPES}
    assert sizes["fp32"] > sizes["bf16"] > sizes["int8"]
    # state_dict keys and values are untouched by preparing and decoding
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.generate(ids, 4, decode_weights="int8")
    after = trained.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_refusals(trained):
    ids = _prompts(n=1)
    for bad in ("fp16", "float32", "bfloat16", "int4"):
        with pytest.raises(ValueError, match="fp32"):
            trained.generate(ids, 2, decode_weights=bad)
        with pytest.raises(ValueError, match="weight_dtype must be one of"):
            trained.prepare_decode(bad)
    with pytest.raises(ValueError, match="decode_weights must be one of"):
        trained.generate(ids, 0, decode_weights="fp16")   # checked even when nothing is decoded
    with pytest.raises(TypeError, match="decode_weights"):
        trained.generate(ids, 2, decode_weights=torch.bfloat16)
    other = MambaLM(vocab_size=VOCAB, d_model=32, n_layer=2, d_state=8)
    with pytest.raises(ValueError, match="another model"):
        trained.generate(ids, 2, decode_weights=other.prepare_decode("bf16"))
    half = MambaLM(vocab_size=VOCAB, d_model=16, n_layer=1, d_state=4).to(torch.bfloat16)
    with pytest.raises(ValueError, match="fp32"):
        half.generate(ids, 2, decode_weights="int8")
    with pytest.raises(ValueError, match="converts fp32 weights"):
        half.prepare_decode("bf16")
    m2 = Mamba2LM(vocab_size=VOCAB, d_model=16, n_layer=1, d_state=8, headdim=8)
    with pytest.raises(ValueError, match="Mamba2LM decodes with"):
        m2.generate(ids, 2, decode_weights="bf16")
    assert isinstance(trained.prepare_decode("int8"), MambaDecodeWeights)
