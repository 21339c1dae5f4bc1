"""MetaMixer / FFNet (Yun, Lee, Ro 2024): attention "FFNified" into depthwise convolutions.

FFNified attention replaces ``softmax(QK^T)V`` by ``DWConv_k(GELU(DWConv_k(BN(Conv1x1(X)))))``
with no output projection; the block adds it back as ``X + gamma * (...)``. A kernel of 7 is
trained as a re-parameterizable 7x7 + 3x3 depthwise pair (each with its own BN) and folded
into a single 7x7 convolution with bias for deployment (``fuse()``); the outputs are identical.

Module map (all work on ``(B, C, H, W)`` maps; ``FFNifiedAttention.forward`` also accepts tokens):

- :class:`ConvBN`       conv (no bias) + BatchNorm2d, foldable into one conv.
- :class:`RepDWConv`    7x7 + 3x3 depthwise pair, foldable into one 7x7 conv.
- :class:`FFNifiedAttention`  the token mixer (registered as ``"ffnified_attention"`` in
  :mod:`neurostep.models.mixers`).
- :class:`ChannelMixer` ``Conv1x1_{3C->C}(GELU(Conv1x1_{C->3C}(BN(DWConv_k(X)))))``.
- :class:`FFBlock`, :class:`Downsample`, :class:`FFNet` the classifier (``neurostep.models.ffnet``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from neurostep.layers import (
    as_grid,
    check_images,
    check_size,
    check_tokens,
    map_to_tokens,
    resolve_act,
    resolve_grid,
    tokens_to_map,
)


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as ``y = x * scale + shift`` (per channel)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class ConvBN(nn.Module):
    """``BN(Conv2d(x))`` with a bias-free conv; ``fused()`` returns the equivalent single conv.

    ``(B, C_in, H, W) -> (B, C_out, H', W')``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        scale, shift = _bn_scale_shift(self.bn)
        c = self.conv
        out = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, groups=c.groups,
                        bias=True, device=c.weight.device, dtype=c.weight.dtype)
        out.weight.copy_(c.weight * scale[:, None, None, None])
        out.bias.copy_(shift)
        return out


class RepDWConv(nn.Module):
    """Train-time ``ConvBN_7x7(x) + ConvBN_3x3(x)`` depthwise pair; ``fused()`` gives one 7x7 conv.

    ``out_ch`` may be a multiple of ``in_ch`` (FFNet's downsampling doubles the channels with
    ``groups = in_ch``). ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``.
    """

    def __init__(self, in_ch: int, out_ch: int | None = None, kernel_size: int = 7, small_kernel: int = 3,
                 stride: int = 1) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        if out_ch % in_ch or small_kernel > kernel_size or small_kernel % 2 == 0 or kernel_size % 2 == 0:
            raise ValueError(f"RepDWConv: need odd kernels small_kernel <= kernel_size and out_ch % in_ch == 0, "
                             f"got in_ch={in_ch}, out_ch={out_ch}, kernel_size={kernel_size}, "
                             f"small_kernel={small_kernel}")
        self.large = ConvBN(in_ch, out_ch, kernel_size, stride, groups=in_ch)
        self.small = ConvBN(in_ch, out_ch, small_kernel, stride, groups=in_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.large(x) + self.small(x)

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        big, small = self.large.fused(), self.small.fused()
        # A centred zero-padded small kernel at the large padding computes the same sum.
        pad = (big.kernel_size[0] - small.kernel_size[0]) // 2
        big.weight.add_(F.pad(small.weight, [pad] * 4))
        big.bias.add_(small.bias)
        return big


class BNConvSkip(nn.Module):
    """``x + Conv1x1(BN(x))`` (FFNet's downsampling tail); ``fused()`` folds BN and identity into one conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.conv = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.bn(x))

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        scale, shift = _bn_scale_shift(self.bn)
        w = self.conv.weight[:, :, 0, 0]
        out = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=True, device=w.device, dtype=w.dtype)
        eye = torch.eye(w.shape[0], device=w.device, dtype=w.dtype)
        out.weight.copy_((w * scale[None, :] + eye)[:, :, None, None])
        out.bias.copy_(w @ shift)
        return out


def reparameterize(module: nn.Module) -> nn.Module:
    """Replace, in place, every sub-module that has ``fused()`` by its folded conv. Returns ``module``.

    Uses BatchNorm running statistics, so the fused model equals the original in eval mode.
    """
    for name, child in list(module.named_children()):
        if hasattr(child, "fused"):
            setattr(module, name, child.fused())
        else:
            reparameterize(child)
    return module


def _dwconv(dim: int, kernel_size: int, *, bn: bool) -> nn.Module:
    """FFNet's depthwise conv: the 7x7+3x3 pair for k=7, else a plain conv (with BN or bias)."""
    if kernel_size == 7:
        return RepDWConv(dim, dim, 7, 3)
    if bn:
        return ConvBN(dim, dim, kernel_size, groups=dim)
    return nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)


class FFNifiedAttention(nn.Module):
    """FFNified attention ``DWConv_k(GELU(DWConv_k(BN(Conv1x1(X)))))`` (the residual is the caller's).

    ``forward(x, grid_size)`` maps tokens ``(B, N, C) -> (B, N, C)`` (grid from ``grid_size``, the
    construction-time grid, or a square); ``forward_map`` maps ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        dim: channels ``C``.
        kernel_size: depthwise kernel ``k``; 7 is the re-parameterizable 7x7 + 3x3 pair.
        act_layer: activation between the two depthwise convs.
        grid_size: default ``(H, W)`` for token inputs.
    """

    def __init__(self, dim: int, kernel_size: int = 7, act_layer: str | type[nn.Module] = "gelu",
                 grid_size: int | Sequence[int] | None = None) -> None:
        super().__init__()
        dim, kernel_size = check_size("dim", dim), check_size("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
        self.dim, self.kernel_size = dim, kernel_size
        self.grid_size = as_grid(grid_size)
        self.fc = ConvBN(dim, dim, 1)
        self.dw1 = _dwconv(dim, kernel_size, bn=False)
        self.act = resolve_act(act_layer)()
        self.dw2 = _dwconv(dim, kernel_size, bn=False)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        return self.dw2(self.act(self.dw1(self.fc(x))))

    def forward(self, x: torch.Tensor, grid_size: int | Sequence[int] | None = None) -> torch.Tensor:
        """Tokens ``(B, N, C)`` laid out row-major on an ``(H, W)`` grid -> ``(B, N, C)``."""
        check_tokens(x, self.dim)
        hw = resolve_grid(x.shape[1], grid_size, self.grid_size, "FFNifiedAttention")
        return map_to_tokens(self.forward_map(tokens_to_map(x, hw)))

    def fuse(self) -> FFNifiedAttention:
        """Fold BN and the 7x7 + 3x3 pairs into single convs, in place (eval-mode equivalent)."""
        return reparameterize(self)


class ChannelMixer(nn.Module):
    """``Conv1x1_{rC->C}(GELU(Conv1x1_{C->rC}(BN(DWConv_k(X)))))``, ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, dim: int, kernel_size: int = 3, mlp_ratio: float = 3.0,
                 act_layer: str | type[nn.Module] = "gelu") -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.dw = _dwconv(dim, kernel_size, bn=True)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = resolve_act(act_layer)()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.dw(x))))


class LayerScale2d(nn.Module):
    """Per-channel ``gamma * x`` on ``(B, C, H, W)``."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class FFBlock(nn.Module):
    """``X + gamma1 * FFNifiedAttention(X)`` then ``X + gamma2 * ChannelMixer(X)`` on ``(B, C, H, W)``.

    ``layer_scale=None`` drops the gammas (FFNet-1/2); FFNet-3/4 use 1e-6.
    """

    def __init__(self, dim: int, token_kernel: int, channel_kernel: int, mlp_ratio: float = 3.0,
                 layer_scale: float | None = None, act_layer: str | type[nn.Module] = "gelu") -> None:
        super().__init__()
        self.token_mixer = FFNifiedAttention(dim, token_kernel, act_layer)
        self.channel_mixer = ChannelMixer(dim, channel_kernel, mlp_ratio, act_layer)
        self.ls1 = LayerScale2d(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.ls2 = LayerScale2d(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.token_mixer.forward_map(x))
        return x + self.ls2(self.channel_mixer(x))


class Downsample(nn.Module):
    """Stride-2 7x7+3x3 depthwise pair (channel multiplier ``out/in``) then ``x + Conv1x1(BN(x))``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.dw = RepDWConv(in_ch, out_ch, 7, 3, stride=2)
        self.skip = BNConvSkip(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(self.dw(x))


class FFNet(nn.Module):
    """FFNet image classifier ``(B, 3, H, W) -> (B, num_classes)``.

    Stem: ``ConvBN 3x3/2 (in -> stem_dim)``, GELU, ``ConvBN 3x3/2 (stem_dim -> widths[0])`` (stride 4).
    Stages 2-4 start with :class:`Downsample`. Head: BatchNorm2d, global average pool, Linear.
    ``fuse()`` folds every BN and re-parameterized pair, and the last BN into the head.

    Args:
        depths: blocks per stage.
        widths: channels per stage.
        token_kernels: FFNified-attention kernel per stage (3, 3, 7, 7 in the paper).
        channel_kernels: channel-mixer depthwise kernel per stage (3 for FFNet-1, 7 otherwise).
        mlp_ratio: channel-mixer expansion (3).
        layer_scale: initial gamma, or ``None`` for no layer scale.
    """

    def __init__(self, depths: Sequence[int], widths: Sequence[int], *, num_classes: int = 1000,
                 in_chans: int = 3, stem_dim: int = 64, token_kernels: Sequence[int] = (3, 3, 7, 7),
                 channel_kernels: Sequence[int] = (7, 7, 7, 7), mlp_ratio: float = 3.0,
                 layer_scale: float | None = None, act_layer: str | type[nn.Module] = "gelu") -> None:
        super().__init__()
        n = len(depths)
        if not (len(widths) == len(token_kernels) == len(channel_kernels) == n):
            raise ValueError(f"depths, widths, token_kernels, channel_kernels need one entry per stage, got "
                             f"{list(depths)}, {list(widths)}, {list(token_kernels)}, {list(channel_kernels)}")
        self.in_chans = in_chans
        self.stem = nn.Sequential(ConvBN(in_chans, stem_dim, 3, 2), resolve_act(act_layer)(),
                                  ConvBN(stem_dim, widths[0], 3, 2))
        stages = []
        for i in range(n):
            blocks: list[nn.Module] = [Downsample(widths[i - 1], widths[i])] if i > 0 else []
            blocks += [FFBlock(widths[i], token_kernels[i], channel_kernels[i], mlp_ratio, layer_scale, act_layer)
                       for _ in range(depths[i])]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm: nn.Module = nn.BatchNorm2d(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, C_last, H/32, W/32)``."""
        check_images(x, self.in_chans)
        return self.norm(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean((2, 3)))

    @torch.no_grad()
    def fuse(self) -> FFNet:
        """Deploy form, in place: every BN and 7x7+3x3 pair folded; the last BN folded into the head."""
        reparameterize(self)
        if isinstance(self.norm, nn.BatchNorm2d):
            # head(mean(BN(x))) = (W * scale) mean(x) + (b + W shift): BN commutes with the mean.
            scale, shift = _bn_scale_shift(self.norm)
            self.head.bias.add_(self.head.weight @ shift)
            self.head.weight.mul_(scale[None, :])
            self.norm = nn.Identity()
        return self
