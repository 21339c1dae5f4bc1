"""neurostep.compat's modules: Mamba / Mamba2 fused and unfused paths agree, decoding with the in-place
cache reproduces the parallel forward, the language model generates with Mamba-1 layers and an MLP,
and what is not offered refuses clearly."""

from __future__ import annotations

import pytest
import torch

from neurostep.compat.mamba_ssm.models.config_mamba import MambaConfig
from neurostep.compat.mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
from neurostep.compat.mamba_ssm.modules.block import Block
from neurostep.compat.mamba_ssm.modules.mamba2 import Mamba2
from neurostep.compat.mamba_ssm.modules.mamba3 import Mamba3
from neurostep.compat.mamba_ssm.modules.mamba_simple import Mamba
from neurostep.compat.mamba_ssm.ops.triton.layer_norm import RMSNorm
from neurostep.compat.mamba_ssm.utils.generation import InferenceParams


def _decode_matches_forward(mixer, x, prompt, **forward_kwargs):
    """Prefill ``prompt`` tokens into the cache, then one token at a time; compare with one forward pass."""
    params = InferenceParams(max_seqlen=x.shape[1], max_batch_size=x.shape[0])
    with torch.no_grad():
        full = mixer(x, **forward_kwargs)
        outs = [mixer(x[:, :prompt], inference_params=params)]
        for t in range(prompt, x.shape[1]):
            params.seqlen_offset = t
            outs.append(mixer(x[:, t:t + 1], inference_params=params))
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-4, atol=1e-5)
    return params


def test_mamba_parameters_follow_upstream():
    torch.manual_seed(0)
    m = Mamba(d_model=40, d_state=8, d_conv=3, expand=2, layer_idx=0)
    shapes = {name: tuple(p.shape) for name, p in m.named_parameters()}
    assert shapes == {"in_proj.weight": (160, 40), "conv1d.weight": (80, 1, 3), "conv1d.bias": (80,),
                      "x_proj.weight": (3 + 16, 80), "dt_proj.weight": (80, 3), "dt_proj.bias": (80,),
                      "A_log": (80, 8), "D": (80,), "out_proj.weight": (40, 80)}
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert torch.equal(m.A_log, torch.log(torch.arange(1, 9.0)).repeat(80, 1))
    assert m.dt_proj.bias._no_reinit and m.A_log._no_weight_decay
    assert abs(m.dt_proj.weight).max() <= 3 ** -0.5


@pytest.mark.parametrize("bimamba_type", ["none", "v1", "v2"])
def test_mamba_fast_path_equals_unfused_path(bimamba_type):
    torch.manual_seed(0)
    m = Mamba(d_model=16, d_state=4, bimamba_type=bimamba_type, if_divide_out=True, layer_idx=0)
    x = torch.randn(2, 11, 16, requires_grad=True)
    fast = m(x)
    fast.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    if bimamba_type != "none":
        assert grads["A_b_log"].abs().sum() > 0
    if bimamba_type == "none":  # the unfused path is upstream's single-direction scan
        m.zero_grad()
        m.use_fast_path = False
        slow = m(x)
        slow.square().sum().backward()
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
        for n, p in m.named_parameters():
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer_scale", [None, 0.3])
def test_mamba_decode_equals_forward(layer_scale):
    torch.manual_seed(0)
    m = Mamba(d_model=16, d_state=4, d_conv=4, layer_idx=3, init_layer_scale=layer_scale)
    params = _decode_matches_forward(m, torch.randn(3, 9, 16), prompt=2)  # prompt shorter than d_conv
    conv_state, ssm_state = params.key_value_memory_dict[3]
    assert conv_state.shape == (3, 32, 4) and ssm_state.shape == (3, 32, 4)


@pytest.mark.parametrize("variant", ["default", "ngroups2_Dhdim_mlp", "no_rmsnorm_dtlimit"])
def test_mamba2_paths_and_decode(variant):
    torch.manual_seed(0)
    kwargs = dict(d_model=32, d_state=8, headdim=8, layer_idx=0)
    if variant == "ngroups2_Dhdim_mlp":
        kwargs.update(ngroups=2, D_has_hdim=True, d_ssm=32, norm_before_gate=True)
    elif variant == "no_rmsnorm_dtlimit":
        kwargs.update(rmsnorm=False, dt_limit=(0.01, 0.5))
    m = Mamba2(**kwargs)
    x = torch.randn(2, 13, 32, requires_grad=True)
    fused = m(x)
    m.use_mem_eff_path = False
    unfused = m(x)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(fused.square().sum(), x)[0]
    g2 = torch.autograd.grad(unfused.square().sum(), x)[0]
    torch.testing.assert_close(g, g2, rtol=1e-4, atol=1e-5)
    # the (batch * seqlen, dim) calling convention of sequence parallelism
    torch.testing.assert_close(m(x.reshape(-1, 32), seqlen=13).reshape(2, 13, 32), unfused, rtol=1e-5, atol=1e-5)
    _decode_matches_forward(m, x.detach(), prompt=5)


def test_mamba2_refuses_tensor_parallelism():
    with pytest.raises(NotImplementedError, match="process_group"):
        Mamba2(d_model=32, process_group=object())


@pytest.mark.parametrize("d_intermediate", [0, 48])
def test_lm_generation_mamba1(d_intermediate):
    """Upstream's test_generation with Mamba-1 layers (the default ``ssm_cfg``), with and without the MLP."""
    config = MambaConfig(d_model=32, n_layer=2, d_intermediate=d_intermediate, vocab_size=100,
                         ssm_cfg=dict(d_state=8), rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
                         pad_vocab_size_multiple=16)
    torch.manual_seed(2357)
    model = MambaLMHeadModel(config)
    assert model.lm_head.weight is model.backbone.embedding.weight and model.lm_head.weight.shape == (112, 32)
    x = torch.randint(0, 100, (3, 16))
    out_ref = model(x).logits
    out = model.generate(input_ids=x[:, :6], max_length=16, output_scores=True, return_dict_in_generate=True,
                         cg=True, teacher_outputs=x)
    torch.testing.assert_close(torch.stack(out.scores, dim=1), out_ref[:, 5:-1], rtol=1e-4, atol=1e-4)
    assert torch.equal(out.sequences, x)
    sampled = model.generate(x[:, :4], max_length=9, top_k=5, top_p=0.9, temperature=0.7)
    assert sampled.shape == (3, 9) and torch.equal(sampled[:, :4], x[:, :4])
    greedy = model.generate(x[:, :4], max_length=9)
    assert torch.equal(greedy[:, 4], model(x[:, :4]).logits[:, -1].argmax(-1))


def test_lm_unfused_norm_and_layernorm_configs_agree_with_fused():
    torch.manual_seed(0)
    for rms in (True, False):
        config = MambaConfig(d_model=16, n_layer=2, vocab_size=50, rms_norm=rms, fused_add_norm=True,
                             residual_in_fp32=True)
        fused = MambaLMHeadModel(config)
        config_unfused = MambaConfig(**{**config.__dict__, "fused_add_norm": False})
        unfused = MambaLMHeadModel(config_unfused)
        unfused.load_state_dict(fused.state_dict())
        x = torch.randint(0, 50, (2, 7))
        torch.testing.assert_close(fused(x).logits, unfused(x).logits, rtol=1e-5, atol=1e-5)


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=40))
    model.save_pretrained(tmp_path)
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    again = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=40))
    again.load_state_dict(state)
    x = torch.randint(0, 40, (1, 5))
    torch.testing.assert_close(again(x).logits, model(x).logits)


def test_block_is_upstreams_prenorm_residual_block():
    torch.manual_seed(0)
    block = Block(16, lambda d: Mamba(d, d_state=4, layer_idx=0), torch.nn.Identity,
                  norm_cls=lambda d: RMSNorm(d, eps=1e-5), fused_add_norm=True, residual_in_fp32=True)
    h, r = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    out, residual = block(h, r)
    torch.testing.assert_close(residual, h + r)
    expected_in = (h + r) * torch.rsqrt((h + r).square().mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(out, block.mixer(expected_in), rtol=1e-5, atol=1e-5)


def test_what_is_not_offered_refuses_clearly():
    with pytest.raises(NotImplementedError, match="Mamba3"):
        Mamba3(d_model=16)
    with pytest.raises(NotImplementedError, match="flash-attn"):
        MambaLMHeadModel(MambaConfig(d_model=16, n_layer=2, vocab_size=40, attn_layer_idx=[1],
                                     attn_cfg=dict(num_heads=2)))
    with pytest.raises(NotImplementedError, match="Mamba3"):
        MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=40, ssm_cfg=dict(layer="Mamba3")))
    with pytest.raises(ValueError, match="bimamba_type"):
        Mamba(16, bimamba_type="v3")


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_half_precision_models_run_and_decode(layer):
    """fp16/bf16 models (upstream's usual dtypes) run on CPU; the kernels accumulate in fp32."""
    ssm_cfg = dict(layer="Mamba2", d_state=16, headdim=16) if layer == "Mamba2" else {}
    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(d_model=64, n_layer=2, vocab_size=100, ssm_cfg=ssm_cfg),
                             dtype=torch.bfloat16)
    x = torch.randint(0, 100, (2, 12))
    ref = model(x).logits
    out = model.generate(x[:, :4], max_length=12, output_scores=True, return_dict_in_generate=True,
                         teacher_outputs=x)
    scores = torch.stack(out.scores, dim=1)
    assert ref.dtype == scores.dtype == torch.bfloat16
    torch.testing.assert_close(scores.float(), ref[:, 3:-1].float(), rtol=2e-2, atol=2e-2)
    ref.float().square().mean().backward()
    assert model.backbone.layers[0].mixer.in_proj.weight.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_cached_states_follow_the_batch_size(cls):
    """A decode cache made for one batch size is not reused for another: states are reallocated."""
    from neurostep.compat.mamba_ssm.utils.generation import InferenceParams

    kwargs = {"headdim": 16} if cls is Mamba2 else {}
    layer = cls(32, layer_idx=0, **kwargs)
    params = InferenceParams(max_seqlen=8, max_batch_size=3)
    conv2, ssm2 = layer._get_states_from_cache(params, 2)
    assert conv2.shape[0] == 2 and ssm2.shape[0] == 2
    assert layer._get_states_from_cache(params, 2)[0] is conv2  # same batch: the cache is reused
    conv3, ssm3 = layer._get_states_from_cache(params, 3)
    assert conv3.shape[0] == 3 and ssm3.shape[0] == 3
