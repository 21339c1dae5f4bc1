"""selective_scan_fn / selective_state_update: every backend against the reference, the reference
against independent formulas (mamba-ssm's selective_scan_ref equations, mambapy's pscan), gradients,
dtypes, awkward shapes and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from neurostep.engine import COSTS, KERNELS, BackendUnavailableError
from neurostep.kernels.selective_scan import reference, selective_scan, selective_scan_fn, selective_state_update

BACKENDS = ["cpu"]


def make_inputs(b=2, d=6, L=9, n=4, bmode="step", cmode="step", groups=3, extras=True, dtype=torch.float64, seed=0):
    """Inputs for selective_scan_fn; B/C modes: const (dim, N), step (batch, N, L), group (batch, G, N, L)."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)

    def bc(mode):
        return {"const": lambda: r(d, n), "step": lambda: r(b, n, L), "group": lambda: r(b, groups, n, L)}[mode]()

    u, delta = r(b, d, L), r(b, d, L) * 0.5
    A = (-torch.rand(d, n, generator=g, dtype=torch.float64) * 2 - 0.1).to(dtype)
    B, C = bc(bmode), bc(cmode)
    D, z, bias, h0 = r(d), r(b, d, L), r(d), r(b, d, n)
    if not extras:
        D = z = bias = h0 = None
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias, initial_state=h0)


def run(inputs, backend, softplus=True, grads=True, seed=1):
    """Output, last state and the gradients of every tensor input (same order as ``inputs``)."""
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, last = selective_scan_fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"],
                                  leaves["z"], leaves["delta_bias"], delta_softplus=softplus, return_last_state=True,
                                  initial_state=leaves["initial_state"], backend=backend)
    if not grads:
        return [out, last]
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    gl = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last.dtype)
    present = [v for v in leaves.values() if v is not None]
    return [out, last, *torch.autograd.grad((out, last), present, (go, gl))]


def assert_all_close(got, want, rtol, atol):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol, msg=lambda m, i=i: f"tensor {i}: {m}")


def selective_scan_ref_formula(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                               initial_state=None):
    """mamba-ssm's selective_scan_ref, transcribed from its equations (einsums per step, groups by repeat)."""
    dim = u.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if B.dim() == 2:
        drive = torch.einsum("bdl,dn,bdl->bdln", delta, B, u)
    else:
        Bf = B if B.dim() == 4 else B[:, None]
        Bf = Bf.repeat_interleave(dim // Bf.shape[1], dim=1)
        drive = torch.einsum("bdl,bdnl,bdl->bdln", delta, Bf, u)
    Cf = None if C.dim() == 2 else (C if C.dim() == 4 else C[:, None]).repeat_interleave(
        dim // (C.shape[1] if C.dim() == 4 else 1), dim=1)
    x = initial_state if initial_state is not None else u.new_zeros(u.shape[0], dim, A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = decay[:, :, i] * x + drive[:, :, i]
        ys.append(torch.einsum("bdn,dn->bd", x, C) if Cf is None else torch.einsum("bdn,bdn->bd", x, Cf[..., i]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None]
    return (out if z is None else out * F.silu(z)), x


# ---------------------------------------------------------------- reference against independent formulas


@pytest.mark.parametrize("bmode,cmode", [("const", "const"), ("step", "step"), ("group", "group"), ("const", "group")])
@pytest.mark.parametrize("extras", [False, True])
def test_reference_matches_selective_scan_ref_formula(bmode, cmode, extras):
    inputs = make_inputs(bmode=bmode, cmode=cmode, extras=extras)
    got = run(inputs, "reference", softplus=extras)
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, last = selective_scan_ref_formula(**leaves, delta_softplus=extras)
    g = torch.Generator().manual_seed(1)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64)
    gl = torch.randn(last.shape, generator=g, dtype=torch.float64)
    want = [out, last, *torch.autograd.grad((out, last), [v for v in leaves.values() if v is not None], (go, gl))]
    assert_all_close(got, want, rtol=1e-10, atol=1e-10)


def test_reference_backward_matches_autograd_of_reference_forward():
    inputs = make_inputs(bmode="group", cmode="step", L=7)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    canon = {k: leaves[k][:, None] if k == "C" else leaves[k] for k in leaves}
    out, last, _ = reference.forward(canon["u"], canon["delta"], canon["A"], canon["B"], canon["C"], canon["D"],
                                     canon["z"], canon["delta_bias"], canon["initial_state"], True)
    go, gl = torch.randn_like(out), torch.randn_like(last)
    want = torch.autograd.grad((out, last), list(leaves.values()), (go, gl))
    with torch.no_grad():
        got = reference.backward(go, gl, *(inputs[k] if k != "C" else inputs[k][:, None] for k in
                                           ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")),
                                 torch.empty(0), True)
    got = list(got)
    got[4] = got[4][:, 0]  # canonical (batch, 1, N, L) -> per-step (batch, N, L)
    assert_all_close(got, list(want), rtol=1e-10, atol=1e-10)


def test_reference_matches_mambapy_pscan_forward():
    mamba = pytest.importorskip("mambapy.mamba")
    inputs = make_inputs(b=2, d=8, L=13, n=4, dtype=torch.float32)
    u, delta, A, B, C, D = (inputs[k] for k in ("u", "delta", "A", "B", "C", "D"))
    dt = F.softplus(delta + inputs["delta_bias"][:, None])
    want = mamba.MambaBlock.selective_scan(None, u.transpose(1, 2), dt.transpose(1, 2), A, B.transpose(1, 2),
                                           C.transpose(1, 2), D).transpose(1, 2)
    got = selective_scan_fn(u, dt, A, B, C, D, backend="reference")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_gradcheck_reference_float64():
    inputs = make_inputs(b=1, d=2, L=4, n=2, bmode="group", cmode="const", groups=2)
    names = list(inputs)

    def fn(*ts):
        kw = dict(zip(names, ts))
        init = kw.pop("initial_state")
        return selective_scan_fn(**kw, delta_softplus=True, return_last_state=True, initial_state=init,
                                 backend="reference")

    assert torch.autograd.gradcheck(fn, [v.requires_grad_() for v in inputs.values()])


# ---------------------------------------------------------------- fused backends against the reference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bmode,cmode", list(itertools.product(["const", "step", "group"], repeat=2)))
@pytest.mark.parametrize("extras", [False, True])
def test_backend_matches_reference(backend, bmode, cmode, extras):
    inputs = make_inputs(L=37, d=6, bmode=bmode, cmode=cmode, extras=extras)  # odd L, channels not a multiple of 16
    want = run(inputs, "reference", softplus=extras)
    assert_all_close(run(inputs, backend, softplus=extras), want, rtol=1e-9, atol=1e-9)
    inputs32 = {k: (v.float() if v is not None else None) for k, v in inputs.items()}
    assert_all_close(run(inputs32, backend, softplus=extras), want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L", [1, 2, 65, 257])
def test_backend_lengths_and_chunk_edges(backend, L):
    # 65 = two full checkpoint chunks of the cpu backend plus one step; 257 = one full span of gathered
    # chunks (8 x 32 steps) plus one step
    inputs = make_inputs(b=1, d=17, L=L, n=3, bmode="step", cmode="const")
    assert_all_close(run(inputs, backend), run(inputs, "reference"), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bmode,groups", [("step", 3), ("group", 3), ("group", 1)])
def test_backend_spans_with_gate_and_groups(backend, bmode, groups):
    # three spans of the cpu backend (the last partial), two batch rows walked in turn by the backward,
    # the gate, bias and softplus on; groups of 6 channels straddle its 16-channel blocks (per-lane B)
    inputs = make_inputs(b=2, d=18, L=530, n=3, bmode=bmode, cmode="step", groups=groups)
    want = run(inputs, "reference", softplus=True)
    assert_all_close(run(inputs, backend, softplus=True), want, rtol=1e-9, atol=1e-9)
    # float32: the vectorised exp and the FMA-contracted chunk functions, over the same spans
    inputs32 = {k: (v.float() if v is not None else None) for k, v in inputs.items()}
    assert_all_close(run(inputs32, backend, softplus=True), want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_noncontiguous_inputs(backend):
    inputs = make_inputs(b=2, d=5, L=6, n=3, bmode="step", cmode="group", groups=5)
    nc = dict(inputs)
    nc["u"] = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)
    nc["delta"] = torch.stack([inputs["delta"], inputs["delta"]], -1)[..., 0]
    nc["A"] = inputs["A"].t().contiguous().t()
    nc["B"] = inputs["B"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not nc["u"].is_contiguous() and not nc["delta"].is_contiguous() and not nc["A"].is_contiguous()
    assert_all_close(run(nc, backend), run(inputs, "reference"), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_fp32_state(backend, dtype):
    inputs = make_inputs(b=1, d=4, L=10, n=3, dtype=dtype)
    out, last = run(inputs, backend, grads=False)
    assert out.dtype == dtype and last.dtype == torch.float32
    want_out, want_last = run({k: v.float() for k, v in inputs.items()}, "reference", grads=False)
    torch.testing.assert_close(out.float(), want_out, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(last, want_last, rtol=1e-5, atol=1e-5)
    grads = run(inputs, backend)[2:]
    for g, v in zip(grads, (v for v in inputs.values() if v is not None)):
        assert g.dtype == v.dtype and torch.isfinite(g.float()).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_backend_float64(backend):
    inputs = make_inputs(b=1, d=3, L=5, n=2, bmode="step", cmode="const")
    names = list(inputs)

    def fn(*ts):
        kw = dict(zip(names, ts))
        init = kw.pop("initial_state")
        return selective_scan_fn(**kw, delta_softplus=True, return_last_state=True, initial_state=init, backend=backend)

    assert torch.autograd.gradcheck(fn, [v.requires_grad_() for v in inputs.values()])


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_initial_state_carries_between_chunks(backend):
    inputs = make_inputs(b=2, d=4, L=12, n=3, bmode="step", cmode="step")
    full, last = selective_scan_fn(**{k: v for k, v in inputs.items() if k != "initial_state"}, delta_softplus=True,
                                   return_last_state=True, initial_state=inputs["initial_state"], backend=backend)

    def part(sl, h0):
        kw = {k: (v[..., sl] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()
              if k != "initial_state"}
        return selective_scan_fn(**kw, delta_softplus=True, return_last_state=True, initial_state=h0, backend=backend)

    out1, h1 = part(slice(0, 5), inputs["initial_state"])
    out2, h2 = part(slice(5, 12), h1)
    torch.testing.assert_close(torch.cat([out1, out2], -1), full)
    torch.testing.assert_close(h2, last)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence_stays_finite(backend):
    L = 65_536
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 2, L, generator=g)
    delta = torch.randn(1, 2, L, generator=g)
    A = -torch.rand(2, 4, generator=g) - 0.01
    B, C = torch.randn(1, 4, L, generator=g), torch.randn(1, 4, L, generator=g)
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C)]
    out, last = selective_scan_fn(*leaves, delta_softplus=True, return_last_state=True, backend=backend)
    grads = torch.autograd.grad(out.sum() + last.sum(), leaves)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    assert all(torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_nan_in_input_propagates(backend):
    inputs = make_inputs(b=1, d=2, L=5, n=2, extras=False)
    inputs["u"][0, 0, 2] = float("nan")
    out = selective_scan_fn(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], backend=backend)
    assert torch.isnan(out[0, 0, 2:]).all() and torch.isfinite(out[0, 0, :2]).all() and torch.isfinite(out[0, 1]).all()


# ---------------------------------------------------------------- decode step


@pytest.mark.parametrize("grouped", [False, True])
def test_state_update_steps_equal_scan(grouped):
    inputs = make_inputs(b=2, d=4, L=6, n=3, bmode="group" if grouped else "step", cmode="step", groups=2)
    want, want_last = selective_scan_fn(**{k: v for k, v in inputs.items() if k != "initial_state"},
                                        delta_softplus=True, return_last_state=True,
                                        initial_state=inputs["initial_state"], backend="reference")
    state = inputs["initial_state"]
    before = state.clone()
    outs = []
    for t in range(6):
        out, state = selective_state_update(state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"],
                                            inputs["B"][..., t], inputs["C"][..., t], inputs["D"],
                                            inputs["z"][..., t], inputs["delta_bias"], dt_softplus=True)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, -1), want)
    torch.testing.assert_close(state, want_last)
    assert torch.equal(inputs["initial_state"], before)  # explicit state: nothing mutated in place


def test_state_update_bad_input():
    state, x = torch.zeros(2, 4, 3), torch.zeros(2, 4)
    A, B = -torch.ones(4, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="state"):
        selective_state_update(torch.zeros(2, 5, 3), x, x, A, B, B)
    with pytest.raises(ValueError, match="B"):
        selective_state_update(state, x, x, A, torch.zeros(2, 4), B)
    with pytest.raises(ValueError, match="groups"):
        selective_state_update(state, x, x, A, torch.zeros(2, 3, 3), B)


# ---------------------------------------------------------------- dispatch, custom op, costs, errors


def test_auto_backend_on_cpu_is_numba():
    assert KERNELS.choose("selective_scan", "auto", torch.device("cpu")) == "cpu"


def test_mamba_ssm_backend_refuses_cpu():
    inputs = make_inputs(extras=False)
    with pytest.raises(BackendUnavailableError):
        selective_scan_fn(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], backend="mamba_ssm")


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("channels_last", [False, True])
def test_custom_op_opcheck(backend, channels_last):
    inputs = make_inputs(b=1, d=3, L=4, n=2, dtype=torch.float32)

    def lanes(t):   # the op's layout: (batch, L, dim) when channels-last
        return t.transpose(1, 2).contiguous() if channels_last else t

    args = (lanes(inputs["u"]).requires_grad_(), lanes(inputs["delta"]), inputs["A"], inputs["B"][:, None],
            inputs["C"][:, None], inputs["D"], lanes(inputs["z"]), inputs["delta_bias"], inputs["initial_state"], True,
            channels_last, backend)
    torch.library.opcheck(torch.ops.neurostep.selective_scan_forward.default, args)


def channels_last(t: torch.Tensor | None) -> torch.Tensor | None:
    """The same ``(batch, dim, L)`` values with the channels contiguous: the transpose of a ``(batch, L, dim)``
    block."""
    return None if t is None else t.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("d,L,bmode", [(6, 9, "step"), (40, 70, "group"), (16, 33, "const")])
def test_channels_last_inputs_give_the_channels_first_results(backend, d, L, bmode):
    """Channels-last u, delta and z (a token-major block's transpose) are read in place and give the same
    numbers as contiguous ones, the output and the input gradients in the channels-last layout; 40 channels
    are padded to a multiple of the kernels' lane block, 70 steps cross a checkpoint."""
    inputs = make_inputs(b=2, d=d, L=L, n=3, bmode=bmode, cmode="step", groups=2, dtype=torch.float32)
    last = dict(inputs, **{name: channels_last(inputs[name]) for name in ("u", "delta", "z")})
    got, want = run(last, backend), run(inputs, backend)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    out, du = got[0], got[2]
    assert out.transpose(1, 2).is_contiguous() and not out.is_contiguous()
    assert du.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_in_mixed_layouts_follow_u(backend):
    """delta and z in the other layout than u are copied into u's; the output comes in u's layout."""
    inputs = make_inputs(b=2, d=18, L=11, n=2, dtype=torch.float64)
    want = run(inputs, "reference")
    mixed = dict(inputs, u=channels_last(inputs["u"]), z=channels_last(inputs["z"]))   # delta stays channels-first
    got = run(mixed, backend)
    assert got[0].transpose(1, 2).is_contiguous()
    assert_all_close(got, want, rtol=1e-9, atol=1e-9)
    flipped = dict(inputs, delta=channels_last(inputs["delta"]))                      # u channels-first
    got = run(flipped, backend)
    assert got[0].is_contiguous()
    assert_all_close(got, want, rtol=1e-9, atol=1e-9)


def test_cost_formula_is_declared():
    formula = COSTS.get("neurostep::selective_scan_forward")
    inputs = make_inputs(b=2, d=3, L=5, n=4)
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"][:, None], inputs["C"][:, None], None, None, None,
            None, False, "reference")
    out = (torch.empty(2, 3, 5), torch.empty(2, 3, 4), torch.empty(0))
    cost = formula(args, {}, out)
    assert cost.exps == 2 * 3 * 5 * 4 and cost.state_updates == 2 * 3 * 5 * 4 and cost.muls > 0


def test_bad_input_errors():
    ok = make_inputs(b=2, d=6, L=5, n=4, extras=False)
    u, delta, A, B, C = ok["u"], ok["delta"], ok["A"], ok["B"], ok["C"]
    cases = [
        (ValueError, "u", dict(u=u[0])),
        (ValueError, "delta", dict(delta=delta[..., :4])),
        (ValueError, "A", dict(A=A[:5])),
        (ValueError, "B", dict(B=B[..., :3])),
        (ValueError, "C", dict(C=torch.randn(2, 4, 4, 5, dtype=torch.float64))),  # 4 groups do not divide dim 6
        (ValueError, "A must be finite", dict(A=torch.full_like(A, float("nan")))),
        (TypeError, "u", dict(u=u.long())),
        (TypeError, "A", dict(A=A.to(torch.complex128))),
        (ValueError, "0 time steps", dict(u=u[..., :0], delta=delta[..., :0], B=B[..., :0], C=C[..., :0])),
        (ValueError, "backend", dict(backend="cuda")),
        (ValueError, "meta", dict(A=A.to("meta"))),
    ]
    for exc, match, change in cases:
        kw = dict(u=u, delta=delta, A=A, B=B, C=C)
        kw.update(change)
        with pytest.raises(exc, match=match):
            selective_scan_fn(**kw)
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan_fn(u, delta, A, B, C, initial_state=torch.zeros(2, 6, 3))
    with pytest.raises(ValueError, match="D"):
        selective_scan_fn(u, delta, A, B, C, D=torch.ones(5))
    with pytest.raises(ValueError, match="z"):
        selective_scan_fn(u, delta, A, B, C, z=u[..., :2])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_state_convention_chunks(backend):
    """initial_state in, (out, final_state) out: two chunks with the state carried equal one run,
    and selective_scan_fn (mamba-ssm's spelling) returns the same values."""
    kw = make_inputs(L=10, dtype=torch.float32, seed=21)
    h0 = kw.pop("initial_state")
    out, final = selective_scan(**kw, delta_softplus=True, initial_state=h0, output_final_state=True, backend=backend)
    assert selective_scan(**kw, delta_softplus=True, backend=backend)[1] is None

    def part(t, sl):
        return t[..., sl] if (t is not None and t.dim() == 3 and t.shape[-1] == 10) else t

    first = {k: part(v, slice(0, 4)) for k, v in kw.items()}
    second = {k: part(v, slice(4, None)) for k, v in kw.items()}
    out1, mid = selective_scan(**first, delta_softplus=True, initial_state=h0, output_final_state=True,
                               backend=backend)
    out2, end = selective_scan(**second, delta_softplus=True, initial_state=mid, output_final_state=True,
                               backend=backend)
    torch.testing.assert_close(torch.cat([out1, out2], dim=-1), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(end, final, rtol=1e-5, atol=1e-5)
    out_fn, last_fn = selective_scan_fn(**kw, delta_softplus=True, return_last_state=True, initial_state=h0,
                                        backend=backend)
    assert torch.equal(out_fn, out) and torch.equal(last_fn, final)


def test_blocks_in_one_group_compile_only_the_scalar_path(monkeypatch):
    """Layouts whose W-channel blocks each read one B and one C group (one group, or groups of a
    multiple of W channels) reach the kernels through launchers that pass ``mixed=None``, a compilation
    of its own without the per-lane path; the other layouts take the per-lane launchers. Both agree
    with the reference."""
    from numba.core import types

    from neurostep.kernels import numba_launch
    from neurostep.kernels.selective_scan import cpu

    w = cpu.W
    assert cpu.every_block_in_one_group(4 * w, 1, 1) and cpu.every_block_in_one_group(4 * w, 4, 2)
    assert cpu.every_block_in_one_group(w + 3, 1, 1)           # padded channels read the last group
    assert not cpu.every_block_in_one_group(4 * w, 8, 1)       # groups of W / 2 channels
    assert not cpu.every_block_in_one_group(6, 1, 3)
    requested = []
    launch = cpu.launch_ranges

    def spy(kernel, kinds, n_slots, n_items, variant, args):
        requested.append((kernel.__name__, variant is None))
        return launch(kernel, kinds, n_slots, n_items, variant, args)

    monkeypatch.setattr(cpu, "launch_ranges", spy)
    for groups in (1, 8):
        inputs = make_inputs(b=1, d=4 * w, L=5, n=2, bmode="group", cmode="group", groups=groups, dtype=torch.float32)
        for got, want in zip(run(inputs, "cpu"), run(inputs, "reference")):
            if want is not None:
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert requested == [("_forward_kernel", True), ("_backward_kernel", True),
                         ("_forward_kernel", False), ("_backward_kernel", False)]
    for kernel, kinds in ((cpu._forward_kernel, cpu._KINDS), (cpu._backward_kernel, cpu._KINDS)):
        for variant, want in (("none", types.none), ("i8", types.int8[::1])):
            compiled = numba_launch.range_kernel(kernel, kinds, "float32", variant)
            assert [sig[3] for sig in compiled.dispatcher.signatures] == [want]
