"""Triton backend of the selective scan, run on CPU under Triton's interpreter with tiny shapes.

TRITON_INTERPRET=1 is set by tests/conftest.py before anything imports triton.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from test_selective_scan import assert_all_close, channels_last, make_inputs, run

from neurostep.kernels.selective_scan import selective_scan_fn

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("bmode,cmode,extras", [("const", "step", False), ("group", "const", True),
                                                ("step", "group", True)])
def test_triton_matches_reference(bmode, cmode, extras):
    # L = 35 crosses a checkpoint chunk boundary (32); 18 channels span two channel blocks (16)
    inputs = make_inputs(b=2, d=18, L=35, n=3, bmode=bmode, cmode=cmode, groups=3, extras=extras,
                         dtype=torch.float32)
    want = run({k: (v.double() if v is not None else None) for k, v in inputs.items()}, "reference", softplus=extras)
    assert_all_close(run(inputs, "triton", softplus=extras), want, rtol=2e-4, atol=2e-4)


def test_triton_reads_channels_last_inputs():
    inputs = make_inputs(b=1, d=18, L=5, n=2, dtype=torch.float32)
    last = dict(inputs, **{name: channels_last(inputs[name]) for name in ("u", "delta", "z")})
    got = run(last, "triton")
    assert got[0].transpose(1, 2).is_contiguous()
    assert_all_close(got, run(inputs, "reference"), rtol=1e-5, atol=1e-5)


def test_triton_length_one_and_half_inputs():
    inputs = make_inputs(b=1, d=3, L=1, n=2, dtype=torch.float32)
    assert_all_close(run(inputs, "triton"), run(inputs, "reference"), rtol=1e-5, atol=1e-5)
    half = make_inputs(b=1, d=3, L=4, n=2, dtype=torch.bfloat16)
    out, last = run(half, "triton", grads=False)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    want = run({k: v.float() for k, v in half.items()}, "reference", grads=False)
    torch.testing.assert_close(last, want[1], rtol=1e-5, atol=1e-5)


def test_triton_gradcheck_float64():
    inputs = make_inputs(b=1, d=2, L=3, n=2, bmode="step", cmode="const")
    names = list(inputs)

    def fn(*ts):
        kw = dict(zip(names, ts))
        init = kw.pop("initial_state")
        return selective_scan_fn(**kw, delta_softplus=True, return_last_state=True, initial_state=init,
                                 backend="triton")

    assert torch.autograd.gradcheck(fn, [v.requires_grad_() for v in inputs.values()], atol=1e-6)
