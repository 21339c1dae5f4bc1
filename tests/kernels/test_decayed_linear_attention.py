"""decayed_linear_attention: the reference against the quadratic form, the chunked CPU backend against the
reference (fp32 and fp64, both decay forms), gradients, state chaining, bad input, opcheck, counting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neurostep.engine import COSTS, KERNELS
from neurostep.kernels.decayed_linear_attention import decayed_linear_attention as dla

BACKENDS = ["cpu"]


def make(B=2, L=11, H=3, K=5, V=4, *, dtype=torch.float64, const=False, seed=0, strength=1.0):
    """q, k, v, log_decay, h0 (log-decays in [-strength, 0])."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    shape_g = (H,) if const else (B, L, H)
    log_decay = (-strength * torch.rand(*shape_g, generator=g, dtype=torch.float64)).to(dtype)
    return randn(B, L, H, K), randn(B, L, H, K), randn(B, L, H, V), log_decay, randn(B, H, K, V)


def run(q, k, v, log_decay, h0, backend, *, chunk_size=None, scale=None):
    """Outputs and the gradients of every input for fixed random output and final-state gradients."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, log_decay)]
    h0_leaf = None if h0 is None else h0.detach().clone().requires_grad_()
    o, final = dla(*leaves, initial_state=h0_leaf, output_final_state=True, scale=scale, chunk_size=chunk_size,
                   backend=backend)
    g = torch.Generator().manual_seed(7)
    go = torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)
    gf = torch.randn(final.shape, generator=g, dtype=torch.float64).to(final.dtype)
    wrt = leaves + ([h0_leaf] if h0_leaf is not None else [])
    return [o, final, *torch.autograd.grad((o, final), wrt, (go, gf))]


def quadratic_form(q, k, v, log_decay, h0, scale):
    """o_t = scale * (sum_{s<=t} exp(B_t - B_s) (q_t . k_s) v_s + exp(B_t) q_t h0), B the cumulative log-decay."""
    B, L, H, _ = q.shape
    g = log_decay.expand(B, L, H) if log_decay.dim() == 1 else log_decay
    cum = g.cumsum(1)                                                  # (B, L, H)
    decay = torch.exp(cum[:, :, None] - cum[:, None, :])               # (B, t, s, H)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    weights = torch.einsum("bthk,bshk->btsh", q, k) * decay * causal[None, :, :, None]
    o = torch.einsum("btsh,bshv->bthv", weights, v) + torch.exp(cum)[..., None] * torch.einsum("bthk,bhkv->bthv", q, h0)
    final = torch.exp(cum[:, -1])[..., None, None] * h0 + torch.einsum(
        "bsh,bshk,bshv->bhkv", torch.exp(cum[:, -1:] - cum), k, v)
    return scale * o, final


@pytest.mark.parametrize("const", [False, True])
def test_reference_matches_the_quadratic_form(const):
    q, k, v, ld, h0 = make(const=const)
    o, final = dla(q, k, v, ld, initial_state=h0, output_final_state=True, scale=0.7, backend="reference")
    want_o, want_final = quadratic_form(q, k, v, ld, h0, 0.7)
    torch.testing.assert_close(o, want_o)
    torch.testing.assert_close(final, want_final)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("const", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("L,chunk_size", [(11, None), (11, 4), (16, 4), (1, None), (1, 4), (9, 1), (37, 16)])
def test_backend_matches_reference(backend, const, with_h0, L, chunk_size):
    q, k, v, ld, h0 = make(L=L, const=const, seed=L)
    h0 = h0 if with_h0 else None
    want = run(q, k, v, ld, h0, "reference")
    got = run(q, k, v, ld, h0, backend, chunk_size=chunk_size)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
    got32 = run(*(t.float() if t is not None else None for t in (q, k, v, ld, h0)), backend, chunk_size=chunk_size)
    for x, y in zip(got32, want):
        assert x.dtype == torch.float32
        torch.testing.assert_close(x.double(), y, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("const", [False, True])
def test_gradcheck(backend, const):
    q, k, v, ld, h0 = make(B=1, L=5, H=2, K=3, V=2, const=const, seed=3)

    def fn(q, k, v, ld, h0):
        return dla(q, k, v, ld, initial_state=h0, output_final_state=True, chunk_size=2, backend=backend)

    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (q, k, v, ld, h0)])
    # without an initial state, and with only the output used (no final-state gradient)
    assert torch.autograd.gradcheck(lambda *t: dla(*t, chunk_size=3, backend=backend)[0],
                                    [t.detach().requires_grad_() for t in (q, k, v, ld)])


def grouped(q, k, groups):
    """The first ``groups`` heads of q and k, as the groups the heads share."""
    return q[:, :, :groups].contiguous(), k[:, :, :groups].contiguous()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("H,G,L,chunk_size", [(6, 2, 11, 4), (4, 1, 37, 16), (4, 1, 5, 1), (2, 1, 9, None)])
def test_groups_of_q_and_k_match_their_copies_per_head(backend, H, G, L, chunk_size):
    # Mamba-2's ngroups: head h reads group h // (H / G); the gradient of a group sums its heads'
    q, k, v, ld, h0 = make(B=2, L=L, H=H, seed=L + G)
    qg, kg = grouped(q, k, G)
    rep = H // G
    want = run(qg.repeat_interleave(rep, 2), kg.repeat_interleave(rep, 2), v, ld, h0, "reference")
    got = run(qg, kg, v, ld, h0, backend, chunk_size=chunk_size)
    want[2:4] = [x.view(2, L, G, rep, -1).sum(3) for x in want[2:4]]
    for x, y in zip(got, want):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(
        lambda *t: dla(*t[:4], initial_state=t[4], output_final_state=True, chunk_size=3, backend=backend),
        [t.detach()[:1, :6].clone().requires_grad_() for t in (qg, kg, v, ld)] + [h0[:1].clone().requires_grad_()])


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups,scale_grad", [(3, True), (1, True), (3, False)])
def test_v_scale_equals_scaling_v_first(backend, dtype, groups, scale_grad):
    """``v_scale`` gives the values and gradients of passing ``v * v_scale`` (Mamba-2's ``dt * x``), with and
    without a gradient for the scale (the cpu backend then keeps no unscaled v), with groups of q and k."""
    B, L, H, K, V = 2, 37, 3, 5, 24
    q, k, v, ld, h0 = make(B, L, H, K, V, dtype=dtype)
    q, k = grouped(q, k, groups)
    w = torch.rand(B, L, H, generator=torch.Generator().manual_seed(3), dtype=torch.float64).add(0.05).to(dtype)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, ld, h0)]
    w_leaf = w.clone().requires_grad_(scale_grad)
    o, final = dla(*leaves[:4], v_scale=w_leaf, initial_state=leaves[4], output_final_state=True, chunk_size=16,
                   backend=backend)
    go, gf = torch.randn_like(o), torch.randn_like(final)
    grads = torch.autograd.grad((o, final), leaves + ([w_leaf] if scale_grad else []), (go, gf))
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v, ld, h0)]
    ref_w = w.clone().requires_grad_()
    o_ref, final_ref = dla(*ref_leaves[:2], ref_leaves[2] * ref_w[..., None], ref_leaves[3],
                           initial_state=ref_leaves[4], output_final_state=True, chunk_size=16, backend=backend)
    ref_grads = torch.autograd.grad((o_ref, final_ref), ref_leaves + ([ref_w] if scale_grad else []), (go, gf))
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(o, o_ref, **tol)
    torch.testing.assert_close(final, final_ref, **tol)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_gradcheck_with_v_scale(backend):
    q, k, v, ld, h0 = make(1, 9, 2, 3, 4)
    w = torch.rand(1, 9, 2, dtype=torch.float64) + 0.1
    leaves = [t.clone().requires_grad_() for t in (q, k, v, ld, h0, w)]
    assert torch.autograd.gradcheck(
        lambda q, k, v, g, h, s: dla(q, k, v, g, v_scale=s, initial_state=h, output_final_state=True, chunk_size=4,
                                     backend=backend), leaves)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("const", [False, True])
def test_two_calls_with_the_state_carried_equal_one_run(backend, const):
    q, k, v, ld, h0 = make(B=2, L=13, const=const, seed=4)
    whole = run(q, k, v, ld, h0, backend, chunk_size=4)
    cut = 6
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, ld, h0)]
    lq, lk, lv, lld, lh0 = leaves

    def part(s, state):
        decay = lld if const else lld[:, s]
        return dla(lq[:, s], lk[:, s], lv[:, s], decay, initial_state=state, output_final_state=True, chunk_size=4,
                   backend=backend)

    o1, s1 = part(slice(0, cut), lh0)
    o2, s2 = part(slice(cut, None), s1)
    o = torch.cat([o1, o2], 1)
    torch.testing.assert_close(o, whole[0])
    torch.testing.assert_close(s2, whole[1])
    g = torch.Generator().manual_seed(7)   # the same output gradients as run()
    go = torch.randn(o.shape, generator=g, dtype=torch.float64)
    gf = torch.randn(s2.shape, generator=g, dtype=torch.float64)
    for x, y in zip(torch.autograd.grad((o, s2), leaves, (go, gf)), whole[2:]):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strong_decays_stay_finite_and_exact(backend):
    # Mamba-2's dt * A can reach -50 per step: exp(b_i) underflows inside a chunk, nothing overflows
    q, k, v, _, h0 = make(B=1, L=40, H=2, seed=5)
    ld = torch.full((1, 40, 2), -50.0, dtype=torch.float64)
    ld[0, ::3, 0] = 0.0
    ld[0, 5:9, 1] = -1000.0
    want = run(q, k, v, ld, h0, "reference")
    for dtype in (torch.float64, torch.float32):
        got = run(*(t.to(dtype) for t in (q, k, v, ld, h0)), backend, chunk_size=16)
        for x, y in zip(got, want):
            assert torch.isfinite(x).all()
            torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunks_on_both_sides_of_the_split_mask_threshold(backend):
    # the cpu backend forms a chunk's decay mask as exp(b_i) * exp(-b_j) when the chunk's whole decay is
    # >= -60 (factors up to exp(60)) and with one exp per entry below: chunks of 8 with decays summing to
    # -59.5 (largest factors) and -60.5 (the exact path), next to mild ones
    q, k, v, _, h0 = make(B=1, L=32, H=2, seed=12)
    ld = torch.full((1, 32, 2), -0.1, dtype=torch.float64)
    ld[0, :8, 0] = -59.5 / 8
    ld[0, 8:16, 0] = -60.5 / 8
    ld[0, 16:24, 1] = -0.01
    ld[0, 16, 1] = -59.4                        # nearly all of a split chunk's decay on its first token
    want = run(q, k, v, ld, h0, "reference")
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-4)):
        got = run(*(t.to(dtype) for t in (q, k, v, ld, h0)), backend, chunk_size=8)
        for x, y in zip(got, want):
            assert torch.isfinite(x).all()
            torch.testing.assert_close(x.double(), y, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_and_half_inputs(backend):
    q, k, v, ld, h0 = make(B=2, L=9, H=3, K=4, V=4, dtype=torch.float32, seed=6)
    qt = q.transpose(0, 1).contiguous().transpose(0, 1)
    ldt = ld.transpose(1, 2).contiguous().transpose(1, 2)
    for x, y in zip(run(qt, k, v[..., :4], ldt, h0.transpose(-1, -2).contiguous().transpose(-1, -2), backend),
                    run(q, k, v, ld, h0, "reference")):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    o, final = dla(q.bfloat16(), k.bfloat16(), v.bfloat16(), ld, initial_state=h0, output_final_state=True,
                   backend=backend)
    assert o.dtype == torch.bfloat16 and final.dtype == torch.float32
    want_o, want_final = dla(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), ld,
                             initial_state=h0, output_final_state=True, backend="reference")
    torch.testing.assert_close(final, want_final, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o.float(), want_o, rtol=1e-2, atol=1e-2)


def test_defaults():
    q, k, v, ld, _ = make(seed=8)
    o, final = dla(q, k, v, ld)
    assert final is None and o.shape == v.shape
    # scale None is K ** -0.5; auto on CPU is the chunked cpu backend
    torch.testing.assert_close(o, dla(q, k, v, ld, scale=q.shape[-1] ** -0.5, backend="cpu")[0], rtol=0, atol=0)
    assert KERNELS.choose("decayed_linear_attention", "auto", torch.device("cpu")) == "cpu"
    # a constant decay per head is the same as that decay at every step
    const = -torch.rand(3, dtype=torch.float64)
    torch.testing.assert_close(dla(q, k, v, const)[0], dla(q, k, v, const.expand(2, 11, 3))[0])


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_nan_in_a_value_propagates(backend):
    # the chunked form multiplies the whole chunk's values by the masked scores (0 * NaN = NaN), so a NaN
    # reaches the outputs of its chunk and of every later token; the reference only the later ones
    q, k, v, ld, _ = make(B=1, L=10, H=1, seed=9)
    v[0, 6, 0, 1] = float("nan")
    o, _ = dla(q, k, v, ld, chunk_size=4, backend=backend)
    first = 6 if backend == "reference" else 4
    assert torch.isfinite(o[0, :first]).all() and torch.isnan(o[0, 6:, 0, 1]).all()


def test_cost_formula_and_opcheck():
    B, L, H, K, V = 2, 10, 3, 5, 4
    q, k, v, ld, h0 = make(B, L, H, K, V, dtype=torch.float32)
    args = (q, k, v, ld, h0, None, 0.5, 4, "cpu")
    cost = COSTS.get("neurostep::decayed_linear_attention_forward")(args, {}, None)
    n = 3   # chunks of 4 tokens: 4 + 4 + 2 (padded)
    assert cost.macs == B * H * n * (4 * 4 * (K + V) + 2 * 4 * K * V)
    assert cost.exps == B * H * n * (16 + 8 + 1)
    assert cost.state_updates == B * H * n * K * V
    assert cost.bytes_written == 4 * (v.numel() + h0.numel())
    # a v_scale adds one multiply per value and its own bytes read
    w = torch.rand(B, L, H)
    scaled = COSTS.get("neurostep::decayed_linear_attention_forward")((*args[:5], w, *args[6:]), {}, None)
    assert scaled.muls == cost.muls + v.numel()
    assert scaled.bytes_read == cost.bytes_read + 4 * w.numel()
    assert scaled.macs == cost.macs
    for backend in ("reference", *BACKENDS):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, ld, h0, w)]
        torch.library.opcheck(torch.ops.neurostep.decayed_linear_attention_forward.default,
                              (*leaves[:5], None, 0.5, 4, backend))
        torch.library.opcheck(torch.ops.neurostep.decayed_linear_attention_forward.default,
                              (*leaves[:4], None, None, 1.0, 3, backend))
        torch.library.opcheck(torch.ops.neurostep.decayed_linear_attention_forward.default,
                              (*leaves, 1.0, 4, backend))
    # one group of q and k for the 3 heads: Q K^T counted once per chunk, not per head
    qg, kg = grouped(q, k, 1)
    cost = COSTS.get("neurostep::decayed_linear_attention_forward")((qg, kg, v, ld, h0, None, 0.5, 4, "cpu"), {},
                                                                    None)
    assert cost.macs == B * n * 4 * 4 * K + B * H * n * (4 * 4 * V + 2 * 4 * K * V)
    for backend in ("reference", *BACKENDS):
        leaves = [t.clone().requires_grad_() for t in (qg, kg, v, ld, h0)]
        torch.library.opcheck(torch.ops.neurostep.decayed_linear_attention_forward.default,
                              (*leaves, None, 0.5, 4, backend))


def test_counted_on_the_meta_device():
    from neurostep.energy import count

    B, L, H, K, V = 1, 128, 4, 16, 8

    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.log_decay = nn.Parameter(-torch.rand(H))

        def forward(self, x):
            q, k, v = x[..., :K], x[..., K:2 * K], x[..., 2 * K:]
            return dla(q, k, v, self.log_decay, chunk_size=64)[0]

    with torch.device("meta"):
        model = Mixer()
        x = torch.randn(B, L, H, 2 * K + V)
    report = count(model, x)
    op = report.ops["neurostep::decayed_linear_attention_forward"]
    assert op.calls == 1
    assert op.macs == B * H * 2 * (64 * 64 * (K + V) + 2 * 64 * K * V)
    assert op.state_updates == B * H * 2 * K * V


def test_bad_input_raises_clear_errors():
    q, k, v, ld, h0 = make(B=2, L=5, H=3, K=4, V=2, dtype=torch.float32)
    cases = [
        (ValueError, r"q must have 4 dims", dict(q=q[0])),
        (ValueError, r"k must have the shape of q \(B, L, H, K\) = \(2, 5, 3, 4\)", dict(k=k[:, :4])),
        (ValueError, r"v must have shape \(B, L, H, V\) = \(2, 5, H, V\) with H a multiple of q's 3 heads",
         dict(v=v[:, :, :2])),
        (ValueError, r"with H a multiple of q's 2 heads \(groups\)", dict(q=q[:, :, :2], k=k[:, :, :2])),
        (ValueError, r"v must have shape", dict(v=v[:, :4])),
        (ValueError, r"v must have 4 dims", dict(v=v[0])),
        (TypeError, r"k must have the dtype of q", dict(k=k.double())),
        (TypeError, r"v must have dtype in", dict(v=v.int())),
        (ValueError, r"log_decay must have shape \(B, L, H\) = \(2, 5, 3\) or \(H,\) = \(3,\)",
         dict(log_decay=ld[:, :4])),
        (ValueError, r"log_decay must have shape", dict(log_decay=ld[0, 0, :2])),
        (ValueError, r"log_decay must have 1 or 3 dims", dict(log_decay=ld[0])),
        (ValueError, r"log_decay must be finite and <= 0", dict(log_decay=ld.abs() + 0.1)),
        (ValueError, r"log_decay must be finite and <= 0", dict(log_decay=torch.full((3,), float("nan")))),
        (ValueError, r"log_decay must be finite and <= 0", dict(log_decay=torch.full((3,), float("-inf")))),
        (ValueError, r"0 tokens", dict(q=q[:, :0], k=k[:, :0], v=v[:, :0], log_decay=ld[:, :0])),
        (ValueError, r"initial_state must have shape \(2, 3, 4, 2\)", dict(initial_state=h0[:1])),
        (ValueError, r"initial_state is on meta", dict(initial_state=h0.to("meta"))),
        (ValueError, r"v_scale must have shape \(2, 5, 3\)", dict(v_scale=ld[:, :, :1].abs())),
        (TypeError, r"v_scale must have dtype in", dict(v_scale=ld.int())),
        (TypeError, r"scale must be a float or None", dict(scale=torch.tensor(1.0))),
        (ValueError, r"scale must be finite", dict(scale=float("inf"))),
        (TypeError, r"chunk_size must be an int or None", dict(chunk_size=4.0)),
        (ValueError, r"chunk_size must be >= 1", dict(chunk_size=0)),
        (TypeError, r"output_final_state must be a bool", dict(output_final_state=1)),
        (ValueError, r"backend must be 'auto' or one of", dict(backend="cuda")),
        (TypeError, r"q must be a torch.Tensor", dict(q=q.tolist())),
    ]
    base = dict(q=q, k=k, v=v, log_decay=ld)
    for err, match, change in cases:
        kwargs = {**base, **change}
        with pytest.raises(err, match=match):
            dla(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), kwargs.pop("log_decay"), **kwargs)


@pytest.mark.peers
def test_matches_transformers_mamba2_chunk_scan():
    """Mamba-2's SSD is this op with k = B, q = C, v = dt * x, log_decay = dt * A and scale 1."""
    pytest.importorskip("transformers")
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

    g = torch.Generator().manual_seed(0)
    B, L, H, N, P = 2, 21, 3, 8, 4
    x = torch.randn(B, L, H, P, generator=g)
    dt = torch.rand(B, L, H, generator=g) * 0.5
    A = -torch.rand(H, generator=g) * 3
    Bm, Cm = torch.randn(B, L, H, N, generator=g), torch.randn(B, L, H, N, generator=g)
    h0 = torch.randn(B, H, P, N, generator=g)    # transformers' state is (B, H, P, N): ours transposed
    want, want_final = mamba2_chunk_scan(x, dt, A, Bm, Cm, chunk_size=8, initial_states=h0, return_final_states=True)
    for backend in ("reference", *BACKENDS):
        o, final = dla(Cm, Bm, x * dt[..., None], dt * A, scale=1.0, initial_state=h0.transpose(-1, -2),
                       output_final_state=True, backend=backend)
        torch.testing.assert_close(o, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(final.transpose(-1, -2), want_final, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_torch_compile_fullgraph_forward_and_backward():
    q, k, v, ld, h0 = make(B=1, L=6, H=2, K=3, V=2, dtype=torch.float32, seed=10)
    w = torch.rand(1, 6, 2) + 0.1
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, ld, h0, w)]

    def f(q, k, v, ld, h0, w):
        o, s = dla(q, k, v, ld, v_scale=w, initial_state=h0, output_final_state=True, chunk_size=4, backend="cpu")
        return (o * 2).sum() + s.sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    for a, b in zip(torch.autograd.grad(compiled(*leaves), leaves), torch.autograd.grad(f(*leaves), leaves)):
        torch.testing.assert_close(a, b)


def test_cpu_backend_saves_its_chunked_copies_instead_of_the_inputs():
    from neurostep.kernels.decayed_linear_attention import cpu

    q, k, v, ld, _ = make(B=1, L=10, H=2, K=3, V=2, dtype=torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, ld)]
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        dla(*leaves, chunk_size=4, backend="cpu")
    ptrs = {t.data_ptr() for t in packed}
    assert not ptrs & {t.data_ptr() for t in leaves[:3]}
    # the five saved tensors (blocks of q, k, v, the masked scores, the entering states) are kept as they are
    shapes = [tuple(t.shape) for t in packed]
    assert all(shape in shapes for shape in cpu.saved_shapes(q.shape, v.shape, 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_log_decay_gradient_keeps_float32_precision_on_long_sequences(backend):
    # the gradient of one decay per head sums over every token; a sum of q . dq - k . dk over the whole
    # sequence (equal in exact arithmetic) loses it to cancellation, the backends sum straddling pairs
    q, k, v, _, h0 = make(B=1, L=1024, H=2, K=16, V=8, seed=11)
    ld = torch.tensor([-0.01, -0.2], dtype=torch.float64)
    want = run(q, k, v, ld, h0, "reference")
    got = run(*(t.float() for t in (q, k, v, ld, h0)), backend)
    for x, y in zip(got, want):
        assert float((x.detach().double() - y.detach()).abs().max() / y.detach().abs().max()) < 2e-5
