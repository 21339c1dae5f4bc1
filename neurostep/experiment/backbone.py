"""One small shared backbone that hosts any registered token mixer.

embedding (patch features -> Linear, or tokens -> Embedding) + learned positions (optional)
-> ``depth`` x [x += mixer(norm(x)); x += MLP(norm(x))] -> norm -> readout -> Linear head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from neurostep.layers import MLP, resolve_norm

READOUTS = ("mean", "last", "all")


class MixerBlock(nn.Module):
    """Pre-norm residual block around a drop-in mixer ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, mixer: nn.Module, dim: int, mlp_ratio: float, norm_layer: str | type[nn.Module]) -> None:
        super().__init__()
        norm = resolve_norm(norm_layer)
        self.norm1 = norm(dim)
        self.mixer = mixer
        self.norm2 = norm(dim)
        self.mlp = MLP(dim, mlp_ratio=mlp_ratio)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        y = self.mixer(self.norm1(x), grid_size=grid_size)
        if y.shape != x.shape:
            raise ValueError(f"mixer {type(self.mixer).__name__} returned shape {tuple(y.shape)} for input "
                             f"{tuple(x.shape)}; drop-in mixers must map (B, N, C) -> (B, N, C)")
        x = x + y
        return x + self.mlp(self.norm2(x))


class Backbone(nn.Module):
    """Classifier over token sequences with a pluggable mixer.

    Inputs: float features ``(B, N, in_features)`` or int64 tokens ``(B, N)``.
    Output: logits ``(B, num_classes)`` (readout ``mean``/``last``) or ``(B, N, num_classes)``
    (readout ``all``: one prediction per position).

    ``causal=True`` builds the causal form of the mixer (``ValueError`` for a mixer that has
    none); everything else in the backbone acts per position, so the whole model is then causal.
    ``positions=False`` leaves out the learned position embedding (recurrent mixers know the
    order of their inputs without it).

    The token embedding keeps torch's N(0, 1) and the positions start from N(0, 0.02). mamba-ssm's
    N(0, 0.02) for tokens would put them on the positions' scale, and in this backbone that holds
    Mamba at or near the chance loss on selective copying for the main job's budget (``docs/experiments.md``).
    """

    def __init__(self, mixer: str, *, num_classes: int, seq_len: int, dim: int = 32, depth: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 2.0, norm: str | type[nn.Module] = "layernorm",
                 in_features: int | None = None, vocab_size: int | None = None,
                 grid_size: tuple[int, int] | None = None, readout: str = "mean", causal: bool = False,
                 positions: bool = True, mixer_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        from neurostep.models import create_mixer, list_mixers

        if (in_features is None) == (vocab_size is None):
            raise ValueError(f"give exactly one of in_features ({in_features}) and vocab_size ({vocab_size})")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        registered = list_mixers()
        if mixer not in registered:
            raise ValueError(f"unknown block {mixer!r}; registered mixers: {registered}")
        self.seq_len, self.grid_size, self.readout, self.causal = seq_len, grid_size, readout, causal
        self.in_features, self.vocab_size = in_features, vocab_size
        if in_features is not None:
            self.embed: nn.Module = nn.Linear(in_features, dim)
        else:
            self.embed = nn.Embedding(vocab_size, dim)
        self.pos: nn.Parameter | None = None
        if positions:
            self.pos = nn.Parameter(torch.zeros(1, seq_len, dim))
            nn.init.trunc_normal_(self.pos, std=0.02)
        options = dict(mixer_options or {})
        self.blocks = nn.ModuleList(
            MixerBlock(create_mixer(mixer, dim, causal=causal, num_heads=num_heads, seq_len=seq_len,
                                    grid_size=grid_size, **options), dim, mlp_ratio, norm)
            for _ in range(depth)
        )
        self.norm = resolve_norm(norm)(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.vocab_size is not None:
            if x.dtype not in (torch.int64, torch.int32) or x.dim() != 2:
                raise TypeError(f"x must be int tokens (B, N={self.seq_len}), got {x.dtype} {tuple(x.shape)}")
        elif x.dim() != 3 or x.shape[-1] != self.in_features or not x.is_floating_point():
            raise ValueError(f"x must be float features (B, N={self.seq_len}, {self.in_features}), "
                             f"got {x.dtype} {tuple(x.shape)}")
        if x.shape[1] != self.seq_len:
            raise ValueError(f"x has {x.shape[1]} tokens but the backbone was built for seq_len={self.seq_len}")
        h = self.embed(x)
        if self.pos is not None:
            h = h + self.pos
        for block in self.blocks:
            h = block(h, grid_size=self.grid_size)
        h = self.norm(h)
        if self.readout == "mean":
            h = h.mean(dim=1)
        elif self.readout == "last":
            h = h[:, -1]
        return self.head(h)


def build_backbone(mixer: str, task: Any, backbone: dict[str, Any],
                   mixer_options: dict[str, Any] | None = None) -> Backbone:
    """A :class:`Backbone` for ``task`` (a :class:`~neurostep.experiment.tasks.TaskData`), causal
    when the task is."""
    return Backbone(
        mixer, num_classes=task.num_classes, seq_len=task.seq_len, dim=backbone["dim"], depth=backbone["depth"],
        num_heads=backbone["num_heads"], mlp_ratio=backbone["mlp_ratio"], norm=backbone["norm"],
        positions=backbone.get("positions", True), in_features=task.in_features, vocab_size=task.vocab_size,
        grid_size=task.grid_size, readout=task.readout, causal=task.causal, mixer_options=mixer_options,
    )
