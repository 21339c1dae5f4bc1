"""``mamba_ssm.ops.triton.layer_norm``: residual add, dropout and LayerNorm / RMSNorm in one call.

:func:`layer_norm_fn` computes, row by row over the last axis::

    h = dropout(x * rowscale) + dropout(x1) + residual      (each term optional)
    y = norm(h) * weight + bias ;  y1 = norm(h) * weight1 + bias1   (second output optional)

and returns ``y`` (and ``y1``), plus ``h`` as the new residual with ``prenorm``. The arithmetic is
fp32 (fp64 for fp64 inputs), as a fused kernel would accumulate; ``F.rms_norm`` / ``F.layer_norm``
normalise and autograd differentiates. ``layer_norm_ref`` / ``rms_norm_ref`` are independent
plain-PyTorch oracles for the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LayerNormFn",
    "RMSNorm",
    "layer_norm_fn",
    "layer_norm_linear_fn",
    "layer_norm_ref",
    "rms_norm_fn",
    "rms_norm_ref",
]


def _maybe_float(t: torch.Tensor | None, upcast: bool) -> torch.Tensor | None:
    return t.float() if upcast and t is not None else t


def _apply_dropout(t: torch.Tensor, p: float, keep: torch.Tensor | None) -> torch.Tensor:
    """Inverted dropout; with ``keep`` (a bool mask) the given mask is used instead of a fresh draw."""
    if p <= 0.0:
        return t
    if keep is None:
        return F.dropout(t, p=p)
    return t.masked_fill(~keep, 0.0) / (1.0 - p)


def _reference_norm(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
                    is_rms_norm: bool, out_dtype: torch.dtype) -> torch.Tensor:
    if is_rms_norm:
        y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight
        if bias is not None:
            y = y + bias
    else:
        y = F.layer_norm(h.to(weight.dtype), h.shape[-1:], weight=weight, bias=bias, eps=eps)
    return y.to(out_dtype)


def _ref(
    x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None, x1: Tensor | None,
    weight1: Tensor | None, bias1: Tensor | None, eps: float,
    dropout_p: float, rowscale: Tensor | None, prenorm: bool, dropout_mask: Tensor | None,
    dropout_mask1: Tensor | None, upcast: bool,
    is_rms_norm: bool,
) -> Tensor | tuple[Tensor, ...]:
    """The reference for both norms; ``upcast`` computes everything in fp32."""
    if x1 is not None and rowscale is not None:
        raise ValueError("rowscale cannot be combined with the second input x1")
    weight, bias, weight1, bias1 = (_maybe_float(t, upcast) for t in (weight, bias, weight1, bias1))
    h = _maybe_float(x, upcast)
    if rowscale is not None:
        h = h * rowscale.unsqueeze(-1)
    h = _apply_dropout(h, dropout_p, dropout_mask)
    if x1 is not None:
        h = h + _apply_dropout(_maybe_float(x1, upcast), dropout_p, dropout_mask1)
    if residual is not None:
        h = (h + _maybe_float(residual, upcast)).to(h.dtype)
    outs = [_reference_norm(h, weight, bias, eps, is_rms_norm, x.dtype)]
    if weight1 is not None:
        outs.append(_reference_norm(h, weight1, bias1, eps, is_rms_norm, x.dtype))
    if prenorm:
        outs.append(h)
    return outs[0] if len(outs) == 1 else tuple(outs)


def layer_norm_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None = None, x1: Tensor | None = None,
    weight1: Tensor | None = None, bias1: Tensor | None = None, eps: float = 1e-6, dropout_p: float = 0.0,
    rowscale: Tensor | None = None, prenorm: bool = False, dropout_mask: Tensor | None = None,
    dropout_mask1: Tensor | None = None, upcast: bool = False,
) -> Tensor | tuple[Tensor, ...]:
    """Reference for :func:`layer_norm_fn` (``dropout_mask`` / ``dropout_mask1`` replay given masks)."""
    return _ref(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm, dropout_mask,
                dropout_mask1, upcast, is_rms_norm=False)


def rms_norm_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None = None, x1: Tensor | None = None,
    weight1: Tensor | None = None, bias1: Tensor | None = None, eps: float = 1e-6, dropout_p: float = 0.0,
    rowscale: Tensor | None = None, prenorm: bool = False, dropout_mask: Tensor | None = None,
    dropout_mask1: Tensor | None = None, upcast: bool = False,
) -> Tensor | tuple[Tensor, ...]:
    """Reference for :func:`rms_norm_fn` (``dropout_mask`` / ``dropout_mask1`` replay given masks)."""
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
    x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None = None, x1: Tensor | None = None,
    weight1: Tensor | None = None, bias1: Tensor | None = None, eps: float = 1e-6, dropout_p: float = 0.0,
    rowscale: Tensor | None = None, prenorm: bool = False, residual_in_fp32: bool = False, is_rms_norm: bool = False,
    return_dropout_mask: bool = False,
) -> Tensor | tuple[Tensor | None, ...]:
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
            raise ValueError("rowscale cannot be combined with the second input x1")
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
    x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None = None, x1: Tensor | None = None,
    weight1: Tensor | None = None, bias1: Tensor | None = None, eps: float = 1e-6, dropout_p: float = 0.0,
    rowscale: Tensor | None = None, prenorm: bool = False, residual_in_fp32: bool = False,
    return_dropout_mask: bool = False,
) -> Tensor | tuple[Tensor | None, ...]:
    """:func:`layer_norm_fn` with ``is_rms_norm=True``."""
    return layer_norm_fn(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm,
                         residual_in_fp32, True, return_dropout_mask)


class LayerNormFn:
    """``LayerNormFn.apply(...)`` is :func:`layer_norm_fn`."""

    apply = staticmethod(layer_norm_fn)


class RMSNorm(torch.nn.Module):
    """RMSNorm over the last axis with ``weight (hidden_size,)`` (ones) and no bias, through :func:`rms_norm_fn`.

    ``dropout_p > 0`` adds a ``drop`` module whose rate applies to the input in training mode.
    """

    def __init__(
        self, hidden_size: int, eps: float = 1e-5, dropout_p: float = 0.0, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.drop = torch.nn.Dropout(dropout_p) if dropout_p > 0.0 else None
        self.weight = torch.nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.ones_(self.weight)

    def forward(
        self, x: Tensor, residual: Tensor | None = None, prenorm: bool = False, residual_in_fp32: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``x (..., hidden_size)``; ``residual``, ``prenorm`` and ``residual_in_fp32`` as in :func:`layer_norm_fn`."""
        p = self.drop.p if self.drop is not None and self.training else 0.0
        return rms_norm_fn(x, self.weight, self.bias, residual=residual, eps=self.eps, dropout_p=p, prenorm=prenorm,
                           residual_in_fp32=residual_in_fp32)


def layer_norm_linear_fn(
    x: Tensor, norm_weight: Tensor, norm_bias: Tensor | None, linear_weight: Tensor, linear_bias: Tensor | None,
    residual: Tensor | None = None, eps: float = 1e-6, prenorm: bool = False, residual_in_fp32: bool = False,
    is_rms_norm: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Norm then ``F.linear`` (the norm output cast to the linear weight's dtype, as upstream)."""
    normed, new_residual = layer_norm_fn(x, norm_weight, norm_bias, residual=residual, eps=eps, prenorm=True,
                                         residual_in_fp32=residual_in_fp32, is_rms_norm=is_rms_norm)
    out = F.linear(normed.to(linear_weight.dtype), linear_weight, linear_bias)
    return (out, new_residual) if prenorm else out
