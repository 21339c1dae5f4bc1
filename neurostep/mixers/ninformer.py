"""NiNformer (Abdullah & Aydin): a network-in-network token mixer with dynamic gating.

The gating sub-layer is ``X + Linear_{d->d}(Xh) * MixerBlock(Xh)`` with ``Xh = LN(X)``: an entire
MLP-Mixer block (token MLP and channel MLP, each with its own LayerNorm and residual)
produces the values that a plain linear projection of the same input gates, without a
sigmoid. The second sub-layer is a pre-norm FFN. The token MLP fixes the sequence length: at
construction (``seq_len``), or on the first batch when ``seq_len`` is ``None`` (its weights are
then lazy, as in ``torch.nn.LazyLinear``), so the mixer drops into hosts that do not know the
token count in advance.

The mixer registered as ``"ninformer"`` (in :mod:`neurostep.models.mixers`) is the gating term
``Linear(x) * MixerBlock(x)`` (the caller owns the pre-norm and the residual, as around attention).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from neurostep.layers import MLP, LazyMLP, check_images, check_size, check_tokens, resolve_norm


class MixerBlock(nn.Module):
    """MLP-Mixer block ``(B, N, C) -> (B, N, C)``: ``x + TokenMLP(LN x)^T``, then ``x + ChannelMLP(LN x)``.

    Args:
        dim: channels ``C``.
        seq_len: tokens ``N`` (the token MLP's width); ``None`` sizes it on the first input.
        token_hidden: token-MLP hidden size.
        channel_hidden: channel-MLP hidden size.
    """

    def __init__(self, dim: int, seq_len: int | None, token_hidden: int, channel_hidden: int,
                 act_layer: str | type[nn.Module] = "gelu", norm_layer: str | type[nn.Module] = "layernorm") -> None:
        super().__init__()
        norm = resolve_norm(norm_layer)
        dim = check_size("dim", dim)
        self.norm_tokens = norm(dim)
        self.token_mlp: nn.Module = (LazyMLP(token_hidden, act_layer) if seq_len is None
                                     else MLP(check_size("seq_len", seq_len), token_hidden, act_layer))
        self.norm_channels = norm(dim)
        self.channel_mlp = MLP(dim, channel_hidden, act_layer)

    @property
    def seq_len(self) -> int | None:
        """Tokens ``N`` the token MLP is sized for; ``None`` until a lazy one has seen its first batch."""
        weight = self.token_mlp.fc1.weight
        return None if is_lazy(weight) else int(weight.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm_tokens(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm_channels(x))


class NiNGating(nn.Module):
    """NiNformer's gating token mixer ``Linear(x) * MixerBlock(x)``, ``(B, N, C) -> (B, N, C)`` with ``N = seq_len``.

    Args:
        dim: channels ``C``.
        seq_len: number of tokens (fixed by the token MLP); ``None`` takes the token count of
            the first batch (the token MLP's weights stay ``UninitializedParameter`` until then).
        d_ffn: hidden size of the inner token and channel MLPs (default ``2 * dim``).
    """

    def __init__(self, dim: int, seq_len: int | None = None, d_ffn: int | None = None,
                 act_layer: str | type[nn.Module] = "gelu", norm_layer: str | type[nn.Module] = "layernorm") -> None:
        super().__init__()
        self.dim = check_size("dim", dim)
        d_ffn = 2 * self.dim if d_ffn is None else check_size("d_ffn", d_ffn)
        self.gate = nn.Linear(self.dim, self.dim)
        self.mixer = MixerBlock(self.dim, seq_len, d_ffn, d_ffn, act_layer, norm_layer)

    @property
    def seq_len(self) -> int | None:
        """Tokens ``N`` this mixer takes; ``None`` until a lazily sized one has seen its first batch."""
        return self.mixer.seq_len

    def forward(self, x: torch.Tensor, grid_size: Sequence[int] | None = None) -> torch.Tensor:
        """``x``: ``(B, seq_len, C)`` -> ``(B, seq_len, C)``; ``grid_size`` is unused."""
        check_tokens(x, self.dim)
        n = self.seq_len
        if n is not None and x.shape[1] != n:
            raise ValueError(f"NiNGating was built for seq_len={n} tokens (its token MLP has that width), "
                             f"got x of shape {tuple(x.shape)}")
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
        img_size, patch_size = check_size("img_size", img_size), check_size("patch_size", patch_size)
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be divisible by patch_size={patch_size}")
        self.img_size, self.in_chans = img_size, check_size("in_chans", in_chans)
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.blocks = nn.Sequential(*[NiNBlock(dim, self.grid ** 2, d_ffn, act_layer, norm_layer)
                                      for _ in range(depth)])
        self.norm = resolve_norm(norm_layer)(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.in_chans, self.img_size)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens)).mean(1))
