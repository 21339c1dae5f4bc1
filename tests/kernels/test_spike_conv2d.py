"""spike_conv2d: the "same" 2-D convolution computed from the nonzeros of its input (event-driven on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neurostep.energy import count
from neurostep.kernels.spike_conv2d import SPIKE_CONV2D, spike_conv2d
from neurostep.kernels.spike_conv2d import cpu as cpu_backend
from neurostep.neuro.synapses import SpikeConv2d


def _spikes(shape, density: float, dtype=torch.float32, counts: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.rand(shape, generator=g) < density).to(dtype)
    if counts:
        x = x * torch.randint(1, 4, shape, generator=g).to(dtype)
    return x


def _grads(fn, x, w, b, g):
    x, w = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    b = None if b is None else b.detach().requires_grad_(True)
    y = fn(x, w, b)
    y.backward(g)
    return y, x.grad, w.grad, (None if b is None else b.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_event_driven_path_matches_the_dense_convolution(dtype, bias, kernel, monkeypatch):
    x = _spikes((3, 5, 7, 6), 0.06, dtype, counts=kernel == 3)
    w = torch.randn(4, 5, kernel, kernel, dtype=dtype)
    b = torch.randn(4, dtype=dtype) if bias else None
    g = torch.randn(3, 4, 7, 6, dtype=dtype)
    calls = []
    for name in ("_forward_pixels", "_weight_grad_pixels"):
        fn = getattr(cpu_backend, name)
        monkeypatch.setattr(cpu_backend, name, lambda *a, _f=fn, _n=name: (calls.append(_n), _f(*a))[1])
    ours = _grads(lambda x, w, b: spike_conv2d(x, w, b), x, w, b, g)
    assert calls == ["_forward_pixels", "_weight_grad_pixels"]      # the sparse kernels ran, once each
    dense = _grads(lambda x, w, b: F.conv2d(x, w, b, padding=kernel // 2), x, w, b, g)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for got, want in zip(ours, dense):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, **tol)


def test_dense_inputs_take_the_dense_convolution(monkeypatch):
    def refuse(*args):
        raise AssertionError("the sparse kernel ran")

    monkeypatch.setattr(cpu_backend, "_forward_pixels", refuse)
    monkeypatch.setattr(cpu_backend, "_weight_grad_pixels", refuse)
    x = _spikes((2, 3, 5, 5), 0.5)
    w, g = torch.randn(4, 3, 3, 3), torch.randn(2, 4, 5, 5)
    for got, want in zip(_grads(lambda x, w, b: spike_conv2d(x, w, b), x, w, None, g),
                         _grads(lambda x, w, b: F.conv2d(x, w, b, padding=1), x, w, None, g)):
        assert (got is None and want is None) or torch.equal(got, want)


def test_reference_backend_and_op_contract():
    x = _spikes((2, 3, 5, 4), 0.05, torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    g = torch.randn(2, 4, 5, 4, dtype=torch.float64)
    ref = _grads(lambda x, w, b: spike_conv2d(x, w, b, backend="reference"), x, w, b, g)
    cpu = _grads(lambda x, w, b: spike_conv2d(x, w, b, backend="cpu"), x, w, b, g)
    for got, want in zip(cpu, ref):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.library.opcheck(SPIKE_CONV2D.forward_op, (x.requires_grad_(True), w.requires_grad_(True),
                                                    b.requires_grad_(True), "cpu"))


def test_bad_input_is_refused_clearly():
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="weight expects 3"):
        spike_conv2d(torch.zeros(1, 2, 5, 5), w)
    with pytest.raises(ValueError, match="odd square kernel"):
        spike_conv2d(torch.zeros(1, 3, 5, 5), torch.randn(4, 3, 2, 2))
    with pytest.raises(TypeError, match="dtype"):
        spike_conv2d(torch.zeros(1, 3, 5, 5, dtype=torch.float64), w)


def test_module_counts_and_runs_as_nn_conv2d():
    torch.manual_seed(0)
    ours = torch.nn.Sequential(SpikeConv2d(6, 8, 3, padding=1, bias=False))
    plain = torch.nn.Sequential(torch.nn.Conv2d(6, 8, 3, padding=1, bias=False))
    plain.load_state_dict(ours.state_dict())
    x = _spikes((2, 6, 9, 9), 0.05)
    torch.testing.assert_close(ours(x), plain(x))
    got, want = count(ours, x), count(plain, x)
    assert got.total.acs == want.total.acs > 0 and got.total.macs == want.total.macs == 0
    assert got.total.spike_nnz == want.total.spike_nnz and not got.unknown_ops
    strided = SpikeConv2d(6, 8, 3, stride=2, padding=1)     # not a "same" convolution: nn.Conv2d's forward
    torch.testing.assert_close(strided(x), F.conv2d(x, strided.weight, strided.bias, stride=2, padding=1))
