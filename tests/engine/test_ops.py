"""The one op contract (engine/ops.py): what define_op builds, checked on a toy op and on every fused op."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import neurostep.kernels  # noqa: F401  (registers the fused ops)
from neurostep.engine import KERNELS, BackendUnavailableError, BackwardCall, define_op, differentiated
from neurostep.kernels.lif import LIF


def _forward(impl, x: torch.Tensor, h0: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return impl.forward(x, h0, scale)


def _forward_fake(x, h0, scale, *, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape[1:])


def _backward(impl, call: BackwardCall):
    g_out, g_last = call.grads
    (x,) = call.saved
    return impl.backward(g_out, g_last, x, call.attrs["scale"])


def _backward_fake(call: BackwardCall):
    (x,) = call.saved
    return x.new_empty(x.shape), x.new_empty(x.shape[1:])


class _ScaledCumsum:
    """Toy backend: y_t = scale * (h0 + sum_{s<=t} x_s), last = y_{T-1}."""

    @staticmethod
    def forward(x, h0, scale):
        y = scale * (x.cumsum(0) + (0 if h0 is None else h0))
        return y, y[-1].clone()

    @staticmethod
    def backward(g_out, g_last, x, scale):
        g = torch.zeros_like(x) if g_out is None else g_out.clone()
        if g_last is not None:
            g[-1] += g_last
        gx = scale * g.flip(0).cumsum(0).flip(0)
        return gx, scale * g.sum(0)


TOY = define_op(
    "test_scaled_cumsum",
    backends={"reference": __name__ + "._TOY_BACKEND"},
    forward=_forward, forward_fake=_forward_fake, backward=_backward, backward_fake=_backward_fake,
    save=lambda args, outputs: (args["x"],),
)
_TOY_BACKEND = _ScaledCumsum


@pytest.fixture(autouse=True)
def _toy_module(monkeypatch):
    # the registry imports backends by module path: expose the toy backend as a module attribute path
    import sys
    import types

    module = types.ModuleType(__name__ + "._TOY_BACKEND")
    module.forward, module.backward = _ScaledCumsum.forward, _ScaledCumsum.backward
    monkeypatch.setitem(sys.modules, __name__ + "._TOY_BACKEND", module)


def test_schema_is_read_from_the_adapter():
    assert TOY.tensor_names == ("x", "h0") and TOY.attr_names == ("scale",)
    fwd = str(torch.ops.neurostep.test_scaled_cumsum_forward.default._schema)
    bwd = str(torch.ops.neurostep.test_scaled_cumsum_backward.default._schema)
    assert "Tensor x, Tensor? h0, float scale, str backend) -> (Tensor, Tensor)" in fwd
    assert "Tensor?[] grads, Tensor?[] saved, bool[] needs_input_grad, float scale, str backend) -> Tensor[]" in bwd


def test_gradients_flow_from_every_entry_point():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: TOY(a, b, 0.5, backend="reference"), (x, h0))
    # the op itself carries the autograd formula: a caller of torch.ops gets gradients too
    y, last = torch.ops.neurostep.test_scaled_cumsum_forward(x, h0, 0.5, "reference")
    (gx,) = torch.autograd.grad(last.sum(), x)
    torch.testing.assert_close(gx, torch.full_like(x, 0.5))
    # an input that needs no gradient gets None, not a tensor
    x2 = x.detach().requires_grad_()
    y, _ = TOY(x2, h0.detach(), 2.0, backend="reference")
    gx2, gh = torch.autograd.grad(y.sum(), (x2, h0), allow_unused=True)
    assert gh is None and gx2 is not None


def test_opcheck_fake_and_meta():
    x = torch.randn(4, 2, requires_grad=True)
    torch.library.opcheck(TOY.forward_op, (x, None, 1.5, "reference"))
    y, last = TOY(torch.empty(4, 2, device="meta"), None, 1.5, backend="reference")
    assert y.device.type == "meta" and last.shape == (2,)


def test_compiled_graph_matches_eager():
    x = torch.randn(6, 3, requires_grad=True)

    def f(x):
        y, last = TOY(x, None, 0.5, backend="reference")
        return (y.sin().sum() + last.sum())

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    (g_c,) = torch.autograd.grad(compiled(x), x)
    (g_e,) = torch.autograd.grad(f(x), x)
    torch.testing.assert_close(g_c, g_e)


def test_backend_choice_is_checked_once_and_clearly():
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        TOY(x, None, 1.0, backend="gpu")
    with pytest.raises(ValueError, match=r"one of \('reference',\), got 'cpu'"):
        TOY(x, None, 1.0, backend="cpu")
    with pytest.raises(BackendUnavailableError, match="does not run on device 'meta'"):
        LIF.choose_backend("cpu", torch.device("meta"))


def test_tensors_must_come_before_scalars():
    def bad(impl, x: torch.Tensor, scale: float, h0: torch.Tensor | None) -> torch.Tensor: ...

    with pytest.raises(TypeError, match="tensors before its scalars"):
        define_op("test_bad_order", backends={}, forward=bad, forward_fake=bad, backward=bad, backward_fake=bad,
                  save=lambda a, o: ())


@pytest.mark.parametrize("op", ["lif", "linear_scan", "causal_conv1d", "selective_scan", "wkv", "spike_linear",
                                "spike_conv2d"])
def test_every_fused_op_is_defined_by_the_engine(op):
    """Each op has the forward/backward pair with the one backward schema and an autograd kernel."""
    importlib.import_module(f"neurostep.kernels.{op}")
    assert op in KERNELS.ops()
    bwd = str(getattr(torch.ops.neurostep, f"{op}_backward").default._schema)
    assert "(Tensor?[] grads, Tensor?[] saved, bool[] needs_input_grad," in bwd and bwd.endswith("-> Tensor[]")
    forward = getattr(torch.ops.neurostep, f"{op}_forward").default
    assert torch._C._dispatch_has_kernel_for_dispatch_key(forward.name(), "Autograd")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(forward.name(), "Meta")


_READS = ("item", "__float__", "__int__", "__bool__", "tolist", "numpy", "cpu")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_lif_reads_no_tensor_value(backend, monkeypatch):
    """tau_inv and v_threshold stay tensors through forward and backward: the op reads no value back
    (on a GPU each read would wait for the device). Reading methods raise for the duration of the op."""
    if backend == "triton":
        pytest.importorskip("triton")
    x = torch.randn(6, 5, requires_grad=True)
    v0 = torch.zeros(5, requires_grad=True)
    tau = torch.tensor(0.5, requires_grad=True)
    vth = torch.tensor(0.8, requires_grad=True)
    args = (x, v0, None, tau, vth, 0.0, True, True, False, "sigmoid", 4.0, "spikingjelly", "subtract", 0.0, 0.0, True)
    expected = LIF(*args, backend="reference")
    expected_grads = torch.autograd.grad(expected[0].sum() + expected[3].sum(), (x, v0, tau, vth))

    def refuse(self, *a, **k):
        raise AssertionError("the op read a tensor value")

    with monkeypatch.context() as m:
        if backend == "reference":  # the triton interpreter itself copies tensors to numpy to run kernels
            for name in _READS:
                m.setattr(torch.Tensor, name, refuse)
        else:
            for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
                m.setattr(torch.Tensor, name, refuse)
        out = LIF(*args, backend=backend)
        grads = torch.autograd.grad(out[0].sum() + out[3].sum(), (x, v0, tau, vth))
    torch.testing.assert_close(out[0], expected[0])
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


class _Recorder(TorchDispatchMode):
    """Records the name of every op dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_an_unobserved_call_runs_the_adapters_directly_with_the_same_results():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y, last = TOY(x, h0, 0.5, backend="reference")
    assert type(y.grad_fn).__name__ == "test_scaled_cumsum_direct_functionBackward"
    y_d, last_d = torch.ops.neurostep.test_scaled_cumsum_forward(x, h0, 0.5, "reference")
    assert type(y_d.grad_fn).__name__ == "test_scaled_cumsum_functionBackward"
    torch.testing.assert_close((y, last), (y_d, last_d), rtol=0, atol=0)
    g = torch.randn_like(y)
    direct = torch.autograd.grad((y * g).sum() + last.sum(), (x, h0))
    dispatched = torch.autograd.grad((y_d * g).sum() + last_d.sum(), (x, h0))
    torch.testing.assert_close(direct, dispatched, rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda a, b: TOY(a, b, 0.5, backend="reference"), (x, h0))
    with torch.no_grad():
        y_ng, _ = TOY(x, h0, 0.5, backend="reference")
    assert y_ng.grad_fn is None and torch.equal(y_ng, y.detach())


def test_the_direct_path_resolves_the_backend_module_once_per_call(monkeypatch):
    resolved = []
    resolve = KERNELS.resolve
    monkeypatch.setattr(KERNELS, "resolve", lambda *a: resolved.append(a) or resolve(*a))
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y, last = TOY(x, None, 0.5, backend="reference")
    (y.sum() + last.sum()).backward()
    assert len(resolved) == 1 and x.grad is not None   # the backward reused the forward's module
    with torch.no_grad():
        TOY(x, None, 0.5, backend="reference")
    assert len(resolved) == 2


def test_an_absent_output_is_none_directly_and_an_empty_tensor_through_the_dispatcher():
    """A forward adapter returns None for an output the call does not produce (here the lif op without v_seq,
    adaptation or a saved h on the cpu backend): the direct path makes no tensor for it, the custom op (whose
    schema has a Tensor there) an empty one of the input's dtype, as the fake does."""
    schema = str(torch.ops.neurostep.lif_forward.default._schema)
    assert schema.endswith("-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
    x = torch.randn(4, 3, requires_grad=True)
    args = (x, None, None, torch.tensor(0.5), torch.tensor(1.0), 0.0, True, True, False, "sigmoid", 4.0,
            "spikingjelly", "subtract", 0.0, 0.0, False)
    direct = LIF(*args, backend="cpu")
    assert [t is None for t in direct] == [False, False, True, True, True, True]
    dispatched = torch.ops.neurostep.lif_forward(*args, "cpu")
    assert all(t.numel() == 0 and t.dtype == x.dtype for t in dispatched[2:])
    torch.testing.assert_close(direct[0], dispatched[0], rtol=0, atol=0)
    g_direct = torch.autograd.grad(direct[0].sum() + direct[1].sum(), x)[0]
    g_dispatched = torch.autograd.grad(dispatched[0].sum() + dispatched[1].sum(), x)[0]
    torch.testing.assert_close(g_direct, g_dispatched, rtol=0, atol=0)


def test_a_dispatch_mode_still_sees_one_op_each_way():
    x = torch.randn(4, 2, requires_grad=True)
    with _Recorder() as rec:
        y, _ = TOY(x, None, 1.5, backend="reference")
        y.sum().backward()
    assert "neurostep.test_scaled_cumsum_forward.default" in rec.seen
    assert "neurostep.test_scaled_cumsum_backward.default" in rec.seen
    # a mode that starts between the forward and the backward still sees the backward op
    x.grad = None
    y, _ = TOY(x, None, 1.5, backend="reference")
    with _Recorder() as rec:
        y.sum().backward()
    assert "neurostep.test_scaled_cumsum_backward.default" in rec.seen
    torch.testing.assert_close(x.grad, torch.tensor([[6.0, 6.0], [4.5, 4.5], [3.0, 3.0], [1.5, 1.5]]))


def test_the_profiler_sees_the_op_by_name():
    x = torch.randn(4, 2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        TOY(x, None, 1.5, backend="reference")
    assert any(e.name == "neurostep::test_scaled_cumsum_forward" for e in prof.events())


def test_differentiated_means_grad_mode_and_a_tensor_that_requires_grad():
    leaf, plain = torch.ones(2, requires_grad=True), torch.ones(2)
    assert differentiated(plain, None, 3.0, leaf)
    assert not differentiated(plain, None, 3.0)
    with torch.no_grad():
        assert not differentiated(leaf)
    with torch.inference_mode():
        assert not differentiated(leaf)
