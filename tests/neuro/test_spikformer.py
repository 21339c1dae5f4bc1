"""Spikformer: stems, blocks, registered models (counts, forward/backward), scan == step, spikingjelly parity."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from neurostep.models import count_params, list_models, model_entry
from neurostep.neuro import LIF, LIFState, SSAState
from neurostep.neuro.spikformer import (
    ConvBNLIF,
    Spikformer,
    SpikformerBlock,
    SpikformerBlockState,
    SpikformerState,
    SpikingMLP,
    SpikingMLPState,
    SpikingPatchStem,
    SpikingPatchStemState,
    convert_spikingjelly_state_dict,
)

SPIKFORMER_MODELS = ["spikformer_8_384", "spikformer_8_512", "spikformer_8_768", "spikformer_4_384_cifar",
                     "spikformer_scs_8_384", "spikformer_tiny"]
PAPER = {"spikformer_8_384": 16.81e6, "spikformer_8_512": 29.68e6, "spikformer_8_768": 66.34e6,
         "spikformer_4_384_cifar": 9.32e6}


def calibrate(model: nn.Module, seed: int = 0) -> None:
    """BN running statistics and gains that make every layer fire in eval mode (fresh BNs barely do)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.zero_()
                m.running_var.fill_(1e-3)  # undoes the std-0.02 init of the projections
                m.weight.copy_(torch.rand(n, generator=g) + 1.0)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)


def tiny(**kwargs) -> Spikformer:
    torch.manual_seed(0)
    config = {"img_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2, "num_classes": 5, "T": 3,
              "backend": "reference"}
    return Spikformer(**{**config, **kwargs})


def test_all_models_registered():
    assert set(SPIKFORMER_MODELS) <= set(list_models("spikformer*"))


@pytest.mark.parametrize("name", sorted(PAPER))
def test_parameter_count_matches_paper(name):
    entry = model_entry(name)
    assert entry.paper_params == PAPER[name]
    with torch.device("meta"):  # no memory, no init cost
        model = entry.factory()
    n = count_params(model)
    assert abs(n / entry.paper_params - 1) <= entry.params_rtol, (name, n)


@pytest.mark.parametrize("name", SPIKFORMER_MODELS)
def test_registered_model_forward_backward(name):
    entry = model_entry(name)
    torch.manual_seed(0)
    model = entry.factory(**entry.small_kwargs)
    x = entry.example_input(model, 2)
    y = model(x)
    assert y.shape == (2, model.num_classes)
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    assert model.patch_embed.stages[0].conv.weight.grad is not None


def test_full_size_token_counts():
    # the paper's token counts, on the full-size input with narrow channels to stay cheap
    imagenet = SpikingPatchStem(3, 8, patch_size=16, backend="reference")
    assert imagenet(torch.zeros(1, 1, 3, 224, 224)).shape == (1, 1, 196, 8)
    cifar = SpikingPatchStem(3, 8, patch_size=4, backend="reference")
    assert cifar(torch.zeros(1, 1, 3, 32, 32)).shape == (1, 1, 64, 8)
    scs = SpikingPatchStem(3, 8, patch_size=16, stem="scs", backend="reference")
    assert scs(torch.zeros(1, 1, 3, 224, 224)).shape == (1, 1, 196, 8)
    assert imagenet.grid_size(224, 224) == (14, 14) and cifar.grid_size(33, 30) == (9, 8)
    with torch.device("meta"):
        assert model_entry("spikformer_8_384").factory().num_patches == 196
        assert model_entry("spikformer_4_384_cifar").factory().num_patches == 64


def test_stem_stage_outputs_are_spikes():
    torch.manual_seed(0)
    stem = SpikingPatchStem(3, 16, patch_size=4, backend="reference").eval()
    calibrate(stem)
    x = torch.randn(2, 2, 3, 16, 16)
    h = x
    for stage in stem.stages:
        h = stage(h)
        assert set(h.unique().tolist()) <= {0.0, 1.0}
    assert h.shape == (2, 2, 16, 4, 4) and 0 < h.mean() < 1
    tokens = stem(x)  # spikes + position-embedding spikes: counts in {0, 1, 2}
    assert set(tokens.unique().tolist()) <= {0.0, 1.0, 2.0}
    _, state = stem.scan(x)
    assert isinstance(state, SpikingPatchStemState) and len(state.stages) == 4
    assert all(isinstance(s, LIFState) for s in state.stages) and state.rpe.v.shape == (2, 16, 4, 4)
    # chunks with the carried state equal the whole sequence
    first, carried = stem.scan(x[:1])
    assert torch.equal(torch.cat([first, stem.scan(x[1:], carried)[0]]), stem.scan(x)[0])


@pytest.mark.parametrize("pool_position", ["after_lif", "before_lif"])
def test_stem_activations_stay_channels_last(pool_position):
    # the image goes channels-last into the first convolution and the spike convolutions return channels-last
    # maps; batch norm, max-pooling and the neurons keep that layout, so that no stage copies its activations
    # between layouts (pooling contiguous maps is about 10x slower)
    torch.manual_seed(0)
    stem = SpikingPatchStem(3, 32, patch_size=4, pool_position=pool_position, backend="cpu")
    calibrate(stem)
    h = torch.randn(1, 2, 3, 16, 16).expand(2, 2, 3, 16, 16)    # direct encoding: one frame repeated
    for i, stage in enumerate(stem.stages):
        h = stage(h)
        assert h[0].is_contiguous(memory_format=torch.channels_last) and h.stride(0) == h[0].numel(), i
    tokens = stem(torch.randn(2, 2, 3, 16, 16))
    assert tokens.is_contiguous()     # channels-last maps flatten to (T, B, N, D) tokens without a copy


@pytest.mark.parametrize("kwargs", [{}, {"stem": "scs"}, {"pool_position": "before_lif"}, {"attn_order": "(qk)v"}])
def test_model_scan_equals_step(kwargs):
    model = tiny(**kwargs).eval()
    calibrate(model)
    x = torch.randn(3, 2, 3, 16, 16)
    logits_scan, _ = model.scan(x)
    state = model.init_state((2, 3, 16, 16))
    steps = []
    for t in range(3):
        y_t, state = model.step(x[t], state)
        steps.append(y_t)
    assert isinstance(state, SpikformerState) and isinstance(state.stem, SpikingPatchStemState)
    assert all(isinstance(b, SpikformerBlockState) for b in state.blocks)
    torch.testing.assert_close(torch.stack(steps), logits_scan, rtol=1e-5, atol=1e-5)
    # forward = head on the mean over T and tokens = mean of per-step logits
    torch.testing.assert_close(model(x), logits_scan.mean(0), rtol=1e-5, atol=1e-5)
    # a static image is repeated T times
    torch.testing.assert_close(model(x[0]), model(x[0].expand(3, *x[0].shape)), rtol=0, atol=0)


def test_block_and_mlp_scan_equal_step():
    torch.manual_seed(0)
    block = SpikformerBlock(16, num_heads=2, backend="reference").eval()
    calibrate(block)
    x = (torch.rand(3, 2, 5, 16) < 0.5).float()
    y, _ = block.scan(x)
    state = block.init_state((2, 5, 16))
    ys = []
    for t in range(3):
        y_t, state = block.step(x[t], state)
        ys.append(y_t)
    assert isinstance(state, SpikformerBlockState) and isinstance(state.attn, SSAState)
    assert isinstance(state.mlp, SpikingMLPState) and state.mlp.lif1.v.shape == (2, 5, 64)
    assert torch.equal(torch.stack(ys), y)
    assert (y >= x).all()  # residual stream of spike counts only grows
    mlp = SpikingMLP(16, 32, backend="reference").eval()
    calibrate(mlp)
    y2, s2 = mlp.scan(x)
    assert isinstance(s2, SpikingMLPState) and s2.lif2.v.shape == (2, 5, 16)
    assert torch.equal(torch.cat([mlp.scan(x[:1])[0], mlp.scan(x[1:], mlp.scan(x[:1])[1])[0]]), y2)


def test_every_parameter_gets_a_gradient():
    model = tiny(bias=True, num_heads=1).train()
    with torch.no_grad():  # gains that make the attention LIF fire with 16 tokens (see test_ssa)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.weight.fill_(4.0)
    x = torch.randn(2, 3, 16, 16)
    y = model(x)
    (y * torch.randn_like(y)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match=r"4 or 5 dims"):
        model(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=r"C=3"):
        model(torch.zeros(2, 1, 16, 16))
    with pytest.raises(TypeError, match="dtype"):
        model(torch.zeros(2, 3, 16, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="no empty dim"):
        model(torch.zeros(0, 2, 3, 16, 16))
    with pytest.raises(ValueError, match="x must have 5 dims"):
        model.scan(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="x_t must have 4 dims"):
        model.step(torch.zeros(1, 2, 3, 16, 16), None)
    with pytest.raises(ValueError, match="patch_size"):
        tiny(patch_size=3)
    with pytest.raises(ValueError, match="stem"):
        tiny(stem="vit")
    with pytest.raises(ValueError, match="embed_dim"):
        tiny(embed_dim=12)
    with pytest.raises(ValueError, match="pool_position"):
        ConvBNLIF(3, 8, pool=True, pool_position="middle")
    with pytest.raises(ValueError, match="T must be"):
        tiny(T=0)


def test_converter_rejects_unknown_keys():
    with pytest.raises(KeyError, match="no neurostep name"):
        convert_spikingjelly_state_dict({"blocks.0.attn.q_conv.weight": torch.zeros(4, 4, 1)})


def _import_spikingjelly_spikformer() -> types.ModuleType:
    pytest.importorskip("spikingjelly")
    # spikingjelly 2.0's model package imports its distributed tooling, which imports h5py at the
    # top (for checkpoint files the model never touches). h5py is not a neurostep dependency: a
    # placeholder satisfies that import and is removed again so nothing else can mistake it.
    stub = None
    try:
        import h5py  # noqa: F401
    except ImportError:
        stub = sys.modules["h5py"] = types.ModuleType("h5py")
    try:
        from spikingjelly.activation_based.model import spikformer
    finally:
        if stub is not None and sys.modules.get("h5py") is stub:
            del sys.modules["h5py"]
    return spikformer


@pytest.mark.peers
@pytest.mark.parametrize(("patch_size", "backend"), [(4, "cpu"), (16, "reference")])
def test_matches_spikingjelly_spikformer(patch_size, backend):
    sj_spikformer = _import_spikingjelly_spikformer()
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based import neuron as sj_neuron

    torch.manual_seed(0)
    T, dim = 3, 32
    img = 32 if patch_size == 4 else 64  # 64 and 16 tokens: enough for the attention LIF to fire
    theirs = sj_spikformer.Spikformer(T=T, in_channels=3, img_size_h=img, img_size_w=img, patch_size=patch_size,
                                      num_classes=7, embed_dims=dim, num_heads=2, mlp_ratio=4.0, depths=2)
    # eval-mode BN with the statistics of one training-mode batch (momentum None: the cumulative
    # average of one batch is that batch), and gains that make every layer, attention included, fire
    g = torch.Generator().manual_seed(1)
    for m in theirs.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.momentum = None
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 2.0 + 2.0)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
    x = torch.randn(4, 3, img, img)
    theirs.train()
    with torch.no_grad():
        theirs(x)
    functional.reset_net(theirs)
    theirs.eval()

    ours = Spikformer.from_spikingjelly(theirs, backend=backend).eval()

    # record every LIF output of both, in execution order
    their_spikes: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: their_spikes.append(out.detach()))
             for m in theirs.modules() if isinstance(m, sj_neuron.BaseNode)]
    our_spikes: list[torch.Tensor] = []
    for m in ours.modules():
        if isinstance(m, LIF):
            def recording_scan(u, state=None, _scan=m.scan):
                s, state = _scan(u, state)
                our_spikes.append(s.detach())
                return s, state
            m.scan = recording_scan

    with torch.no_grad():
        functional.reset_net(theirs)
        y_theirs = theirs(x)  # per-timestep logits (T, B, K)
        y_ours = ours(x)
    for h in hooks:
        h.remove()

    assert len(our_spikes) == len(their_spikes) == 5 + 5 * 2
    for i, (a, b) in enumerate(zip(our_spikes, their_spikes)):
        if i >= 5:  # token layers: ours (T, B, N, C); theirs (T, B, C, N), attention (T, B, H, d, N)
            b = b.reshape(b.shape[0], b.shape[1], -1, b.shape[-1]).transpose(-1, -2)
        assert a.shape == b.shape, i
        assert torch.equal(a, b), (i, (a != b).float().mean().item())
        assert 0 < a.mean() < 1, (i, a.mean().item())  # every layer fires, none saturates
    torch.testing.assert_close(y_ours, y_theirs.mean(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool_position", ["after_lif", "before_lif"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_repeated_frames_are_convolved_once(pool_position, momentum):
    """Direct encoding: T identical frames go through the first conv and BN once, with the same
    spikes, gradients and BN running statistics as T materialised copies."""
    import copy

    torch.manual_seed(0)
    once = ConvBNLIF(3, 8, pool=True, pool_position=pool_position, backend="reference")
    once.bn.momentum = momentum
    copies = copy.deepcopy(once)
    seen: list[int] = []
    once.conv.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    x = torch.randn(2, 3, 8, 8)
    repeated = x.unsqueeze(0).expand(4, *x.shape)
    for _ in range(2):  # two training steps: the running statistics accumulate
        a, _ = once.scan(repeated)
        b, _ = copies.scan(repeated.contiguous())
    assert seen == [2, 2]  # the batch, not 4 x the batch
    assert torch.equal(a, b) and a.sum() > 0
    a.sum().backward()
    b.sum().backward()
    for p, q in zip(once.parameters(), copies.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(once.bn.running_mean, copies.bn.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(once.bn.running_var, copies.bn.running_var, rtol=1e-6, atol=1e-7)
    assert once.bn.num_batches_tracked == copies.bn.num_batches_tracked == 2
