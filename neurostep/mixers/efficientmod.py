"""EfficientMod (Ma et al., ICLR 2024): efficient modulation as a token mixer.

``ctx = Linear(GELU(DWConv7x7(Linear(X))))`` gathers local context on the 2D grid;
``V = GELU(Linear_{C->rC}(X))`` (the GELU only when it expands, r > 1, as in the authors' code);
``Y = Linear_{rC->C}(V * ctx)`` with ``ctx`` tiled r times: the MLP is merged into the
modulation, so a block is one sub-layer ``X + gamma * Y(LN X)`` (gamma initialised to 1e-4).
The hybrid models append plain attention blocks (8 heads, head_dim ``max(C/8, 32)``) to
stages 3-4.

The mixer registered as ``"efficientmod"`` (in :mod:`neurostep.models.mixers`) is ``Y(x)`` (the caller
owns norm and residual).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from neurostep.layers import (
    MLP,
    as_grid,
    check_images,
    check_size,
    check_tokens,
    map_to_tokens,
    resolve_act,
    resolve_grid,
    resolve_norm,
    tokens_to_map,
)
from neurostep.mixers.attention import SoftmaxAttention


class EfficientModulation(nn.Module):
    """Efficient modulation ``(B, N, C) -> (B, N, C)`` on an ``(H, W)`` token grid.

    Args:
        dim: channels ``C``.
        mlp_ratio: expansion ``r`` of the value branch (1 keeps ``C``).
        kernel_size: depthwise context kernel (7).
        grid_size: default ``(H, W)`` for token inputs (else square, or the call's ``grid_size``).
    """

    def __init__(self, dim: int, mlp_ratio: int = 1, kernel_size: int = 7, act_layer: str | type[nn.Module] = "gelu",
                 grid_size: int | Sequence[int] | None = None) -> None:
        super().__init__()
        dim, kernel_size = check_size("dim", dim), check_size("kernel_size", kernel_size)
        if int(mlp_ratio) != mlp_ratio or mlp_ratio < 1:
            raise ValueError(f"mlp_ratio must be a positive integer (ctx is tiled r times), got {mlp_ratio}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a centred depthwise conv keeps the grid), got {kernel_size}")
        self.dim, self.ratio = dim, int(mlp_ratio)
        self.grid_size = as_grid(grid_size)
        act = resolve_act(act_layer)
        self.ctx_in = nn.Linear(dim, dim)
        self.ctx_conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.ctx_act = act()
        self.ctx_out = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim * self.ratio)
        self.v_act = act() if self.ratio > 1 else nn.Identity()
        self.proj = nn.Linear(dim * self.ratio, dim)

    def forward(self, x: torch.Tensor, grid_size: int | Sequence[int] | None = None) -> torch.Tensor:
        """``x``: ``(B, N, C)`` row-major on an ``(H, W)`` grid -> ``(B, N, C)``."""
        check_tokens(x, self.dim)
        hw = resolve_grid(x.shape[1], grid_size, self.grid_size, "EfficientModulation")
        ctx = map_to_tokens(self.ctx_act(self.ctx_conv(tokens_to_map(self.ctx_in(x), hw))))
        ctx = self.ctx_out(ctx)
        v = self.v_act(self.v(x))
        if self.ratio > 1:
            ctx = ctx.repeat(1, 1, self.ratio)
        return self.proj(v * ctx)


class EfficientModBlock(nn.Module):
    """``X + gamma * EfficientModulation(LN X)``, tokens ``(B, N, C)`` with grid ``(H, W)``."""

    def __init__(self, dim: int, mlp_ratio: int = 1, layer_scale: float = 1e-4,
                 norm_layer: str | type[nn.Module] = "layernorm") -> None:
        super().__init__()
        self.norm = resolve_norm(norm_layer)(dim)
        self.mod = EfficientModulation(dim, mlp_ratio)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return x + self.gamma * self.mod(self.norm(x), hw)


class AttentionBlock(nn.Module):
    """Pre-norm ViT block ``(B, N, C) -> (B, N, C)``: 8-head attention + MLP.

    Heads have ``max(C/8, 32)`` channels and the QKV projection has no bias (the authors' choice).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, num_heads: int = 8,
                 norm_layer: str | type[nn.Module] = "layernorm") -> None:
        super().__init__()
        norm = resolve_norm(norm_layer)
        self.norm1 = norm(dim)
        self.attn = SoftmaxAttention(dim, num_heads, head_dim=max(dim // num_heads, 32), qkv_bias=False)
        self.norm2 = norm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    """Conv + LayerNorm: ``(B, C_in, H, W) -> tokens (B, H'*W', C_out)`` and the grid ``(H', W')``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding)
        self.norm = nn.LayerNorm(out_ch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        y = self.proj(x)
        return self.norm(map_to_tokens(y)), (y.shape[2], y.shape[3])


class EfficientMod(nn.Module):
    """EfficientMod image classifier ``(B, 3, H, W) -> (B, num_classes)``.

    Stem: 7x7 stride-4 conv + LN. Each stage: ``depths[i]`` modulation blocks whose value
    expansion alternates ``1, r, 1, r, ...`` (``mlp_ratios[i]`` = r), then ``attention_depths[i]``
    attention blocks with MLP ratio ``att_ratios[i]``, then (except the last) a 3x3 stride-2
    conv + LN. Head: LN, mean over tokens, Linear.
    """

    def __init__(self, depths: Sequence[int], widths: Sequence[int], attention_depths: Sequence[int],
                 *, mlp_ratios: Sequence[int] = (6, 6, 6, 6), att_ratios: Sequence[float] = (4, 4, 4, 4),
                 num_classes: int = 1000, in_chans: int = 3, layer_scale: float = 1e-4) -> None:
        super().__init__()
        n = len(depths)
        if not (len(widths) == len(attention_depths) == len(mlp_ratios) == len(att_ratios) == n):
            raise ValueError("depths, widths, attention_depths, mlp_ratios, att_ratios need one entry per stage")
        self.in_chans = in_chans
        self.stem = _PatchEmbed(in_chans, widths[0], 7, 4, 3)
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i in range(n):
            blocks: list[nn.Module] = [EfficientModBlock(widths[i], 1 if j % 2 == 0 else mlp_ratios[i], layer_scale)
                                       for j in range(depths[i])]
            blocks += [AttentionBlock(widths[i], att_ratios[i]) for _ in range(attention_depths[i])]
            self.stages.append(nn.ModuleList(blocks))
            if i < n - 1:
                self.downsamples.append(_PatchEmbed(widths[i], widths[i + 1], 3, 2, 1))
        self.norm = nn.LayerNorm(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, N_last, C_last)`` tokens after the final norm."""
        check_images(x, self.in_chans)
        tokens, hw = self.stem(x)
        for i, stage in enumerate(self.stages):
            for block in stage:
                tokens = block(tokens, hw)
            if i < len(self.downsamples):
                tokens, hw = self.downsamples[i](tokens_to_map(tokens, hw))
        return self.norm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(1))
