"""Tests of the fused LIF scan (reference and numba backends; triton is in test_lif_triton.py)."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import pytest
import torch

from neurostep.engine import COSTS, KERNELS, BackendUnavailableError
from neurostep.kernels.lif import SURROGATES, LIFState, lif_scan
from neurostep.kernels.lif.reference import lif_loop, spike
from neurostep.kernels.lif.surrogates import sg_block_function, sg_constant
from neurostep.kernels.numba_launch import use_threads

BACKENDS = ["reference", "cpu"]


class _Out(NamedTuple):
    spikes: torch.Tensor
    v_last: torch.Tensor
    a_last: torch.Tensor | None
    v_seq: torch.Tensor | None


def _scan(x, v0=None, a0=None, *, return_v_seq=False, **kw) -> _Out:
    """lif_scan with every output at hand: (spikes, v_last, a_last, v_seq)."""
    state = None if v0 is None and a0 is None else LIFState(v0 if v0 is not None else torch.zeros_like(a0), a0)
    out, final = lif_scan(x, state, return_v_seq=return_v_seq, output_final_state=True, **kw)
    spikes, v_seq = out if return_v_seq else (out, None)
    return _Out(spikes, final.v, final.a, v_seq)

# (convention, v_reset, decay_input, detach_reset, adaptive, surrogate)
SJ_CASES = [
    ("spikingjelly", vr, dec, det, ad, sur)
    for (vr, dec, det, ad), sur in itertools.product(
        itertools.product([0.0, None], [True, False], [False, True], [False, True]), ["sigmoid", "atan"]
    )
]
SNN_CASES = [("snntorch", reset, sur) for reset in ("subtract", "zero", "none") for sur in ("fast_sigmoid", "erf")]


def _inputs(T, lanes, dtype, *, adaptive, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn((T, *lanes), generator=g, dtype=torch.float64) * scale + 0.4).to(dtype)
    v0 = (torch.randn(lanes, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    a0 = (torch.rand(lanes, generator=g, dtype=torch.float64) * 0.3).to(dtype) if adaptive else None
    return x, v0, a0


def _run_pair(backend, x, v0, a0, dtype_ref, **kw):
    """Run the op and the autograd loop on the same values; return outputs and input grads of both."""
    tau = torch.tensor(0.4, dtype=dtype_ref, requires_grad=True)
    vth = torch.tensor(0.9, dtype=dtype_ref, requires_grad=True)
    xs = x.clone().requires_grad_()
    v0s = v0.clone().requires_grad_()
    a0s = a0.clone().requires_grad_() if a0 is not None else None
    out = _scan(xs, v0s, a0s, tau_inv=tau, v_threshold=vth, return_v_seq=True, backend=backend, **kw)
    xr = x.to(dtype_ref).clone().requires_grad_()
    v0r = v0.to(dtype_ref).clone().requires_grad_()
    a0r = a0.to(dtype_ref).clone().requires_grad_() if a0 is not None else None
    taur = tau.detach().clone().requires_grad_()
    vthr = vth.detach().clone().requires_grad_()
    ref = lif_loop(xr, v0r, a0r, tau_inv=taur, v_threshold=vthr, **kw)
    g = torch.Generator().manual_seed(7)
    weights = [torch.randn(o.shape, generator=g, dtype=dtype_ref) if o is not None else None for o in ref]

    def loss(outs):
        return sum((o.to(dtype_ref) * w).sum() for o, w in zip(outs, weights) if o is not None)

    ins = [xs, v0s, tau, vth] + ([a0s] if a0s is not None else [])
    ins_r = [xr, v0r, taur, vthr] + ([a0r] if a0r is not None else [])
    grads = torch.autograd.grad(loss(out), ins)
    grads_r = torch.autograd.grad(loss(ref), ins_r)
    return out, ref, grads, grads_r


def _assert_match(out, ref, grads, grads_r, *, tol, out_dtype):
    spikes, v_last, a_last, v_seq = out
    assert spikes.dtype == out_dtype and v_last.dtype == out_dtype
    assert torch.equal(spikes, ref[0].to(out_dtype))
    for got, want in ((v_last, ref[1]), (a_last, ref[2]), (v_seq, ref[3])):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want.to(out_dtype), rtol=tol, atol=tol)
    names = ["x", "v0", "tau_inv", "v_threshold", "a0"]
    for name, gg, gr in zip(names, grads, grads_r):
        assert gg.shape == gr.shape, name
        scale = max(1.0, gr.abs().max().item())
        torch.testing.assert_close(gg.to(gr.dtype), gr, rtol=50 * tol, atol=50 * tol * scale, msg=name)
    # a gradient test that cannot fail is worthless: the surrogate must actually carry signal
    assert grads_r[0].abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", SJ_CASES, ids=lambda c: "-".join(map(str, c[1:])))
def test_spikingjelly_flags_match_autograd(backend, dtype, case):
    _, vr, dec, det, adaptive, sur = case
    x, v0, a0 = _inputs(6, (3, 7), dtype, adaptive=adaptive)
    kw = dict(v_reset=vr, decay_input=dec, detach_reset=det, surrogate=sur)
    if adaptive:
        kw.update(adapt_rho=0.8, adapt_beta=0.25)
    out, ref, grads, grads_r = _run_pair(backend, x, v0, a0, dtype, **kw)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    _assert_match(out, ref, grads, grads_r, tol=tol, out_dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", SNN_CASES, ids=lambda c: "-".join(c[1:]))
def test_snntorch_flags_match_autograd(backend, dtype, case):
    _, reset, sur = case
    x, v0, _ = _inputs(6, (3, 7), dtype, adaptive=False, seed=1)
    out, ref, grads, grads_r = _run_pair(backend, x, v0, None, dtype, convention="snntorch", snn_reset=reset,
                                         surrogate=sur)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    _assert_match(out, ref, grads, grads_r, tol=tol, out_dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T,lanes", [(1, (5,)), (3, (1031,)), (4, ()), (2, (2, 1, 3))])
def test_awkward_shapes(backend, T, lanes):
    x, v0, a0 = _inputs(T, lanes, torch.float32, adaptive=True, seed=3)
    out, ref, grads, grads_r = _run_pair(backend, x, v0, a0, torch.float32, v_reset=None, adapt_rho=0.9,
                                         adapt_beta=0.1, surrogate="piecewise_exp")
    _assert_match(out, ref, grads, grads_r, tol=1e-6, out_dtype=torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_input(backend):
    base = torch.randn(7, 5, generator=torch.Generator().manual_seed(4)) * 1.5
    x = base.t()  # (T=5, 7) view with strides (1, 5)
    assert not x.is_contiguous()
    v0 = torch.zeros(7)
    out, ref, grads, grads_r = _run_pair(backend, x, v0, None, torch.float32, surrogate="soft_sign")
    _assert_match(out, ref, grads, grads_r, tol=1e-6, out_dtype=torch.float32)


def _channels_last_frames(x: torch.Tensor) -> torch.Tensor:
    """``x (T, B, C, H, W)`` with every frame channels-last (time still outermost)."""
    return torch.stack([frame.contiguous(memory_format=torch.channels_last) for frame in x])


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_frames_keep_their_layout(backend):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 5, 4, 6, generator=g) * 1.5
    x_cl = _channels_last_frames(x)
    assert not x_cl.is_contiguous()
    v0 = torch.rand(2, 5, 4, 6, generator=g) * 0.5   # a contiguous state: laid out like x on the way in
    grad = torch.randn(x.shape, generator=g)
    runs = []
    for inp in (x, x_cl):
        xs, vs = inp.clone().requires_grad_(True), v0.clone().requires_grad_(True)
        spikes, final = lif_scan(xs, LIFState(vs), tau_inv=0.5, v_threshold=1.0, output_final_state=True,
                                 backend=backend)
        (spikes * grad).sum().backward()
        runs.append((spikes, final.v, xs.grad, vs.grad, xs))
    (s, v, gx, gv0, _), (s_cl, v_cl, gx_cl, gv0_cl, xs_cl) = runs
    # the same numbers, lane by lane
    assert torch.equal(s, s_cl) and torch.equal(v, v_cl) and torch.equal(gx, gx_cl) and torch.equal(gv0, gv0_cl)
    # and x's layout: no copy on the way in or out
    assert s_cl.stride() == x_cl.stride() and gx_cl.stride() == x_cl.stride()
    assert v_cl.stride() == x_cl.stride()[1:]
    assert s.is_contiguous() and v.is_contiguous()
    # the final state carries over in that layout
    first, state = lif_scan(xs_cl[:2].detach(), tau_inv=0.5, v_threshold=1.0, output_final_state=True,
                            backend=backend, initial_state=LIFState(v0))
    rest, _ = lif_scan(xs_cl[2:].detach(), state, tau_inv=0.5, v_threshold=1.0, backend=backend)
    assert torch.equal(torch.cat([first, rest]), s)
    # a frame repeated over time (an expanded view) is read once, into its frame's layout
    frame = x_cl[0]
    repeated, _ = lif_scan(frame.expand(3, *frame.shape), tau_inv=0.5, v_threshold=1.0, backend=backend)
    want, _ = lif_scan(x[0].expand(3, *frame.shape).contiguous(), tau_inv=0.5, v_threshold=1.0, backend=backend)
    assert repeated.stride() == x_cl.stride() and torch.equal(repeated, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_channels_last(backend):
    x = _channels_last_frames(torch.randn(3, 2, 4, 3, 5)).requires_grad_(True)
    v0 = torch.zeros_like(x[0]).requires_grad_(True)      # laid out like a frame, as lif_scan passes it
    assert v0.stride() == x.stride()[1:]
    args = (x, v0, None, torch.tensor(0.5), torch.tensor(1.0), 0.0, True, True, False, "sigmoid", 4.0,
            "spikingjelly", "subtract", 0.0, 0.0, False, backend)
    torch.library.opcheck(torch.ops.neurostep.lif_forward.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    # the fake gives the real outputs' strides (a compiled graph relies on them)
    real = torch.ops.neurostep.lif_forward.default(*args)
    with torch._subclasses.FakeTensorMode() as mode:
        fake = torch.ops.neurostep.lif_forward.default(
            *[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    assert [t.stride() for t in fake[:2]] == [t.stride() for t in real[:2]] == [x.stride(), v0.stride()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_fp32(backend, dtype):
    x, v0, _ = _inputs(5, (4, 9), dtype, adaptive=False, seed=5)
    out, ref, grads, grads_r = _run_pair(backend, x, v0, None, torch.float32, surrogate="super_spike")
    spikes, v_last, _, v_seq = out
    assert spikes.dtype == dtype and v_seq.dtype == dtype and v_last.dtype == dtype
    # fp32 state: the outputs are the fp32 result rounded once to the input dtype
    assert torch.equal(spikes, ref[0].to(dtype))
    assert torch.equal(v_seq, ref[3].to(dtype))
    assert grads[0].dtype == dtype
    # the upstream gradients reach the op already rounded to the input dtype
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    torch.testing.assert_close(grads[0].float(), grads_r[0], rtol=tol, atol=tol * 0.1)
    torch.testing.assert_close(grads[2].float(), grads_r[2], rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_from_state_only_and_chunked_carry(backend):
    """v_last/a_last as the only loss (no spike grad), and two chunks with carried state == one run."""
    x, v0, a0 = _inputs(8, (11,), torch.float32, adaptive=True, seed=6)
    kw = dict(tau_inv=0.3, v_threshold=0.8, adapt_rho=0.7, adapt_beta=0.2, backend=backend)
    xa = x.clone().requires_grad_()
    full = _scan(xa, v0, a0, **kw)
    (g_full,) = torch.autograd.grad(full.v_last.sum() + full.a_last.sum(), [xa])
    xb = x.clone().requires_grad_()
    first = _scan(xb[:3], v0, a0, **kw)
    second = _scan(xb[3:], first.v_last, first.a_last, **kw)
    assert torch.equal(torch.cat([first.spikes, second.spikes]), full.spikes)
    torch.testing.assert_close(second.v_last, full.v_last)
    (g_chunk,) = torch.autograd.grad(second.v_last.sum() + second.a_last.sum(), [xb])
    torch.testing.assert_close(g_chunk, g_full)
    assert g_full.abs().sum() > 0


def test_backends_agree_exactly_on_spikes_large():
    x, v0, _ = _inputs(16, (4099,), torch.float32, adaptive=False, seed=8)
    a = _scan(x, v0, tau_inv=0.5, v_threshold=1.0, backend="reference", return_v_seq=True)
    b = _scan(x, v0, tau_inv=0.5, v_threshold=1.0, backend="cpu", return_v_seq=True)
    assert torch.equal(a.spikes, b.spikes)
    torch.testing.assert_close(a.v_seq, b.v_seq, rtol=1e-6, atol=1e-6)




@pytest.mark.parametrize("convention", ["spikingjelly", "snntorch"])
def test_cpu_backward_passes_its_functions_by_address(convention, unboxing_calls):
    """The cpu backward hands its kernels the surrogate's row function (snntorch convention) or the range kernel
    (recomputing backward) as an address: a function argument would be unboxed on every call through two calls
    back into Python, which cost a small layer's backward about 90 us with cold caches."""
    x = (torch.randn(5, 40) * 1.5).requires_grad_(True)
    spikes, _ = lif_scan(x, tau_inv=0.5, v_threshold=1.0, convention=convention, backend="cpu")
    spikes.sum().backward()
    assert x.grad.abs().sum() > 0 and unboxing_calls == []


# 2500 lanes: blocks of 1024 and a partial one; 20000: eight blocks of 2512 (an eighth of the lanes), the
# last partial; T=300: blocks shrunk so that their rows fit in L2. With one thread every block but the last is
# followed by one whose membrane the backward recomputes during its reverse sweep (the last full block by a
# partial one); with two, each thread's range of blocks ends without one. tau_inv fixed and learnt (each a kernel
# variant of its own); the threshold is learnt with atan.
@pytest.mark.parametrize("learn_tau", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
@pytest.mark.parametrize("T,n,kw", [(5, 2500, dict(v_reset=0.0)), (4, 20000, dict(v_reset=0.0)),
                                    (300, 1100, dict(v_reset=None, decay_input=False))])
def test_cpu_backward_recomputes_membrane_across_blocks(T, n, kw, surrogate, threads, learn_tau):
    """The numba LIF saves no membrane for its backward (autograd keeps only x and small tensors)
    and recomputes it per block of lanes; with several blocks, and with T long enough to shrink
    the block, its gradients equal the reference backend's."""
    x, v0, _ = _inputs(T, (n,), torch.float32, adaptive=False, seed=9)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    grads = {}
    for backend in ("reference", "cpu"):
        xs = x.clone().requires_grad_()
        tau = torch.tensor(0.3, requires_grad=True) if learn_tau else 0.3
        vth = torch.tensor(1.0, requires_grad=True) if surrogate == "atan" else 1.0
        leaves = [xs] + ([tau] if learn_tau else []) + ([vth] if surrogate == "atan" else [])
        with use_threads(threads):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = _scan(xs, v0, tau_inv=tau, v_threshold=vth, surrogate=surrogate, backend=backend, **kw)
            w = torch.randn(out.spikes.shape, generator=torch.Generator().manual_seed(3))
            grads[backend] = torch.autograd.grad((out.spikes * w).sum() + out.v_last.sum(), leaves)
        if backend == "cpu":
            assert sum(saved) <= x.numel() + 4 * n + 16, saved
        saved.clear()
    for got, want in zip(grads["cpu"], grads["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(1.0, want.abs().max().item()))
    assert grads["reference"][0].abs().sum() > 0


# --------------------------------------------------------------------------------------------
# facts that nobody here chose


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_input_spikes_alternately(backend):
    # docs/reference.md: LIF defaults (tau=2, V_th=1, hard reset to 0), constant input 1.5 -> 0,1,0,1,...
    out = _scan(torch.full((8, 1), 1.5), tau_inv=0.5, v_threshold=1.0, backend=backend)
    assert out.spikes.flatten().tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


@pytest.mark.peers
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v_reset,detach", [(0.0, False), (None, True), (-0.2, False)])
def test_matches_spikingjelly_lifnode(backend, v_reset, detach):
    neuron_mod = pytest.importorskip("spikingjelly.activation_based.neuron")
    surrogate_mod = pytest.importorskip("spikingjelly.activation_based.surrogate")
    x, _, _ = _inputs(10, (4, 6), torch.float32, adaptive=False, seed=9)
    node = neuron_mod.LIFNode(tau=2.0, v_reset=v_reset, detach_reset=detach, step_mode="m",
                              surrogate_function=surrogate_mod.Sigmoid(alpha=4.0), store_v_seq=True)
    xa = x.clone().requires_grad_()
    s_ref = node(xa)
    w = torch.randn_like(s_ref)
    (g_ref,) = torch.autograd.grad((s_ref * w).sum() + node.v_seq.sum(), [xa])
    xb = x.clone().requires_grad_()
    out = _scan(xb, tau_inv=0.5, v_threshold=1.0, v_reset=v_reset, detach_reset=detach, return_v_seq=True,
                   backend=backend)
    (g,) = torch.autograd.grad((out.spikes * w).sum() + out.v_seq.sum(), [xb])
    assert torch.equal(out.spikes, s_ref)
    torch.testing.assert_close(out.v_seq, node.v_seq, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.peers
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
def test_matches_snntorch_leaky(backend, reset):
    snn = pytest.importorskip("snntorch")
    x, _, _ = _inputs(10, (4, 6), torch.float32, adaptive=False, seed=10)
    beta = 0.75
    leaky = snn.Leaky(beta=beta, threshold=1.0, reset_mechanism=reset, spike_grad=snn.surrogate.fast_sigmoid(25))
    xa = x.clone().requires_grad_()
    mem = leaky.init_leaky()
    spk_seq, mem_seq = [], []
    for t in range(x.shape[0]):
        spk, mem = leaky(xa[t], mem)
        spk_seq.append(spk)
        mem_seq.append(mem)
    s_ref, m_ref = torch.stack(spk_seq), torch.stack(mem_seq)
    w = torch.randn_like(s_ref)
    (g_ref,) = torch.autograd.grad((s_ref * w).sum() + m_ref.sum(), [xa])
    xb = x.clone().requires_grad_()
    out = _scan(xb, tau_inv=1.0 - beta, v_threshold=1.0, convention="snntorch", snn_reset=reset,
                   surrogate="fast_sigmoid", return_v_seq=True, backend=backend)
    (g,) = torch.autograd.grad((out.spikes * w).sum() + out.v_seq.sum(), [xb])
    assert torch.equal(out.spikes, s_ref)
    torch.testing.assert_close(out.v_seq, m_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# surrogates


@pytest.mark.parametrize("name", list(SURROGATES))
def test_surrogate_derivative_is_derivative_of_primitive(name):
    sur = SURROGATES[name]
    x = torch.linspace(-3.0, 3.0, 601, dtype=torch.float64) + 0.0037  # off the kinks at 0 and +-1/alpha
    for a in (sur.default_alpha, 0.7 * sur.default_alpha):
        eps = 1e-6
        fd = (sur.primitive(x + eps, a) - sur.primitive(x - eps, a)) / (2 * eps)
        d = sur.derivative(x, a)
        torch.testing.assert_close(d, fd, rtol=1e-6, atol=1e-7)
        assert d.max() > 1e-3  # no silently-zero gradient
    # through the spike function: the gradient of spike() is the derivative
    z = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(spike(z, name).sum(), [z])
    torch.testing.assert_close(g, sur.derivative(x, sur.default_alpha))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SURROGATES))
def test_numba_surrogate_matches_torch(name, dtype):
    sur = SURROGATES[name]
    z = np.concatenate([np.linspace(-40, 40, 997), [-200.0, 0.0, 1e-30, 200.0]]).astype(dtype)
    n = z.size
    out = np.empty_like(z)
    alpha = sur.default_alpha
    sg_block_function(sur.sid, np.dtype(dtype).name).dispatcher(dtype(alpha), dtype(sg_constant(sur.sid, alpha)), z,
                                                                out, n)
    want = sur.derivative(torch.from_numpy(z.astype(np.float64)), alpha).numpy()
    # relative accuracy where the derivative matters; far tails (< 1e-7 of the peak) only need to be tiny
    rtol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, want, rtol=rtol, atol=rtol * 0.05 * want.max())
    assert np.isfinite(out).all() and (out >= 0).all()


@pytest.mark.parametrize("name", ["sigmoid", "piecewise_exp", "erf"])
def test_numba_exp_surrogates_flush_far_tails(name):
    """The exp-based surrogates give exactly 0 where exp(.) < e^-69 (no denormals, which would slow
    every later multiply ~100x), the exp itself where it is above, and NaN for NaN."""
    sur = SURROGATES[name]
    alpha = np.float32(0.5)
    c = np.float32(sg_constant(sur.sid, 0.5))
    far = np.float32(70.0 / 0.5 if name != "erf" else np.sqrt(70.0) / 0.5)  # exponent below -69
    z = np.array([far, -far, 1e30, -np.inf, np.nan, 0.5], dtype=np.float32)
    out = np.empty_like(z)
    sg_block_function(sur.sid, "float32").dispatcher(alpha, c, z, out, z.size)
    assert (out[:4] == 0).all() and np.isnan(out[4])
    want = sur.derivative(torch.tensor([0.5], dtype=torch.float64), 0.5).item()
    assert out[5] == pytest.approx(want, rel=1e-6)


# --------------------------------------------------------------------------------------------
# bad input


def test_state_convention():
    """initial_state in; (out, final_state) out, the final state None unless asked for."""
    x = torch.randn(6, 3)
    spikes, final = lif_scan(x, tau_inv=0.5, v_threshold=1.0)
    assert final is None and spikes.shape == x.shape
    (spikes2, v_seq), final = lif_scan(x, tau_inv=0.5, v_threshold=1.0, return_v_seq=True, output_final_state=True)
    assert torch.equal(spikes, spikes2) and torch.equal(final.v, v_seq[-1]) and final.a is None
    s1, mid = lif_scan(x[:4], tau_inv=0.5, v_threshold=1.0, output_final_state=True)
    s2, end = lif_scan(x[4:], mid, tau_inv=0.5, v_threshold=1.0, output_final_state=True)
    assert torch.equal(torch.cat([s1, s2]), spikes) and torch.equal(end.v, final.v)
    _, adaptive = lif_scan(x, tau_inv=0.5, v_threshold=1.0, adapt_rho=0.9, adapt_beta=0.2, output_final_state=True)
    assert adaptive.a is not None and adaptive.a.shape == (3,)


def test_bad_input_raises_clear_errors():
    x = torch.randn(4, 3)
    ok = dict(tau_inv=0.5, v_threshold=1.0)
    with pytest.raises(ValueError, match="0 time steps"):
        lif_scan(torch.zeros(0, 3), **ok)
    with pytest.raises(ValueError, match="at least 1 dims"):
        lif_scan(torch.tensor(1.0), **ok)
    with pytest.raises(TypeError, match="dtype"):
        lif_scan(torch.ones(4, 3, dtype=torch.int64), **ok)
    with pytest.raises(TypeError, match="torch.Tensor"):
        lif_scan(np.ones((4, 3)), **ok)
    with pytest.raises(ValueError, match=r"initial_state.v must have shape \(3,\).*\(4, 3\).*got \(2,\)"):
        lif_scan(x, LIFState(torch.zeros(2)), **ok)
    with pytest.raises(ValueError, match=r"initial_state.a must have shape \(3,\)"):
        lif_scan(x, LIFState(torch.zeros(3), torch.zeros(3, 1)), **ok)
    with pytest.raises(ValueError, match="meta"):
        lif_scan(x, LIFState(torch.zeros(3, device="meta")), **ok)
    with pytest.raises(TypeError, match="initial_state must be a LIFState"):
        lif_scan(x, torch.zeros(3), **ok)
    for bad_tau in (float("nan"), 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="tau_inv"):
            lif_scan(x, tau_inv=bad_tau, v_threshold=1.0)
    with pytest.raises(ValueError, match="tau_inv"):
        lif_scan(x, tau_inv=torch.tensor(float("inf")), v_threshold=1.0)
    with pytest.raises(ValueError, match=r"tau_inv \(=1/tau\) must be in \[0.0, 1.0\)"):
        lif_scan(x, tau_inv=torch.tensor(1.5), v_threshold=1.0)  # a tensor is checked like a float
    with pytest.raises(ValueError, match="v_threshold must be finite"):
        lif_scan(x, tau_inv=torch.tensor(0.5), v_threshold=torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="tau_inv"):
        lif_scan(x, tau_inv=torch.tensor([0.5]), v_threshold=1.0)
    with pytest.raises(TypeError, match="tau_inv"):
        lif_scan(x, tau_inv="0.5", v_threshold=1.0)
    for bad_th in (float("inf"), torch.tensor(float("nan"))):
        with pytest.raises(ValueError, match="v_threshold"):
            lif_scan(x, tau_inv=0.5, v_threshold=bad_th)
    with pytest.raises(ValueError, match="surrogate must be one of .*sigmoid"):
        lif_scan(x, surrogate="relu", **ok)
    with pytest.raises(ValueError, match="convention must be one of"):
        lif_scan(x, convention="norse", **ok)
    with pytest.raises(ValueError, match="snn_reset must be one of"):
        lif_scan(x, snn_reset="hard", **ok)
    with pytest.raises(ValueError, match="backend must be"):
        lif_scan(x, backend="cuda", **ok)
    with pytest.raises(ValueError, match="alpha"):
        lif_scan(x, alpha=-1.0, **ok)
    with pytest.raises(ValueError, match="only defined for convention='spikingjelly'"):
        lif_scan(x, convention="snntorch", adapt_beta=0.1, **ok)
    # IF neuron (tau_inv=0) and tau=1 without decay_input are valid
    lif_scan(x, tau_inv=0.0, v_threshold=1.0)
    lif_scan(x, tau_inv=1.0, v_threshold=1.0, decay_input=False)
    lif_scan(x, tau_inv=1.0, v_threshold=1.0, convention="snntorch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_without_crash(backend):
    x = torch.randn(6, 5)
    x[2, 1] = float("nan")
    out = _scan(x, tau_inv=0.5, v_threshold=1.0, return_v_seq=True, backend=backend)
    assert torch.isnan(out.v_seq[2:, 1]).all() and torch.isnan(out.v_last[1])
    clean = _scan(x[:, [0, 2, 3, 4]], tau_inv=0.5, v_threshold=1.0, return_v_seq=True, backend=backend)
    assert torch.equal(out.v_seq[:, [0, 2, 3, 4]], clean.v_seq)


def test_triton_backend_on_cpu_raises_instead_of_falling_back(monkeypatch):
    # triton reads TRITON_INTERPRET when first imported: import it under the suite's setting first, or the
    # availability check below would import it without the interpreter for the rest of the process
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert set(KERNELS.backends("lif")) == {"reference", "cpu", "triton"}
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        lif_scan(torch.randn(3, 2), tau_inv=0.5, v_threshold=1.0, backend="triton")


# --------------------------------------------------------------------------------------------
# torch.library integration


def test_cost_formula_declared():
    formula = COSTS.get("neurostep::lif_forward")
    assert formula is not None
    x = torch.randn(4, 10)
    args = (x, torch.zeros(10), None, torch.tensor(0.5), torch.tensor(1.0), 0.0, True, True, False, "sigmoid", 4.0,
            "spikingjelly", "subtract", 0.0, 0.0, False, "auto")
    cost = formula(args, {}, None)
    assert cost.compares == 40 and cost.state_updates == 40
    assert cost.adds == 40 * 6 and cost.muls == 40 * 3
    if_cost = formula(args[:3] + (torch.tensor(0.0),) + args[4:], {}, None)
    assert if_cost.adds < cost.adds and if_cost.muls < cost.muls


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    x = torch.randn(3, 4, requires_grad=True)
    v0 = torch.randn(4, requires_grad=True)
    args = (x, v0, None, torch.tensor(0.5, requires_grad=True), torch.tensor(1.0, requires_grad=True), 0.0, True,
            True, False, "sigmoid", 4.0, "spikingjelly", "subtract", 0.0, 0.0, True, backend)
    torch.library.opcheck(torch.ops.neurostep.lif_forward.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(6, 5)
            self.w = torch.nn.Parameter(torch.tensor(0.0))  # PLIF-style learnable tau: 1/tau = sigmoid(w)

        def forward(self, x):
            out = _scan(self.fc(x), tau_inv=torch.sigmoid(self.w), v_threshold=1.0, backend="cpu")
            return out.spikes.mean(0)

    model = Tiny()
    x = torch.randn(4, 3, 6)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    assert torch.equal(got, eager)
    got.sum().backward()
    assert model.w.grad is not None and model.fc.weight.grad is not None
    g_compiled = model.w.grad.clone()
    model.zero_grad()
    eager.sum().backward()
    torch.testing.assert_close(g_compiled, model.w.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(v_reset=0.0), dict(v_reset=None), dict(decay_input=False),
                                dict(convention="snntorch", snn_reset="subtract")],
                         ids=["hard", "soft", "no-decay", "snntorch"])
def test_gradcheck_through_membrane(backend, kw):
    """Finite-difference gradcheck (float64) where the function is piecewise smooth: the loss reads the
    membrane only and the reset is detached, so no surrogate enters and the explicit backward must be exact
    (an adaptive threshold would bring the surrogate back through ``a += beta*S``)."""
    x, v0, _ = _inputs(4, (3,), torch.float64, adaptive=False, seed=11)
    tau = torch.tensor(0.35, dtype=torch.float64)
    vth = torch.tensor(0.7, dtype=torch.float64)
    if kw.get("convention") != "snntorch":
        kw = dict(kw, detach_reset=True)

    def f(x, v0, tau, vth):
        out = _scan(x, v0, tau_inv=tau, v_threshold=vth, return_v_seq=True, backend=backend, **kw)
        return out.v_seq, out.v_last

    ins = [t.clone().requires_grad_() for t in (x, v0, tau, vth)]
    assert torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-7, rtol=1e-6)


def _op_args(x, v0, **over):
    """The lif op's arguments (schema order, backend excluded): a hard-reset LIF at v_reset -0.2."""
    attrs = dict(v_reset=-0.2, hard_reset=True, decay_input=True, detach_reset=False, surrogate="sigmoid", alpha=4.0,
                 convention="spikingjelly", snn_reset="subtract", adapt_rho=0.0, adapt_beta=0.0, return_v_seq=True)
    attrs.update(over)
    return (x, v0, None, torch.tensor(0.5, requires_grad=True), torch.tensor(1.0, requires_grad=True),
            *attrs.values())


@pytest.mark.parametrize("backend", [*BACKENDS, "triton"])
@pytest.mark.parametrize("over", [{}, dict(hard_reset=False, v_reset=0.0), dict(convention="snntorch", v_reset=0.0)],
                         ids=["hard", "soft", "snntorch"])
def test_op_without_a_state_starts_at_rest(backend, over):
    """v0 None: the membrane starts at rest (v_reset for spikingjelly's hard reset, else 0), with the values and
    gradients of a state filled with it, and no gradient for a state that was not given."""
    if backend == "triton":
        pytest.importorskip("triton")
    from neurostep.kernels.lif import LIF

    torch.manual_seed(1)
    x = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)
    rest = -0.2 if not over else 0.0
    v0 = torch.full((3, 5), rest, dtype=torch.float64, requires_grad=True)
    with_state = LIF(*_op_args(x, v0, **over), backend=backend)
    without = LIF(*_op_args(x, None, **over), backend=backend)
    for a, b in zip(with_state[:2] + with_state[3:4], without[:2] + without[3:4]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    g = [torch.randn_like(t) for t in (with_state[0], with_state[1], with_state[3])]
    loss = sum((o * w).sum() for o, w in zip((without[0], without[1], without[3]), g))
    gx_rest = torch.autograd.grad(loss, x)[0]
    gx_state = torch.autograd.grad(sum((o * w).sum() for o, w in zip((with_state[0], with_state[1], with_state[3]), g)),
                                   x)[0]
    torch.testing.assert_close(gx_rest, gx_state)
    # through the dispatcher (what a counter or torch.compile sees) the same, with a schema that allows None
    dispatched = torch.ops.neurostep.lif_forward(*_op_args(x, None, **over), backend)
    torch.testing.assert_close(dispatched[0], without[0], rtol=0, atol=0)
    assert "Tensor? v0" in str(torch.ops.neurostep.lif_forward.default._schema)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_without_a_state(backend):
    x = torch.randn(3, 4, requires_grad=True)
    torch.library.opcheck(torch.ops.neurostep.lif_forward.default, (*_op_args(x, None), backend),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_cpu_scan_without_a_state_reads_no_state_tensor(monkeypatch):
    """lif_scan with no initial state hands the cpu backend (which recomputes h from x) no state to fill, read or
    differentiate; a backend that saves h gets the rest state as a tensor, as before."""
    import neurostep.kernels.lif.cpu as cpu
    import neurostep.kernels.lif.reference as reference

    seen = {}
    for label, module in (("cpu", cpu), ("reference", reference)):
        for name in ("forward", "backward"):
            original = getattr(module, name)

            def spy(x, v0, *rest, _original=original, _key=(label, name), **kw):
                seen[_key] = v0
                return _original(x, v0, *rest, **kw)

            monkeypatch.setattr(module, name, spy)
    x = torch.randn(4, 6, requires_grad=True)
    for backend in ("cpu", "reference"):
        s, _ = lif_scan(x, tau_inv=0.5, v_threshold=0.5, backend=backend)
        s.sum().backward()
    assert seen[("cpu", "forward")] is None and seen[("cpu", "backward")] is None
    assert torch.equal(seen[("reference", "forward")], torch.zeros(6))
