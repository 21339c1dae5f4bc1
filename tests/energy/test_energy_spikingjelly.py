"""Parity with spikingjelly 2.0's ``op_counter`` on a model built from spikingjelly's own layers.

spikingjelly's MACCounter and SynOpCounter count what our MACs and ACs count (dense products
at MAC cost, products with a binary operand as accumulates on its nonzeros, exactly). Two of its
rules differ from ours, and the differences are pinned here:

* MACCounter prices an eval-mode BatchNorm's affine step as one MAC per element; we count a
  BatchNorm as elementwise work (one multiply and one add per element, a foldable scale and
  shift), not as MACs, so that "MACs" means dense products only.
* ACCounter adds every elementwise add/sub/rsub (the neuron's charge and reset arithmetic)
  and the BatchNorm's ``c + n`` additions to the accumulates. We keep those as elementwise
  ``adds`` (priced at the same 0.9 pJ at fp32) and keep ``acs`` for spike-driven accumulates,
  which is what spikingjelly's SynOpCounter reports. We also count bias additions of
  convolutions and linears as adds; spikingjelly counts them nowhere.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("spikingjelly")

from spikingjelly.activation_based import functional, layer, neuron  # noqa: E402
from spikingjelly.activation_based.op_counter import (  # noqa: E402
    ACCounter,
    DispatchCounterMode,
    MACCounter,
    SynOpCounter,
)

from neurostep.energy import count  # noqa: E402

pytestmark = pytest.mark.peers


def _model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Conv2d(2, 4, 3, padding=1, bias=False, step_mode="m"),
        layer.BatchNorm2d(4, step_mode="m"),
        neuron.LIFNode(step_mode="m", v_threshold=0.5),
        layer.Conv2d(4, 6, 3, stride=2, padding=1, step_mode="m"),
        neuron.LIFNode(step_mode="m", v_threshold=0.5),
        layer.Flatten(step_mode="m"),
        layer.Linear(6 * 3 * 3, 8, step_mode="m"),
        neuron.LIFNode(step_mode="m", v_threshold=0.5),
        layer.Linear(8, 3, bias=False, step_mode="m"),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(4.0)   # enough drive that every spiking layer fires
    return net.eval()


def test_counts_equal_spikingjelly_op_counter():
    net = _model()
    x = torch.randn(3, 2, 2, 6, 6) * 2     # (T, B, C, H, W)
    mac, ac, syn = MACCounter(), ACCounter(), SynOpCounter()
    with torch.no_grad(), DispatchCounterMode([mac, ac, syn]):
        net(x)
    functional.reset_net(net)
    r = count(net, x)

    # every spiking layer received spikes, so the comparison exercises the binary rules
    for path in ("3", "6", "8"):
        assert r.modules[path].acs > 0, path
        assert 0 < r.modules[path].spike_rate < 1
    assert r.total.macs > 0

    # spike-driven accumulates: identical
    assert r.total.acs == syn.get_total()

    # MACs: identical up to spikingjelly's BatchNorm-affine MACs (one per element)
    bn_elements = 3 * 2 * 4 * 6 * 6
    assert mac.get_total() == r.total.macs + bn_elements
    sj_mac = mac.get_counts()["Global"]
    assert sj_mac[torch.ops.aten.convolution.default] + sj_mac[torch.ops.aten.mm.default] \
        + sj_mac.get(torch.ops.aten.addmm.default, 0) == r.total.macs

    # ACs: spikingjelly adds the elementwise add/sub/rsub of the neurons and BN's c + n adds
    add_sub = sum(c.adds for name, c in r.ops.items()
                  if name.split(".")[0] in ("aten::add", "aten::sub", "aten::rsub", "aten::add_", "aten::sub_"))
    assert ac.get_total() == r.total.acs + add_sub + (4 + bn_elements)
