"""The vectorizable float32 exp / log1p of ``neurostep.kernels.numba_exp`` and the softplus and sigmoid
that the numba selective scan builds from them, against float64 libm and torch."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch

from neurostep.kernels.numba_exp import vexp, vexp2_neg, vlog1p_unit
from neurostep.kernels.selective_scan.cpu import _sigmoid, _softplus
from neurostep.kernels.selective_scan.reference import SOFTPLUS_THRESHOLD


@numba.njit
def _exp(x, out):
    for i in range(x.size):
        out[i] = vexp(x[i])


@numba.njit
def _log1p(x, out):
    for i in range(x.size):
        out[i] = vlog1p_unit(x[i])


@numba.njit
def _softplus_all(x, out):
    for i in range(x.size):
        out[i] = _softplus(x[i], np.float32(1.0), np.float32(SOFTPLUS_THRESHOLD))


@numba.njit
def _sigmoid_all(x, out):
    for i in range(x.size):
        out[i] = _sigmoid(x[i], np.float32(1.0))


@numba.njit
def _exp2_neg(x, out):
    for i in range(x.size):
        out[i] = vexp2_neg(x[i])


_KERNELS = (_exp, _log1p, _softplus_all, _sigmoid_all, _exp2_neg)


def _run(kind: int, x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    _KERNELS[kind](x, out)
    return out


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want) / np.maximum(np.abs(want), 1e-300)))


def test_vexp_float32_accuracy_and_range():
    x = np.linspace(-87.0, 88.0, 200_001, dtype=np.float32)
    assert _rel_err(_run(0, x), np.exp(x.astype(np.float64))) < 2e-7
    # clamped outside the normal range: tiny but normal below, huge but finite above; NaN passes
    lo, hi, nan = _run(0, np.array([-200.0, 200.0, np.nan], dtype=np.float32))
    assert 0.0 < lo < 1e-37 and np.isfinite(hi) and hi > 1e38 and np.isnan(nan)


def test_vexp2_neg_float32_accuracy_on_its_range():
    w = np.concatenate([np.linspace(0.0, 126.0, 200_001), [0.5, 1.5, 125.5]]).astype(np.float32)
    got = _run(4, w)
    assert _rel_err(got, np.exp2(-w.astype(np.float64))) < 2e-7
    assert got[0] == 1.0
    assert np.isnan(_run(4, np.array([np.nan], dtype=np.float32))[0])
    # float64 takes the exact power
    w64 = np.array([0.0, 3.25, 100.0])
    np.testing.assert_array_equal(_run(4, w64), 2.0 ** -w64)


def test_vlog1p_unit_float32_accuracy_including_tiny_arguments():
    u = np.concatenate([np.linspace(0.0, 1.0, 100_001), np.logspace(-38, -1, 2_000)]).astype(np.float32)
    want = np.array([math.log1p(float(v)) for v in u])
    got = _run(1, u)
    assert got[0] == 0.0
    # log1p(u) ~ u for tiny u: computing 1 + u first would lose all of it below 6e-8
    assert _rel_err(got[1:], want[1:]) < 3e-7


@pytest.mark.parametrize("kind,fn", [(2, lambda t: torch.nn.functional.softplus(t, threshold=SOFTPLUS_THRESHOLD)),
                                     (3, torch.sigmoid)])
def test_softplus_and_sigmoid_match_torch(kind, fn):
    x = np.concatenate([np.linspace(-30.0, 30.0, 120_001), [-1e4, -100.0, 19.99, 20.0, 20.01, 100.0, 1e4]])
    x = x.astype(np.float32)
    got = _run(kind, x).astype(np.float64)
    want = fn(torch.from_numpy(x).double()).numpy()
    # relative where the value is representable, absolute near 0 (exp(-|x|) is clamped at ~1e-38)
    np.testing.assert_allclose(got, want, rtol=4e-7, atol=1e-37)
    assert np.isnan(_run(kind, np.array([np.nan], dtype=np.float32))[0])
