"""``mamba_ssm.ops.triton.layernorm_gated``: Mamba-2's gated, grouped RMSNorm / LayerNorm.

For ``x (..., d)``, an optional gate ``z`` of the same shape and groups of ``group_size``
consecutive channels (default: one group of ``d``)::

    norm_before_gate=True:   norm(x) * weight + bias, times silu(z)
    norm_before_gate=False:  norm(x * silu(z)) * weight + bias

with ``norm`` either RMSNorm or LayerNorm (without affine) inside each group. The arithmetic is
fp32 (fp64 for fp64 inputs) and the result comes back in ``x``'s dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerNorm", "RMSNorm", "layernorm_fn", "rms_norm_ref", "rmsnorm_fn"]


def rms_norm_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None, z: Tensor | None = None, eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = True, upcast: bool = True,
) -> Tensor:
    """Reference for :func:`rmsnorm_fn`, written out with ``mean`` and ``rsqrt``.

    With ``upcast`` (default) ``x`` and ``z`` are taken to fp32 first; weight and bias always are.
    """
    work = x.float() if upcast else x
    gate = None if z is None else F.silu(z.float() if upcast else z)
    if gate is not None and not norm_before_gate:
        work = work * gate
    width = work.shape[-1] if group_size is None else group_size
    grouped = work.unflatten(-1, (-1, width))
    scaled = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    y = scaled.flatten(-2) * weight.float()
    if bias is not None:
        y = y + bias.float()
    if gate is not None and norm_before_gate:
        y = y * gate
    return y.to(x.dtype)


def layernorm_fn(
    x: Tensor, weight: Tensor, bias: Tensor | None, z: Tensor | None = None, eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = True, is_rms_norm: bool = False,
) -> Tensor:
    """Gated, grouped LayerNorm (RMSNorm when ``is_rms_norm``) of ``x (..., d)``; see the module docstring.

    ``weight``, ``bias``: ``(d,)`` (``bias`` may be None); ``d`` must be a multiple of ``group_size``.
    """
    d = x.shape[-1]
    size = d if group_size is None else group_size
    if d % size:
        raise ValueError(f"group_size={size} does not divide the last dimension {d}")
    cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    h = x.to(cdtype)
    gate = None if z is None else F.silu(z.to(cdtype))
    if gate is not None and not norm_before_gate:
        h = h * gate
    groups = h.unflatten(-1, (d // size, size))
    if is_rms_norm:
        groups = F.rms_norm(groups, (size,), None, eps)
    else:
        groups = F.layer_norm(groups, (size,), None, None, eps)
    y = groups.flatten(-2) * weight.to(cdtype)
    if bias is not None:
        y = y + bias.to(cdtype)
    if gate is not None and norm_before_gate:
        y = y * gate
    return y.to(x.dtype)


def rmsnorm_fn(
    x: Tensor, weight: Tensor, bias: Tensor | None, z: Tensor | None = None, eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = True,
) -> Tensor:
    """:func:`layernorm_fn` with the RMS normalisation."""
    return layernorm_fn(x, weight, bias, z, eps, group_size, norm_before_gate, True)


class _GatedNorm(nn.Module):
    """Shared state of the two modules: ``weight (hidden_size,)`` (ones), optional ``bias`` (zeros)."""

    _rms = False

    def __init__(
        self, hidden_size: int, eps: float, group_size: int | None, norm_before_gate: bool, with_bias: bool,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        if with_bias:
            self.bias = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """``x``, ``z``: ``(..., hidden_size)``; see the module docstring for where the gate applies."""
        return layernorm_fn(x, self.weight, self.bias, z=z, eps=self.eps, group_size=self.group_size,
                            norm_before_gate=self.norm_before_gate, is_rms_norm=self._rms)


class LayerNorm(_GatedNorm):
    """Gated LayerNorm with ``weight`` and ``bias``; ``group_size`` channels per normalisation group."""

    def __init__(
        self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None, norm_before_gate: bool = True,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(hidden_size, eps, group_size, norm_before_gate, True, device, dtype)


class RMSNorm(_GatedNorm):
    """Gated RMSNorm with ``weight`` only (``bias`` is None); ``group_size`` channels per normalisation group."""

    _rms = True

    def __init__(
        self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None, norm_before_gate: bool = True,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(hidden_size, eps, group_size, norm_before_gate, False, device, dtype)
