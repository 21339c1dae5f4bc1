"""Spikformer (ICLR 2023): spiking patch splitting stem, spiking transformer blocks, classifier.

Layout: images ``(B, C, H, W)`` are repeated over ``T`` timesteps (direct encoding); the stem
maps ``(T, B, C, H, W)`` to tokens ``(T, B, N, D)``; each block computes
``x = x + SSA(x); x = x + MLP(x)`` (no LayerNorm: the residual stream carries spike counts);
the head is a Linear on the mean over tokens and timesteps.

Every module here is a :class:`~neurostep.engine.Recurrent` over time: ``scan`` runs all
timesteps at once (BatchNorm statistics over T and B, as the official code computes them),
``step`` runs one timestep (for neuromorphic-style simulation). They agree in eval mode.
State is explicit; an entry ``None`` means "fresh" and is created on first use with the lane
shape that the layer sees.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neurostep.engine import Composite, check_tensor, run_child
from neurostep.layers import resolve_norm
from neurostep.neuro.neurons import LIFState
from neurostep.neuro.ssa import SpikingSelfAttention, SSAState, check_tokens_in_time, spikformer_lif
from neurostep.neuro.synapses import SpikeConv2d, SpikeLinear

POOL_POSITIONS = ("after_lif", "before_lif")
STEMS = ("sps", "scs")

__all__ = [
    "POOL_POSITIONS",
    "STEMS",
    "ConvBNLIF",
    "Spikformer",
    "SpikformerBlock",
    "SpikformerBlockState",
    "SpikformerState",
    "SpikingMLP",
    "SpikingMLPState",
    "SpikingPatchStem",
    "SpikingPatchStemState",
    "convert_spikingjelly_state_dict",
]


def _pair(size: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(not isinstance(s, int) or s <= 0 for s in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {size!r}")
    return pair  # type: ignore[return-value]


def _check_images(name: str, x: torch.Tensor, channels: int, stepping: bool) -> None:
    """Images ``(B, C, H, W)`` (one step) or ``(T, B, C, H, W)`` (a sequence) with ``C = channels``."""
    layout = "(B, C, H, W)" if stepping else "(T, B, C, H, W)"
    check_tensor(name, x, ndim=4 if stepping else 5)
    if x.shape[-3] != channels or x.numel() == 0:
        raise ValueError(f"{name} must have shape {layout} with C={channels} and no empty dim, got {tuple(x.shape)}")


def _num_downsamplings(patch_size: int) -> int:
    if patch_size not in (1, 2, 4, 8, 16):
        raise ValueError(f"patch_size must be 1, 2, 4, 8 or 16 (each halving is one of the four stem stages), "
                         f"got {patch_size!r}")
    return patch_size.bit_length() - 1


def _batch_norm_of_repeats(bn: nn.BatchNorm2d, u: torch.Tensor, repeats: int) -> torch.Tensor:
    """``bn`` applied to ``repeats`` stacked copies of ``u (B, C, H, W)``, computed on one copy.

    The batch mean and (biased) variance of identical copies are those of one copy, so the
    output is the same. Only the running variance would differ: it is updated with the unbiased
    estimate, whose correction ``n / (n - 1)`` counts every copy, so it is updated here with the
    count of all of them.
    """
    if not (bn.training and bn.track_running_stats):
        return bn(u)
    y = F.batch_norm(u, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    n_all = repeats * (u.numel() // u.shape[1])
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    with torch.no_grad():
        var, mean = torch.var_mean(u, dim=(0, 2, 3), correction=0)
        bn.running_mean.lerp_(mean, factor)
        bn.running_var.lerp_(var * (n_all / (n_all - 1)), factor)
    return y


class ConvBNLIF(Composite):
    """Conv2d (no bias) + BatchNorm2d + LIF, with an optional 3x3/2 max-pool.

    ``scan``: ``(T, B, C, H, W)`` -> spikes ``(T, B, C', H', W')``; ``step``: ``(B, C, H, W)`` ->
    ``(B, C', H', W')``.

    Args:
        in_channels, out_channels: channels.
        kernel_size: odd conv kernel (padding keeps the size).
        stride: conv stride (2 in the convolutional stem's downsampling stages).
        pool: add ``MaxPool2d(3, stride=2, padding=1)``.
        pool_position: ``"after_lif"`` pools spikes (official Spikformer code: the output stays
            binary); ``"before_lif"`` pools the BN output (spikingjelly 2.0's port).
        spike_input: the input is spikes (another stage's output): the convolution is a
            :class:`~neurostep.neuro.synapses.SpikeConv2d`.
    """

    time_dim = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 pool: bool = False, pool_position: str = "after_lif", backend: str = "auto",
                 spike_input: bool = False) -> None:
        super().__init__()
        if pool_position not in POOL_POSITIONS:
            raise ValueError(f"pool_position must be one of {POOL_POSITIONS}, got {pool_position!r}")
        conv = SpikeConv2d if spike_input else nn.Conv2d   # spikes in: computed from their nonzeros
        self.conv = conv(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if pool else None
        self.pool_position = pool_position
        self.lif = spikformer_lif(1.0, backend)

    def _convolve(self, frames: torch.Tensor) -> torch.Tensor:
        """The convolution of ``frames (N, C, H, W)``. A dense convolution gets its frames channels-last,
        so that every map of the stage is channels-last as the spike convolutions' outputs are: batch norm,
        max-pooling and the neuron then keep that layout, and no convolution's backward mixes layouts (1.5x
        slower at (32, 96, 32, 32) -> 192 channels, 2-core AMD EPYC, 2026-12-04)."""
        if not isinstance(self.conv, SpikeConv2d):
            frames = frames.contiguous(memory_format=torch.channels_last)
        return self.conv(frames)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        y = self.pool(x.reshape(-1, *x.shape[-3:]))
        return y.reshape(*lead, *y.shape[-3:])

    def advance(self, x: torch.Tensor, state: Any, stepping: bool) -> tuple[torch.Tensor, Any]:
        if not stepping and x.shape[0] > 1 and x.stride(0) == 0:
            # Every timestep is the same frame (direct encoding hands over an expanded view):
            # convolve and normalise it once, then repeat it for the LIF.
            u = _batch_norm_of_repeats(self.bn, self._convolve(x[0]), x.shape[0])
            if self.pool is not None and self.pool_position == "before_lif":
                u = self.pool(u)
            u = u.unsqueeze(0).expand(x.shape[0], *u.shape)
        else:
            lead = x.shape[:-3]
            u = self.bn(self._convolve(x.reshape(-1, *x.shape[-3:])))
            u = u.reshape(*lead, *u.shape[-3:])
            if self.pool is not None and self.pool_position == "before_lif":
                u = self._pool(u)
        s, state = run_child(self.lif, u, state, stepping)
        if self.pool is not None and self.pool_position == "after_lif":
            s = self._pool(s)
        return s, state

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> None:
        return None  # created at the first step with the post-conv lane shape

    def check_input(self, x: torch.Tensor, stepping: bool) -> None:
        check_tensor("x_t" if stepping else "x", x, ndim=4 if stepping else 5)


@dataclass
class SpikingPatchStemState:
    """Stem state: a LIFState per stage in ``stages`` (``v (B, C_i, H_i, W_i)``), ``rpe`` (``v (B, D, H', W')``)."""

    stages: list[LIFState | None] = field(default_factory=list)
    rpe: LIFState | None = None


class SpikingPatchStem(Composite):
    """Spikformer's stem: four Conv3x3+BN+LIF stages (D/8, D/4, D/2, D) and a conv position embedding.

    ``stem="sps"`` (Spiking Patch Splitting, the paper's) downsamples with max-pooling in the last
    ``log2(patch_size)`` stages (ImageNet: patch 16, all four: 224 -> 14x14 = 196 tokens; CIFAR:
    patch 4, the last two: 32 -> 8x8 = 64 tokens). ``stem="scs"`` is a Spikformer V2-style
    convolutional stem: the same stages, but the downsampling stages use stride-2 convolutions
    instead of max-pooling (V2's exact stem is unpublished; see docs/spiking-transformers.md).
    Both add the relative position embedding ``x + LIF(BN(Conv3x3(x)))``.

    ``(T, B, C_in, H, W)`` -> tokens ``(T, B, N, D)`` with ``N = ceil(H / p) * ceil(W / p)``.
    """

    time_dim = 0

    def __init__(self, in_channels: int = 3, embed_dim: int = 384, patch_size: int = 16, stem: str = "sps",
                 pool_position: str = "after_lif", backend: str = "auto") -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if not isinstance(embed_dim, int) or embed_dim < 8 or embed_dim % 8 != 0:
            raise ValueError(f"embed_dim must be a positive multiple of 8 (stem widths D/8..D), got {embed_dim!r}")
        n_down = _num_downsamplings(patch_size)
        widths = [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        stages, c_in = [], in_channels
        for i, c_out in enumerate(widths):
            down = i >= 4 - n_down
            spikes_in = i > 0   # every stage but the first reads the previous stage's spikes
            if stem == "sps":
                stages.append(ConvBNLIF(c_in, c_out, 3, 1, pool=down, pool_position=pool_position, backend=backend,
                                        spike_input=spikes_in))
            else:
                stages.append(ConvBNLIF(c_in, c_out, 3, 2 if down else 1, backend=backend, spike_input=spikes_in))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.rpe = ConvBNLIF(embed_dim, embed_dim, 3, 1, backend=backend, spike_input=True)
        self.in_channels, self.embed_dim, self.patch_size, self.stem = in_channels, embed_dim, patch_size, stem

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Token grid of an ``height x width`` image (each downsampling is a ceil-halving)."""
        for _ in range(_num_downsamplings(self.patch_size)):
            height, width = (height + 1) // 2, (width + 1) // 2
        return height, width

    def advance(self, x: torch.Tensor, state: SpikingPatchStemState | None, stepping: bool
                ) -> tuple[torch.Tensor, SpikingPatchStemState]:
        stages = list(state.stages) if state is not None and state.stages else [None] * len(self.stages)
        for i, stage in enumerate(self.stages):
            x, stages[i] = run_child(stage, x, stages[i], stepping)
        pos, rpe = run_child(self.rpe, x, state.rpe if state is not None else None, stepping)
        x = x + pos
        return x.flatten(-2).transpose(-1, -2), SpikingPatchStemState(stages, rpe)

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> SpikingPatchStemState:
        return SpikingPatchStemState([None] * len(self.stages), None)

    def check_input(self, x: torch.Tensor, stepping: bool) -> None:
        _check_images("x_t" if stepping else "x", x, self.in_channels, stepping)


@dataclass
class SpikingMLPState:
    """SpikingMLP state: LIFStates ``lif1`` (``v (B, N, hidden)``) and ``lif2`` (``v (B, N, C)``); None = fresh."""

    lif1: LIFState | None = None
    lif2: LIFState | None = None


class SpikingMLP(Composite):
    """Spikformer's MLP on ``(T, B, N, C)`` (or one step ``(B, N, C)``): ``LIF(BN(W2 LIF(BN(W1 x))))``
    (Conv1x1 == Linear on tokens)."""

    time_dim = 0

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False, backend: str = "auto",
                 norm_layer: str | type[nn.Module] = "batchnorm") -> None:
        super().__init__()
        norm = resolve_norm(norm_layer)
        self.dim = dim
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.norm1 = norm(hidden_dim)
        self.lif1 = spikformer_lif(1.0, backend)
        self.fc2 = SpikeLinear(hidden_dim, dim, bias=bias)   # its input is lif1's spikes
        self.norm2 = norm(dim)
        self.lif2 = spikformer_lif(1.0, backend)

    def advance(self, x: torch.Tensor, state: SpikingMLPState | None, stepping: bool
                ) -> tuple[torch.Tensor, SpikingMLPState]:
        state = state if state is not None else SpikingMLPState()
        h, s1 = run_child(self.lif1, self.norm1(self.fc1(x)), state.lif1, stepping)
        y, s2 = run_child(self.lif2, self.norm2(self.fc2(h)), state.lif2, stepping)
        return y, SpikingMLPState(s1, s2)

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> SpikingMLPState:
        return SpikingMLPState()

    def check_input(self, x: torch.Tensor, stepping: bool) -> None:
        check_tokens_in_time("x_t" if stepping else "x", x, self.dim, stepping)


@dataclass
class SpikformerBlockState:
    """Block state: ``attn`` (SSAState, ``v (B, N, 3C)``, ``(B, N, C)``), ``mlp`` (SpikingMLPState); None = fresh."""

    attn: SSAState | None = None
    mlp: SpikingMLPState | None = None


class SpikformerBlock(Composite):
    """``x = x + SSA(x); x = x + MLP(x)`` on ``(T, B, N, C)`` or one step ``(B, N, C)`` (no LayerNorm);
    the output holds spike counts."""

    time_dim = 0

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 4.0, scale: float = 0.125,
                 attn_order: str = "q(kv)", bias: bool = False, backend: str = "auto",
                 norm_layer: str | type[nn.Module] = "batchnorm") -> None:
        super().__init__()
        self.attn = SpikingSelfAttention(dim, num_heads=num_heads, scale=scale, order=attn_order, backend=backend,
                                         proj_bias=bias, norm_layer=norm_layer)
        self.mlp = SpikingMLP(dim, int(dim * mlp_ratio), bias=bias, backend=backend, norm_layer=norm_layer)

    def advance(self, x: torch.Tensor, state: SpikformerBlockState | None, stepping: bool
                ) -> tuple[torch.Tensor, SpikformerBlockState]:
        state = state if state is not None else SpikformerBlockState()
        a, s_attn = run_child(self.attn, x, state.attn, stepping)
        x = x + a
        m, s_mlp = run_child(self.mlp, x, state.mlp, stepping)
        return x + m, SpikformerBlockState(s_attn, s_mlp)

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> SpikformerBlockState:
        return SpikformerBlockState(self.attn.init_state(batch_shape, device, dtype), None)


@dataclass
class SpikformerState:
    """Spikformer state: ``stem`` (SpikingPatchStemState) and a SpikformerBlockState per block in ``blocks``."""

    stem: SpikingPatchStemState | None = None
    blocks: list[SpikformerBlockState | None] = field(default_factory=list)


class Spikformer(Composite):
    """Spikformer image classifier.

    Args:
        img_size: nominal input size (int or (H, W)); the network is fully convolutional in the
            stem, so other sizes run too. Used for ``num_patches`` and example inputs.
        patch_size: total stem downsampling (16 ImageNet, 4 CIFAR).
        in_channels, num_classes: image channels and classes.
        embed_dim, depth, num_heads, mlp_ratio: D, number of blocks, heads, MLP ratio.
        T: timesteps a static image is repeated over.
        stem: ``"sps"`` (paper) or ``"scs"`` (Spikformer V2-style convolutional stem).
        attn_order: ``"q(kv)"`` or ``"(qk)v"`` (same result on spikes).
        scale: SSA scale (0.125).
        bias: biases on the SSA output projection and the MLP (the official ImageNet code has
            them; spikingjelly's port does not; default False).
        pool_position: SPS max-pool on spikes (``"after_lif"``, official) or before the LIF
            (``"before_lif"``, spikingjelly 2.0).
        backend: LIF kernel backend.

    ``forward(x)``: ``x`` ``(B, C, H, W)`` (repeated over T) or ``(T, B, C, H, W)`` -> logits ``(B, K)``.
    ``scan(x_seq)``: ``(T, B, C, H, W)`` -> per-timestep logits ``(T, B, K)`` (their mean is ``forward``).
    ``step(x_t, state)``: ``(B, C, H, W)`` -> ``(B, K)``.
    """

    time_dim = 0

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_channels: int = 3,
                 num_classes: int = 1000, embed_dim: int = 384, depth: int = 8, num_heads: int = 8,
                 mlp_ratio: float = 4.0, T: int = 4, stem: str = "sps", attn_order: str = "q(kv)",
                 scale: float = 0.125, bias: bool = False, pool_position: str = "after_lif",
                 backend: str = "auto") -> None:
        super().__init__()
        if not isinstance(T, int) or T <= 0:
            raise ValueError(f"T must be a positive int, got {T!r}")
        if not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be a non-negative int, got {depth!r}")
        self.img_size = _pair(img_size, "img_size")
        self.T, self.num_classes, self.embed_dim, self.in_channels = T, num_classes, embed_dim, in_channels
        self.patch_embed = SpikingPatchStem(in_channels, embed_dim, patch_size, stem=stem, pool_position=pool_position,
                                            backend=backend)
        self.blocks = nn.ModuleList(
            SpikformerBlock(embed_dim, num_heads, mlp_ratio, scale=scale, attn_order=attn_order, bias=bias,
                            backend=backend)
            for _ in range(depth)
        )
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        grid = self.patch_embed.grid_size(*self.img_size)
        self.num_patches = grid[0] * grid[1]
        self.apply(_init_weights)

    # ---------------------------------------------------------------------------------------
    def _features(self, x: torch.Tensor, state: SpikformerState | None, stepping: bool
                  ) -> tuple[torch.Tensor, SpikformerState]:
        """Token-mean features: ``(T, B, D)`` (scan) or ``(B, D)`` (step)."""
        state = state if state is not None else self.init_state(())
        stem_state = state.stem
        block_states = list(state.blocks) if state.blocks else [None] * len(self.blocks)
        x, stem_state = run_child(self.patch_embed, x, stem_state, stepping)
        for i, block in enumerate(self.blocks):
            x, block_states[i] = run_child(block, x, block_states[i], stepping)
        return x.mean(-2), SpikformerState(stem_state, block_states)

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> SpikformerState:
        """Fresh state (every neuron layer's membrane is created at its first step)."""
        return SpikformerState(self.patch_embed.init_state(batch_shape), [None] * len(self.blocks))

    def check_input(self, x: torch.Tensor, stepping: bool) -> None:
        _check_images("x_t" if stepping else "x", x, self.in_channels, stepping)

    def advance(self, x: torch.Tensor, state: SpikformerState | None, stepping: bool
                ) -> tuple[torch.Tensor, SpikformerState]:
        """One timestep: image ``(B, C, H, W)`` -> logits ``(B, K)``; all timesteps:
        ``(T, B, C, H, W)`` -> per-timestep logits ``(T, B, K)``."""
        feats, state = self._features(x, state, stepping)
        return self.head(feats), state

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` or ``(T, B, C, H, W)`` -> features ``(B, D)`` (mean over tokens and T)."""
        check_tensor("x", x, ndim=(4, 5))
        _check_images("x", x, self.in_channels, x.dim() == 4)
        if x.dim() == 4:
            x = x.unsqueeze(0).expand(self.T, *x.shape)
        return self._features(x, None, stepping=False)[0].mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` or ``(T, B, C, H, W)`` -> logits ``(B, K)``."""
        return self.head(self.forward_features(x))

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_spikingjelly(cls, model: nn.Module, backend: str = "auto") -> Spikformer:
        """Build a Spikformer equal to a spikingjelly 2.0 ``activation_based.model.spikformer.Spikformer``.

        The configuration is read from the model's attributes and its weights (and BN running
        statistics) are converted by :func:`convert_spikingjelly_state_dict`. spikingjelly pools
        before the LIF, so the result uses ``pool_position="before_lif"``. spikingjelly's head
        returns per-timestep logits ``(T, B, K)``; their mean over T equals this model's output.
        """
        stem = model.patch_embed
        first_conv = stem.stages[0].conv_bn.block[0]
        mlp_hidden = model.blocks[0].mlp.fc1[0].out_channels if len(model.blocks) else 4 * model.embed_dims
        ours = cls(img_size=tuple(stem.image_size), patch_size=stem.patch_size, in_channels=first_conv.in_channels,
                   num_classes=model.num_classes, embed_dim=model.embed_dims, depth=len(model.blocks),
                   num_heads=model.num_heads, mlp_ratio=mlp_hidden / model.embed_dims, T=model.T,
                   pool_position="before_lif", backend=backend)
        ours.load_state_dict(convert_spikingjelly_state_dict(model.state_dict()))
        return ours


def _init_weights(m: nn.Module) -> None:
    # Truncated normal (std 0.02) for every projection, as spikingjelly's port and timm ViTs do;
    # the BN after each projection makes the spiking layers insensitive to this scale.
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


_SJ_RULES: tuple[tuple[str, str], ...] = (
    (r"patch_embed\.stages\.(\d+)\.conv_bn\.block\.0\.", r"patch_embed.stages.\1.conv."),
    (r"patch_embed\.stages\.(\d+)\.conv_bn\.block\.1\.", r"patch_embed.stages.\1.bn."),
    (r"patch_embed\.positional_encoding\.conv_bn\.block\.0\.", r"patch_embed.rpe.conv."),
    (r"patch_embed\.positional_encoding\.conv_bn\.block\.1\.", r"patch_embed.rpe.bn."),
    (r"blocks\.(\d+)\.attn\.qkv_conv_bn\.0\.", r"blocks.\1.attn.qkv."),
    (r"blocks\.(\d+)\.attn\.qkv_conv_bn\.1\.", r"blocks.\1.attn.qkv_norm.bn."),
    (r"blocks\.(\d+)\.attn\.proj_conv_bn\.0\.", r"blocks.\1.attn.proj."),
    (r"blocks\.(\d+)\.attn\.proj_conv_bn\.1\.", r"blocks.\1.attn.proj_norm.bn."),
    (r"blocks\.(\d+)\.mlp\.fc1\.0\.", r"blocks.\1.mlp.fc1."),
    (r"blocks\.(\d+)\.mlp\.fc1\.1\.", r"blocks.\1.mlp.norm1.bn."),
    (r"blocks\.(\d+)\.mlp\.fc2\.0\.", r"blocks.\1.mlp.fc2."),
    (r"blocks\.(\d+)\.mlp\.fc2\.1\.", r"blocks.\1.mlp.norm2.bn."),
    (r"head\.", r"head."),
)


def convert_spikingjelly_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a spikingjelly 2.0 Spikformer ``state_dict`` to this module's names.

    spikingjelly's token layers are ``Conv1d(k=1)`` on ``(T, B, C, N)``; here they are ``Linear`` on
    ``(T, B, N, C)``, so their ``(out, in, 1)`` weights lose the last dim. Its fused ``qkv`` channel
    order (Q | K | V, head-major inside each) is the one :class:`SpikingSelfAttention` uses.
    Raises ``KeyError`` on a key it does not know (a different architecture).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for pattern, repl in _SJ_RULES:
            if re.match(pattern, key):
                new_key = re.sub(pattern, repl, key, count=1)
                break
        else:
            raise KeyError(f"no neurostep name for spikingjelly key {key!r}")
        if re.match(r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])\.weight$", new_key):
            if value.dim() != 3 or value.shape[-1] != 1:
                raise ValueError(f"{key} must be a Conv1d(kernel_size=1) weight (out, in, 1), got {tuple(value.shape)}")
            value = value[..., 0]
        out[new_key] = value
    return out
