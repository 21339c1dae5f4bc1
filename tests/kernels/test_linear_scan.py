"""linear_scan: backends against the reference and a closed form, gradients, layout, bad input."""

from __future__ import annotations

import pytest
import torch

from neurostep.engine import COSTS
from neurostep.kernels.linear_scan import linear_scan

BACKENDS = ["cpu"]


def make(shape=(2, 9, 3, 5), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(*shape, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    h0 = torch.randn(shape[0], *shape[2:], generator=g, dtype=torch.float64).to(dtype)
    return a, b, h0


def run(a, b, h0, backend):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (a, b, h0)]
    h, last = linear_scan(*leaves, output_final_state=True, backend=backend)
    g = torch.Generator().manual_seed(5)
    gh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.dtype)
    gl = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last.dtype)
    return [h, last, *torch.autograd.grad((h, last), [t for t in leaves if t is not None], (gh, gl))]


def test_reference_matches_closed_form():
    a, b, h0 = make()
    h, last = linear_scan(a, b, h0, output_final_state=True, backend="reference")
    # h_t = prod_{s<=t} a_s h0 + sum_{s<=t} prod_{s<r<=t} a_r b_s
    L = a.shape[1]
    for t in range(L):
        want = torch.prod(a[:, : t + 1], dim=1) * h0
        for s in range(t + 1):
            want = want + torch.prod(a[:, s + 1: t + 1], dim=1) * b[:, s]
        torch.testing.assert_close(h[:, t], want)
    torch.testing.assert_close(last, h[:, -1])


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_gradcheck(backend):
    a, b, h0 = make(shape=(1, 4, 3))
    fn = lambda *t: linear_scan(*t, output_final_state=True, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (a, b, h0)])
    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (a, b)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 9, 3, 5), (1, 1, 7), (3, 17, 300)])
@pytest.mark.parametrize("with_h0", [False, True])
def test_backend_matches_reference(backend, shape, with_h0):
    a, b, h0 = make(shape)
    h0 = h0 if with_h0 else None
    want = run(a, b, h0, "reference")
    for x, y in zip(run(a, b, h0, backend), want):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    got32 = run(a.float(), b.float(), h0.float() if h0 is not None else None, backend)
    for x, y in zip(got32, want):
        torch.testing.assert_close(x.double(), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous(backend):
    a, b, h0 = make((2, 6, 4))
    at = a.transpose(0, 2).contiguous().transpose(0, 2)
    for x, y in zip(run(at, b[:, :, :], h0, backend), run(a, b, h0, "reference")):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_half_inputs(backend):
    a, b, h0 = make(dtype=torch.bfloat16)
    h, last = linear_scan(a, b, h0, output_final_state=True, backend=backend)
    assert h.dtype == torch.bfloat16 and last.dtype == torch.float32
    want, want_last = linear_scan(a.float(), b.float(), h0.float(), output_final_state=True, backend="reference")
    torch.testing.assert_close(last, want_last)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence_finite(backend):
    a = torch.rand(1, 65_536, 4) * 0.999
    b = torch.randn(1, 65_536, 4)
    h, last = linear_scan(a.requires_grad_(), b.requires_grad_(), backend=backend)
    ga, gb = torch.autograd.grad(h.sum(), (a, b))
    assert torch.isfinite(h).all() and torch.isfinite(ga).all() and torch.isfinite(gb).all()


def test_cost_and_opcheck():
    a, b, h0 = make(dtype=torch.float32)
    cost = COSTS.get("neurostep::linear_scan_forward")((a, b, h0, "reference"), {}, None)
    assert cost.muls == b.numel() and cost.adds == b.numel()
    for backend in ("reference", *BACKENDS):
        torch.library.opcheck(torch.ops.neurostep.linear_scan_forward.default,
                              (a.reshape(2, 9, 15).requires_grad_(), b.reshape(2, 9, 15), h0.reshape(2, 15), backend))


def test_bad_input():
    a, b, h0 = make()
    with pytest.raises(ValueError, match="a must have the shape"):
        linear_scan(a[:, :3], b)
    with pytest.raises(ValueError, match="initial_state"):
        linear_scan(a, b, h0[:1])
    with pytest.raises(ValueError, match="0 time steps"):
        linear_scan(a[:, :0], b[:, :0])
    with pytest.raises(ValueError, match="at least 2 dims"):
        linear_scan(a[0, 0, 0], b[0, 0, 0])
    with pytest.raises(TypeError, match="b"):
        linear_scan(a, b.int())
    with pytest.raises(ValueError, match="backend"):
        linear_scan(a, b, backend="gpu")
