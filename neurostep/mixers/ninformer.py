"""NiNformer (Abdullah & Aydin): a network-in-network token mixer with dynamic gating.

The gating sub-layer is ``X + Linear_{d->d}(Xh) * MixerBlock(Xh)`` with ``Xh = LN(X)``: an entire
MLP-Mixer block (token MLP and channel MLP, each with its own LayerNorm and residual)
produces the values that a plain linear projection of the same input gates, without a
sigmoid. The second sub-layer is a pre-norm FFN. The token MLP fixes the sequence length at
construction.

The mixer registered as ``"ninformer"`` is the gating term ``Linear(x) * MixerBlock(x)`` (the
caller owns the pre-norm and the residual, as around attention).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from neurostep.engine.checks import check_tensor
from neurostep.layers import resolve_act, resolve_norm
from neurostep.mixers._tokens import check_tokens
from neurostep.models.registry import register_mixer


class MLP(nn.Module):
    """``Linear_{d->h} -> act -> Linear_{h->d}`` over the last dim, ``(..., d) -> (..., d)``."""

    def __init__(self, dim: int, hidden: int, act_layer: str | type[nn.Module] = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = resolve_act(act_layer)()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MixerBlock(nn.Module):
    """MLP-Mixer block ``(B, N, C) -> (B, N, C)``: ``x + TokenMLP(LN x)^T``, then ``x + ChannelMLP(LN x)``.

    Args:
        dim: channels ``C``.
        seq_len: tokens ``N`` (the token MLP's width; fixed).
        token_hidden: token-MLP hidden size.
        channel_hidden: channel-MLP hidden size.
    """

    def __init__(self, dim: int, seq_len: int, token_hidden: int, channel_hidden: int,
                 act_layer: str | type[nn.Module] = "gelu", norm_layer: str | type[nn.Module] = "layernorm") -> None:
        super().__init__()
        norm = resolve_norm(norm_layer)
        self.seq_len = seq_len
        self.norm_tokens = norm(dim)
        self.token_mlp = MLP(seq_len, token_hidden, act_layer)
        self.norm_channels = norm(dim)
        self.channel_mlp = MLP(dim, channel_hidden, act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm_tokens(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm_channels(x))


class NiNGating(nn.Module):
    """NiNformer's gating token mixer ``Linear(x) * MixerBlock(x)``, ``(B, N, C) -> (B, N, C)`` with ``N = seq_len``.

    Args:
        dim: channels ``C``.
        seq_len: number of tokens (fixed by the token MLP).
        d_ffn: hidden size of the inner token and channel MLPs.
    """

    def __init__(self, dim: int, seq_len: int, d_ffn: int | None = None,
                 act_layer: str | type[nn.Module] = "gelu", norm_layer: str | type[nn.Module] = "layernorm") -> None:
        super().__init__()
        if seq_len is None or int(seq_len) <= 0:
            raise ValueError(f"NiNGating needs a positive seq_len (its token MLP has fixed width), got {seq_len!r}")
        d_ffn = d_ffn or 2 * dim
        self.dim, self.seq_len = dim, int(seq_len)
        self.gate = nn.Linear(dim, dim)
        self.mixer = MixerBlock(dim, self.seq_len, d_ffn, d_ffn, act_layer, norm_layer)

    def forward(self, x: torch.Tensor, grid_size: Sequence[int] | None = None) -> torch.Tensor:
        """``x``: ``(B, seq_len, C)`` -> ``(B, seq_len, C)``; ``grid_size`` is unused."""
        check_tokens(x, self.dim)
        if x.shape[1] != self.seq_len:
            raise ValueError(f"NiNGating was built for seq_len={self.seq_len} tokens, got x of shape {tuple(x.shape)}")
        return self.gate(x) * self.mixer(x)


class NiNBlock(nn.Module):
    """NiNformer layer ``(B, N, C) -> (B, N, C)``: ``X + Gating(LN X)`` then ``X + FFN(LN X)``."""

    def __init__(self, dim: int, seq_len: int, d_ffn: int, act_layer: str | type[nn.Module] = "gelu",
                 norm_layer: str | type[nn.Module] = "layernorm") -> None:
        super().__init__()
        norm = resolve_norm(norm_layer)
        self.norm1 = norm(dim)
        self.gating = NiNGating(dim, seq_len, d_ffn, act_layer, norm_layer)
        self.norm2 = norm(dim)
        self.ffn = MLP(dim, d_ffn, act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gating(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class NiNformer(nn.Module):
    """NiNformer image classifier ``(B, 3, H, W) -> (B, num_classes)``.

    Non-overlapping ``patch_size`` patches embedded by a strided conv (no positional embedding:
    the token MLPs are position-aware), ``depth`` :class:`NiNBlock` layers, a final LayerNorm,
    mean over tokens and a linear head. CIFAR-10 default: 32px, patch 4 (64 tokens), d 256,
    d_ffn 512, 4 layers, 2.65M parameters.
    """

    def __init__(self, img_size: int = 32, patch_size: int = 4, in_chans: int = 3, num_classes: int = 10,
                 dim: int = 256, d_ffn: int = 512, depth: int = 4, act_layer: str | type[nn.Module] = "gelu",
                 norm_layer: str | type[nn.Module] = "layernorm") -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be divisible by patch_size={patch_size}")
        self.img_size, self.in_chans = img_size, in_chans
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.blocks = nn.Sequential(*[NiNBlock(dim, self.grid ** 2, d_ffn, act_layer, norm_layer)
                                      for _ in range(depth)])
        self.norm = resolve_norm(norm_layer)(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, ndim=4)
        expected = (self.in_chans, self.img_size, self.img_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens)).mean(1))


@register_mixer("ninformer", family="ninformer",
                note="NiNformer gating Linear(x) * MixerBlock(x); needs seq_len (fixed token count)")
def ninformer_mixer(dim: int, *, num_heads: int | None = None, seq_len: int | None = None,
                    grid_size: Sequence[int] | None = None, **options) -> NiNGating:
    """Mixer factory; ``seq_len`` (or ``grid_size``, whose product is used) is required."""
    if seq_len is None and grid_size is not None:
        g = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
        seq_len = g[0] * g[1]
    if seq_len is None:
        raise ValueError("mixer 'ninformer' needs seq_len= (its token MLP has a fixed number of tokens)")
    return NiNGating(dim, seq_len, **options)
