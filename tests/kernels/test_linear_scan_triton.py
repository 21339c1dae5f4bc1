"""Triton backend of linear_scan, run on CPU under Triton's interpreter with tiny shapes.

TRITON_INTERPRET=1 is set by tests/conftest.py before anything imports triton.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from test_linear_scan import make, run

from neurostep.kernels.linear_scan import linear_scan

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("shape,with_h0", [((2, 9, 130), True), ((1, 1, 3), False), ((2, 5, 3, 4), True)])
def test_triton_matches_reference(shape, with_h0):
    a, b, h0 = make(shape, dtype=torch.float32)
    h0 = h0 if with_h0 else None
    want = run(a.double(), b.double(), h0.double() if h0 is not None else None, "reference")
    for x, y in zip(run(a, b, h0, "triton"), want):
        torch.testing.assert_close(x.double(), y, rtol=1e-5, atol=1e-5)


def test_triton_gradcheck_float64():
    a, b, h0 = make(shape=(1, 4, 3))
    fn = lambda *t: linear_scan(*t, output_final_state=True, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (a, b, h0)])
