"""spike_linear and spike_conv2d: a linear layer and a "same" convolution computed from the nonzeros of
their spike input (event-driven on CPU), against torch's dense layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neurostep.energy import count
from neurostep.kernels.spike_conv2d import SPIKE_CONV2D, spike_conv2d
from neurostep.kernels.spike_conv2d import cpu as conv_cpu
from neurostep.kernels.spike_linear import MIN_WIDTH, SPIKE_LINEAR, spike_linear
from neurostep.kernels.spike_linear import cpu as linear_cpu
from neurostep.neuro.synapses import SpikeConv2d, SpikeLinear

SPARSE_KERNELS = {"linear": (linear_cpu, ("_forward_rows", "_weight_grad_columns")),
                  "conv": (conv_cpu, ("_forward_pixels", "_weight_grad_pixels"))}


def _spikes(shape, density: float, dtype=torch.float32, counts: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.rand(shape, generator=g) < density).to(dtype)
    if counts:   # spike counts of a residual stream: 0, 1, 2, 3
        x = x * torch.randint(1, 4, shape, generator=g).to(dtype)
    return x


def _grads(fn, x, w, b, g):
    x, w = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    b = None if b is None else b.detach().requires_grad_(True)
    y = fn(x, w, b)
    y.backward(g)
    return y, x.grad, w.grad, (None if b is None else b.grad)


def _record_sparse_kernels(monkeypatch, op: str, calls: list[str] | None) -> None:
    """Wrap the op's sparse kernels so that they append their names to ``calls``, or refuse to run (None)."""
    module, names = SPARSE_KERNELS[op]
    for name in names:
        kernel = getattr(module, name)

        def wrapper(*args, _k=kernel, _n=name):
            if calls is None:
                raise AssertionError(f"the sparse kernel {_n} ran")
            calls.append(_n)
            return _k(*args)

        monkeypatch.setattr(module, name, wrapper)


def _assert_all_close(ours, dense, dtype) -> None:
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for got, want in zip(ours, dense):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, **tol)


# -- spike_linear -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("counts", [False, True])
def test_linear_event_driven_path_matches_the_dense_layer(dtype, bias, counts, monkeypatch):
    k, o = 160, MIN_WIDTH
    x = _spikes((96, k), 0.03, dtype, counts).reshape(4, 24, k)
    w = torch.randn(o, k, dtype=dtype)
    b = torch.randn(o, dtype=dtype) if bias else None
    g = torch.randn(4, 24, o, dtype=dtype)
    calls: list[str] = []
    _record_sparse_kernels(monkeypatch, "linear", calls)
    ours = _grads(lambda x, w, b: spike_linear(x, w, b), x, w, b, g)
    assert calls == list(SPARSE_KERNELS["linear"][1])      # the sparse kernels ran, once each
    _assert_all_close(ours, _grads(F.linear, x, w, b, g), dtype)


@pytest.mark.parametrize("dtype, width", [(torch.float32, 160), (torch.float32, 161), (torch.float64, 161)])
def test_row_lists_list_every_nonzero_in_column_order(dtype, width):
    # negative values, NaN, a tiny value and -0.0 (a zero), at a row's ends too, are listed as numpy lists them
    x = _spikes((40, width), 0.03, dtype).numpy()
    x[0, 0], x[0, 1], x[1, width - 1], x[2, 5], x[3, 7], x[4, 8] = 2.5, -1.0, 3.0, float("nan"), -0.0, 1e-30
    rows, cols = (x != 0).nonzero()
    indptr, idx, val = np.empty(41, np.int64), np.empty(len(cols) + 3, np.int32), np.empty(len(cols) + 3, x.dtype)
    assert linear_cpu.row_lists(x, indptr, idx, val)
    assert indptr.tolist() == [0, *(x != 0).sum(1).cumsum().tolist()]
    assert idx[:len(cols)].tolist() == cols.tolist()
    expected = x[rows, cols]
    assert ((val[:len(cols)] == expected) | (np.isnan(val[:len(cols)]) & np.isnan(expected))).all()
    # lists that do not fit are refused: the caller then takes the dense product
    assert not linear_cpu.row_lists(x, indptr, idx[:len(cols) - 1], val[:len(cols) - 1])


@pytest.mark.parametrize("op", ["linear", "conv"])
def test_the_backward_reuses_the_forwards_event_lists(op, monkeypatch):
    # the forward lists the nonzeros of x once; the weight gradient sums over those lists, not over new ones
    module = linear_cpu if op == "linear" else conv_cpu
    calls: list[int] = []
    row_lists = module.row_lists
    monkeypatch.setattr(module, "row_lists", lambda *a: calls.append(1) or row_lists(*a))
    if op == "linear":
        x, w = _spikes((64, 160), 0.03).reshape(4, 16, 160), torch.randn(MIN_WIDTH, 160)
        fn, dense = spike_linear, F.linear
    else:   # channels-last: its pixels are listed as rows
        x = _spikes((2, 8, 6, 6), 0.05).contiguous(memory_format=torch.channels_last)
        w = torch.randn(4, 8, 3, 3)
        fn, dense = spike_conv2d, (lambda x, w, b: F.conv2d(x, w, b, padding=1))
    b = torch.randn(w.shape[0])
    g = torch.randn_like(dense(x, w, b))
    ours = _grads(fn, x, w, b, g)
    assert calls == [1]
    _assert_all_close(ours, _grads(dense, x, w, b, g), torch.float32)


def test_linear_dense_inputs_and_narrow_layers_take_the_dense_product(monkeypatch):
    _record_sparse_kernels(monkeypatch, "linear", None)
    dense = _spikes((64, 128), 0.5)       # above MAX_DENSITY
    w, g = torch.randn(128, 128), torch.randn(64, 128)
    for got, want in zip(_grads(lambda x, w, b: spike_linear(x, w, b, backend="cpu"), dense, w, None, g),
                         _grads(F.linear, dense, w, None, g)):
        assert (got is None and want is None) or torch.equal(got, want)
    y = spike_linear(_spikes((64, 32), 0.02), torch.randn(16, 32))   # narrow: F.linear itself, no op
    assert y.grad_fn is None and y.shape == (64, 16)


def test_linear_reference_backend_and_op_contract():
    x = _spikes((40, MIN_WIDTH), 0.05, torch.float64)
    w = torch.randn(MIN_WIDTH, MIN_WIDTH, dtype=torch.float64)
    b = torch.randn(MIN_WIDTH, dtype=torch.float64)
    g = torch.ones(40, MIN_WIDTH, dtype=torch.float64)
    ref = _grads(lambda x, w, b: spike_linear(x, w, b, backend="reference"), x, w, b, g)
    _assert_all_close(_grads(lambda x, w, b: spike_linear(x, w, b, backend="cpu"), x, w, b, g), ref, torch.float64)
    torch.library.opcheck(SPIKE_LINEAR.forward_op, (x.requires_grad_(True), w.requires_grad_(True),
                                                    b.requires_grad_(True), "cpu"))


def test_linear_bad_input_is_refused_clearly():
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="weight expects 8"):
        spike_linear(torch.zeros(3, 5), w)
    with pytest.raises(TypeError, match="dtype"):
        spike_linear(torch.zeros(3, 8, dtype=torch.float64), w)
    with pytest.raises(ValueError, match="shape"):
        spike_linear(torch.zeros(3, 8), w, torch.zeros(5))


def test_linear_counter_counts_it_as_the_linear_layer_it_is():
    """ACs on the binary input's nonzeros and the same spike statistics as nn.Linear: the counter applies
    aten::linear's rule to the op."""
    torch.manual_seed(0)
    ours = torch.nn.Sequential(SpikeLinear(MIN_WIDTH, 2 * MIN_WIDTH))
    plain = torch.nn.Sequential(torch.nn.Linear(MIN_WIDTH, 2 * MIN_WIDTH))
    plain.load_state_dict(ours.state_dict())
    x = _spikes((2 * 8, MIN_WIDTH), 0.05).reshape(2, 8, MIN_WIDTH)
    got, want = count(ours, x), count(plain, x)
    assert got.total.acs == want.total.acs == x.count_nonzero().item() * 2 * MIN_WIDTH
    assert got.total.macs == want.total.macs == 0
    assert got.total.spike_nnz == want.total.spike_nnz and got.total.adds == want.total.adds
    assert not got.unknown_ops


# -- spike_conv2d -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_conv_event_driven_path_matches_the_dense_convolution(dtype, bias, kernel, monkeypatch):
    x = _spikes((3, 5, 7, 6), 0.06, dtype, counts=kernel == 3)
    w = torch.randn(4, 5, kernel, kernel, dtype=dtype)
    b = torch.randn(4, dtype=dtype) if bias else None
    g = torch.randn(3, 4, 7, 6, dtype=dtype)
    calls: list[str] = []
    _record_sparse_kernels(monkeypatch, "conv", calls)
    ours = _grads(lambda x, w, b: spike_conv2d(x, w, b), x, w, b, g)
    assert calls == list(SPARSE_KERNELS["conv"][1])        # the sparse kernels ran, once each
    _assert_all_close(ours, _grads(lambda x, w, b: F.conv2d(x, w, b, padding=kernel // 2), x, w, b, g), dtype)


def test_conv_dense_inputs_take_the_dense_convolution(monkeypatch):
    _record_sparse_kernels(monkeypatch, "conv", None)
    x = _spikes((2, 3, 5, 5), 0.5)
    w, g = torch.randn(4, 3, 3, 3), torch.randn(2, 4, 5, 5)
    for got, want in zip(_grads(lambda x, w, b: spike_conv2d(x, w, b), x, w, None, g),
                         _grads(lambda x, w, b: F.conv2d(x, w, b, padding=1), x, w, None, g)):
        assert (got is None and want is None) or torch.equal(got, want)


def test_conv_reference_backend_and_op_contract():
    x = _spikes((2, 3, 5, 4), 0.05, torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    g = torch.randn(2, 4, 5, 4, dtype=torch.float64)
    ref = _grads(lambda x, w, b: spike_conv2d(x, w, b, backend="reference"), x, w, b, g)
    _assert_all_close(_grads(lambda x, w, b: spike_conv2d(x, w, b, backend="cpu"), x, w, b, g), ref, torch.float64)
    torch.library.opcheck(SPIKE_CONV2D.forward_op, (x.requires_grad_(True), w.requires_grad_(True),
                                                    b.requires_grad_(True), "cpu"))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_conv_reads_and_returns_channels_last(backend, monkeypatch):
    x = _spikes((3, 5, 7, 6), 0.06, torch.float64)
    w, b = torch.randn(4, 5, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    g = torch.randn(3, 4, 7, 6, dtype=torch.float64)
    calls: list[str] = []
    if backend == "cpu":
        _record_sparse_kernels(monkeypatch, "conv", calls)
    want = _grads(lambda x, w, b: F.conv2d(x, w, b, padding=1), x, w, b, g)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        got = _grads(lambda x, w, b: spike_conv2d(x, w, b, backend=backend), inp, w, b, g)
        _assert_all_close(got, want, torch.float64)
        y, dx = got[0], got[1]
        assert y.is_contiguous(memory_format=torch.channels_last)     # the op's output layout
        assert dx.stride() == inp.stride()                            # the input's gradient laid out as x
    assert calls == list(SPARSE_KERNELS["conv"][1]) * 2 if backend == "cpu" else not calls
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    torch.library.opcheck(SPIKE_CONV2D.forward_op, (x_cl, w.requires_grad_(True), b.requires_grad_(True), backend))


def test_conv_bad_input_is_refused_clearly():
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="weight expects 3"):
        spike_conv2d(torch.zeros(1, 2, 5, 5), w)
    with pytest.raises(ValueError, match="odd square kernel"):
        spike_conv2d(torch.zeros(1, 3, 5, 5), torch.randn(4, 3, 2, 2))
    with pytest.raises(TypeError, match="dtype"):
        spike_conv2d(torch.zeros(1, 3, 5, 5, dtype=torch.float64), w)


def test_conv_module_counts_and_runs_as_nn_conv2d():
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
