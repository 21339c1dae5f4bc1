"""Triton backend of linear_scan, run on CPU under Triton's interpreter with tiny shapes.

TRITON_INTERPRET must be set before triton is imported, hence at the top of this module.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from test_linear_scan import make, run  # noqa: E402

from neurostep.kernels.linear_scan import linear_scan  # noqa: E402

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
    fn = lambda *t: linear_scan(*t, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (a, b, h0)])
