"""The model-building helpers of benchmarks/models.py: identity floors, the RWKV weight copy, the mambapy peer."""

import pytest
import torch
from repo_scripts import load_script

from neurostep.models import create_model, model_entry
from neurostep.neuro.neurons import SpikingNeuron

bench = load_script("benchmarks/models.py", "bench_models")


def test_neurons_to_identity_leaves_no_neuron_and_passes_values_through():
    entry = model_entry("spikformer_tiny")
    torch.manual_seed(0)
    model = create_model("spikformer_tiny", **entry.small_kwargs)
    n = sum(isinstance(m, SpikingNeuron) for m in model.modules())
    assert bench.neurons_to_identity(model) == n > 0
    assert not any(isinstance(m, SpikingNeuron) for m in model.modules())
    x = entry.example_input(model, 2)
    y = model(x)
    y.sum().backward()   # the floor trains: every layer before the head gets a gradient
    assert model.patch_embed.stages[0].conv.weight.grad.abs().sum() > 0
    lif = bench.PassThrough(0)
    u = torch.randn(3, 2, 4)
    assert torch.equal(lif.scan(u, None)[0], u)
    repeated = u[0].expand(3, 2, 4)   # a repeated frame leaves as T real copies, as spikes would
    assert lif.scan(repeated, None)[0].stride(0) == 8


def test_scan_free_and_mambapy_mamba_variants():
    from neurostep.ssm.vision_mamba import BidirectionalMamba

    torch.manual_seed(0)
    model = create_model("vim_tiny", img_size=32, patch_size=8, embed_dim=16, depth=2, d_state=4, num_classes=5,
                         backend="reference")
    peer, floor = (bench.copy.deepcopy(model) for _ in range(2))
    assert bench.swap_class(peer, BidirectionalMamba, bench.mambapy_scan_class) == 2
    assert bench.swap_class(floor, BidirectionalMamba, bench.scan_free_class) == 2
    x = torch.randn(2, 3, 32, 32)
    tokens = torch.randn(2, 17, 16)
    with torch.no_grad():
        torch.testing.assert_close(peer(x), model(x), rtol=1e-4, atol=1e-5)
        mixer, scan_free = model.layers[0].mixer, floor.layers[0].mixer
        torch.testing.assert_close(peer.layers[0].mixer(tokens), mixer(tokens), rtol=1e-4, atol=1e-5)
        # the scan really is gone (at init its share of the output is small next to the D skip)
        assert not torch.allclose(scan_free(tokens), mixer(tokens), rtol=0.0, atol=1e-6)


def test_ssd_free_mamba2_keeps_everything_but_the_ssd():
    from neurostep.ssm.mamba2 import Mamba2

    torch.manual_seed(0)
    layer = Mamba2(32, d_state=8, headdim=8, ngroups=1, backend="reference")
    floor = bench.copy.deepcopy(layer)
    holder = torch.nn.Sequential(floor)
    assert bench.swap_class(holder, Mamba2, bench.ssd_free_class) == 1
    x = torch.randn(2, 12, 32)
    y, state = floor.scan(x)
    assert y.shape == x.shape and state.ssm_state.shape == layer.scan(x)[1].ssm_state.shape
    # the identity SSD's output: o = x * dt before the D skip, the gate and out_proj
    h = layer.nheads
    xs, dt, Bm, Cm = torch.randn(2, 12, h, 8), torch.rand(2, 12, h), torch.randn(2, 12, 1, 8), torch.randn(2, 12, 1, 8)
    o, last = floor._ssd_core(xs, dt, Bm, Cm, None)
    torch.testing.assert_close(o, xs * dt[..., None])
    assert not torch.allclose(layer._ssd_core(xs, dt, Bm, Cm, None)[0], o)
    assert torch.count_nonzero(last) == 0


def test_rwkv_weights_load_into_spikegpt_with_spikes_off():
    transformers = pytest.importorskip("transformers")
    from neurostep.neuro.spikegpt import SpikeGPT

    torch.manual_seed(0)
    cfg = transformers.RwkvConfig(vocab_size=20, context_length=16, hidden_size=16, num_hidden_layers=2,
                                  attention_hidden_size=16, intermediate_size=64, rescale_every=0)
    hf = transformers.RwkvForCausalLM(cfg).eval()
    with torch.no_grad():   # RWKV's own init leaves many weights zero: make every one matter
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    ours = SpikeGPT(vocab_size=20, n_embd=16, n_layer=2, backend="reference", lif_backend="reference")
    bench.load_rwkv_into_spikegpt(ours, hf)
    bench.spikes_off(ours)
    idx = torch.randint(0, 20, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx, use_cache=False).logits, rtol=1e-4, atol=1e-4)


def test_round_ratios_pair_the_rounds_and_their_range_is_reported():
    ratios = bench.round_ratios([2.0, 3.0, 1.5], [1.0, 2.0, 1.0])
    assert ratios == [2.0, 1.5, 1.5]
    assert bench.ratio_range(ratios) == "1.50-2.00x"
    assert bench.ratio_range([1.4123, 15.2]) == "1.41-15.2x"
    with pytest.raises(ValueError, match="same non-zero number of rounds"):
        bench.round_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="same non-zero number of rounds"):
        bench.round_ratios([], [])
