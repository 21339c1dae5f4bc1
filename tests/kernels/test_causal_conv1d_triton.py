"""Triton backend of causal_conv1d, run on CPU under Triton's interpreter with tiny shapes.

TRITON_INTERPRET=1 is set by tests/conftest.py before anything imports triton.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from test_causal_conv1d import channels_last, make, run

from neurostep.kernels.causal_conv1d import causal_conv1d_fn

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("width,activation,init", [(1, None, True), (4, "silu", True), (4, None, False),
                                                   (3, "silu", False)])
def test_triton_matches_reference(width, activation, init):
    # 18 channels and 35 steps span two channel blocks and two time blocks
    x, w, bias, h = make(b=2, d=18, L=35, w=width, init=init, dtype=torch.float32)
    want = run(*(t.double() if t is not None else None for t in (x, w, bias, h)), activation, "reference")
    for a, b in zip(run(x, w, bias, h, activation, "triton"), want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


def test_triton_gradcheck_float64():
    x, w, bias, init = make(b=1, d=2, L=4, w=3)
    fn = lambda *t: causal_conv1d_fn(*t, activation="silu", backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (x, w, bias, init)])


def test_triton_channels_last_matches_reference():
    x, w, bias, h = make(b=2, d=18, L=35, w=4, init=True, dtype=torch.float32)
    want = run(*(t.double() if t is not None else None for t in (x, w, bias, h)), "silu", "reference")
    got = run(channels_last(x), w, bias, h, "silu", "triton")
    assert got[0].stride(1) == 1
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
