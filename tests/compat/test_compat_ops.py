"""neurostep.compat's functions beyond what the ported upstream tests reach: the fused Mamba paths with
every option, Mamba-2's scan, the fused norms, padding rows, legacy spellings and refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neurostep.compat.causal_conv1d import cpp_functions
from neurostep.compat.causal_conv1d.causal_conv1d_interface import (
    causal_conv1d_fn,
    causal_conv1d_ref,
    causal_conv1d_update,
    causal_conv1d_update_ref,
)
from neurostep.compat.causal_conv1d.causal_conv1d_varlen import causal_conv1d_varlen_states
from neurostep.compat.mamba_ssm.ops.selective_scan_interface import (
    bimamba_inner_fn,
    bimamba_inner_ref,
    mamba_inner_fn,
    mamba_inner_fn_no_out_proj,
    selective_scan_fn,
    selective_scan_ref,
)
from neurostep.compat.mamba_ssm.ops.triton import layernorm_gated
from neurostep.compat.mamba_ssm.ops.triton.layer_norm import layer_norm_fn, layer_norm_ref, rms_norm_fn, rms_norm_ref
from neurostep.compat.mamba_ssm.ops.triton.selective_state_update import (
    selective_state_update,
    selective_state_update_ref,
)
from neurostep.compat.mamba_ssm.ops.triton.ssd_combined import (
    mamba_chunk_scan_combined,
    mamba_split_conv1d_scan_combined,
    mamba_split_conv1d_scan_ref,
    ssd_chunk_scan_combined_ref,
)


def _leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_(t.is_floating_point() or t.is_complex())
            for t in ts]


def _inner_args(dim=16, dstate=4, rank=3, seqlen=24, batch=2, width=4, out_dim=8, dtype=torch.float32):
    torch.manual_seed(0)
    xz = torch.randn(batch, 2 * dim, seqlen, dtype=dtype)
    conv_w = torch.randn(dim, 1, width, dtype=dtype) * 0.5
    conv_b = torch.randn(dim, dtype=dtype)
    x_proj = torch.randn(rank + 2 * dstate, dim, dtype=dtype) * 0.3
    dt_proj = torch.randn(dim, rank, dtype=dtype) * 0.3
    out_proj = torch.randn(out_dim, dim, dtype=dtype) * 0.3
    A = -torch.rand(dim, dstate, dtype=dtype) - 0.5
    D = torch.randn(dim, dtype=dtype)
    delta_bias = torch.rand(dim, dtype=dtype) - 1.0
    return xz, conv_w, conv_b, x_proj, dt_proj, out_proj, A, D, delta_bias


def _inner_torch(xz, conv_w, conv_b, x_proj, dt_proj, A, D, delta_bias, B_proj_bias=None, C_proj_bias=None,
                 b_rms=None, c_rms=None, dt_rms=None, eps=1e-6):
    """The fused Mamba path written with upstream's PyTorch references only."""
    rank, n = dt_proj.shape[1], A.shape[1]
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_ref(x, conv_w[:, 0], conv_b, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2), x_proj)
    delta = x_dbl[..., :rank] @ dt_proj.t()
    B, C = x_dbl[..., rank:rank + n], x_dbl[..., -n:]
    if B_proj_bias is not None:
        B = B + B_proj_bias
    if C_proj_bias is not None:
        C = C + C_proj_bias
    if b_rms is not None:
        B = F.rms_norm(B, (n,), b_rms, eps)
    if c_rms is not None:
        C = F.rms_norm(C, (n,), c_rms, eps)
    if dt_rms is not None:
        delta = F.rms_norm(delta, (delta.shape[-1],), dt_rms, eps)
    return selective_scan_ref(x, delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D, z=z,
                              delta_bias=delta_bias, delta_softplus=True)


@pytest.mark.parametrize("options", ["plain", "proj_bias", "rms_weights"])
def test_mamba_inner_fn_matches_references_with_gradients(options):
    xz, conv_w, conv_b, x_proj, dt_proj, out_proj, A, D, delta_bias = _inner_args()
    n, dim = A.shape[1], A.shape[0]
    extra = {}
    if options == "proj_bias":
        extra = dict(B_proj_bias=torch.randn(n, dtype=xz.dtype), C_proj_bias=torch.randn(n, dtype=xz.dtype))
    elif options == "rms_weights":
        extra = dict(b_rms_weight=torch.rand(n, dtype=xz.dtype) + 0.5, c_rms_weight=torch.rand(n, dtype=xz.dtype) + 0.5,
                     dt_rms_weight=torch.rand(dim, dtype=xz.dtype) + 0.5)
    ins = _leaves(xz, conv_w, conv_b, x_proj, dt_proj, out_proj, A, D, delta_bias)
    refs = _leaves(xz, conv_w, conv_b, x_proj, dt_proj, out_proj, A, D, delta_bias)
    out = mamba_inner_fn(*ins[:6], None, ins[6], None, None, ins[7], delta_bias=ins[8], **extra)
    ref_extra = {"B_proj_bias": extra.get("B_proj_bias"), "C_proj_bias": extra.get("C_proj_bias"),
                 "b_rms": extra.get("b_rms_weight"), "c_rms": extra.get("c_rms_weight"),
                 "dt_rms": extra.get("dt_rms_weight")}
    y = _inner_torch(*refs[:5], refs[6], refs[7], refs[8], **ref_extra)
    ref = F.linear(y.transpose(1, 2), refs[5])
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    for a, b in zip(ins, refs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)


def test_no_out_proj_and_bimamba_match_references():
    xz, conv_w, conv_b, x_proj, dt_proj, out_proj, A, D, delta_bias = _inner_args()
    y = mamba_inner_fn_no_out_proj(xz, conv_w, conv_b, x_proj, dt_proj, A, None, None, D, delta_bias=delta_bias)
    torch.testing.assert_close(y, _inner_torch(xz, conv_w, conv_b, x_proj, dt_proj, A, D, delta_bias),
                               rtol=1e-4, atol=1e-4)
    A_b = A.flip(1)
    out = bimamba_inner_fn(xz, conv_w, conv_b, x_proj, dt_proj, out_proj, None, A, A_b, None, None, D,
                           delta_bias=delta_bias)
    ref = bimamba_inner_ref(xz, conv_w, conv_b, x_proj, dt_proj, out_proj, None, A, A_b, None, None, D,
                            delta_bias=delta_bias)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="A_b should not be complex"):
        bimamba_inner_fn(xz, conv_w, conv_b, x_proj, dt_proj, out_proj, None, A, A_b.to(torch.complex128))


@pytest.mark.parametrize("variable", [False, True])
def test_complex_A_matches_selective_scan_ref(variable):
    torch.manual_seed(0)
    batch, dim, n, L = 2, 6, 4, 17
    A = torch.complex(-torch.rand(dim, n) - 0.2, torch.randn(dim, n))
    B = torch.randn(batch, 2, n, 2 * L) if variable else torch.randn(dim, n, dtype=torch.complex64)
    C = torch.randn(batch, n, 2 * L) if variable else torch.randn(dim, n, dtype=torch.complex64)
    u, delta, z = torch.randn(batch, dim, L), torch.rand(batch, dim, L), torch.randn(batch, dim, L)
    args = (u, delta, A, B, C, torch.randn(dim), z, torch.rand(dim), True, True)
    ins, refs = _leaves(*args[:8]), _leaves(*args[:8])
    out, last = selective_scan_fn(*ins, True, True)
    out_ref, last_ref = selective_scan_ref(*refs, True, True)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(last, last_ref)
    (out.square().sum() + last.abs().sum()).backward()
    (out_ref.square().sum() + last_ref.abs().sum()).backward()
    for a, b in zip(ins, refs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)


def test_selective_scan_fn_last_state_gradient_and_types():
    torch.manual_seed(0)
    u, delta = torch.randn(1, 3, 9, requires_grad=True), torch.rand(1, 3, 9)
    A, B, C = -torch.rand(3, 2), torch.randn(1, 2, 9), torch.randn(1, 2, 9)
    out, last = selective_scan_fn(u, delta, A, B, C, return_last_state=True)
    assert out.dtype == u.dtype and last.shape == (1, 3, 2)
    last.sum().backward()  # upstream drops this gradient; the stand-in propagates it
    assert u.grad.abs().sum() > 0
    assert isinstance(selective_scan_fn(u, delta, A, B, C), torch.Tensor)


@pytest.mark.parametrize("heads", [False, True])
def test_state_update_padding_rows_are_zero_and_untouched(heads):
    torch.manual_seed(0)
    batch, nheads, p, n = 4, 2, 8, 4
    state = torch.randn(6, nheads, p, n) if heads else torch.randn(6, p, n)
    shape = (batch, nheads, p) if heads else (batch, p)
    x, dt, z = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    A = -torch.rand((nheads, p, n) if heads else (p, n)) - 0.5
    B, C = torch.randn(batch, 2 if heads else 1, n), torch.randn(batch, 2 if heads else 1, n)
    D, dt_bias = torch.randn(shape[1:]), torch.randn(shape[1:])
    idx = torch.tensor([3, -1, 0, -1], dtype=torch.int32)
    before = state.clone()
    out = selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, True, state_batch_indices=idx)
    valid = idx >= 0
    expected = before[idx[valid].long()].clone()
    if not heads:
        B, C = B[:, 0], C[:, 0]
    ref = selective_state_update_ref(expected, x[valid], dt[valid], A, B[valid], C[valid], D, z[valid], dt_bias, True)
    torch.testing.assert_close(out[valid], ref)
    assert torch.all(out[~valid] == 0)
    torch.testing.assert_close(state[idx[valid].long()], expected)
    untouched = [i for i in range(6) if i not in (0, 3)]
    assert torch.equal(state[untouched], before[untouched])
    with pytest.raises(ValueError, match="state_batch_indices"):
        selective_state_update(torch.randn(6, p, n), torch.randn(2, p), torch.randn(2, p), torch.rand(p, n),
                               torch.randn(2, n), torch.randn(2, n))


def test_causal_conv1d_spellings_and_refusals():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 8, 11), torch.randn(8, 3), torch.randn(8)
    ref = causal_conv1d_ref(x, w, b, activation="silu")
    torch.testing.assert_close(causal_conv1d_fn(x, w, b, "silu"), ref)  # causal-conv1d 1.0's positional order
    init = torch.randn(2, 8, 2)
    final_out = torch.empty(2, 8, 2)
    out, final = causal_conv1d_fn(x, w, b, None, init, True, final_out, "swish")
    assert final is final_out
    ref_out, ref_final = causal_conv1d_ref(x, w, b, init, True, activation="silu")
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(final_out, ref_final)
    seq_idx = torch.zeros(2, 11, dtype=torch.int32)
    with pytest.raises(ValueError, match="initial_states must be None"):
        causal_conv1d_fn(x, w, b, seq_idx, init)
    with pytest.raises(ValueError, match="final_states_out"):
        causal_conv1d_fn(x, w, b, seq_idx, None, True)
    with pytest.raises(NotImplementedError, match="activation"):
        causal_conv1d_fn(x, w, b, activation="gelu")
    with pytest.raises(TypeError, match="integer"):
        causal_conv1d_fn(x, w, b, seq_idx.float())
    # width 1 and width 5: outside upstream's 2..4, same semantics
    for width in (1, 5):
        wk = torch.randn(8, width)
        torch.testing.assert_close(causal_conv1d_fn(x, wk, b), causal_conv1d_ref(x, wk, b))


def test_causal_conv1d_update_long_input_and_circular_overflow():
    torch.manual_seed(0)
    w, b = torch.randn(8, 4), torch.randn(8)
    state = torch.randn(3, 8, 5)
    x = torch.randn(3, 8, 7)  # more new tokens than state_len
    ref_state = state.clone()
    out = causal_conv1d_update(x, state, w, b, "silu")
    ref = causal_conv1d_update_ref(x, ref_state, w, b, "silu")
    torch.testing.assert_close(out, ref)
    assert torch.equal(state, ref_state)
    # circular buffer with more tokens than slots: the kernel writes in order, the last ones stay
    cache = torch.tensor([2, 9, 0], dtype=torch.int32)
    state = torch.randn(3, 8, 5)
    expected = state.clone()
    for i in range(x.shape[-1]):
        expected.scatter_(2, ((cache.long() + i) % 5)[:, None, None].expand(3, 8, 1), x[..., i:i + 1])
    out = causal_conv1d_update(x, state, w, b, None, cache)
    assert torch.equal(state, expected)
    window = causal_conv1d_update_ref(x[..., :1], state.clone() * 0, w, b, None, None)  # shape check only
    assert out.shape == x.shape and window.shape == (3, 8, 1)


def test_causal_conv1d_cpp_functions_match_autograd():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 8, 10), torch.randn(8, 4), torch.randn(8)
    init, dout, dfinal = torch.randn(2, 8, 3), torch.randn(2, 8, 10), torch.randn(2, 8, 3)
    final = torch.empty(2, 8, 3)
    out = cpp_functions.causal_conv1d_fwd_function(x, w, b, None, init, final, True)
    ref_out, ref_final = causal_conv1d_ref(x, w, b, init, True, activation="silu")
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(final, ref_final)
    dx = torch.empty_like(x)
    gx, gw, gb, gi = cpp_functions.causal_conv1d_bwd_function(x, w, b, dout, None, init, dfinal, dx, True, True)
    leaves = _leaves(x, w, b, init)
    o, f = causal_conv1d_ref(*leaves, True, activation="silu")
    torch.autograd.backward([o, f], [dout, dfinal])
    assert gx is dx
    for got, leaf in zip((gx, gw, gb, gi), leaves):
        torch.testing.assert_close(got, leaf.grad)
    state, ref_state = torch.randn(2, 8, 4), None
    ref_state = state.clone()
    xs = torch.randn(2, 8, 1)
    torch.testing.assert_close(cpp_functions.causal_conv1d_update_function(xs, state, w, b, True, None, None),
                               causal_conv1d_update_ref(xs, ref_state, w, b, "silu"))
    assert torch.equal(state, ref_state)


def test_varlen_states_with_empty_sequences():
    x = torch.arange(12.0).reshape(6, 2)
    cu = torch.tensor([0, 4, 4, 6])
    states = causal_conv1d_varlen_states(x, cu, 3)
    assert states.shape == (3, 2, 3)
    torch.testing.assert_close(states[0], x[1:4].T)
    assert torch.equal(states[1], torch.zeros(2, 3))
    torch.testing.assert_close(states[2], torch.cat([torch.zeros(2, 1), x[4:6].T], dim=1))


def _ssd_inputs(batch=2, seqlen=40, nheads=4, headdim=3, ngroups=2, dstate=5, dtype=torch.float64):
    torch.manual_seed(0)
    x = torch.randn(batch, seqlen, nheads, headdim, dtype=dtype)
    dt = torch.randn(batch, seqlen, nheads, dtype=dtype)
    A = -torch.rand(nheads, dtype=dtype) - 0.5
    B = torch.randn(batch, seqlen, ngroups, dstate, dtype=dtype)
    C = torch.randn(batch, seqlen, ngroups, dstate, dtype=dtype)
    D = torch.randn(nheads, dtype=dtype)
    z = torch.randn(batch, seqlen, nheads, headdim, dtype=dtype)
    dt_bias = torch.rand(nheads, dtype=dtype)
    return x, dt, A, B, C, D, z, dt_bias


def test_chunk_scan_matches_the_reference_and_chains_states():
    x, dt, A, B, C, D, z, dt_bias = _ssd_inputs()
    out = mamba_chunk_scan_combined(x, dt, A, B, C, 16, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
    ref = ssd_chunk_scan_combined_ref(x, dt, A, B, C, 16, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)  # the reference computes in fp32
    # two halves with the state carried == the whole
    kw = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
    h = 17
    first, state = mamba_chunk_scan_combined(x[:, :h], dt[:, :h], A, B[:, :h], C[:, :h], 16,
                                             D=D, z=z[:, :h], dt_bias=dt_bias, dt_softplus=True,
                                             return_final_states=True)
    second = mamba_chunk_scan_combined(x[:, h:], dt[:, h:], A, B[:, h:], C[:, h:], 16, D=D, z=z[:, h:],
                                       dt_bias=dt_bias, dt_softplus=True, initial_states=state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), mamba_chunk_scan_combined(x, dt, A, B, C, 16, **kw))
    assert state.shape == (2, 4, 3, 5) and state.dtype == C.dtype
    # dt_limit clamps softplus(dt + bias)
    lim = mamba_chunk_scan_combined(x, dt, A, B, C, 16, D=D, dt_bias=dt_bias, dt_softplus=True, dt_limit=(0.2, 0.6))
    dtl = F.softplus(dt + dt_bias).clamp(0.2, 0.6)
    torch.testing.assert_close(lim, ssd_chunk_scan_combined_ref(x, dtl, A, B, C, 16, D=D), rtol=1e-4, atol=1e-4)


def _ops_called(fn) -> set[str]:
    with torch.profiler.profile() as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("neurostep::")}


@pytest.mark.parametrize("gate", [False, True])
def test_chunk_scan_runs_on_the_chunked_op_and_agrees_with_the_exact_lanes(gate):
    # a whole batch goes to the chunked decayed-linear-attention op; one packed sequence (seq_idx all
    # zeros: the same computation) to the exact selective scan over H * P lanes
    x, dt, A, B, C, D, z, dt_bias = _ssd_inputs()
    init = torch.randn(2, 4, 3, 5, dtype=x.dtype)
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, z, dt_bias, init)]

    def call(seq_idx):
        x, dt, A, B, C, D, z, dt_bias, init = leaves
        return mamba_chunk_scan_combined(x, dt, A, B, C, 16, D=D, z=z if gate else None, dt_bias=dt_bias,
                                         initial_states=init, seq_idx=seq_idx, dt_softplus=True,
                                         dt_limit=(0.05, 2.0), return_final_states=True)

    whole = torch.zeros(2, 40, dtype=torch.int32)
    assert "neurostep::decayed_linear_attention_forward" in _ops_called(lambda: call(None))
    assert "neurostep::decayed_linear_attention_forward" not in _ops_called(lambda: call(whole))
    chunked, lanes = call(None), call(whole)
    for a, b in zip(chunked, lanes):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    g = torch.Generator().manual_seed(1)
    cot = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in chunked]
    used = leaves if gate else leaves[:6] + leaves[7:]
    float32_sums = {id(leaves[2]), id(leaves[7])}   # the lanes accumulate dA and d(dt_bias) in float32
    for leaf, a, b in zip(used, torch.autograd.grad(chunked, used, cot), torch.autograd.grad(lanes, used, cot)):
        tol = 1e-5 if id(leaf) in float32_sums else 1e-8
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    # a raw negative dt (no softplus) makes a decay above 1, which the chunked op refuses: the lanes run it
    assert "neurostep::decayed_linear_attention_forward" not in _ops_called(
        lambda: mamba_chunk_scan_combined(x, dt, A, B, C, 16))


def test_chunk_scan_seq_idx_and_varlen_states():
    x, dt, A, B, C, D, z, dt_bias = _ssd_inputs(batch=1)
    bounds = [0, 9, 25, 40]
    seq_idx = torch.cat([torch.full((e - s,), i, dtype=torch.int32) for i, (s, e) in
                         enumerate(zip(bounds[:-1], bounds[1:]))])[None]
    init = torch.randn(1, 4, 3, 5, dtype=x.dtype)
    cu = torch.tensor(bounds)
    out, final, varlen = mamba_chunk_scan_combined(x, dt, A, B, C, 16, D=D, dt_bias=dt_bias, dt_softplus=True,
                                                   initial_states=init, seq_idx=seq_idx, cu_seqlens=cu,
                                                   return_final_states=True, return_varlen_states=True)
    pieces, states = [], []
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        o, st = mamba_chunk_scan_combined(x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], 16, D=D, dt_bias=dt_bias,
                                          dt_softplus=True, initial_states=init if i == 0 else None,
                                          return_final_states=True)
        pieces.append(o)
        states.append(st)
    torch.testing.assert_close(out, torch.cat(pieces, dim=1))
    torch.testing.assert_close(final, states[-1])
    torch.testing.assert_close(varlen, torch.cat(states))
    # rows of a batch with different packings
    x2, dt2, A2, B2, C2, D2, _, _ = _ssd_inputs(batch=2, seqlen=12)
    sid = torch.tensor([[0] * 5 + [1] * 7, [0] * 12], dtype=torch.int32)
    out2 = mamba_chunk_scan_combined(x2, dt2, A2, B2, C2, 16, D=D2, seq_idx=sid)
    row0 = torch.cat([mamba_chunk_scan_combined(x2[:1, s:e], dt2[:1, s:e], A2, B2[:1, s:e], C2[:1, s:e], 16, D=D2)
                      for s, e in ((0, 5), (5, 12))], dim=1)
    torch.testing.assert_close(out2[:1], row0)
    torch.testing.assert_close(out2[1:], mamba_chunk_scan_combined(x2[1:], dt2[1:], A2, B2[1:], C2[1:], 16, D=D2))


@pytest.mark.parametrize("rmsnorm", [False, True])
def test_split_conv1d_scan_combined_matches_its_reference(rmsnorm):
    torch.manual_seed(0)
    batch, seqlen, nheads, headdim, ngroups, dstate, d_mlp = 2, 14, 4, 3, 2, 5, 2
    dim = nheads * headdim
    conv_dim = dim + 2 * ngroups * dstate
    zxbcdt = torch.randn(batch, seqlen, 2 * d_mlp + 2 * dim + 2 * ngroups * dstate + nheads, dtype=torch.float64)
    conv_w, conv_b = torch.randn(conv_dim, 4, dtype=torch.float64), torch.randn(conv_dim, dtype=torch.float64)
    dt_bias, A, D = torch.rand(nheads, dtype=torch.float64), -torch.rand(nheads, dtype=torch.float64), \
        torch.randn(nheads, headdim, dtype=torch.float64)
    rms_w = torch.rand(dim, dtype=torch.float64) + 0.5 if rmsnorm else None
    out_w = torch.randn(6, dim + d_mlp, dtype=torch.float64)
    kw = dict(rmsnorm_weight=rms_w, outproj_weight=out_w, ngroups=ngroups, norm_before_gate=False)
    out, final = mamba_split_conv1d_scan_combined(zxbcdt, conv_w, conv_b, dt_bias, A, D, 64,
                                                  return_final_states=True, **kw)
    ref = mamba_split_conv1d_scan_ref(zxbcdt, conv_w, conv_b, dt_bias, A, D, 64, **kw)
    torch.testing.assert_close(out, ref)
    assert out.shape == (batch, seqlen, 6) and final.shape == (batch, nheads, headdim, dstate)


def test_fused_norms_match_upstream_references():
    torch.manual_seed(0)
    x, res, x1 = torch.randn(3, 5, 16), torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    w, b, w1, b1 = torch.rand(16) + 0.5, torch.randn(16), torch.rand(16) + 0.5, torch.randn(16)
    rowscale = torch.rand(3, 5)
    for fn, ref_fn, bias in ((layer_norm_fn, layer_norm_ref, b), (rms_norm_fn, rms_norm_ref, None)):
        y, r = fn(x, w, bias, residual=res, prenorm=True, eps=1e-5)
        y_ref, r_ref = ref_fn(x, w, bias, residual=res, prenorm=True, eps=1e-5)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(r, r_ref)
        y, y1 = fn(x, w, bias, x1=x1, weight1=w1, bias1=b1 if bias is not None else None, eps=1e-5)
        y_ref, y1_ref = ref_fn(x, w, bias, x1=x1, weight1=w1, bias1=b1 if bias is not None else None, eps=1e-5)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(y1, y1_ref)
        torch.testing.assert_close(fn(x, w, bias, rowscale=rowscale), ref_fn(x, w, bias, rowscale=rowscale))
        y, r, mask, mask1 = fn(x, w, bias, residual=res, dropout_p=0.3, prenorm=True, return_dropout_mask=True)
        assert mask1 is None and mask.dtype == torch.bool and 0.5 < mask.float().mean() < 0.9
        y_ref, r_ref = ref_fn(x, w, bias, residual=res, dropout_p=0.3, prenorm=True, dropout_mask=mask)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(r, r_ref)
    # residual dtype: fp32 with residual_in_fp32, the input itself when nothing is added
    xh = x.to(torch.bfloat16)
    y, r = rms_norm_fn(xh, w, None, prenorm=True, residual_in_fp32=True)
    assert y.dtype == torch.bfloat16 and r.dtype == torch.float32
    _, r = rms_norm_fn(x, w, None, prenorm=True)
    assert r is x


def test_gated_rmsnorm_matches_upstream_reference():
    torch.manual_seed(0)
    x, z, w = torch.randn(4, 12), torch.randn(4, 12), torch.rand(12) + 0.5
    for group_size in (None, 4):
        for before in (True, False):
            torch.testing.assert_close(
                layernorm_gated.rmsnorm_fn(x, w, None, z=z, group_size=group_size, norm_before_gate=before),
                layernorm_gated.rms_norm_ref(x, w, None, z=z, group_size=group_size, norm_before_gate=before))
    norm = layernorm_gated.LayerNorm(12, group_size=6)
    expected = F.layer_norm(x.unflatten(-1, (2, 6)), (6,), eps=1e-5).flatten(-2) * F.silu(z)
    torch.testing.assert_close(norm(x, z), expected)
