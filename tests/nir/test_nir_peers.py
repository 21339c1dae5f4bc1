"""NIR exchange with the real peers: snntorch 1.0 and spikingjelly 2.0, both directions.

Every test runs the same input through the peer's network and through the network on the other
side of a NIR graph, and asserts the spike trains are identical (and that they are not silent,
so equality says something).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from neurostep.neuro import IF, LIF, CubaLIF
from neurostep.nir import RecurrentSpiking, export, load

nir = pytest.importorskip("nir")
snn = pytest.importorskip("snntorch")
sj_layer = pytest.importorskip("spikingjelly.activation_based.layer")

pytestmark = pytest.mark.peers

T, B = 12, 3


def _active(spikes: torch.Tensor) -> None:
    rate = float(spikes.detach().float().mean())
    assert 0.02 < rate < 0.98, f"spike rate {rate} makes the comparison vacuous"


def _scaled(module: nn.Module, factor: float) -> nn.Module:
    with torch.no_grad():
        module.weight.mul_(factor)
    return module


# ----------------------------------------------------------------------------- snntorch -> neurostep
def test_snntorch_network_loads_with_identical_spikes():
    """Leaky, Synaptic and RLeaky, exported with snntorch's own per-module NIR mapping.

    snntorch 1.0's ``export_to_nir`` fails NIR 1.0.8's type inference for this network (its neuron
    nodes carry 0-d parameters, so their input type is ``[]`` where the Affine before them gives
    ``[16]``). The test checks that failure, then builds the graph from
    ``snntorch.export_nir._extract_snntorch_module``: the parameter mapping that exporter defines
    (``dt = 1e-4``, ``tau = dt / (1 - beta)``, ``r = tau / dt``), module by module.

    snntorch's reset settings matter. A zero reset one step late (``reset_delay=True``, the default)
    gives NIR's spikes for ``Leaky``, but ``Synaptic`` and ``RLeaky`` then zero the *charged* membrane
    of the next step, dropping that step's input; their exporter writes the same NIR node either
    way, so only ``reset_delay=False`` is NIR's neuron. ``RLeaky`` also adds its recurrent bias at the
    first step, where NIR's feedback edge carries nothing: the test zeroes that bias.
    """
    from snntorch.export_nir import _extract_snntorch_module, export_to_nir

    torch.manual_seed(0)
    fc1, fc2, fc3 = _scaled(nn.Linear(8, 16), 2.0), _scaled(nn.Linear(16, 12), 2.0), _scaled(nn.Linear(12, 4), 3.0)
    leaky = snn.Leaky(beta=0.9, reset_mechanism="zero")
    synaptic = snn.Synaptic(alpha=0.6, beta=0.8, reset_mechanism="zero", reset_delay=False)
    rleaky = snn.RLeaky(beta=0.85, linear_features=4, reset_mechanism="zero", reset_delay=False)
    with torch.no_grad():
        rleaky.recurrent.bias.zero_()
        rleaky.recurrent.weight.mul_(3.0)
    x = torch.randn(T, B, 8) * 1.5

    mem1 = leaky.init_leaky()
    syn2, mem2 = synaptic.init_synaptic()
    spk3, mem3 = rleaky.init_rleaky()
    outs = []
    with torch.no_grad():
        for t in range(T):
            s1, mem1 = leaky(fc1(x[t]), mem1)
            s2, syn2, mem2 = synaptic(fc2(s1), syn2, mem2)
            spk3, mem3 = rleaky(fc3(s2), spk3, mem3)
            outs.append(spk3)
    expected = torch.stack(outs)
    _active(expected)

    seq = nn.Sequential(fc1, snn.Leaky(beta=0.9, init_hidden=True, reset_mechanism="zero"), fc2,
                        snn.Leaky(beta=0.8, init_hidden=True, output=True, reset_mechanism="zero"))
    with pytest.raises(ValueError, match="type mismatch"):
        export_to_nir(seq, torch.randn(1, 8))

    names = ["fc1", "lif1", "fc2", "syn2", "fc3", "rlif3"]
    nodes = dict(zip(names, (_extract_snntorch_module(m) for m in (fc1, leaky, fc2, synaptic, fc3, rleaky))))
    assert isinstance(nodes["rlif3"], nir.NIRGraph)
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": np.array([8])}), **nodes,
               "output": nir.Output(output_type={"output": np.array([4])})},
        edges=[("input", "fc1"), *zip(names[:-1], names[1:]), ("rlif3", "output")], type_check=False)
    net = load(graph)
    assert torch.equal(net(x), expected)
    # exported again, the 0-d snntorch parameters become per-neuron arrays of the layer's shape
    again = export(net, x)
    assert again.nodes["lif1"].tau.shape == (16,)
    assert torch.equal(load(again)(x), expected)
    # the same network stepped one step at a time
    state, steps = None, []
    for t in range(T):
        y, state = net.step(x[t], state)
        steps.append(y)
    assert torch.equal(torch.stack(steps), expected)


# ----------------------------------------------------------------------------- spikingjelly -> neurostep
def test_spikingjelly_export_loads_with_identical_spikes(tmp_path):
    """A convolutional spikingjelly network with LIF (both decay_input forms), IF and CUBALIF neurons,
    exported by spikingjelly's own ``nir_exchange.to_nir.export_to_nir``."""
    from spikingjelly.activation_based import functional, neuron
    from spikingjelly.activation_based.nir_exchange import to_nir

    torch.manual_seed(1)
    layer = sj_layer
    net = nn.Sequential(
        layer.Conv2d(2, 4, 3, padding=1), neuron.LIFNode(tau=2.0), layer.AvgPool2d(2), layer.Flatten(),
        layer.Linear(64, 10), neuron.CUBALIFNode(c_decay=0.5, v_decay=0.6, v_threshold=0.5),
        layer.Linear(10, 6), neuron.IFNode(), layer.Linear(6, 5),
        neuron.LIFNode(tau=3.0, decay_input=False, v_reset=-0.1),
    )
    with torch.no_grad():
        net[6].weight.mul_(3.0)
        net[8].weight.mul_(3.0)
    functional.set_step_mode(net, "m")
    x = torch.rand(T, B, 2, 8, 8) * 4
    with torch.no_grad():
        expected = net(x)
    functional.reset_net(net)
    _active(expected)
    path = tmp_path / "spikingjelly.nir"
    graph = to_nir.export_to_nir(net, x, save_path=path)
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    assert {"Conv2d", "AvgPool2d", "Flatten", "LIF", "IF", "CubaLIF"} <= kinds
    loaded = load(graph)
    assert torch.equal(loaded(x), expected)
    assert torch.equal(load(export(loaded, x))(x), expected)     # and back out through neurostep's exporter
    assert torch.equal(load(path)(x), expected)                  # the HDF5 file spikingjelly wrote


# ----------------------------------------------------------------------------- neurostep -> peers
def _neurostep_mlp() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(_scaled(nn.Linear(8, 16), 2.0), LIF(tau=2.0), _scaled(nn.Linear(16, 12), 2.0),
                         CubaLIF(tau_syn=2.0, tau_mem=3.0, v_threshold=0.7), _scaled(nn.Linear(12, 6), 3.0), IF(),
                         _scaled(nn.Linear(6, 4), 3.0), LIF(tau=4.0, decay_input=False))


def test_spikingjelly_import_of_neurostep_export():
    from spikingjelly.activation_based.nir_exchange import from_nir

    net = _neurostep_mlp()
    x = torch.randn(T, B, 8) * 2
    expected = net(x)
    _active(expected)
    peer = from_nir.import_from_nir(export(net, x), step_mode="m")
    with torch.no_grad():
        out, _ = peer(x)
    assert torch.equal(out, expected)


def test_spikingjelly_import_of_neurostep_recurrent_export():
    from spikingjelly.activation_based.nir_exchange import from_nir

    torch.manual_seed(3)
    net = nn.Sequential(_scaled(nn.Linear(8, 10), 2.0), RecurrentSpiking(LIF(tau=2.0), _scaled(nn.Linear(10, 10), 2.0)),
                        _scaled(nn.Linear(10, 4), 3.0), LIF(tau=2.0))
    x = torch.randn(T, B, 8) * 2
    expected = net(x)
    _active(expected)
    peer = from_nir.import_from_nir(export(net, x), step_mode="s")
    state, outs = None, []
    with torch.no_grad():
        for t in range(T):
            y, state = peer(x[t], state)
            outs.append(y)
    assert torch.equal(torch.stack(outs), expected)


def test_snntorch_import_of_neurostep_export():
    """snntorch's importer needs ``r = tau / dt`` (no input scaling) for exact spikes, which is the
    ``decay_input=False`` LIF and snntorch-convention LIF; it maps NIR's IF to a leaky neuron, so IF
    is left out here."""
    from snntorch.import_nir import import_from_nir

    torch.manual_seed(4)
    net = nn.Sequential(_scaled(nn.Linear(8, 16), 2.0), LIF(tau=2.0, decay_input=False),
                        _scaled(nn.Linear(16, 6), 2.0), LIF.from_snntorch(beta=0.8, reset_mechanism="zero"),
                        _scaled(nn.Linear(6, 4), 3.0), CubaLIF(tau_syn=2.0, tau_mem=3.0, v_threshold=0.7))
    x = torch.randn(T, B, 8) * 2
    expected = net(x)
    _active(expected)
    peer = import_from_nir(export(net, x))
    state, outs = None, []
    with torch.no_grad():
        for t in range(T):
            y, state = peer(x[t], state)
            outs.append(y)
    assert torch.equal(torch.stack(outs), expected)


def test_snntorch_import_of_neurostep_recurrent_export():
    """The recurrent subgraph (neuron -> W -> neuron) becomes snntorch's ``RLeaky``-style loop."""
    from snntorch.import_nir import import_from_nir

    torch.manual_seed(5)
    net = nn.Sequential(_scaled(nn.Linear(8, 10), 2.0),
                        RecurrentSpiking(LIF(tau=2.0, decay_input=False), _scaled(nn.Linear(10, 10), 2.0)),
                        _scaled(nn.Linear(10, 4), 3.0), LIF(tau=2.0, decay_input=False))
    x = torch.randn(T, B, 8) * 2
    expected = net(x)
    _active(expected)
    peer = import_from_nir(export(net, x))
    state, outs = None, []
    with torch.no_grad():
        for t in range(T):
            y, state = peer(x[t], state)
            outs.append(y)
    assert torch.equal(torch.stack(outs), expected)
