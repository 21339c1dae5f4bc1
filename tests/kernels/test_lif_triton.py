"""Triton backend of the LIF scan, run on CPU under Triton's interpreter with tiny shapes.

TRITON_INTERPRET=1 is set by tests/conftest.py before anything imports triton.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from test_lif import SJ_CASES, SNN_CASES, _assert_match, _inputs, _run_pair

from neurostep.kernels.lif import SURROGATES, lif_scan

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("case", SJ_CASES, ids=lambda c: "-".join(map(str, c[1:])))
def test_triton_spikingjelly_flags(case):
    _, vr, dec, det, adaptive, sur = case
    x, v0, a0 = _inputs(4, (5,), torch.float32, adaptive=adaptive)
    kw = dict(v_reset=vr, decay_input=dec, detach_reset=det, surrogate=sur)
    if adaptive:
        kw.update(adapt_rho=0.8, adapt_beta=0.25)
    _assert_match(*_run_pair("triton", x, v0, a0, torch.float32, **kw), tol=1e-6, out_dtype=torch.float32)


@pytest.mark.parametrize("case", SNN_CASES, ids=lambda c: "-".join(c[1:]))
def test_triton_snntorch_flags(case):
    _, reset, sur = case
    x, v0, _ = _inputs(4, (5,), torch.float32, adaptive=False, seed=1)
    out = _run_pair("triton", x, v0, None, torch.float32, convention="snntorch", snn_reset=reset, surrogate=sur)
    _assert_match(*out, tol=1e-6, out_dtype=torch.float32)


def test_triton_float64_adaptive_soft():
    x, v0, a0 = _inputs(5, (3,), torch.float64, adaptive=True, seed=2)
    out = _run_pair("triton", x, v0, a0, torch.float64, v_reset=None, adapt_rho=0.9, adapt_beta=0.3)
    _assert_match(*out, tol=1e-12, out_dtype=torch.float64)


@pytest.mark.parametrize("name", list(SURROGATES))
def test_triton_every_surrogate(name):
    x, v0, _ = _inputs(3, (4,), torch.float64, adaptive=False, seed=3)
    out = _run_pair("triton", x, v0, None, torch.float64, surrogate=name, decay_input=False)
    _assert_match(*out, tol=1e-12, out_dtype=torch.float64)


@pytest.mark.parametrize("T,lanes", [(1, (3,)), (2, (300,))])
def test_triton_awkward_shapes(T, lanes):
    # 300 lanes: two programs, the second one partly masked
    x, v0, a0 = _inputs(T, lanes, torch.float32, adaptive=True, seed=4)
    out = _run_pair("triton", x, v0, a0, torch.float32, adapt_rho=0.5, adapt_beta=0.2)
    _assert_match(*out, tol=1e-6, out_dtype=torch.float32)


def test_triton_noncontiguous_and_half():
    base = torch.randn(6, 3, generator=torch.Generator().manual_seed(5)) * 1.5
    x = base.t().to(torch.float16)  # (T=3, 6), non-contiguous, fp16
    (ref_s, ref_v), _ = lif_scan(x, tau_inv=0.5, v_threshold=1.0, return_v_seq=True, backend="reference")
    (spikes, v_seq), _ = lif_scan(x, tau_inv=0.5, v_threshold=1.0, return_v_seq=True, backend="triton")
    assert spikes.dtype == torch.float16
    assert torch.equal(spikes, ref_s) and torch.equal(v_seq, ref_v)


def test_triton_nan_propagates():
    x = torch.randn(4, 5)
    x[1, 2] = float("nan")
    (_, v_seq), _ = lif_scan(x, tau_inv=0.5, v_threshold=1.0, return_v_seq=True, backend="triton")
    assert torch.isnan(v_seq[1:, 2]).all()
    assert not torch.isnan(v_seq[:, [0, 1, 3, 4]]).any()
