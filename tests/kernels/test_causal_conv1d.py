"""causal_conv1d_fn / causal_conv1d_update: backends against the reference, the reference against
torch's conv1d formula, gradients, chunked state carry, decode step, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neurostep.engine import COSTS
from neurostep.kernels.causal_conv1d import causal_conv1d, causal_conv1d_fn, causal_conv1d_update

BACKENDS = ["cpu"]


def make(b=2, d=5, L=11, w=4, dtype=torch.float64, init=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)

    return r(b, d, L), r(d, w), r(d), (r(b, d, w - 1) if init else None)


def run(x, w, bias, init, activation, backend):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, bias, init)]
    out = causal_conv1d_fn(*leaves, activation=activation, backend=backend)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(out.dtype)
    return [out, *torch.autograd.grad(out, [t for t in leaves if t is not None], go)]


@pytest.mark.parametrize("width", [1, 2, 4, 7])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_reference_matches_conv1d_formula(width, activation):
    x, w, bias, _ = make(w=width, init=False)
    want = F.conv1d(x, w[:, None], bias, padding=width - 1, groups=x.shape[1])[..., : x.shape[-1]]
    if activation:
        want = F.silu(want)
    torch.testing.assert_close(causal_conv1d_fn(x, w, bias, activation=activation, backend="reference"), want)


def test_gradcheck_reference():
    x, w, bias, init = make(b=1, d=2, L=5, w=3)
    fn = lambda *t: causal_conv1d_fn(*t, activation="silu", backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (x, w, bias, init)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("width", [1, 3, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("init", [False, True])
def test_backend_matches_reference(backend, width, activation, init):
    x, w, bias, h = make(L=13, w=width, init=init)
    want = run(x, w, bias, h, activation, "reference")
    got = run(x, w, bias, h, activation, backend)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    got32 = run(*(t.float() if t is not None else None for t in (x, w, bias, h)), activation, backend)
    for a, b in zip(got32, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_no_bias_length_one_noncontiguous(backend):
    x, w, _, _ = make(L=1, w=4, init=False)
    for xx, ww in ((x, w), (x.transpose(0, 1).contiguous().transpose(0, 1), w.t().contiguous().t())):
        want = run(xx, ww, None, None, "silu", "reference")
        for a, b in zip(run(xx, ww, None, None, "silu", backend), want):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_gradcheck_backend(backend):
    x, w, bias, init = make(b=1, d=2, L=4, w=3)
    fn = lambda *t: causal_conv1d_fn(*t, activation="silu", backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (x, w, bias, init)])


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(backend, dtype):
    x, w, bias, _ = make(dtype=dtype, init=False)
    out = causal_conv1d_fn(x, w, bias, activation="silu", backend=backend)
    assert out.dtype == dtype
    want = causal_conv1d_fn(x.float(), w.float(), bias.float(), activation="silu", backend="reference")
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_chunks_with_carried_state_equal_whole(backend):
    x, w, bias, _ = make(L=12, w=4, init=False)
    whole = causal_conv1d_fn(x, w, bias, activation="silu", backend=backend)
    out1, state = causal_conv1d_fn(x[..., :2], w, bias, activation="silu", return_final_states=True,
                                   backend=backend)  # a chunk shorter than W-1
    out2, state = causal_conv1d_fn(x[..., 2:], w, bias, state, activation="silu", return_final_states=True,
                                   backend=backend)
    torch.testing.assert_close(torch.cat([out1, out2], -1), whole)
    torch.testing.assert_close(state, x[..., -3:])


def test_update_steps_equal_scan():
    x, w, bias, _ = make(L=7, w=4, init=False)
    want = causal_conv1d_fn(x, w, bias, activation="silu")
    state = torch.zeros(2, 5, 4, dtype=torch.float64)
    before = state.clone()
    outs = []
    s = state
    for t in range(7):
        o, s = causal_conv1d_update(x[..., t], s, w, bias, activation="silu")
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, -1), want)
    torch.testing.assert_close(s, x[..., -4:])
    assert torch.equal(state, before)


def test_cost_formula():
    x, w, bias, _ = make(init=False)
    cost = COSTS.get("neurostep::causal_conv1d_forward")((x, w, bias, None, True, "reference"), {}, None)
    assert cost.macs == x.numel() * 4 and cost.exps == x.numel()


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_opcheck(backend):
    x, w, bias, init = make(b=1, d=2, L=5, w=3, dtype=torch.float32)
    torch.library.opcheck(torch.ops.neurostep.causal_conv1d_forward.default,
                          (x.requires_grad_(), w, bias, init, True, backend))


def test_bad_input():
    x, w, bias, init = make()
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_fn(x, w[:3])
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_fn(x, w[:, :0])
    with pytest.raises(ValueError, match="initial_state"):
        causal_conv1d_fn(x, w, bias, init[..., :1])
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_fn(x, w, activation="relu")
    with pytest.raises(ValueError, match="0 time steps"):
        causal_conv1d_fn(x[..., :0], w)
    with pytest.raises(TypeError, match="x"):
        causal_conv1d_fn(x.long(), w)
    with pytest.raises(ValueError, match="weight must be finite"):
        causal_conv1d_fn(x, torch.full_like(w, float("inf")))
    with pytest.raises(ValueError, match="conv_state"):
        causal_conv1d_update(x[..., 0], torch.zeros(2, 5, 3, dtype=torch.float64), w)


def test_state_convention_chunks():
    """initial_state in, (out, final_state) out: chunks with the state carried equal one run, and
    causal_conv1d_fn (causal-conv1d's spelling) returns the same values."""
    x, w, bias, init = make(L=12, w=4, dtype=torch.float32, seed=5)
    out, final = causal_conv1d(x, w, bias, "silu", initial_state=init, output_final_state=True)
    assert causal_conv1d(x, w, bias, "silu")[1] is None
    out1, mid = causal_conv1d(x[..., :5], w, bias, "silu", initial_state=init, output_final_state=True)
    out2, end = causal_conv1d(x[..., 5:], w, bias, "silu", initial_state=mid, output_final_state=True)
    torch.testing.assert_close(torch.cat([out1, out2], dim=-1), out)
    assert torch.equal(end, final) and torch.equal(final, x[..., -3:])
    out_fn, final_fn = causal_conv1d_fn(x, w, bias, init, "silu", return_final_states=True)
    assert torch.equal(out_fn, out) and torch.equal(final_fn, final)
