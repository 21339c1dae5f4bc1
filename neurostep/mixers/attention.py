"""Multi-head softmax self-attention: the baseline every other mixer is compared with.

Registered as the mixer ``"softmax_attention"`` (in :mod:`neurostep.models.mixers`). It computes
``softmax(Q K^T / sqrt(d_h)) V`` per head through ``torch.nn.functional.scaled_dot_product_attention``
(the fast path) and keeps ``reference_forward`` (explicit softmax) next to it as the readable
ground truth that the tests compare against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from neurostep.layers import check_tokens, resolve_head_dim


class SoftmaxAttention(nn.Module):
    """Multi-head self-attention ``(B, N, C) -> (B, N, C)``.

    Args:
        dim: channels ``C``.
        num_heads: heads ``h``.
        head_dim: channels per head (default ``dim // num_heads``; EfficientMod uses ``max(C/8, 32)``).
        qkv_bias: bias on the fused QKV projection.
        proj_bias: bias on the output projection.
        causal: mask future tokens (token ``i`` sees tokens ``<= i``).
        attn_drop: dropout on the attention weights during training.
    """

    def __init__(self, dim: int, num_heads: int = 8, *, head_dim: int | None = None, qkv_bias: bool = True,
                 proj_bias: bool = True, causal: bool = False, attn_drop: float = 0.0) -> None:
        super().__init__()
        head_dim = resolve_head_dim(dim, num_heads, head_dim)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.causal = causal
        self.attn_drop = attn_drop
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim, bias=proj_bias)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # unbind, not three indexings: its backward stacks the three gradients into one tensor, where each
        # index's backward fills a zero tensor of all three and adds them up (same gradients, bit for bit;
        # 2-6% of the block's forward and backward at the main job's size)
        q, k, v = qkv.unbind(0)
        return q, k, v  # each (B, h, N, d_h)

    def forward(self, x: torch.Tensor, grid_size: Sequence[int] | None = None) -> torch.Tensor:
        """``x``: ``(B, N, C)`` -> ``(B, N, C)``. ``grid_size`` is accepted for the mixer contract and unused."""
        check_tokens(x, self.dim)
        q, k, v = self._qkv(x)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                                           is_causal=self.causal)
        return self.proj(y.transpose(1, 2).flatten(2))

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as ``forward`` (without dropout) with an explicit softmax: the readable ground truth."""
        check_tokens(x, self.dim)
        q, k, v = self._qkv(x)
        scores = q @ k.transpose(-1, -2) * self.head_dim ** -0.5
        if self.causal:
            n = x.shape[1]
            future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        y = scores.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).flatten(2))
