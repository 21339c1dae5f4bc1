"""``mamba_ssm.ops.triton.layer_norm``: dropout + residual + LayerNorm / RMSNorm, fused API in PyTorch.

Mirrors mamba-ssm (``mamba_ssm/ops/triton/layer_norm.py`` at e9594ce; Apache-2.0, Copyright (c)
2024 Tri Dao): ``layer_norm_fn`` / ``rms_norm_fn`` with ``residual``, ``prenorm``,
``residual_in_fp32``, ``dropout_p``, ``rowscale``, the parallel ``x1``/``weight1``/``bias1`` branch and
``return_dropout_mask``; the ``RMSNorm`` module; ``layer_norm_linear_fn``. Upstream's Triton kernel
computes in fp32 whatever the input dtype; so does this (fp64 inputs stay fp64), with
``torch.nn.functional.rms_norm`` / ``layer_norm`` doing the normalisation and autograd the backward.
``layer_norm_ref`` / ``rms_norm_ref`` are upstream's references, transcribed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "LayerNormFn",
    "RMSNorm",
    "layer_norm_fn",
    "layer_norm_linear_fn",
    "layer_norm_ref",
    "rms_norm_fn",
    "rms_norm_ref",
]


def _ref(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm, dropout_mask,
         dropout_mask1, upcast, is_rms_norm):
    dtype = x.dtype
    if upcast:
        x = x.float()
        weight = weight.float()
        bias = bias.float() if bias is not None else None
        residual = residual.float() if residual is not None else residual
        x1 = x1.float() if x1 is not None else None
        weight1 = weight1.float() if weight1 is not None else None
        bias1 = bias1.float() if bias1 is not None else None
    if x1 is not None:
        assert rowscale is None, "rowscale is not supported with parallel LayerNorm"
    if rowscale is not None:
        x = x * rowscale[..., None]
    if dropout_p > 0.0:
        if dropout_mask is not None:
            x = x.masked_fill(~dropout_mask, 0.0) / (1.0 - dropout_p)
        else:
            x = F.dropout(x, p=dropout_p)
        if x1 is not None:
            if dropout_mask1 is not None:
                x1 = x1.masked_fill(~dropout_mask1, 0.0) / (1.0 - dropout_p)
            else:
                x1 = F.dropout(x1, p=dropout_p)
    if x1 is not None:
        x = x + x1
    if residual is not None:
        x = (x + residual).to(x.dtype)
    if is_rms_norm:
        rstd = 1 / torch.sqrt((x.square()).mean(dim=-1, keepdim=True) + eps)
        out = ((x * rstd * weight) + bias if bias is not None else (x * rstd * weight)).to(dtype)
    else:
        out = F.layer_norm(x.to(weight.dtype), x.shape[-1:], weight=weight, bias=bias, eps=eps).to(dtype)
    if weight1 is None:
        return out if not prenorm else (out, x)
    if is_rms_norm:
        out1 = ((x * rstd * weight1) + bias1 if bias1 is not None else (x * rstd * weight1)).to(dtype)
    else:
        out1 = F.layer_norm(x.to(weight1.dtype), x.shape[-1:], weight=weight1, bias=bias1, eps=eps).to(dtype)
    return (out, out1) if not prenorm else (out, out1, x)


def layer_norm_ref(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6, dropout_p=0.0,
                   rowscale=None, prenorm=False, dropout_mask=None, dropout_mask1=None, upcast=False):
    return _ref(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm, dropout_mask,
                dropout_mask1, upcast, is_rms_norm=False)


def rms_norm_ref(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6, dropout_p=0.0,
                 rowscale=None, prenorm=False, dropout_mask=None, dropout_mask1=None, upcast=False):
    return _ref(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm, dropout_mask,
                dropout_mask1, upcast, is_rms_norm=True)


def _normalize(h, weight, bias, eps, is_rms_norm):
    n = (h.shape[-1],)
    w = None if weight is None else weight.to(h.dtype)
    b = None if bias is None else bias.to(h.dtype)
    if is_rms_norm:
        y = F.rms_norm(h, n, w, eps)
        return y if b is None else y + b
    return F.layer_norm(h, n, w, b, eps)


def layer_norm_fn(
    x,
    weight,
    bias,
    residual=None,
    x1=None,
    weight1=None,
    bias1=None,
    eps=1e-6,
    dropout_p=0.0,
    rowscale=None,
    prenorm=False,
    residual_in_fp32=False,
    is_rms_norm=False,
    return_dropout_mask=False,
):
    """``norm(dropout(x * rowscale) + dropout(x1) + residual)``; with ``prenorm`` also the pre-norm sum.

    The sum (``residual_out``) is kept in ``residual``'s dtype, else fp32 with ``residual_in_fp32``,
    else ``x``'s dtype; outputs have ``x``'s dtype. Returns like upstream: ``y``, ``(y, y1)`` with
    ``weight1``, plus ``residual_out`` with ``prenorm``, plus the two dropout masks with
    ``return_dropout_mask``.
    """
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    if x1 is not None:
        if x1.shape != x.shape:
            raise ValueError(f"x1 must have x's shape {tuple(x.shape)}, got {tuple(x1.shape)}")
        if rowscale is not None:
            raise ValueError("rowscale is not supported with parallel LayerNorm")
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"weight must have shape ({x.shape[-1]},), got {tuple(weight.shape)}")
    residual_dtype = residual.dtype if residual is not None else (torch.float32 if residual_in_fp32 else None)
    cdtype = torch.float64 if torch.float64 in (x.dtype, weight.dtype) else torch.float32
    h = x.to(cdtype)
    if rowscale is not None:
        h = h * rowscale.reshape(x.shape[:-1]).to(cdtype)[..., None]
    mask = mask1 = None
    if dropout_p > 0.0:
        mask = torch.rand_like(h) > dropout_p
        h = torch.where(mask, h / (1.0 - dropout_p), h.new_zeros(()))
    if x1 is not None:
        h1 = x1.to(cdtype)
        if dropout_p > 0.0:
            mask1 = torch.rand_like(h1) > dropout_p
            h1 = torch.where(mask1, h1 / (1.0 - dropout_p), h1.new_zeros(()))
        h = h + h1
    if residual is not None:
        h = h + residual.to(cdtype)
    stores_residual = (residual is not None or (residual_dtype is not None and residual_dtype != x.dtype)
                       or dropout_p > 0.0 or rowscale is not None or x1 is not None)
    residual_out = h.to(residual_dtype if residual_dtype is not None else x.dtype) if stores_residual else x
    y = _normalize(h, weight, bias, eps, is_rms_norm).to(x.dtype)
    outs = [y]
    if weight1 is not None:
        outs.append(_normalize(h, weight1, bias1, eps, is_rms_norm).to(x.dtype))
    if prenorm:
        outs.append(residual_out)
    if return_dropout_mask:
        outs += [mask, mask1]
    return outs[0] if len(outs) == 1 else tuple(outs)


def rms_norm_fn(
    x,
    weight,
    bias,
    residual=None,
    x1=None,
    weight1=None,
    bias1=None,
    eps=1e-6,
    dropout_p=0.0,
    rowscale=None,
    prenorm=False,
    residual_in_fp32=False,
    return_dropout_mask=False,
):
    """:func:`layer_norm_fn` with ``is_rms_norm=True``."""
    return layer_norm_fn(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm,
                         residual_in_fp32, True, return_dropout_mask)


class LayerNormFn:
    """Upstream's autograd Function name, for code that calls ``LayerNormFn.apply(...)``."""

    apply = staticmethod(layer_norm_fn)


class RMSNorm(torch.nn.Module):

    def __init__(self, hidden_size, eps=1e-5, dropout_p=0.0, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.eps = eps
        if dropout_p > 0.0:
            self.drop = torch.nn.Dropout(dropout_p)
        else:
            self.drop = None
        self.weight = torch.nn.Parameter(torch.empty(hidden_size, **factory_kwargs))
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        torch.nn.init.ones_(self.weight)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return rms_norm_fn(
            x,
            self.weight,
            self.bias,
            residual=residual,
            eps=self.eps,
            dropout_p=self.drop.p if self.drop is not None and self.training else 0.0,
            prenorm=prenorm,
            residual_in_fp32=residual_in_fp32,
        )


def layer_norm_linear_fn(
    x,
    norm_weight,
    norm_bias,
    linear_weight,
    linear_bias,
    residual=None,
    eps=1e-6,
    prenorm=False,
    residual_in_fp32=False,
    is_rms_norm=False,
):
    """Norm then ``F.linear`` (the norm output cast to the linear weight's dtype, as upstream)."""
    res = layer_norm_fn(x, norm_weight, norm_bias, residual=residual, eps=eps, prenorm=True,
                        residual_in_fp32=residual_in_fp32, is_rms_norm=is_rms_norm)
    y, residual_out = res
    out = F.linear(y.to(linear_weight.dtype), linear_weight, linear_bias)
    return out if not prenorm else (out, residual_out)
