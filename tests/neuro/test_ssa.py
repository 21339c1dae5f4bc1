"""Spiking self-attention: both product orders, scan == step, gradients, mixer, bad input, spikingjelly parity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neurostep.neuro.ssa import (
    SpikingSelfAttention,
    SpikingSelfAttentionMixer,
    default_num_heads,
    spiking_attention,
)


def randomize_bn(module: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm running statistics and affine parameters that make neurons fire in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.02)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.02 + 0.01)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)


def make_ssa(dim: int = 16, heads: int = 4, **kwargs) -> SpikingSelfAttention:
    torch.manual_seed(0)
    ssa = SpikingSelfAttention(dim, num_heads=heads, **kwargs)
    for lin in (ssa.qkv, ssa.proj):
        nn.init.normal_(lin.weight, std=0.3)
    return ssa


def test_spiking_attention_orders_agree_exactly_on_spikes():
    g = torch.Generator().manual_seed(1)
    q, k, v = ((torch.rand(2, 3, 2, 7, 5, generator=g) < 0.4).float() for _ in range(3))
    a = spiking_attention(q, k, v, 0.125, "q(kv)")
    b = spiking_attention(q, k, v, 0.125, "(qk)v")
    assert torch.equal(a, b)
    # the definition, written with explicit sums over tokens and channels
    ref = torch.einsum("...nd,...md,...me->...ne", q, k, v) * 0.125
    torch.testing.assert_close(a, ref, rtol=0, atol=0)


def test_spiking_attention_float_inputs_close():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(3, 6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ref = (q @ k.transpose(-2, -1) @ v) * 0.5
    torch.testing.assert_close(spiking_attention(q, k, v, 0.5, "q(kv)"), ref)
    torch.testing.assert_close(spiking_attention(q, k, v, 0.5, "(qk)v"), ref)


def test_spiking_attention_bad_args():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="order"):
        spiking_attention(x, x, x, order="qkv")
    with pytest.raises(ValueError, match="one shape"):
        spiking_attention(x, x, torch.zeros(2, 3, 5))


def test_ssa_output_is_binary_and_shaped():
    ssa = make_ssa().eval()
    randomize_bn(ssa)
    x = (torch.rand(3, 2, 5, 16) < 0.5).float()
    y = ssa(x)
    assert y.shape == x.shape
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    assert 0 < y.mean() < 1  # the calibration makes the layer fire, but not everywhere


@pytest.mark.parametrize("order", ["q(kv)", "(qk)v"])
def test_ssa_scan_equals_step(order):
    ssa = make_ssa(order=order).eval()
    randomize_bn(ssa)
    x = (torch.rand(4, 2, 6, 16) < 0.5).float()
    y_scan, s_scan = ssa.scan(x)
    state = ssa.init_state(tuple(x.shape[1:]), device=x.device, dtype=x.dtype)
    ys = []
    for t in range(x.shape[0]):
        y_t, state = ssa.step(x[t], state)
        ys.append(y_t)
    assert torch.equal(torch.stack(ys), y_scan)
    for a, b in ((s_scan.qkv, state.qkv), (s_scan.attn, state.attn), (s_scan.proj, state.proj)):
        torch.testing.assert_close(a.v, b.v)
    # splitting the sequence and carrying the state gives the same result
    y1, s1 = ssa.scan(x[:2])
    y2, _ = ssa.scan(x[2:], s1)
    assert torch.equal(torch.cat([y1, y2]), y_scan)


def test_ssa_orders_give_identical_module_outputs():
    a = make_ssa(order="q(kv)").eval()
    b = make_ssa(order="(qk)v").eval()
    randomize_bn(a)
    b.load_state_dict(a.state_dict())
    x = (torch.rand(3, 2, 9, 16) < 0.5).float()
    assert torch.equal(a(x), b(x))


def test_ssa_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    ssa = SpikingSelfAttention(16, num_heads=2, proj_bias=True).train()
    # BN gain 4 makes Q, K, V fire at ~25%, so the attention LIF fires too (it rarely does at a
    # default init with few tokens, and a silent layer passes no gradient to the next weight)
    nn.init.constant_(ssa.qkv_norm.bn.weight, 4.0)
    nn.init.constant_(ssa.proj_norm.bn.weight, 4.0)
    x = torch.randn(4, 2, 16, 16, requires_grad=True)
    y = ssa(x)
    assert y.mean() > 0
    (y * torch.randn_like(y)).sum().backward()  # random weights: a plain sum has zero gradient through train BN
    for name, p in ssa.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_ssa_bad_input():
    ssa = make_ssa()
    with pytest.raises(ValueError, match=r"x must have 4 dims"):
        ssa(torch.zeros(2, 5, 16))
    with pytest.raises(ValueError, match=r"C=16"):
        ssa(torch.zeros(2, 2, 5, 8))
    with pytest.raises(TypeError, match="dtype"):
        ssa(torch.zeros(2, 2, 5, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="non-empty"):
        ssa(torch.zeros(0, 2, 5, 16))
    with pytest.raises(ValueError, match="x_t must have 3 dims"):
        ssa.step(torch.zeros(1, 2, 5, 16), None)
    with pytest.raises(ValueError, match="num_heads"):
        SpikingSelfAttention(16, num_heads=3)
    with pytest.raises(ValueError, match="order"):
        SpikingSelfAttention(16, num_heads=4, order="softmax")


def test_mixer_repeats_and_decodes_by_mean():
    torch.manual_seed(0)
    mixer = SpikingSelfAttentionMixer(16, num_heads=4, T=3).eval()
    randomize_bn(mixer)
    x = torch.randn(2, 7, 16)
    y = mixer(x, grid_size=None)
    assert y.shape == x.shape
    expected = mixer.ssa(x.unsqueeze(0).repeat(3, 1, 1, 1)).mean(0)
    assert torch.equal(y, expected)
    assert ((y * 3) == (y * 3).round()).all()  # rates in steps of 1/T
    assert y.min() >= 0 and y.max() <= 1
    with pytest.raises(ValueError, match="3 dims"):
        mixer(torch.zeros(1, 2, 7, 16))
    with pytest.raises(ValueError, match="C=16"):
        mixer(torch.zeros(2, 7, 8))
    with pytest.raises(ValueError, match="T must be"):
        SpikingSelfAttentionMixer(16, T=0)


def test_mixer_registered():
    from neurostep.models import create_mixer, list_mixers

    assert "spikformer_ssa" in list_mixers()
    mixer = create_mixer("spikformer_ssa", 24, num_heads=None, seq_len=10, grid_size=(2, 5), T=2)
    assert mixer.ssa.num_heads == 8 and mixer.T == 2
    x = torch.randn(2, 10, 24, requires_grad=True)
    mixer(x, grid_size=(2, 5)).sum().backward()
    assert x.grad is not None
    assert create_mixer("spikformer_ssa", 12).ssa.num_heads == 6
    assert default_num_heads(7) == 7 and default_num_heads(9) == 3


@pytest.mark.peers
def test_ssa_matches_spikingjelly_layer():
    attention = pytest.importorskip("spikingjelly.activation_based.layer.attention")
    from spikingjelly.activation_based import functional

    torch.manual_seed(0)
    dim, heads = 16, 4
    theirs = attention.SpikingSelfAttention(dim, num_heads=heads)
    randomize_bn(theirs)
    for m in theirs.modules():
        if isinstance(m, nn.Conv1d):
            nn.init.normal_(m.weight, std=0.3)
    theirs.eval()
    ours = SpikingSelfAttention(dim, num_heads=heads, backend="reference").eval()
    sd = theirs.state_dict()
    bn_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ours.load_state_dict({
        "qkv.weight": sd["qkv_conv_bn.0.weight"][..., 0],
        **{f"qkv_norm.bn.{k}": sd[f"qkv_conv_bn.1.{k}"] for k in bn_keys},
        "proj.weight": sd["proj_conv_bn.0.weight"][..., 0],
        **{f"proj_norm.bn.{k}": sd[f"proj_conv_bn.1.{k}"] for k in bn_keys},
    })
    x = (torch.rand(4, 2, 10, dim) < 0.5).float()  # (T, B, N, C)
    functional.reset_net(theirs)
    y_theirs = theirs(x.transpose(-1, -2).contiguous()).transpose(-1, -2)  # theirs is (T, B, C, N)
    y_ours = ours(x)
    assert 0 < y_ours.mean() < 1
    assert torch.equal(y_ours, y_theirs)
