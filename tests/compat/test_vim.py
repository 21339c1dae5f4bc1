"""Vision Mamba's model code (hustvl/Vim ``vim/models_mamba.py``), unchanged, on a CPU through neurostep.compat.

The upstream file is executed byte for byte (see ``tests/compat/vim/README.md``) after
``neurostep.compat.install()``; its ``mamba_ssm`` imports (``Mamba`` with the fork's ``bimamba_type``,
``RMSNorm``, ``rms_norm_fn``, ``layer_norm_fn``, ``GenerationMixin``, the hub loaders) resolve to the
stand-ins. The checks: the model builds with Vim's own configurations, its parameters carry the
names of Vim's checkpoints, forward and backward run, and the output equals the same model run
through PyTorch references of the fused functions (upstream's ``selective_scan_ref`` and
``causal_conv1d_ref``) instead of neurostep's kernels.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import neurostep.compat
from neurostep.compat.causal_conv1d.causal_conv1d_interface import causal_conv1d_ref
from neurostep.compat.mamba_ssm.modules import mamba_simple
from neurostep.compat.mamba_ssm.ops.selective_scan_interface import selective_scan_ref
from neurostep.compat.mamba_ssm.ops.triton.layer_norm import layer_norm_ref, rms_norm_ref

UPSTREAM = Path(__file__).parent / "vim" / "models_mamba.py.upstream"
SHA256 = "f32a57266f9c5e2824f51cded579f6a5eb722001d5f1cad3ea7e7179ab55f0f5"


@pytest.fixture(scope="module")
def vim():
    """Vision Mamba's ``models_mamba`` module, imported with the stand-ins installed."""
    assert hashlib.sha256(UPSTREAM.read_bytes()).hexdigest() == SHA256, "the upstream file must stay verbatim"
    saved = {name: sys.modules.get(name) for name in ("rope", "models_mamba")}
    sys.modules["rope"] = types.ModuleType("rope")  # Vim's rotary embedding (needs einops); unused with if_rope=False
    neurostep.compat.install()
    try:
        loader = importlib.machinery.SourceFileLoader("models_mamba", str(UPSTREAM))
        spec = importlib.util.spec_from_loader("models_mamba", loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules["models_mamba"] = module  # as `import models_mamba` would (timm's register_model looks it up)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm's deprecated import paths, model re-registration
            loader.exec_module(module)
        yield module
    finally:
        neurostep.compat.uninstall()
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


# vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2, shrunk (image, width, depth)
TINY = dict(img_size=32, patch_size=8, stride=8, embed_dim=32, depth=4, rms_norm=True, residual_in_fp32=True,
            fused_add_norm=True, final_pool_type='mean', if_abs_pos_embed=True, if_rope=False, if_rope_residual=False,
            bimamba_type="v2", if_cls_token=True, if_divide_out=True, use_middle_cls_token=True, num_classes=10,
            drop_path_rate=0.0)


def test_imports_resolve_to_the_stand_ins(vim):
    assert vim.Mamba is mamba_simple.Mamba
    assert vim.RMSNorm is not None and vim.rms_norm_fn is not None and vim.layer_norm_fn is not None
    assert vim.GenerationMixin.__module__ == "neurostep.compat.mamba_ssm.utils.generation"


def test_registered_constructor_runs_vim_tiny(vim):
    """Vim-Tiny as the paper trains it (24 layers, width 192, 224 x 224 images), one forward pass."""
    torch.manual_seed(0)
    model = vim.vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2(num_classes=10)
    mixer = model.layers[0].mixer
    assert (mixer.d_model, mixer.d_state, mixer.bimamba_type, mixer.if_divide_out) == (192, 16, "v2", True)
    assert len(model.layers) == 24 and model.patch_embed.num_patches == 196
    with torch.no_grad():
        logits = model.eval()(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()


def test_checkpoint_names(vim):
    model = vim.VisionMamba(**TINY)
    keys = set(model.state_dict())
    mixer = ["in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
             "A_log", "D", "A_b_log", "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight",
             "dt_proj_b.bias", "D_b", "out_proj.weight"]
    for layer in range(TINY["depth"]):
        for name in mixer:
            assert f"layers.{layer}.mixer.{name}" in keys
        assert f"layers.{layer}.norm.weight" in keys
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "norm_f.weight", "head.weight"} <= keys
    s4d_real = torch.log(torch.arange(1, 17, dtype=torch.float32).repeat(64, 1))  # the fork's init of A_b_log
    assert torch.equal(model.layers[0].mixer.A_b_log.detach(), s4d_real)


def _mamba_inner_no_out_proj_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B=None, C=None,
                                 D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None, delta_softplus=True):
    """Vim's fused function, written with upstream's PyTorch references only."""
    L = xz.shape[-1]
    rank = delta_proj_weight.shape[1]
    n = A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_ref(x, conv1d_weight[:, 0, :], conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)
    delta = (x_dbl[..., :rank] @ delta_proj_weight.t()).transpose(1, 2)
    B = x_dbl[..., rank:rank + n].transpose(1, 2)
    C = x_dbl[..., -n:].transpose(1, 2)
    assert delta.shape[-1] == L
    return selective_scan_ref(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)


def _rms_norm_fn_ref(x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6, **kwargs):
    out = rms_norm_ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm, upcast=True)
    if not prenorm:
        return out.to(x.dtype)
    y, res = out
    return y.to(x.dtype), (res.float() if residual_in_fp32 else res.to(x.dtype))


def _layer_norm_fn_ref(x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6, **kwargs):
    out = layer_norm_ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm, upcast=True)
    if not prenorm:
        return out.to(x.dtype)
    y, res = out
    return y.to(x.dtype), (res.float() if residual_in_fp32 else res.to(x.dtype))


@pytest.mark.parametrize("config", [
    dict(TINY),
    dict(TINY, bimamba_type="v1", if_divide_out=False, use_middle_cls_token=False, final_pool_type="none"),
    dict(TINY, rms_norm=False, fused_add_norm=True, if_cls_token=False, if_bidirectional=True),
    dict(TINY, bimamba_type="none", fused_add_norm=False, init_layer_scale=0.5),
], ids=["v2-midcls", "v1-headcls", "layernorm-bidirectional", "none-unfused-layerscale"])
def test_forward_backward_match_the_references(vim, config, monkeypatch):
    torch.manual_seed(0)
    model = vim.VisionMamba(**config)
    images = torch.randn(2, 3, 32, 32)
    logits = model(images)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert "layers.0.mixer.A_log" in grads
    if config["bimamba_type"] != "none":
        assert grads["layers.0.mixer.A_b_log"].abs().sum() > 0

    # The same model through PyTorch references instead of neurostep's kernels.
    monkeypatch.setattr(mamba_simple, "mamba_inner_fn_no_out_proj", _mamba_inner_no_out_proj_ref)
    monkeypatch.setattr(mamba_simple, "bimamba_inner_fn", _bimamba_inner_ref)
    monkeypatch.setattr(mamba_simple, "mamba_inner_fn", _mamba_inner_ref)
    monkeypatch.setattr(vim, "rms_norm_fn", _rms_norm_fn_ref)
    monkeypatch.setattr(vim, "layer_norm_fn", _layer_norm_fn_ref)
    model.zero_grad()
    ref = model(images)
    ref.square().sum().backward()
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-3, atol=1e-4, msg=name)


def _mamba_inner_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                     out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                     delta_softplus=True):
    y = _mamba_inner_no_out_proj_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D,
                                     delta_bias, delta_softplus=delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def _bimamba_inner_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                       out_proj_bias, A, A_b, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None,
                       C_proj_bias=None, delta_softplus=True):
    L = xz.shape[-1]
    rank = delta_proj_weight.shape[1]
    n = A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_ref(x, conv1d_weight[:, 0, :], conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)
    delta = (x_dbl[..., :rank] @ delta_proj_weight.t()).transpose(1, 2)
    B = x_dbl[..., rank:rank + n].transpose(1, 2)
    C = x_dbl[..., -n:].transpose(1, 2)
    assert delta.shape[-1] == L
    y = selective_scan_ref(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True)
    y_b = selective_scan_ref(x.flip(-1), delta.flip(-1), A_b, B.flip(-1), C.flip(-1), D, z=z.flip(-1),
                             delta_bias=delta_bias, delta_softplus=True)
    return F.linear((y + y_b.flip(-1)).transpose(1, 2), out_proj_weight, out_proj_bias)
