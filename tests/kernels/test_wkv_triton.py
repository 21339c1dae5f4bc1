"""Triton backend of WKV, run on CPU under Triton's interpreter with tiny shapes.

TRITON_INTERPRET=1 is set by tests/conftest.py before anything imports triton.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from test_wkv import NAMES, _assert_close, _grads, _inputs, _via_autograd_reference, _via_op

from neurostep.kernels.wkv import wkv

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("B,T,C,dtype", [(1, 1, 3, torch.float64), (2, 5, 37, torch.float32),
                                         (1, 4, 5, torch.float64)])
def test_triton_matches_autograd_of_reference(B, T, C, dtype):
    # C = 37: two channel blocks, the second one partly masked
    td, tf, k, v, state = _inputs(B, T, C, dtype=dtype, seed=B + T + C, k_scale=2.0)
    y0, s0, g0 = _grads(_via_autograd_reference, td, tf, k, v, state)
    y1, s1, g1 = _grads(_via_op("triton"), td, tf, k, v, state)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    for name, a, b in zip(NAMES, [y1, *s1, *g1], [y0, *s0, *g0]):
        _assert_close(a, b, what=f"triton {name}", **tol)


def test_triton_fresh_state_large_keys_and_nan():
    td, tf, k, v, state = _inputs(1, 6, 4, dtype=torch.float32, seed=3, with_state=False, k_scale=40.0)
    y, s = wkv(td, tf, k, v, output_final_state=True, backend="triton")
    y_ref, s_ref = wkv(td, tf, k, v, output_final_state=True, backend="cpu")
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(s, s_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    v = v.clone()
    v[0, 2, 1] = float("nan")
    y, _ = wkv(td, tf, k, v, output_final_state=True, backend="triton")
    assert torch.isnan(y[0, 2:, 1]).all() and torch.isfinite(y[0, :2]).all()


def test_triton_bf16_inputs():
    td, tf, k, v, state = _inputs(1, 3, 8, dtype=torch.float32, seed=4)
    y, s = wkv(td, tf, k.bfloat16(), v.bfloat16(), state, output_final_state=True, backend="triton")
    y_ref, _ = wkv(td, tf, k.bfloat16(), v.bfloat16(), state, output_final_state=True, backend="cpu")
    assert y.dtype == torch.bfloat16 and s.aa.dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=1e-2, atol=1e-2)
