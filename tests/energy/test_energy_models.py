"""The counter on registered models: every op they run has a rule, and the first-layer MACs are exact."""

from __future__ import annotations

import pytest
import torch

from neurostep.energy import count
from neurostep.models import create_mixer, create_model, list_mixers, model_entry


def _small(name: str) -> tuple[torch.nn.Module, tuple]:
    entry = model_entry(name)
    torch.manual_seed(0)
    model = create_model(name, **entry.small_kwargs).eval()
    example = entry.example_input(model, 1)
    return model, example if isinstance(example, tuple) else (example,)


@pytest.mark.parametrize("name", ["spikformer_tiny", "mamba_tiny"])
def test_every_op_of_a_registered_model_has_a_rule(name):
    model, inputs = _small(name)
    r = count(model, *inputs)
    assert r.unknown_ops == {}, f"ops without a cost rule in {name}: {r.unknown_ops}"
    assert r.total.macs > 0
    assert r.total.state_updates > 0       # the fused LIF / selective-scan ops declared their formulas
    assert sum(c.macs for p, c in r.modules.items() if "." not in p) == r.total.macs


def test_spikformer_first_layer_and_spike_driven_stage():
    model, (x,) = _small("spikformer_tiny")
    x = x * 20          # strong drive so that the first LIF stage fires
    r = count(model, x, mode="spikformer")
    conv = model.patch_embed.stages[0].conv
    c_out, c_in, kh, kw = conv.weight.shape
    h, w = x.shape[-2:]
    # the image repeated over T is convolved once (direct encoding), and counted once
    assert r.total.first_layer_macs == c_out * c_in * kh * kw * h * w * x.shape[0]
    assert any("first layer = 'patch_embed.stages.0.conv'" in n for n in r.notes)
    stage1 = r.modules["patch_embed.stages.1"]
    assert stage1.acs > 0 and stage1.macs == 0          # its input is the first stage's spikes
    # SOPs (rate x dense MACs) and exact ACs differ only by the zero padding at the borders
    assert stage1.acs <= stage1.sops <= 1.2 * stage1.acs


# the mixers whose recurrence or neurons run in fused ops, which declare their state updates (the LTI ones,
# mamba_lti and s4d, run the convolution form in training and count it as multiply-adds)
_FUSED_STATE = {"mamba", "mamba2", "vim", "lamamba", "lightning_attention", "spikformer_ssa", "spikegpt_timemix",
                "rwkv_timemix"}


@pytest.mark.parametrize("name", list_mixers())
def test_every_op_of_a_registered_mixer_has_a_rule(name):
    torch.manual_seed(0)
    mixer = create_mixer(name, 16, num_heads=2, seq_len=16, grid_size=(4, 4)).eval()
    r = count(mixer, torch.randn(2, 16, 16), grid_size=(4, 4))
    assert r.unknown_ops == {}, f"ops without a cost rule in {name}: {r.unknown_ops}"
    assert r.total.macs > 0
    if name in _FUSED_STATE:
        assert r.total.state_updates > 0, f"{name}: its fused ops declared no state updates"
