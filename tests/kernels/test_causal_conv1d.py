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
    cost = COSTS.get("neurostep::causal_conv1d_forward")((x, w, bias, None, True, False, "reference"), {}, None)
    assert cost.macs == x.numel() * 4 and cost.exps == x.numel()


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(backend, channels_last):
    x, w, bias, init = make(b=1, d=2, L=5, w=3, dtype=torch.float32)
    x = x.transpose(1, 2).contiguous() if channels_last else x
    torch.library.opcheck(torch.ops.neurostep.causal_conv1d_forward.default,
                          (x.requires_grad_(), w, bias, init, True, channels_last, backend))


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


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """The same ``(B, D, L)`` values with the channels contiguous: the transpose of a ``(B, L, D)`` block."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("width", [1, 3, 4, 5])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("init", [False, True])
def test_channels_last_input_matches_channels_first(backend, width, activation, init):
    # 70 steps are three runs of the channels-last kernels' 32; 33 batch rows of them are more runs than slots
    for b, length in ((2, 70), (33, 40), (1, 2)):
        x, w, bias, h = make(b=b, d=9, L=length, w=width, init=init)
        want = run(x, w, bias, h, activation, backend)
        got = run(channels_last(x), w, bias, h, activation, backend)
        assert got[0].stride(1) == 1                       # out comes in the layout of x
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
        if backend == "cpu":                                # the same taps in the same order: out and dx
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_channels_last_is_detected_from_the_strides():
    from neurostep.kernels.causal_conv1d import channels_last_layout

    x, _, _, _ = make(b=2, d=5, L=7)
    assert not channels_last_layout(x)
    assert channels_last_layout(channels_last(x))
    assert channels_last_layout(torch.randn(2, 7, 12)[..., 2:7].transpose(1, 2))   # a slice of wider rows
    assert not channels_last_layout(x[..., ::2])                                    # neither: made contiguous
    assert not channels_last_layout(channels_last(x)[:, :1])                        # one channel


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_gradcheck_channels_last(backend):
    x, w, bias, init = make(b=2, d=3, L=35, w=4)
    fn = lambda *t: causal_conv1d_fn(*t, activation="silu", backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [channels_last(x).requires_grad_(), *(t.requires_grad_() for t in (w, bias,
                                                                                                          init))])
