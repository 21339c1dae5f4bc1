"""engine.fill.filled: the values, layouts and dtypes it gives, and which path fills them."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from neurostep.engine.fill import filled


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_values_shape_and_dtype(dtype):
    like = torch.zeros(3, dtype=dtype)
    t = filled(like, (4, 70000), -0.5)
    assert t.shape == (4, 70000) and t.dtype == dtype and t.device == like.device
    assert t.is_contiguous()
    assert torch.equal(t, torch.full((4, 70000), -0.5, dtype=dtype))


def test_strided_layout_is_kept():
    like = torch.zeros(1)
    shape = (2, 3, 5, 7)
    strides = torch.empty(shape).to(memory_format=torch.channels_last).stride()
    t = filled(like, shape, 1.25, strides)
    assert t.stride() == strides
    assert torch.equal(t, torch.full(shape, 1.25))


def test_cpu_float_fill_does_not_use_torch_fill(monkeypatch):
    def no_fill(self, value):
        raise AssertionError("torch's fill_ was called")

    monkeypatch.setattr(torch.Tensor, "fill_", no_fill)
    assert torch.equal(filled(torch.zeros(1), (65536,), 2.0), torch.full((65536,), 2.0))
    # bfloat16 has no numpy dtype: torch fills it, which the patched fill_ reports
    with pytest.raises(AssertionError, match="fill_ was called"):
        filled(torch.zeros(1, dtype=torch.bfloat16), (8,), 2.0)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_observed_calls_fill_through_torch():
    # a dispatch mode (the op counter, fake tensors) sees the fill as a torch op
    with _Recorder() as rec:
        t = filled(torch.zeros(1), (16,), 3.0)
    assert any(name.startswith("fill") for name in rec.ops), rec.ops
    assert torch.equal(t, torch.full((16,), 3.0))


def test_meta_device():
    t = filled(torch.empty(1, device="meta"), (5, 6), 0.0)
    assert t.device.type == "meta" and t.shape == (5, 6)


def test_inference_mode():
    with torch.inference_mode():
        t = filled(torch.zeros(1), (70000,), 1.5)
    assert t.is_inference() and torch.equal(t, torch.full((70000,), 1.5))
