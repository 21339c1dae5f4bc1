"""``mamba_ssm.modules.block``: the residual unit of ``MixerModel`` (a mixer, optionally followed by an MLP)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from neurostep.compat.mamba_ssm.ops.triton.layer_norm import RMSNorm, layer_norm_fn

__all__ = ["Block"]

if TYPE_CHECKING:
    from neurostep.compat.mamba_ssm.utils.generation import InferenceParams


class Block(nn.Module):
    """``residual += x; x = mixer(norm(residual))``, then the same with ``norm2`` / ``mlp`` when an MLP is given.

    The add precedes each norm so that the pair can run as one fused :func:`layer_norm_fn` call
    (``fused_add_norm``); this is why :meth:`forward` carries the residual stream separately
    from the sublayer output. ``mlp_cls=nn.Identity`` means no MLP (``self.mlp`` is None).
    Modules are built in the order ``norm``, ``mixer``, ``norm2``, ``mlp`` (the RNG order of
    seeded mamba-ssm models).
    """

    def __init__(
        self, dim: int, mixer_cls: Callable[[int], nn.Module], mlp_cls: Callable[[int], nn.Module],
        norm_cls: Callable[[int], nn.Module] = nn.LayerNorm, fused_add_norm: bool = False,
        residual_in_fp32: bool = False,
    ) -> None:
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.fused_add_norm = fused_add_norm
        self.norm = norm_cls(dim)
        self.mixer = mixer_cls(dim)
        if mlp_cls is nn.Identity:
            self.mlp = None
        else:
            self.norm2 = norm_cls(dim)
            self.mlp = mlp_cls(dim)
        if fused_add_norm and not isinstance(self.norm, (nn.LayerNorm, RMSNorm)):
            raise TypeError(f"fused_add_norm works with nn.LayerNorm or RMSNorm, not {type(self.norm).__name__}")

    def _add_norm(self, x: Tensor, residual: Tensor | None, norm: nn.Module) -> tuple[Tensor, Tensor]:
        """``residual + x`` (just ``x`` when ``residual`` is None) and its normalisation by ``norm``."""
        if self.fused_add_norm:
            return layer_norm_fn(x, norm.weight, norm.bias, residual=residual, prenorm=True,
                                 residual_in_fp32=self.residual_in_fp32, eps=norm.eps,
                                 is_rms_norm=isinstance(norm, RMSNorm))
        total = x if residual is None else x + residual
        normed = norm(total.to(norm.weight.dtype))
        return normed, total.float() if self.residual_in_fp32 else total

    def forward(
        self, hidden_states: Tensor, residual: Tensor | None = None, inference_params: InferenceParams | None = None,
        **mixer_kwargs: object,
    ) -> tuple[Tensor, Tensor]:
        """``hidden_states``, ``residual``: ``(B, L, dim)`` (``residual`` None in the first block).

        Extra keyword arguments go to the mixer. Returns the last sublayer's output and the
        residual stream (fp32 when ``residual_in_fp32``).
        """
        normed, residual = self._add_norm(hidden_states, residual, self.norm)
        out = self.mixer(normed, inference_params=inference_params, **mixer_kwargs)
        if self.mlp is not None:
            normed, residual = self._add_norm(out, residual, self.norm2)
            out = self.mlp(normed)
        return out, residual

    def allocate_inference_cache(
        self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None, **kwargs: object,
    ) -> tuple[Tensor, Tensor]:
        """The mixer's decode states (see its ``allocate_inference_cache``)."""
        return self.mixer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)
