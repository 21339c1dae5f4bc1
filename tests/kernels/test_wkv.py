"""RWKV-4 WKV op: backends vs the reference, gradients, stability, peers and bad input."""

from __future__ import annotations

import pytest
import torch

from neurostep.engine import COSTS, BackendUnavailableError
from neurostep.kernels.wkv import PP_INIT, WKVState, init_state, reference, wkv, wkv_step


def _inputs(B, T, C, dtype=torch.float64, seed=0, k_scale=1.0, with_state=True):
    g = torch.Generator().manual_seed(seed)
    td = torch.randn(C, generator=g, dtype=dtype) * 0.7 - 0.5
    tf = torch.randn(C, generator=g, dtype=dtype) * 0.5
    k = torch.randn(B, T, C, generator=g, dtype=dtype) * k_scale
    v = torch.randn(B, T, C, generator=g, dtype=dtype)
    if with_state:
        # a state reached by running a few tokens (so aa, bb, pp are all nontrivial)
        with torch.no_grad():
            _, *s = reference.scan(-torch.exp(td), tf, torch.randn(B, 3, C, generator=g, dtype=dtype),
                                   torch.randn(B, 3, C, generator=g, dtype=dtype), *init_state(B, C, dtype=dtype))
        state = [t.clone() for t in s]
    else:
        state = list(init_state(B, C, dtype=dtype))
    return td, tf, k, v, state


def _loss(y, state, seed=1):
    """A loss that reads every output, including the final pp directly."""
    g = torch.Generator().manual_seed(seed)
    w_y = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    ws = [torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.dtype) for s in state]
    return (y * w_y).sum() + sum((s * w).sum() for s, w in zip(state, ws))


def _grads(fn, td, tf, k, v, state):
    leaves = [t.detach().clone().requires_grad_(True) for t in (td, tf, k, v, *state)]
    y, s = fn(*leaves)
    grads = torch.autograd.grad(_loss(y, s), leaves)
    return y.detach(), [t.detach() for t in s], grads


def _via_op(backend):
    def fn(td, tf, k, v, aa, bb, pp):
        return wkv(td, tf, k, v, (aa, bb, pp), output_final_state=True, backend=backend)
    return fn


def _via_autograd_reference(td, tf, k, v, aa, bb, pp):
    y, aa, bb, pp = reference.scan(-torch.exp(td), tf, k, v, aa, bb, pp)
    return y, (aa, bb, pp)


def _assert_close(a, b, rtol, atol, what):
    assert a.shape == b.shape, f"{what}: {a.shape} vs {b.shape}"
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


NAMES = ["y", "aa", "bb", "pp", "g_time_decay", "g_time_first", "g_k", "g_v", "g_aa0", "g_bb0", "g_pp0"]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
# (3, 16, 70): two channel blocks per row, the last of 6 channels; (1, 5, 600): blocks wider than 64
# (a quarter or half of the channels, by the thread count) and a partial last one
@pytest.mark.parametrize("B,T,C", [(1, 1, 3), (2, 7, 33), (3, 16, 70), (1, 5, 600)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backend_matches_autograd_of_reference(backend, B, T, C, dtype):
    td, tf, k, v, state = _inputs(B, T, C, dtype=dtype, seed=B * 100 + T, k_scale=2.0)
    y0, s0, g0 = _grads(_via_autograd_reference, td, tf, k, v, state)
    y1, s1, g1 = _grads(_via_op(backend), td, tf, k, v, state)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    for name, a, b in zip(NAMES, [y1, *s1, *g1], [y0, *s0, *g0]):
        _assert_close(a, b, what=f"{backend} {name}", **tol)


def test_fresh_state_gradients_and_defaults():
    td, tf, k, v, _ = _inputs(2, 5, 8, with_state=False)
    y_none, s_none = wkv(td, tf, k, v, output_final_state=True, backend="cpu")
    fresh = init_state(2, 8, dtype=torch.float64)
    assert torch.equal(fresh.pp, torch.full((2, 8), PP_INIT, dtype=torch.float64))
    y_fresh, _ = wkv(td, tf, k, v, fresh, output_final_state=True, backend="cpu")
    torch.testing.assert_close(y_none, y_fresh)
    assert isinstance(s_none, WKVState)
    # from a fresh state the first output is v_0 exactly (one token: weight e^{u+k}/e^{u+k})
    torch.testing.assert_close(y_none[:, 0], v[:, 0])
    y0, s0, g0 = _grads(_via_autograd_reference, td, tf, k, v, list(fresh))
    y1, s1, g1 = _grads(_via_op("cpu"), td, tf, k, v, list(fresh))
    for name, a, b in zip(NAMES, [y1, *s1, *g1], [y0, *s0, *g0]):
        assert torch.isfinite(a).all(), name
        _assert_close(a, b, rtol=1e-10, atol=1e-10, what=name)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    td, tf, k, v, state = _inputs(1, 3, 2, seed=7)
    leaves = [t.clone().requires_grad_(True) for t in (td, tf, k, v, *state)]

    def fn(td, tf, k, v, aa, bb, pp):
        y, s = wkv(td, tf, k, v, (aa, bb, pp), output_final_state=True, backend=backend)
        return y, *s

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_odd_and_noncontiguous_inputs():
    td, tf, k, v, state = _inputs(3, 11, 9, dtype=torch.float32, seed=3)
    k_nc = k.transpose(0, 1).contiguous().transpose(0, 1)   # same values, non-contiguous strides
    v_nc = v[:, :, torch.arange(9)].clone().transpose(1, 2).contiguous().transpose(1, 2)
    assert not k_nc.is_contiguous() and not v_nc.is_contiguous()
    y0, s0 = wkv(td, tf, k, v, state, output_final_state=True, backend="reference")
    y1, s1 = wkv(td, tf, k_nc, v_nc, state, output_final_state=True, backend="cpu")
    torch.testing.assert_close(y1, y0, rtol=2e-5, atol=2e-5)
    for a, b in zip(s1, s0):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)


def test_chunked_scan_and_steps_equal_one_scan():
    td, tf, k, v, state = _inputs(2, 13, 6, seed=4)
    y, s = wkv(td, tf, k, v, state, output_final_state=True, backend="cpu")
    ya, sa = wkv(td, tf, k[:, :5], v[:, :5], state, output_final_state=True, backend="cpu")
    yb, sb = wkv(td, tf, k[:, 5:], v[:, 5:], sa, output_final_state=True, backend="cpu")
    torch.testing.assert_close(torch.cat([ya, yb], 1), y)
    s_step, ys = WKVState(*state), []
    for t in range(13):
        y_t, s_step = wkv_step(td, tf, k[:, t], v[:, t], s_step)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y)
    for a, b, c in zip(sb, s_step, s):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, c)


def test_long_sequence_large_keys_is_stable():
    """L = 65,536 with k ~ 50 (exp(k) overflows fp32 in the naive form): finite, and y stays a
    weighted average of the values seen so far."""
    B, T, C = 1, 65_536, 4
    g = torch.Generator().manual_seed(5)
    td = torch.tensor([-6.0, -1.0, 0.0, 2.0])       # decays from ~1 - 2.5e-3 to e^{-7.4} per step
    tf = torch.tensor([0.5, -0.5, 3.0, 0.0])
    k = (50.0 + 5.0 * torch.randn(B, T, C, generator=g)).requires_grad_(True)
    v = torch.randn(B, T, C, generator=g).requires_grad_(True)
    td.requires_grad_(True)
    tf.requires_grad_(True)
    y, s = wkv(td, tf, k, v, output_final_state=True, backend="cpu")
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in s)
    running_max = torch.cummax(v.detach(), dim=1).values
    running_min = -torch.cummax(-v.detach(), dim=1).values
    assert (y <= running_max + 1e-5).all() and (y >= running_min - 1e-5).all()
    (y * torch.randn(y.shape, generator=g)).sum().backward()
    for t in (td, tf, k, v):
        assert torch.isfinite(t.grad).all()
    # the fused kernel agrees with the reference on the last stretch, started from the same state
    _, s_mid = wkv(td.detach(), tf.detach(), k.detach()[:, :-64], v.detach()[:, :-64], output_final_state=True,
                   backend="cpu")
    y_ref, *_ = reference.scan(-torch.exp(td.detach()), tf.detach(), k.detach()[:, -64:], v.detach()[:, -64:], *s_mid)
    torch.testing.assert_close(y.detach()[:, -64:], y_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_use_fp32_state(dtype):
    td, tf, k, v, state = _inputs(2, 9, 16, dtype=torch.float32, seed=6)
    kh, vh = k.to(dtype).requires_grad_(True), v.to(dtype).requires_grad_(True)
    y, s = wkv(td, tf, kh, vh, state, output_final_state=True, backend="cpu")
    assert y.dtype == dtype and all(t.dtype == torch.float32 for t in s)
    y_ref, *_ = reference.scan(-torch.exp(td), tf, kh.detach().float(), vh.detach().float(), *state)
    tol = 1e-2 if dtype == torch.float16 else 2e-2
    torch.testing.assert_close(y.float(), y_ref, rtol=tol, atol=tol)
    y.float().sum().backward()
    assert kh.grad.dtype == dtype and torch.isfinite(kh.grad.float()).all()


def test_nan_in_values_propagates_forward_only_from_its_token():
    td, tf, k, v, _ = _inputs(1, 6, 4, dtype=torch.float32, seed=8, with_state=False)
    v = v.clone()
    v[0, 3, 1] = float("nan")
    for backend in ("reference", "cpu"):
        y, s = wkv(td, tf, k, v, output_final_state=True, backend=backend)
        assert torch.isfinite(y[0, :3]).all(), backend
        assert torch.isnan(y[0, 3:, 1]).all(), backend
        assert torch.isfinite(y[0, :, [0, 2, 3]]).all(), backend
    k = k.clone()
    k[0, 2, 0] = float("nan")
    y, _ = wkv(td, tf, k, v, output_final_state=True, backend="cpu")
    assert torch.isnan(y[0, 2:, 0]).all() and torch.isfinite(y[0, :2, 0]).all()


def test_no_grad_call_matches_and_saves_nothing():
    td, tf, k, v, state = _inputs(2, 5, 7, seed=9)
    with torch.no_grad():
        y0, _ = wkv(td, tf, k, v, state, output_final_state=True, backend="cpu")
        out = torch.ops.neurostep.wkv_forward(td, tf, k, v, *state, False, "cpu")
    assert out[4].numel() == 0
    torch.testing.assert_close(out[0], y0)


def test_custom_op_opcheck_and_fake_tensors():
    td, tf, k, v, state = _inputs(2, 3, 5, dtype=torch.float32, seed=10)
    args = [t.clone().requires_grad_(True) for t in (td, tf, k, v, *state)]
    torch.library.opcheck(torch.ops.neurostep.wkv_forward.default, (*args, True, "cpu"),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))

    # the fake implementation gives shapes without running a kernel (what torch.compile traces with)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fk = mode.from_tensor(k)
        out = torch.ops.neurostep.wkv_forward(mode.from_tensor(td), mode.from_tensor(tf), fk, mode.from_tensor(v),
                                              *[mode.from_tensor(s) for s in state], True, "cpu")
        assert out[0].shape == k.shape and out[4].shape == (3, *k.shape)


def test_cost_formula():
    td, tf, k, v, state = _inputs(2, 5, 7, dtype=torch.float32, seed=11)
    args = (td, tf, k, v, *state, False, "cpu")
    out = torch.ops.neurostep.wkv_forward(*args)
    cost = COSTS.get("neurostep::wkv_forward")(args, {}, out)
    n = 2 * 5 * 7
    assert cost.exps == 2 * n + 7 and cost.compares == 2 * n and cost.state_updates == 3 * n
    assert cost.bytes_read > 0 and cost.bytes_written > 0


def test_bad_input_raises_clear_errors():
    td, tf, k, v, state = _inputs(2, 4, 3, dtype=torch.float32, seed=12)
    with pytest.raises(ValueError, match="k must have 3 dims"):
        wkv(td, tf, k[0], v)
    with pytest.raises(ValueError, match=r"v must have shape \(2, 4, 3\)"):
        wkv(td, tf, k, v[:, :3])
    with pytest.raises(ValueError, match=r"w \(time_decay\) must have shape"):
        wkv(td[:2], tf, k, v)
    with pytest.raises(ValueError, match=r"u \(time_first\) must have shape"):
        wkv(td, tf[None], k, v)
    with pytest.raises(TypeError, match="k must have dtype"):
        wkv(td, tf, k.long(), v.long())
    with pytest.raises(TypeError, match="v must have the dtype of k"):
        wkv(td, tf, k, v.double())
    with pytest.raises(ValueError, match="0 tokens"):
        wkv(td, tf, k[:, :0], v[:, :0])
    with pytest.raises(ValueError, match=r"w \(time_decay\) must be finite"):
        wkv(torch.full_like(td, float("nan")), tf, k, v)
    with pytest.raises(ValueError, match="state.bb must have shape"):
        wkv(td, tf, k, v, (state[0], state[1][:1], state[2]))
    with pytest.raises(TypeError, match="initial_state must be a WKVState or a tuple"):
        wkv(td, tf, k, v, state[0])
    with pytest.raises(ValueError, match="backend must be"):
        wkv(td, tf, k, v, output_final_state=True, backend="cuda")
    with pytest.raises(TypeError, match=r"w \(time_decay\) must be a torch.Tensor"):
        wkv([0.0] * 3, tf, k, v)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    td, tf, k, v, _ = _inputs(1, 2, 3, dtype=torch.float32)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        wkv(td, tf, k, v, output_final_state=True, backend="triton")


@pytest.mark.peers
def test_matches_transformers_rwkv_attention():
    transformers = pytest.importorskip("transformers")
    from transformers.models.rwkv import modeling_rwkv

    torch.manual_seed(0)
    config = transformers.RwkvConfig(vocab_size=32, context_length=32, hidden_size=24, num_hidden_layers=2,
                                     attention_hidden_size=24, intermediate_size=48)
    model = modeling_rwkv.RwkvModel(config).eval()
    att = model.blocks[1].attention
    with torch.no_grad():   # random (not the zero/identity) time parameters, so every path is exercised
        att.time_decay.normal_(0.0, 1.0)
        att.time_first.normal_(0.0, 1.0)
        for p in (att.key.weight, att.value.weight, att.receptance.weight, att.output.weight):
            p.normal_(0.0, 0.5)
    hidden = torch.randn(2, 9, 24)
    with torch.no_grad():
        expected, _ = att(hidden)
        receptance, key, value, _ = att.extract_key_value(hidden)
        y, _ = wkv(att.time_decay, att.time_first, key, value, output_final_state=True, backend="cpu")
        ours = att.output(receptance * y)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
        # the state convention too: transformers' (numerator, denominator, max) is our (aa, bb, pp)
        out_hf, state_hf = modeling_rwkv.rwkv_linear_attention_cpu(att.time_decay, att.time_first, key, value,
                                                                  return_state=True)
        out_ours, state_ours = wkv(att.time_decay, att.time_first, key, value, output_final_state=True, backend="cpu")
        torch.testing.assert_close(out_ours, out_hf, rtol=1e-5, atol=1e-5)
        for a, b in zip(state_ours, state_hf):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_fullgraph_forward_and_backward():
    td, tf, k, v, _ = _inputs(2, 3, 5, dtype=torch.float32, seed=13, with_state=False)
    leaves = [t.clone().requires_grad_(True) for t in (td, tf, k, v)]

    def f(td, tf, k, v):
        y, s = wkv(td, tf, k, v, output_final_state=True, backend="cpu")
        return (y * 2).sum() + s.aa.sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    g_compiled = torch.autograd.grad(compiled(*leaves), leaves)
    g_eager = torch.autograd.grad(f(*leaves), leaves)
    for a, b in zip(g_compiled, g_eager):
        torch.testing.assert_close(a, b)


def test_auto_backend_is_the_fused_cpu_kernel_on_cpu():
    from neurostep.engine import KERNELS

    assert KERNELS.choose("wkv", "auto", torch.device("cpu")) == "cpu"
    td, tf, k, v, state = _inputs(1, 4, 3, seed=14)
    torch.testing.assert_close(wkv(td, tf, k, v, state)[0], wkv(td, tf, k, v, state, backend="cpu")[0],
                               rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_tie_in_the_state_max_splits_the_gradient_like_torch_maximum(backend):
    # time_decay 0 -> log-decay exactly -1; after token 0, pp = k_0, so k_1 = k_0 - 1 ties w + pp == k_1.
    td = torch.zeros(2, dtype=torch.float64)
    tf = torch.tensor([0.3, -0.2], dtype=torch.float64)
    k = torch.tensor([[[0.5, 2.0], [-0.5, 1.0]]], dtype=torch.float64)
    v = torch.tensor([[[1.0, -2.0], [0.5, 3.0]]], dtype=torch.float64)
    state = list(init_state(1, 2, dtype=torch.float64))
    y0, s0, g0 = _grads(_via_autograd_reference, td, tf, k, v, state)
    y1, s1, g1 = _grads(_via_op(backend), td, tf, k, v, state)
    for name, a, b in zip(NAMES, [y1, *s1, *g1], [y0, *s0, *g0]):
        _assert_close(a, b, rtol=1e-12, atol=1e-12, what=f"{backend} {name}")
