"""Triton backend of decayed_linear_attention, run on CPU under Triton's interpreter with small shapes.

TRITON_INTERPRET=1 is set by tests/conftest.py before anything imports triton.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from test_decayed_linear_attention import make, run

from neurostep.engine import BackendUnavailableError
from neurostep.kernels.decayed_linear_attention import decayed_linear_attention as dla

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("const", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,chunk_size,with_h0", [
    (dict(B=2, L=37, H=2, K=5, V=4), 16, True),      # L not a multiple of the chunk
    (dict(B=1, L=1, H=2, K=3, V=2), 16, False),      # one token
    (dict(B=1, L=32, H=1, K=70, V=66), 16, True),    # two blocks of K and of V
    (dict(B=1, L=20, H=1, K=8, V=8), 32, False),     # one chunk, longer than the sequence
])
def test_triton_matches_reference(const, dtype, shape, chunk_size, with_h0):
    q, k, v, ld, h0 = make(**shape, const=const, seed=shape["L"])
    h0 = h0 if with_h0 else None
    want = run(q, k, v, ld, h0, "reference")
    got = run(*(t.to(dtype) if t is not None else None for t in (q, k, v, ld, h0)), "triton", chunk_size=chunk_size)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    for x, y in zip(got, want):
        assert x.dtype == dtype
        torch.testing.assert_close(x.double(), y, rtol=tol, atol=tol)


def test_triton_groups_of_q_and_k():
    q, k, v, ld, h0 = make(B=2, L=21, H=4, K=5, V=3, seed=5)
    qg, kg = q[:, :, :2].contiguous(), k[:, :, :2].contiguous()
    want = run(qg, kg, v, ld, h0, "reference")
    got = run(qg, kg, v, ld, h0, "triton", chunk_size=16)
    for x, y in zip(got, want):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


def test_triton_state_chaining_and_strong_decays():
    q, k, v, _, h0 = make(B=1, L=24, H=2, K=4, V=3, seed=2)
    ld = torch.full((1, 24, 2), -40.0, dtype=torch.float64)
    ld[0, ::2, 0] = 0.0
    whole = run(q, k, v, ld, h0, "reference")
    o1, s1 = dla(q[:, :10], k[:, :10], v[:, :10], ld[:, :10], initial_state=h0, output_final_state=True,
                 backend="triton", chunk_size=16)
    o2, s2 = dla(q[:, 10:], k[:, 10:], v[:, 10:], ld[:, 10:], initial_state=s1, output_final_state=True,
                 backend="triton", chunk_size=16)
    torch.testing.assert_close(torch.cat([o1, o2], 1), whole[0])
    torch.testing.assert_close(s2, whole[1])


def test_triton_log_decay_gradient_precision():
    q, k, v, _, h0 = make(B=1, L=96, H=1, K=4, V=3, seed=11)
    ld = torch.tensor([-0.01], dtype=torch.float64)
    want = run(q, k, v, ld, h0, "reference")
    got = run(*(t.float() for t in (q, k, v, ld, h0)), "triton", chunk_size=16)
    for x, y in zip(got, want):
        assert float((x.detach().double() - y.detach()).abs().max() / y.detach().abs().max()) < 2e-5


def test_triton_gradcheck_float64():
    q, k, v, ld, h0 = make(B=1, L=18, H=1, K=2, V=2, seed=3)

    def fn(q, k, v, ld, h0):
        return dla(q, k, v, ld, initial_state=h0, output_final_state=True, chunk_size=16, backend="triton")

    # fast mode (random projections of the Jacobian): the interpreter makes each evaluation slow
    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (q, k, v, ld, h0)], fast_mode=True)


def test_triton_opcheck():
    q, k, v, ld, h0 = make(B=1, L=5, H=2, K=3, V=2, dtype=torch.float32)
    w = torch.rand(1, 5, 2) + 0.1
    leaves = [t.clone().requires_grad_() for t in (q, k, v, ld, h0, w)]
    op = torch.ops.neurostep.decayed_linear_attention_forward.default
    torch.library.opcheck(op, (*leaves[:5], None, 0.5, 16, "triton"))
    torch.library.opcheck(op, (*leaves, 0.5, 16, "triton"))


def test_triton_v_scale_matches_the_reference():
    q, k, v, ld, h0 = make(B=2, L=21, H=2, K=5, V=3, seed=9)
    w = torch.rand(2, 21, 2, dtype=torch.float64) + 0.1
    results = []
    for backend in ("reference", "triton"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, ld, h0, w)]
        o, final = dla(*leaves[:4], v_scale=leaves[5], initial_state=leaves[4], output_final_state=True,
                       chunk_size=16, backend=backend)
        results.append([o, final, *torch.autograd.grad((o.sum(), (final * final).sum()), leaves)])
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_triton_chunk_size_and_interpreter_checks(monkeypatch):
    q, k, v, ld, _ = make(B=1, L=5, H=1, K=2, V=2, dtype=torch.float32)
    with pytest.raises(ValueError, match="power of two >= 16, got 24"):
        dla(q, k, v, ld, chunk_size=24, backend="triton")
    with pytest.raises(ValueError, match="power of two >= 16, got 8"):
        dla(q, k, v, ld, chunk_size=8, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        dla(q, k, v, ld, backend="triton")
