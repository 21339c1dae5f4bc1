"""Mamba block and Mamba LM: HF parity, scan == step, chunked scans, init, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from neurostep.engine import KERNELS, scan_by_steps
from neurostep.ssm import Mamba, MambaLM, MambaLMState, MambaState

transformers = pytest.importorskip("transformers")


def _backends() -> list[str]:
    """Backends that both ops of the block (scan and conv) provide: a block passes one name to both."""
    import neurostep.kernels.causal_conv1d  # noqa: F401  (registers the backends)
    import neurostep.kernels.selective_scan  # noqa: F401

    names = ["reference"]
    if "cpu" in KERNELS.backends("selective_scan") and "cpu" in KERNELS.backends("causal_conv1d"):
        names.append("cpu")
    return names


def _hf_model(vocab: int = 96, d: int = 32, layers: int = 2, n: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.MambaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, state_size=n,
                                   use_cache=True)
    model = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad():
        # Stronger mixers than HF's init: with a tied head and weak mixers, greedy decoding just
        # repeats a token, which would make the generation test vacuous.
        for name, p in model.named_parameters():
            if name.endswith(("in_proj.weight", "out_proj.weight", "x_proj.weight")):
                p.normal_(0, 3.0 / p.shape[1] ** 0.5)
    return model


# -- parameters and init ----------------------------------------------------------------------


def test_state_dict_matches_hf_mixer():
    cfg = transformers.MambaConfig(vocab_size=16, hidden_size=24, num_hidden_layers=1, state_size=6)
    hf_mixer = transformers.models.mamba.modeling_mamba.MambaMixer(cfg, layer_idx=0)
    ours = Mamba(24, d_state=6)
    theirs = {k: tuple(v.shape) for k, v in hf_mixer.state_dict().items()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mine == theirs
    ours.load_state_dict(hf_mixer.state_dict(), strict=True)


def test_init_follows_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(32, d_state=5, dt_min=0.002, dt_max=0.05)
    assert m.d_inner == 64 and m.dt_rank == math.ceil(32 / 16)
    assert torch.allclose(m.A_log, torch.log(torch.arange(1, 6.0)).repeat(64, 1))
    assert torch.equal(m.D.detach(), torch.ones(64))
    dt = torch.nn.functional.softplus(m.dt_proj.bias.detach())
    assert dt.min() >= 0.002 * 0.999 and dt.max() <= 0.05 * 1.001
    assert m.conv1d.weight.shape == (64, 1, 4)
    bound = m.dt_rank ** -0.5
    assert m.dt_proj.weight.abs().max() <= bound


# -- scan vs step ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("length", [1, 2, 7])
def test_scan_equals_step(backend, length):
    torch.manual_seed(1)
    m = Mamba(12, d_state=4, d_conv=3, backend=backend).double()
    x = torch.randn(2, length, 12, dtype=torch.float64)
    y, st = m.scan(x)
    y_ref, st_ref = scan_by_steps(m, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(st.ssm_state, st_ref.ssm_state, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(st.conv_state, st_ref.conv_state, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("split", [1, 2, 5])
def test_chunked_scan_equals_whole(backend, split):
    torch.manual_seed(2)
    m = Mamba(10, d_state=3, backend=backend)
    x = torch.randn(3, 9, 10)
    y, st = m.scan(x)
    y1, s1 = m.scan(x[:, :split])
    y2, s2 = m.scan(x[:, split:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s2.ssm_state, st.ssm_state, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s2.conv_state, st.conv_state, rtol=1e-5, atol=1e-6)


def test_scan_backward_through_carried_state():
    torch.manual_seed(3)
    # reference kernels: the fused backends' gradients are the kernel tests' subject
    m = Mamba(8, d_state=3, backend="reference").double()
    x = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    _, s1 = m.scan(x[:, :3])
    y2, _ = m.scan(x[:, 3:], s1)
    y2.square().sum().backward()
    # Gradient reaches the first chunk only through the carried (conv and ssm) state.
    assert x.grad[:, :3].abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_gradcheck_scan_float64():
    torch.manual_seed(4)
    m = Mamba(4, d_state=2, d_conv=2, expand=1).double()
    x = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m.scan(t)[0], (x,))


def test_half_precision_close_to_fp32():
    torch.manual_seed(5)
    m = Mamba(16, d_state=4)
    x = torch.randn(2, 5, 16)
    ref = m(x)
    mb = Mamba(16, d_state=4).to(torch.bfloat16)
    mb.load_state_dict(m.state_dict())
    out = mb(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=5e-2)
    assert mb.scan(x.to(torch.bfloat16))[1].ssm_state.dtype == torch.float32


# -- language model vs Hugging Face ----------------------------------------------------------------


def test_lm_logits_match_hf():
    hf = _hf_model()
    ours = MambaLM.from_hf(hf).eval()
    ids = torch.randint(0, 96, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(ids, use_cache=False).logits
        out = ours(ids)
    torch.testing.assert_close(out, ref, rtol=6e-4, atol=2e-4)


def test_greedy_generation_matches_hf():
    hf = _hf_model(seed=1)
    ours = MambaLM.from_hf(hf).eval()
    ids = torch.randint(0, 96, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    out = ours.generate(ids, 12)
    assert out.tolist() == ref.tolist()
    assert len(set(out[0, 7:].tolist())) > 1, "degenerate test: generation is constant"


def test_fast_decode_equals_step():
    torch.manual_seed(6)
    lm = MambaLM(vocab_size=50, d_model=16, n_layer=2, d_state=4).eval()
    ids = torch.randint(0, 50, (2, 5))
    with torch.inference_mode():
        _, states = lm.scan(ids)
        assert isinstance(states, MambaLMState) and len(states.layers) == 2
        fast = MambaLMState([MambaState(s.conv_state.clone(), s.ssm_state.clone()) for s in states.layers])
        neg_A = [-torch.exp(layer.mixer.A_log.float()) for layer in lm.backbone.layers]
        token = ids[:, -1]
        for _ in range(4):
            ref, states = lm.step(token, states)
            got = lm._fast_step(token, fast, neg_A)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
            token = ref.argmax(-1)


def test_lm_chunked_prefill_and_last_only():
    torch.manual_seed(7)
    lm = MambaLM(vocab_size=40, d_model=16, n_layer=2, d_state=4)
    ids = torch.randint(0, 40, (2, 9))
    full, _ = lm.scan(ids)
    a, st = lm.scan(ids[:, :4])
    b, _ = lm.scan(ids[:, 4:], st)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-5, atol=1e-5)
    last, _ = lm.scan(ids, last_only=True)
    torch.testing.assert_close(last[:, 0], full[:, -1])
    # the head is tied to the embedding and the vocabulary is padded to a multiple of 8
    assert lm.lm_head.weight is lm.backbone.embedding.weight and lm.vocab_size == 40
    assert MambaLM(vocab_size=50277, d_model=8, n_layer=1).vocab_size == 50280


# -- bad input ----------------------------------------------------------------------------------


def test_bad_input_raises():
    m = Mamba(8, d_state=2)
    with pytest.raises(ValueError, match="d_model=8"):
        m(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="dims"):
        m(torch.randn(3, 8))
    with pytest.raises(ValueError, match="0 tokens"):
        m(torch.randn(2, 0, 8))
    with pytest.raises(TypeError, match="dtype"):
        m(torch.ones(2, 3, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="MambaState"):
        m.scan(torch.randn(2, 3, 8), state=(torch.zeros(2, 16, 4), torch.zeros(2, 16, 2)))
    with pytest.raises(ValueError, match="ssm_state"):
        m.scan(torch.randn(2, 3, 8), state=MambaState(torch.zeros(2, 16, 4), torch.zeros(1, 16, 2)))
    with pytest.raises(ValueError, match="batch_shape"):
        m.init_state((2, 5))
    with pytest.raises(ValueError, match="d_model"):
        Mamba(0)
    lm = MambaLM(vocab_size=16, d_model=8, n_layer=1)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 16\)"):
        lm(torch.tensor([[1, 16]]))
    with pytest.raises(TypeError, match="input_ids"):
        lm(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="one per layer"):
        lm.step(torch.tensor([1]), MambaLMState([]))
    with pytest.raises(TypeError, match="MambaLMState"):
        lm.step(torch.tensor([1]), lm.init_state(1).layers)
    sd = lm.state_dict()
    sd["backbone.embedding.weight"] = torch.zeros(24, 8)
    with pytest.raises(ValueError, match="embedding shape"):
        lm.load_hf_state_dict(sd)


def test_nan_propagates():
    m = Mamba(8, d_state=2)
    x = torch.randn(1, 4, 8)
    x[0, 1, 0] = float("nan")
    y = m(x)
    assert torch.isnan(y[0, 1:]).any() and not torch.isnan(y[0, 0]).any()


def test_lti_mamba_coefficients_do_not_depend_on_the_input():
    from neurostep.ssm import Mamba, MambaLTI

    torch.manual_seed(0)
    lti = MambaLTI(16, d_state=4)
    assert not hasattr(lti, "x_proj") and not hasattr(lti, "dt_proj")
    xa, xb = torch.randn(2, 32, 7), torch.randn(2, 32, 7) * 5
    (da, Ba, Ca, bias_a), (db, Bb, Cb, bias_b) = lti._scan_coefficients(xa, ""), lti._scan_coefficients(xb, "")
    assert torch.equal(da, db) and not da.any()          # delta = softplus(0 + dt_bias), the same for every token
    assert Ba is lti.B and Bb is lti.B and Ca is lti.C and Cb is lti.C and torch.equal(bias_a, bias_b)
    sel = Mamba(16, d_state=4)
    (_, Bs, _, _), (_, Bt, _, _) = sel._scan_coefficients(xa, ""), sel._scan_coefficients(xb, "")
    assert not torch.allclose(Bs, Bt)                    # the selective block's B is a function of x
    # The state space model is a time-invariant convolution: a delayed input gives a delayed output.
    for mode in ("conv", "scan"):
        lti.mode = mode
        u = torch.randn(1, 32, 20)
        shifted = torch.cat([torch.zeros(1, 32, 5), u[..., :15]], -1)
        with torch.no_grad():
            y_shifted, y = lti._ssm_core(shifted, None, "", None)[0], lti._ssm_core(u, None, "", None)[0]
        torch.testing.assert_close(y_shifted[..., 5:], y[..., :15], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["conv", "scan"])
def test_lti_mamba_scan_equals_step_and_trains(mode):
    from neurostep.ssm import MambaLTI

    torch.manual_seed(1)
    lti = MambaLTI(8, d_state=4, backend="reference", mode=mode)
    with torch.no_grad():
        lti.dt_bias.fill_(0.5)   # decays well below 1 over the sequence, so the initial state matters
    x = torch.randn(2, 9, 8)
    y, final = lti.scan(x)
    state = lti.init_state(2)
    steps = []
    for t in range(9):
        yt, state = lti.step(x[:, t], state)
        steps.append(yt)
    torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(final.ssm_state, state.ssm_state, rtol=1e-4, atol=1e-5)
    # Resuming from the state after 4 tokens gives the rest of the sequence.
    _, mid = lti.scan(x[:, :4])
    torch.testing.assert_close(lti.scan(x[:, 4:], mid)[0], y[:, 4:], rtol=1e-4, atol=1e-5)
    y.sum().backward()
    assert lti.B.grad is not None and lti.C.grad is not None and lti.dt_bias.grad is not None


def test_lti_mamba_conv_mode_equals_scan_mode_with_gradients():
    from neurostep.ssm import MambaLTI

    torch.manual_seed(2)
    conv = MambaLTI(8, d_state=4, mode="conv").double()
    scan = MambaLTI(8, d_state=4, mode="scan", backend="reference").double()
    scan.load_state_dict(conv.state_dict())
    x = torch.randn(3, 40, 8, dtype=torch.float64)
    outs = []
    for model in (conv, scan):
        y = model(x)
        (y * torch.linspace(-1, 1, 40, dtype=torch.float64)[None, :, None]).sum().backward()
        outs.append((y, {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-9, atol=1e-10)
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(grad, outs[1][1][name], rtol=1e-8, atol=1e-10, msg=name)
    with pytest.raises(ValueError, match="mode must be one of"):
        MambaLTI(8, mode="fft")


@pytest.mark.parametrize("block", ["mamba", "mamba_lti", "vim"])
def test_the_drop_in_forward_computes_no_final_state(block, monkeypatch):
    """``forward`` equals ``scan``'s output, and asks the scan (or the LTI convolution) for no final
    state, which nothing would read."""
    import neurostep.ssm.mamba as mamba_module
    from neurostep.ssm import BidirectionalMamba, MambaLTI

    asked = []
    for name in ("selective_scan", "lti_convolution"):
        original = getattr(mamba_module, name)

        def watched(*args, _original=original, **kwargs):
            asked.append(kwargs.get("output_final_state", True))
            return _original(*args, **kwargs)

        monkeypatch.setattr(mamba_module, name, watched)
    torch.manual_seed(0)
    cls = {"mamba": Mamba, "mamba_lti": lambda d, **kw: MambaLTI(d, mode="conv", **kw), "vim": BidirectionalMamba}
    layer, x = cls[block](16, d_state=4), torch.randn(2, 9, 16)
    y, state = layer.scan(x)
    directions = 2 if block == "vim" else 1
    assert state is not None and asked == [True] * directions
    asked.clear()
    assert torch.equal(layer(x), y) and asked == [False] * directions
