"""spike_linear: the linear layer computed from the nonzeros of its input (event-driven on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neurostep.energy import count
from neurostep.kernels.spike_linear import MIN_WIDTH, SPIKE_LINEAR, spike_linear
from neurostep.kernels.spike_linear import cpu as cpu_backend
from neurostep.neuro.synapses import SpikeLinear


def _spikes(rows: int, width: int, density: float, dtype=torch.float32, counts: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(rows * 7 + width)
    x = (torch.rand(rows, width, generator=g) < density).to(dtype)
    if counts:   # spike counts of a residual stream: 0, 1, 2, 3
        x = x * torch.randint(1, 4, (rows, width), generator=g).to(dtype)
    return x


def _grads(fn, x, w, b, g):
    x, w = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    b = None if b is None else b.detach().requires_grad_(True)
    y = fn(x, w, b)
    y.backward(g)
    return y, x.grad, w.grad, (None if b is None else b.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("counts", [False, True])
def test_event_driven_path_matches_the_dense_layer(dtype, bias, counts, monkeypatch):
    rows, k, o = 96, 160, MIN_WIDTH
    x = _spikes(rows, k, 0.03, dtype, counts).reshape(4, 24, k)
    w = torch.randn(o, k, dtype=dtype)
    b = torch.randn(o, dtype=dtype) if bias else None
    g = torch.randn(4, 24, o, dtype=dtype)
    calls = []
    for name in ("_forward_rows", "_weight_grad_columns"):
        kernel = getattr(cpu_backend, name)
        monkeypatch.setattr(cpu_backend, name, lambda *a, _k=kernel, _n=name: (calls.append(_n), _k(*a))[1])
    ours = _grads(lambda x, w, b: spike_linear(x, w, b), x, w, b, g)
    assert calls == ["_forward_rows", "_weight_grad_columns"]      # the sparse kernels ran, once each
    dense = _grads(F.linear, x, w, b, g)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for got, want in zip(ours, dense):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, **tol)


def test_dense_inputs_and_narrow_layers_take_the_dense_product(monkeypatch):
    def refuse(*args):
        raise AssertionError("the sparse kernel ran")

    monkeypatch.setattr(cpu_backend, "_forward_rows", refuse)
    monkeypatch.setattr(cpu_backend, "_weight_grad_columns", refuse)
    dense = _spikes(64, 128, 0.5)       # above MAX_DENSITY
    w = torch.randn(128, 128)
    g = torch.randn(64, 128)
    for got, want in zip(_grads(lambda x, w, b: spike_linear(x, w, b, backend="cpu"), dense, w, None, g),
                         _grads(F.linear, dense, w, None, g)):
        assert (got is None and want is None) or torch.equal(got, want)
    narrow = _spikes(64, 32, 0.02)
    y = spike_linear(narrow, torch.randn(16, 32))
    assert y.grad_fn is None and y.shape == (64, 16)


def test_reference_backend_and_op_contract():
    x = _spikes(40, MIN_WIDTH, 0.05, torch.float64)
    w = torch.randn(MIN_WIDTH, MIN_WIDTH, dtype=torch.float64)
    b = torch.randn(MIN_WIDTH, dtype=torch.float64)
    ref = _grads(lambda x, w, b: spike_linear(x, w, b, backend="reference"), x, w, b, torch.ones(40, MIN_WIDTH,
                                                                                                  dtype=torch.float64))
    cpu = _grads(lambda x, w, b: spike_linear(x, w, b, backend="cpu"), x, w, b, torch.ones(40, MIN_WIDTH,
                                                                                            dtype=torch.float64))
    for got, want in zip(cpu, ref):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    args = (x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True), "cpu")
    torch.library.opcheck(SPIKE_LINEAR.forward_op, args)


def test_bad_input_is_refused_clearly():
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="weight expects 8"):
        spike_linear(torch.zeros(3, 5), w)
    with pytest.raises(TypeError, match="dtype"):
        spike_linear(torch.zeros(3, 8, dtype=torch.float64), w)
    with pytest.raises(ValueError, match="shape"):
        spike_linear(torch.zeros(3, 8), w, torch.zeros(5))


def test_counter_counts_it_as_the_linear_layer_it_is():
    """ACs on the binary input's nonzeros and the same spike statistics as nn.Linear: the counter applies
    aten::linear's rule to the op."""
    torch.manual_seed(0)
    ours = torch.nn.Sequential(SpikeLinear(MIN_WIDTH, 2 * MIN_WIDTH))
    plain = torch.nn.Sequential(torch.nn.Linear(MIN_WIDTH, 2 * MIN_WIDTH))
    plain.load_state_dict(ours.state_dict())
    x = _spikes(2 * 8, MIN_WIDTH, 0.05).reshape(2, 8, MIN_WIDTH)
    got, want = count(ours, x), count(plain, x)
    assert got.total.acs == want.total.acs == x.count_nonzero().item() * 2 * MIN_WIDTH
    assert got.total.macs == want.total.macs == 0
    assert got.total.spike_nnz == want.total.spike_nnz and got.total.adds == want.total.adds
    assert not got.unknown_ops
