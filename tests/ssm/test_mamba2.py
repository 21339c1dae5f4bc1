"""Mamba-2 block and LM: HF parity (transformers' tester config), every Mamba2Config field, scan == step,
chunked state carry, the fast decode path, gradients, bad input."""

from __future__ import annotations

import pytest
import torch

from neurostep.engine import KERNELS, scan_by_steps
from neurostep.ssm import Mamba2, Mamba2LM, Mamba2LMState, Mamba2State
from neurostep.ssm.mamba2 import HF_MAMBA2_CONFIG_FIELDS

transformers = pytest.importorskip("transformers")

# The config of transformers' Mamba2ModelTester (tests/models/mamba2/test_modeling_mamba2.py in the
# transformers repository; the tester is not installed with the package).
TESTER = dict(head_dim=8, num_heads=8, n_groups=8, state_size=2, conv_kernel=4, chunk_size=8, vocab_size=99,
              hidden_size=32, num_hidden_layers=2, activation_function="silu", n_positions=512, type_vocab_size=16,
              use_cache=True, bos_token_id=98, eos_token_id=98, pad_token_id=98, gradient_checkpointing=False,
              tie_word_embeddings=False)
BATCH, SEQ = 14, 7  # the tester's batch_size and seq_length


def _backends() -> list[str]:
    """Backends that both ops of the block (the conv and the SSD op) provide on CPU."""
    import neurostep.kernels.causal_conv1d  # noqa: F401  (registers the backends)
    import neurostep.kernels.decayed_linear_attention  # noqa: F401

    names = ["reference"]
    if "cpu" in KERNELS.backends("decayed_linear_attention") and "cpu" in KERNELS.backends("causal_conv1d"):
        names.append("cpu")
    return names


def _hf(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    torch.manual_seed(seed)
    cfg = transformers.Mamba2Config(**{**TESTER, **overrides})
    return transformers.Mamba2ForCausalLM(cfg).eval().to(dtype)


def _ids(vocab: int = 99, batch: int = BATCH, seq: int = SEQ, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# -- Hugging Face ---------------------------------------------------------------------------------


def test_state_dict_matches_hf_mixer():
    cfg = transformers.Mamba2Config(**{**TESTER, "n_groups": 2})
    hf_mixer = transformers.models.mamba2.modeling_mamba2.Mamba2Mixer(cfg, layer_idx=0)
    ours = Mamba2(32, d_state=2, headdim=8, ngroups=2)
    theirs = {k: tuple(v.shape) for k, v in hf_mixer.state_dict().items()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mine == theirs
    ours.load_state_dict(hf_mixer.state_dict(), strict=True)


def test_tester_config_loads_and_gives_the_same_logits():
    hf = _hf()
    ours = Mamba2LM.from_hf(hf).eval()
    mixer = ours.backbone.layers[0].mixer
    assert (mixer.nheads, mixer.headdim, mixer.ngroups, mixer.d_state, mixer.d_conv) == (8, 8, 8, 2, 4)
    assert not ours.tie_embeddings
    ids = _ids()
    with torch.no_grad():
        ref = hf(ids, use_cache=False).logits
        out = ours(ids)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # longer than HF's chunk (8) and the op's: the chunked forms agree across chunk boundaries
    ids = _ids(batch=2, seq=70, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids, use_cache=False).logits, rtol=0, atol=1e-5)


def test_tester_config_same_greedy_tokens():
    hf = _hf(seed=1)
    ours = Mamba2LM.from_hf(hf).eval()
    ids = _ids(batch=2, seed=1)
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                          do_sample=False)
    out = ours.generate(ids, 12)
    assert out.tolist() == ref.tolist()
    assert len(set(out[0, SEQ:].tolist())) > 1, "degenerate test: generation is constant"
    # the checked step path (not the in-place fast path) decodes the same tokens
    logits, states = ours.scan(ids)
    token, steps = logits[:, -1].argmax(-1), []
    for _ in range(12):
        steps.append(token)
        logits, states = ours.step(token, states)
        token = logits.argmax(-1)
    assert torch.stack(steps, 1).tolist() == out[:, SEQ:].tolist()


def test_every_config_field_is_mapped():
    declared = set(transformers.Mamba2Config.__annotations__)
    assert declared <= set(HF_MAMBA2_CONFIG_FIELDS), sorted(declared - set(HF_MAMBA2_CONFIG_FIELDS))


def test_non_default_fields_are_honoured():
    overrides = dict(n_groups=2, use_bias=True, use_conv_bias=False, tie_word_embeddings=True, residual_in_fp32=False,
                     layer_norm_epsilon=1e-3, conv_kernel=3, state_size=5, time_step_limit=(0.0, 0.05),
                     num_heads=4, head_dim=16, expand=2)
    hf = _hf(seed=2, **overrides)
    with torch.no_grad():   # HF inits biases to zero; make them matter
        for name, p in hf.named_parameters():
            if name.endswith("proj.bias"):
                p.normal_(0, 0.5)
    ours = Mamba2LM.from_hf(hf).eval()
    mixer = ours.backbone.layers[0].mixer
    assert (mixer.nheads, mixer.headdim, mixer.ngroups, mixer.d_state, mixer.d_conv) == (4, 16, 2, 5, 3)
    assert mixer.in_proj.bias is not None and mixer.conv1d.bias is None and mixer.dt_limit == (0.0, 0.05)
    assert mixer.norm.eps == 1e-3 and mixer.norm.group_size == 32 and ours.backbone.norm_f.eps == 1e-3
    assert ours.tie_embeddings and ours.lm_head.weight is ours.backbone.embedding.weight
    assert not ours.residual_in_fp32
    ids = _ids(seed=2, seq=20)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids, use_cache=False).logits, rtol=0, atol=1e-5)


def test_bfloat16_model():
    hf = _hf(seed=3, dtype=torch.bfloat16)
    ours = Mamba2LM.from_hf(hf).eval()
    assert ours.lm_head.weight.dtype == torch.bfloat16
    ids = _ids(seed=3)
    with torch.no_grad():
        out, ref = ours(ids).float(), hf(ids, use_cache=False).logits.float()
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))


def test_unsupported_values_are_refused():
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        Mamba2LM.from_hf(_hf(hidden_act="gelu"))
    with pytest.raises(ValueError, match="rms_norm=False"):
        Mamba2LM.from_hf(_hf(rms_norm=False))
    with pytest.raises(ValueError, match="norm_before_gate=True"):
        Mamba2LM.from_hf(_hf(norm_before_gate=True))


def test_mamba2_130m_matches_hf_size():
    from neurostep.models import count_params, create_model

    cfg = transformers.Mamba2Config(num_heads=24, head_dim=64, hidden_size=768, state_size=128, num_hidden_layers=24,
                                    n_groups=1, vocab_size=50288, tie_word_embeddings=True)
    with torch.device("meta"):
        hf = transformers.Mamba2ForCausalLM(cfg)
        ours = create_model("mamba2_130m")
    theirs = {k.replace("embeddings", "embedding"): tuple(v.shape) for k, v in hf.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs
    assert count_params(ours) == sum(p.numel() for p in hf.parameters()) == 128_989_632


# -- scan vs step ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("length", [1, 2, 9])
def test_scan_equals_step(backend, length):
    torch.manual_seed(1)
    m = Mamba2(12, d_state=4, d_conv=3, headdim=6, ngroups=2, chunk_size=4, backend=backend).double()
    x = torch.randn(2, length, 12, dtype=torch.float64)
    y, st = m.scan(x)
    y_ref, st_ref = scan_by_steps(m, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(st.ssm_state, st_ref.ssm_state, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(st.conv_state, st_ref.conv_state, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", [dict(rmsnorm=False), dict(norm_before_gate=True), dict(bias=True),
                                     dict(dt_limit=(0.01, 0.05)), dict(ngroups=1), dict(conv_bias=False)])
def test_scan_equals_step_variants(variant):
    torch.manual_seed(2)
    m = Mamba2(8, d_state=3, headdim=4, **{"ngroups": 2, **variant}).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    y, st = m.scan(x)
    y_ref, st_ref = scan_by_steps(m, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(st.ssm_state, st_ref.ssm_state, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("split", [1, 4, 7, 12])
def test_chunked_scan_carries_the_state(backend, split):
    torch.manual_seed(3)
    m = Mamba2(10, d_state=3, headdim=5, chunk_size=4, backend=backend)
    x = torch.randn(3, 13, 10)
    y, st = m.scan(x)
    y1, s1 = m.scan(x[:, :split])
    y2, s2 = m.scan(x[:, split:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s2.ssm_state, st.ssm_state, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s2.conv_state, st.conv_state, rtol=1e-5, atol=1e-6)
    # a step after a scan continues it
    _, s12 = m.scan(x[:, :12])
    y13, s13 = m.step(x[:, 12], s12)
    torch.testing.assert_close(y13, y[:, 12], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s13.ssm_state, st.ssm_state, rtol=1e-5, atol=1e-6)


def test_extreme_decays_step_equals_scan():
    """dt * A far below the fp32 denormal range: the step clamps the exponent as the op does."""
    torch.manual_seed(9)
    m = Mamba2(8, d_state=3, headdim=4)
    with torch.no_grad():
        m.A_log.copy_(torch.tensor([6.0, 0.0, 6.0, 1.0]))   # A = -403 in two heads
        m.dt_bias.fill_(2.0)
    x = torch.randn(2, 11, 8)
    y, st = m.scan(x)
    y_ref, st_ref = scan_by_steps(m, x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(st.ssm_state, st_ref.ssm_state, rtol=1e-5, atol=1e-6)
    lm = Mamba2LM(vocab_size=16, d_model=8, n_layer=1, d_state=3, headdim=4).eval()
    lm.backbone.layers[0].mixer.load_state_dict(m.state_dict())
    ids = torch.randint(0, 16, (2, 5))
    with torch.inference_mode():
        _, states = lm.scan(ids)
        fast = Mamba2LMState([Mamba2State(s.conv_state.clone(), s.ssm_state.clone()) for s in states.layers])
        neg_A = [-torch.exp(lm.backbone.layers[0].mixer.A_log.float())]
        ref, _ = lm.step(ids[:, -1], states)
        torch.testing.assert_close(lm._fast_step(ids[:, -1], fast, neg_A), ref, rtol=1e-5, atol=1e-5)


def test_chunk_size_changes_rounding_only():
    torch.manual_seed(4)
    m = Mamba2(8, d_state=4, headdim=4).double()
    x = torch.randn(2, 37, 8, dtype=torch.float64)
    ref = m(x)
    for chunk in (1, 5, 16, 64):
        m.chunk_size = chunk
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-11)


def test_scan_backward_through_carried_state():
    torch.manual_seed(5)
    m = Mamba2(8, d_state=3, headdim=4, backend="reference").double()
    x = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    _, s1 = m.scan(x[:, :3])
    y2, _ = m.scan(x[:, 3:], s1)
    y2.square().sum().backward()
    assert x.grad[:, :3].abs().sum() > 0   # only through the carried conv and SSM state
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("backend", _backends())
def test_gradcheck_scan_float64(backend):
    torch.manual_seed(6)
    m = Mamba2(4, d_state=2, d_conv=2, headdim=2, ngroups=2, chunk_size=2, backend=backend).double()
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m.scan(t)[0], (x,))


def test_half_precision_close_to_fp32():
    torch.manual_seed(7)
    m = Mamba2(16, d_state=4, headdim=8)
    x = torch.randn(2, 5, 16)
    ref = m(x)
    mb = Mamba2(16, d_state=4, headdim=8).to(torch.bfloat16)
    mb.load_state_dict(m.state_dict())
    out, st = mb.scan(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and st.ssm_state.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=5e-2)


# -- language model -------------------------------------------------------------------------------


def test_lm_chunked_prefill_fast_decode_and_state_types():
    torch.manual_seed(8)
    lm = Mamba2LM(vocab_size=40, d_model=16, n_layer=2, d_state=4, headdim=8).eval()
    assert lm.vocab_size == 48 and lm.lm_head.weight is lm.backbone.embedding.weight
    ids = torch.randint(0, 40, (2, 9))
    full, st = lm.scan(ids)
    assert isinstance(st, Mamba2LMState) and all(isinstance(s, Mamba2State) for s in st.layers)
    a, st = lm.scan(ids[:, :4])
    b, st = lm.scan(ids[:, 4:], st)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        fast = Mamba2LMState([Mamba2State(s.conv_state.clone(), s.ssm_state.clone()) for s in st.layers])
        neg_A = [-torch.exp(layer.mixer.A_log.float()) for layer in lm.backbone.layers]
        token = ids[:, -1]
        for _ in range(4):
            ref, st = lm.step(token, st)
            got = lm._fast_step(token, fast, neg_A)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
            token = ref.argmax(-1)


def test_bad_input_raises():
    m = Mamba2(8, d_state=2, headdim=4)
    with pytest.raises(ValueError, match="d_model=8"):
        m(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="0 tokens"):
        m(torch.randn(2, 0, 8))
    with pytest.raises(TypeError, match="Mamba2State"):
        m.scan(torch.randn(2, 3, 8), state=(torch.zeros(2, 24, 4), torch.zeros(2, 4, 2, 4)))
    with pytest.raises(ValueError, match="ssm_state"):
        m.scan(torch.randn(2, 3, 8), state=Mamba2State(torch.zeros(2, 20, 4), torch.zeros(2, 4, 4, 2)))
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(8, headdim=5)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2(8, headdim=4, ngroups=3)
    with pytest.raises(ValueError, match="dt_limit"):
        Mamba2(8, headdim=4, dt_limit=(0.1, 0.01))
    with pytest.raises(ValueError, match="chunk_size"):
        Mamba2(8, headdim=4, chunk_size=0)
    lm = Mamba2LM(vocab_size=16, d_model=8, n_layer=1, d_state=2, headdim=4)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 16\)"):
        lm(torch.tensor([[1, 16]]))
    with pytest.raises(TypeError, match="Mamba2LMState"):
        lm.step(torch.tensor([1]), lm.init_state(1).layers)
