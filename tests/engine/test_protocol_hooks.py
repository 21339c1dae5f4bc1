"""Hookable step/scan entry points, the Composite template and the anomaly mode."""

from __future__ import annotations

import pytest
import torch

from neurostep.engine import Composite, Recurrent, detect_anomalies, run_child


class Accumulator(Recurrent):
    """y_t = s_t = s_{t-1} + x_t over dim 0; its scan is the default loop over step."""

    def init_state(self, batch_shape, device=None, dtype=None):
        return torch.zeros(batch_shape, device=device, dtype=dtype)

    def step(self, x_t, state):
        state = state + x_t
        return state, state


class Pair(Composite):
    """Two accumulators in a row: the template runs them as one step or as a scan."""

    def __init__(self):
        super().__init__()
        self.a, self.b = Accumulator(), Accumulator()

    def check_input(self, x, stepping):
        if x.dim() != (1 if stepping else 2):
            raise ValueError("bad rank")

    def advance(self, x, state, stepping):
        sa, sb = state if state is not None else (None, None)
        y, sa = run_child(self.a, x, sa, stepping)
        y, sb = run_child(self.b, y, sb, stepping)
        return y, (sa, sb)


def test_step_hooks_see_each_outermost_call_once():
    acc = Accumulator()
    calls = []
    handle = acc.register_step_hook(pre=lambda m, name, a, k: calls.append(("pre", name)),
                                    post=lambda m, name, a, k, out: calls.append(("post", name, tuple(out[0].shape))))
    acc(torch.ones(4, 2))                        # forward -> scan -> 4 x step: one scan call
    assert calls == [("pre", "scan"), ("post", "scan", (4, 2))]
    calls.clear()
    acc.step(torch.ones(2), acc.init_state((2,)))
    assert calls == [("pre", "step"), ("post", "step", (2,))]
    handle.remove()
    calls.clear()
    acc(torch.ones(3, 2))
    assert calls == []                           # removed


def test_hooks_on_children_of_a_composite_and_always_call():
    pair = Pair()
    seen = []
    for name, module in pair.named_modules():
        if isinstance(module, Recurrent):
            module.register_step_hook(
                post=lambda m, method, a, k, out, name=name: seen.append((name or "pair", method)))
    y, (sa, sb) = pair.scan(torch.ones(3, 2))
    assert torch.equal(y[:, 0], torch.tensor([1.0, 3.0, 6.0]))
    assert seen == [("a", "scan"), ("b", "scan"), ("pair", "scan")]
    seen.clear()
    y_t, _ = pair.step(torch.ones(2), None)      # fresh child states from init_state
    assert torch.equal(y_t, torch.ones(2)) and seen == [("a", "step"), ("b", "step"), ("pair", "step")]
    failures = []
    pair.register_step_hook(post=lambda m, method, a, k, out: failures.append(out), always_call=True)
    with pytest.raises(ValueError, match="bad rank"):
        pair.scan(torch.ones(2))
    assert failures == [None]


def test_composite_scan_equals_steps():
    pair = Pair()
    x = torch.randn(5, 3)
    y, state = pair.scan(x)
    s, steps = None, []
    for t in range(5):
        y_t, s = pair.step(x[t], s)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps), y)
    torch.testing.assert_close(s[1], state[1])


def test_register_step_hook_needs_a_hook():
    with pytest.raises(ValueError, match="needs a pre hook"):
        Accumulator().register_step_hook()


def test_detect_anomalies_names_the_layer():
    from neurostep.models import create_model

    torch.manual_seed(0)
    model = create_model("spikformer_tiny", img_size=16, T=2).eval()
    x = torch.rand(1, 3, 16, 16)
    with detect_anomalies(model):
        model(x)                                  # finite input: nothing raised
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(FloatingPointError, match=r"patch_embed\.stages\.0\.lif .*non-finite state.*already non-finite"):
        with detect_anomalies(model):
            model(x)
    model(x)                                      # hooks are gone after the block
    with pytest.raises(TypeError, match="nn.Module"):
        detect_anomalies("model")


def test_detect_anomalies_in_a_state_space_scan_and_a_wkv_state():
    from neurostep.models import create_mixer

    torch.manual_seed(0)
    x = torch.randn(1, 6, 8)
    x[0, 2, 0] = float("inf")
    for name, layer in (("mamba", "Mamba"), ("rwkv_timemix", "SpikingTimeMix")):
        mixer = create_mixer(name, 8)
        with pytest.raises(FloatingPointError, match=rf"<model> \({layer}\)\.scan produced a non-finite"):
            with detect_anomalies(mixer):
                mixer(x)


def test_hooked_blocks_compile_fullgraph():
    from neurostep.neuro import LIF

    lif = LIF()
    rates = []
    lif.register_step_hook(post=lambda m, method, a, k, out: rates.append(method))
    x = torch.rand(4, 8) * 3
    compiled = torch.compile(lambda t: LIF()(t), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), LIF()(x))
    lif(x)
    assert rates == ["scan"]
