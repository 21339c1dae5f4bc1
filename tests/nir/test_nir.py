"""neurostep -> NIR -> neurostep: exact round trips, refusals, HDF5 files, energy counting, CubaLIF."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from neurostep.energy import count
from neurostep.layers.norm import BatchNormTokens
from neurostep.neuro import IF, LIF, AdaptiveLIF, CubaLIF, ParametricLIF, SpikformerBlock, SpikingMLP
from neurostep.neuro.spikformer import ConvBNLIF, Spikformer
from neurostep.nir import (
    NIRNetwork,
    NIRUnsupportedError,
    RecurrentSpiking,
    SampleWise,
    SumPool2d,
    export,
    load,
)

nir = pytest.importorskip("nir")

T, B = 10, 3


def _active(spikes: torch.Tensor) -> None:
    rate = float(spikes.detach().float().mean())
    assert 0.02 < rate < 0.98, f"spike rate {rate} makes the comparison vacuous"


def _scaled(module: nn.Module, factor: float) -> nn.Module:
    with torch.no_grad():
        module.weight.mul_(factor)
    return module


def _roundtrip(net: nn.Module, x: torch.Tensor, **kwargs) -> tuple[torch.Tensor, NIRNetwork, object]:
    graph = export(net, x, **kwargs)
    return net(x), load(graph), graph


# ----------------------------------------------------------------------------- CubaLIF
def test_cubalif_matches_spikingjelly_cubalifnode_and_steps():
    from spikingjelly.activation_based import neuron

    torch.manual_seed(0)
    x = torch.randn(20, 3, 7)
    ours = CubaLIF.from_decays(0.5, 0.75, v_threshold=0.5, v_reset=0.0)
    peer = neuron.CUBALIFNode(c_decay=0.5, v_decay=0.75, v_threshold=0.5, v_reset=0.0)
    expected = torch.stack([peer(x[t]) for t in range(20)])
    spikes, final = ours.scan(x)
    _active(spikes)
    assert torch.equal(spikes, expected)
    state, steps = None, []
    for t in range(20):
        s, state = ours.step(x[t], state)
        steps.append(s)
    assert torch.equal(torch.stack(steps), spikes)
    torch.testing.assert_close(state.v, final.v)
    torch.testing.assert_close(state.i, final.i)
    # explicit state: two chunks are the whole sequence
    first, mid = ours.scan(x[:8])
    rest, _ = ours.scan(x[8:], mid)
    assert torch.equal(torch.cat([first, rest]), spikes)


def test_cubalif_leak_target_threshold_rule_and_gradient():
    # v_leak: with no input the membrane relaxes from v_reset towards v_leak and fires once it passes 1
    n = CubaLIF(tau_syn=2.0, tau_mem=2.0, v_threshold=1.0, v_reset=0.0, v_leak=1.5)
    spikes, state = n.scan(torch.zeros(3, 1))
    assert spikes.flatten().tolist() == [0.0, 1.0, 0.0]    # 0.75, then 1.125 fires and resets
    # the strict rule fires above the threshold only: an input landing exactly on it does not fire
    x = torch.tensor([[1.0]])
    assert CubaLIF(tau_syn=1.0, tau_mem=1.0)(x).item() == 1.0
    assert CubaLIF(tau_syn=1.0, tau_mem=1.0, strict_threshold=True)(x).item() == 0.0
    x = torch.randn(6, 2, 4, requires_grad=True)
    CubaLIF(tau_syn=3.0, tau_mem=2.0, v_threshold=0.3)(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"tau_syn": 0.5}, "tau_syn"), ({"tau_mem": float("nan")}, "tau_mem"), ({"v_threshold": math.inf}, "v_threshold"),
    ({"v_reset": "zero"}, "v_reset"),
])
def test_cubalif_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CubaLIF(**kwargs)


# ----------------------------------------------------------------------------- round trips
def test_feedforward_roundtrip_is_exact():
    torch.manual_seed(0)
    net = nn.Sequential(
        _scaled(nn.Linear(8, 16), 2.0), LIF(tau=2.0),
        _scaled(nn.Linear(16, 12), 2.0), LIF(tau=3.0, decay_input=False, v_reset=-0.2, v_threshold=0.8),
        _scaled(nn.Linear(12, 12), 2.0), ParametricLIF(init_tau=1.5),
        _scaled(nn.Linear(12, 10), 2.0), CubaLIF(tau_syn=3.0, tau_mem=2.0, v_threshold=0.5, v_leak=0.1),
        _scaled(nn.Linear(10, 8), 3.0), LIF.from_snntorch(beta=0.7, reset_mechanism="zero"),
        _scaled(nn.Linear(8, 5), 3.0), IF(),
    )
    x = torch.randn(T, B, 8) * 2
    expected, loaded, graph = _roundtrip(net, x)
    _active(expected)
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    assert kinds.count("LIF") == 4 and "CubaLIF" in kinds and "IF" in kinds
    assert graph.metadata["dt"] == 1e-4
    assert torch.equal(loaded(x), expected)
    # step and scan of the loaded network agree, and state carries across chunks
    state, steps = None, []
    for t in range(T):
        y, state = loaded.step(x[t], state)
        steps.append(y)
    assert torch.equal(torch.stack(steps), expected)
    first, mid = loaded.scan(x[:4])
    rest, _ = loaded.scan(x[4:], mid)
    assert torch.equal(torch.cat([first, rest]), expected)
    # a loaded network exports again to the same spikes
    assert torch.equal(load(export(loaded, x))(x), expected)


def test_threshold_equality_is_kept_exactly():
    """neurostep's neurons fire on H >= v_threshold and NIR's on v > v_threshold: inputs that land
    exactly on the threshold must still fire after the round trip, and a NIR graph's neuron must not."""
    x = torch.ones(6, 1, 1)
    net = nn.Sequential(IF(v_threshold=2.0))
    expected, loaded, graph = _roundtrip(net, x)
    assert expected.flatten().tolist() == [0.0, 1.0] * 3
    assert torch.equal(loaded(x), expected)
    assert torch.equal(loaded(x.double()), expected.double())
    node = graph.nodes["0"]
    assert node.v_threshold.reshape(-1)[0] == np.nextafter(np.float32(2.0), np.float32(0.0))  # float32 just below 2
    assert node.metadata == {"neurostep_threshold_rule": ">=", "neurostep_v_threshold": 2.0}
    # in float64 a membrane can fall between that float32 and 2.0: the recorded rule keeps it silent
    near = torch.full((1, 1, 1), 2.0 - 3e-8, dtype=torch.float64)
    assert net(near).item() == 0.0 and loaded(near).item() == 0.0
    node.metadata = {}                       # without the record, NIR's own rule (v > 1.99999988) fires
    assert load(graph)(near).item() == 1.0
    exact = nir.NIRGraph.from_list(nir.IF(r=np.array([1e4]), v_threshold=np.array([2.0]), v_reset=np.array([0.0])))
    # v reaches 2.0 exactly at the second step, and NIR's IF needs v > 2: it fires at the third
    assert load(exact)(x).flatten().tolist() == [0.0, 0.0, 1.0] * 2


def test_convolutional_roundtrip_is_exact():
    torch.manual_seed(1)
    net = nn.Sequential(
        SampleWise(_scaled(nn.Conv2d(2, 4, 3, padding=1), 2.0), 3), LIF(tau=2.0),
        SampleWise(nn.AvgPool2d(2), 3),
        SampleWise(_scaled(nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), 4.0), 3),
        IF(v_threshold=0.5), SampleWise(SumPool2d((2, 2), (2, 2), (0, 0)), 3), nn.Flatten(2),
        _scaled(nn.Linear(6, 5), 2.0), LIF(tau=2.0),
    )
    x = torch.rand(T, B, 2, 8, 8) * 4
    expected, loaded, graph = _roundtrip(net, x)
    _active(expected)
    assert {"Conv2d", "AvgPool2d", "SumPool2d", "Flatten", "Affine"} <= {type(n).__name__ for n in graph.nodes.values()}
    assert torch.equal(loaded(x), expected)
    assert torch.equal(load(export(loaded, x))(x), expected)
    conv1 = nn.Sequential(SampleWise(_scaled(nn.Conv1d(3, 4, 3, padding=1), 4.0), 2), LIF(tau=2.0))
    x1 = torch.rand(T, B, 3, 9) * 3
    expected, loaded, _ = _roundtrip(conv1, x1)
    _active(expected)
    assert torch.equal(loaded(x1), expected)


def test_recurrent_roundtrip_is_exact():
    torch.manual_seed(2)
    net = nn.Sequential(_scaled(nn.Linear(8, 10), 2.0),
                        RecurrentSpiking(LIF(tau=2.0), _scaled(nn.Linear(10, 10), 2.0)),
                        _scaled(nn.Linear(10, 10), 2.0),
                        RecurrentSpiking(CubaLIF(tau_syn=2.0, tau_mem=2.0, v_threshold=0.6),
                                         nn.Linear(10, 10, bias=False)),
                        _scaled(nn.Linear(10, 4), 3.0), LIF(tau=2.0))
    x = torch.randn(T, B, 8) * 2
    expected, loaded, graph = _roundtrip(net, x)
    _active(expected)
    sub = graph.nodes["1"]
    assert isinstance(sub, nir.NIRGraph) and ("w_rec", "neuron") in sub.edges
    assert torch.equal(loaded(x), expected)
    again = export(loaded, x)          # a loaded recurrent network exports as the same subgraphs
    assert isinstance(again.nodes["1"], nir.NIRGraph)
    assert torch.equal(load(again)(x), expected)
    # the feedback is what makes it recurrent: without it the spikes change
    with torch.no_grad():
        net[1].recurrent.weight.zero_()
        net[1].recurrent.bias.zero_()
    assert not torch.equal(net(x), expected)


def test_flat_cyclic_graph_steps_with_one_step_feedback():
    """A cycle at the top level (as nirtorch draws it): the feedback edge carries the previous step."""
    w = np.array([[0.0, 2.0], [2.0, 0.0]], dtype=np.float32)
    lif = nir.LIF(tau=np.full(2, 2e-4), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.full(2, 0.4),
                  v_reset=np.zeros(2))
    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([2])}), "lif": lif,
                                "w": nir.Linear(weight=w), "output": nir.Output(output_type={"output": np.array([2])})},
                         edges=[("input", "lif"), ("lif", "w"), ("w", "lif"), ("lif", "output")], type_check=False)
    net = load(graph)
    assert net.feedback_edges == [("w", "lif")]
    x = torch.zeros(5, 1, 2)
    x[0, 0, 0] = 1.0       # one kick to neuron 0: H = 0.5 fires; the feedback makes neuron 1 fire next, and so on
    assert net(x)[:, 0].tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("neuron, match", [
    (LIF(tau=2.0, v_reset=None), "soft reset"),
    (IF(v_reset=None), "soft reset"),
    (LIF.from_snntorch(beta=0.9), "one step late"),
    (LIF.from_snntorch(beta=0.9, reset_mechanism="none"), "never resets"),
    (LIF(tau=2.0, detach_reset=True), "detach_reset"),
    (AdaptiveLIF(), "adaptive"),
    (CubaLIF(v_reset=None), "soft reset"),
])
def test_inexact_neurons_are_refused_by_name(neuron, match):
    net = nn.Sequential(nn.Linear(4, 4), neuron)
    with pytest.raises(NIRUnsupportedError, match=match) as info:
        export(net, torch.randn(3, 2, 4))
    assert info.value.node == "1"
    assert str(info.value).startswith(f"1 ({type(neuron).__name__})")


def test_approximate_exports_detach_reset_and_records_it(tmp_path):
    torch.manual_seed(3)
    net = nn.Sequential(_scaled(nn.Linear(4, 6), 2.0), LIF(tau=2.0, detach_reset=True))
    x = torch.randn(T, B, 4) * 2
    graph = export(net, x, approximate=True, path=tmp_path / "approx.nir")
    assert "1 (LIF): detach_reset=True" in graph.metadata["approximations"]
    assert nir.read(tmp_path / "approx.nir").metadata["approximations"] == graph.metadata["approximations"]
    assert torch.equal(load(graph)(x), net(x))     # forward spikes are unchanged, only the gradient rule is dropped


@pytest.mark.parametrize("layer, match", [
    (SampleWise(nn.MaxPool2d(2), 3), "max pooling"),
    (nn.LayerNorm(4), "statistics"),
    (nn.GELU(), "no node"),
])
def test_layers_without_nir_nodes_are_refused(layer, match):
    sample = torch.randn(3, 2, 1, 4, 4) if isinstance(layer, SampleWise) else torch.randn(3, 2, 4)
    with pytest.raises(NIRUnsupportedError, match=match):
        export(nn.Sequential(layer), sample)


def test_batchnorm_folds_in_eval_and_is_refused_in_training():
    torch.manual_seed(4)
    net = nn.Sequential(SampleWise(nn.Conv2d(2, 4, 3, padding=1), 3), SampleWise(nn.BatchNorm2d(4), 3), LIF(tau=2.0))
    x = torch.rand(T, B, 2, 6, 6) * 3
    before = net[1].module.running_mean.clone()
    with pytest.raises(NIRUnsupportedError, match="training mode"):
        export(net, x)
    assert net[1].module.training and torch.equal(net[1].module.running_mean, before)   # export left no trace
    net.eval()
    with torch.no_grad():
        net[1].module.running_mean.uniform_(-0.5, 0.5)
        net[1].module.running_var.uniform_(0.5, 2.0)
    graph = export(net, x)
    assert "BatchNorm2d" not in {type(n).__name__ for n in graph.nodes.values()}
    expected = net(x)
    _active(expected)
    # folding changes float rounding of the conv output, so compare spikes up to the rare flip
    assert (load(graph)(x) != expected).float().mean() < 0.01


def test_spiking_transformers_export_up_to_attention():
    torch.manual_seed(5)
    mlp = SpikingMLP(8, 16).eval()
    x = torch.randn(T, B, 5, 8) * 2
    with pytest.raises(NIRUnsupportedError, match="detach_reset") as info:
        export(mlp, x)
    assert info.value.node == "lif1"
    graph = export(mlp, x, approximate=True)
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    assert kinds == ["Input", "Affine", "LIF", "Affine", "LIF", "Output"]   # batch norms folded
    loaded = load(graph)
    assert (loaded(x) != mlp(x)).float().mean() < 0.01
    with pytest.raises(NIRUnsupportedError, match="attention") as info:
        export(SpikformerBlock(8, num_heads=2).eval(), x, approximate=True)
    assert info.value.node == "attn"
    with pytest.raises(NIRUnsupportedError, match="max pooling") as info:
        export(ConvBNLIF(2, 4, pool=True).eval(), torch.rand(2, 1, 2, 8, 8), approximate=True)
    assert info.value.node == "pool"
    stage = ConvBNLIF(2, 4).eval()            # a stem stage without pooling: conv, folded BN, LIF
    with torch.no_grad():
        stage.conv.weight.mul_(3.0)
        stage.bn.running_mean.uniform_(-0.3, 0.3)
    images = torch.rand(T, B, 2, 8, 8)
    graph = export(stage, images, approximate=True)
    assert [type(n).__name__ for n in graph.nodes.values()] == ["Input", "Conv2d", "LIF", "Output"]
    expected = stage(images)
    _active(expected)
    assert (load(graph)(images) != expected).float().mean() < 0.01
    model = Spikformer(img_size=16, patch_size=4, in_channels=2, embed_dim=16, num_heads=2, depth=1, num_classes=3,
                       T=2, stem="scs").eval()
    with pytest.raises(NIRUnsupportedError) as info:
        export(model, torch.rand(2, 1, 2, 16, 16), approximate=True)
    assert info.value.node == "patch_embed" and "transpose" in info.value.reason


def test_spikegpt_is_refused_at_its_first_module():
    from neurostep.neuro import SpikeGPT

    model = SpikeGPT(vocab_size=11, n_embd=8, n_layer=1)
    with pytest.raises(NIRUnsupportedError, match="lookup") as info:
        export(model, torch.randint(0, 11, (1, 4)))
    assert info.value.node == "emb"


def test_load_refuses_what_it_cannot_run_exactly():
    lif = nir.LIF(tau=np.array([2e-4, 3e-4]), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2),
                  v_reset=np.zeros(2))
    with pytest.raises(NIRUnsupportedError, match="tau differs across neurons") as info:
        load(nir.NIRGraph.from_list(lif))
    assert info.value.node == "lif"
    fast = nir.LIF(tau=np.full(2, 5e-5), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2), v_reset=np.zeros(2))
    with pytest.raises(NIRUnsupportedError, match="shorter than dt"):
        load(nir.NIRGraph.from_list(fast))
    assert isinstance(load(nir.NIRGraph.from_list(fast), dt=5e-5), NIRNetwork)
    with pytest.raises(NIRUnsupportedError, match="leaky integrator"):
        load(nir.NIRGraph.from_list(nir.LI(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2))))


def test_per_neuron_r_and_v_leak_load_exactly_against_euler():
    """NIR's LIF with per-neuron r and v_leak, against a float64 forward-Euler loop of its equation."""
    dt, n = 1e-3, 5
    rng = np.random.default_rng(0)
    tau, r, v_leak = np.full(n, 4e-3), rng.uniform(0.5, 2.0, n), rng.uniform(-0.2, 0.3, n)
    node = nir.LIF(tau=tau, r=r, v_leak=v_leak, v_threshold=np.full(n, 0.5), v_reset=np.full(n, 0.1))
    net = load(nir.NIRGraph.from_list(node), dt=dt)
    x = torch.from_numpy(rng.uniform(-0.5, 1.5, (40, 2, n)))
    v = np.full((2, n), 0.1)
    expected = []
    for t in range(40):
        v = v + dt / tau * (v_leak - v + r * x[t].numpy())
        s = v > 0.5
        v = np.where(s, 0.1, v)
        expected.append(s)
    expected = torch.from_numpy(np.stack(expected)).double()
    _active(expected)
    assert torch.equal(net(x), expected)


def test_cubalif_with_per_neuron_input_weights_loads_exactly_against_euler():
    """NIR's CubaLIF with per-neuron w_in and r: current first, then the membrane with the new current."""
    dt, n = 1e-3, 4
    rng = np.random.default_rng(1)
    tau_syn, tau_mem = np.full(n, 3e-3), np.full(n, 2e-3)
    w_in, r = rng.uniform(0.5, 2.0, n), rng.uniform(0.5, 2.0, n)
    node = nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=r, v_leak=np.full(n, 0.05), v_threshold=np.full(n, 0.4),
                       v_reset=np.zeros(n), w_in=w_in)
    net = load(nir.NIRGraph.from_list(node), dt=dt)
    x = torch.from_numpy(rng.uniform(-0.5, 1.5, (40, 2, n)))
    i, v, expected = np.zeros((2, n)), np.zeros((2, n)), []
    for t in range(40):
        i = i + dt / tau_syn * (w_in * x[t].numpy() - i)
        v = v + dt / tau_mem * (0.05 - v + r * i)
        s = v > 0.4
        v = np.where(s, 0.0, v)
        expected.append(s)
    expected = torch.from_numpy(np.stack(expected)).double()
    _active(expected)
    assert torch.equal(net(x), expected)


def test_scale_and_threshold_nodes():
    scale, thr = np.array([2.0, -1.0, 0.5], dtype=np.float32), np.array([0.5, 0.5, 1.0], dtype=np.float32)
    graph = nir.NIRGraph.from_list(nir.Scale(scale=scale), nir.Threshold(threshold=thr))
    net = load(graph)
    x = torch.tensor([[[0.25, -0.6, 2.0]], [[0.3, 0.0, 4.0]]])
    expected = (x * torch.from_numpy(scale) > torch.from_numpy(thr)).float()
    assert expected.flatten().tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert torch.equal(net(x), expected)
    again = export(net, x)
    assert [type(n).__name__ for n in again.nodes.values()] == ["Input", "Scale", "Threshold", "Output"]
    assert torch.equal(load(again)(x), expected)


# ----------------------------------------------------------------------------- files and energy
def test_hdf5_file_roundtrip(tmp_path):
    torch.manual_seed(6)
    net = nn.Sequential(SampleWise(nn.Conv2d(1, 3, 3, padding=1), 3), LIF(tau=2.0), nn.Flatten(2),
                        _scaled(nn.Linear(48, 6), 2.0), RecurrentSpiking(CubaLIF(v_threshold=0.5), nn.Linear(6, 6)))
    x = torch.rand(T, B, 1, 4, 4) * 4
    path = tmp_path / "net.nir"
    export(net, x, dt=1e-3, path=path)
    assert nir.read(path).metadata["dt"] == 1e-3
    loaded = load(path)
    expected = net(x)
    _active(expected)
    assert torch.equal(loaded(x), expected)
    # a wrong dt changes the time constants, which the spikes show
    assert not torch.equal(load(path, dt=1e-4)(x), expected)


def test_energy_counter_runs_on_a_loaded_network():
    torch.manual_seed(7)
    net = nn.Sequential(_scaled(nn.Linear(8, 16), 2.0), LIF(tau=2.0), nn.Linear(16, 4),
                        CubaLIF(tau_syn=2.0, tau_mem=2.0, v_threshold=0.3))
    x = (torch.rand(T, B, 8) < 0.3).float()
    loaded = load(export(net, x))
    report = count(loaded, x)
    assert report.energy_pj > 0
    assert report.total.acs > 0          # binary spikes into the Linear layers are accumulates
    assert report.total.compares >= T * B * (16 + 4)    # one threshold compare per neuron and step


# ----------------------------------------------------------------------------- argument checks
def test_bad_arguments_name_what_is_wrong():
    net = nn.Sequential(nn.Linear(4, 4), LIF())
    with pytest.raises(ValueError, match="sample"):
        export(net, torch.randn(4))
    with pytest.raises(ValueError, match="dt"):
        export(net, torch.randn(2, 1, 4), dt=0.0)
    with pytest.raises(TypeError, match="model"):
        export("net", torch.randn(2, 1, 4))
    with pytest.raises(TypeError, match="approximate"):
        export(net, torch.randn(2, 1, 4), approximate="yes")
    with pytest.raises(TypeError, match="graph_or_path"):
        load(42)
    with pytest.raises(NIRUnsupportedError, match="vectors"):
        export(nn.Sequential(SampleWise(nn.Conv2d(1, 2, 3), 3), nn.Linear(1, 2)), torch.randn(2, 1, 1, 3, 3))
    with pytest.raises(NIRUnsupportedError, match="time or batch"):
        export(nn.Sequential(nn.Flatten(0)), torch.randn(2, 1, 3))
    assert isinstance(BatchNormTokens(4), nn.Module)
