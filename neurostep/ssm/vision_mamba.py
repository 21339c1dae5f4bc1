"""Vision Mamba (Vim, hustvl): bidirectional Mamba ("v2") and the Vim image classifier.

``BidirectionalMamba`` shares ``in_proj`` and ``out_proj`` between two selective scans: the
forward one with Mamba's own parameters and a backward one with ``A_b_log``, ``conv1d_b``,
``x_proj_b``, ``dt_proj_b``, ``D_b`` (Vim's names) on the flipped sequence, z flipped too::

    x, z = in_proj(u).chunk(2)
    y    = (ssm_f(x, z) + flip(ssm_b(flip(x), flip(z)))) / 2
    out  = out_proj(y)

There is one mode: both directions always run (the official non-fused path silently ran only
the forward one). ``VisionMamba`` is Vim: 16x16 patches, a class token in the middle of the
sequence (position M // 2 for M patches), learned absolute positions, pre-norm RMSNorm
residual blocks, final RMSNorm, and the head on the class token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from neurostep.engine import check_tensor
from neurostep.layers import DropPath, RMSNorm
from neurostep.ssm.mamba import Mamba, MambaState


@dataclass
class BidirectionalMambaState:
    """Final states of a :class:`BidirectionalMamba` scan: MambaStates ``forward`` and ``backward`` (``(B, Di, *)``)."""

    forward: MambaState
    backward: MambaState


class BidirectionalMamba(Mamba):
    """Vim's bidirectional Mamba mixer, drop-in ``(B, N, C) -> (B, N, C)`` (non-causal).

    Takes :class:`Mamba`'s arguments. ``scan``/``forward`` run both directions over the whole
    sequence. ``step`` is undefined for a bidirectional block (the backward direction needs the
    future) and raises; each direction on its own is a recurrence, exposed as
    :meth:`scan_direction` / :meth:`step_direction`, and those are what streaming code and the
    ``scan == step`` tests use.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 backend: str = "auto") -> None:
        super().__init__(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init_floor, conv_bias,
                         bias, backend)
        self._make_direction("_b", self.d_inner, d_state, d_conv, self.dt_rank, conv_bias, dt_min, dt_max,
                             dt_init_floor)

    def scan(self, x: torch.Tensor, state: BidirectionalMambaState | None = None, *, output_final_state: bool = True
             ) -> tuple[torch.Tensor, BidirectionalMambaState | None]:
        """``x (B, L, C) -> y (B, L, C)`` and the final states of the forward and backward directions.

        The backward direction's final state is its state after reading token 0. A bidirectional
        scan cannot resume from a state (the backward direction reads the sequence from its
        end), so ``state`` must be None. Without ``output_final_state`` the states are None and are
        not computed (the drop-in ``forward``).
        """
        if state is not None:
            raise ValueError("BidirectionalMamba.scan cannot resume from a state: its backward direction reads the "
                             "whole sequence from the end; pass state=None, or use scan_direction per direction")
        x = self._check_input(x, 3)
        xs, z = self._in_proj_channels_last(x)
        y_f, st_f = self._ssm_scan(xs, z, "", None, output_final_state)
        y_b, st_b = self._ssm_scan(xs.flip(-1), z.flip(-1), "_b", None, output_final_state)
        y = (y_f + y_b.flip(-1)) / 2
        return (self.out_proj(y.transpose(1, 2).to(x.dtype)),
                BidirectionalMambaState(st_f, st_b) if output_final_state else None)

    def step(self, x_t: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        raise NotImplementedError(
            "BidirectionalMamba has no one-token step: its backward direction needs the tokens that come later. "
            "Use scan/forward for whole sequences, or step_direction(x_t, state, backward=...) to run one direction "
            "as a recurrence (the backward one over the tokens in reverse order)."
        )

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Drop-in mixer: ``(B, N, C) -> (B, N, C)`` (grid_size unused); :meth:`scan` without the final states,
        which are then not computed."""
        return self.scan(x, output_final_state=False)[0]

    def decode_step_(self, x_t: torch.Tensor, state: MambaState, A: torch.Tensor) -> torch.Tensor:
        # Mamba's causal decode path would silently run only the forward direction.
        raise NotImplementedError("BidirectionalMamba has no decode step; use step_direction for one direction")

    # -- one direction at a time ------------------------------------------------------------
    def scan_direction(self, x: torch.Tensor, state: MambaState | None = None, *, backward: bool = False
                       ) -> tuple[torch.Tensor, MambaState]:
        """One direction alone, ``out_proj`` applied (not halved): ``x (B, L, C) -> (B, L, C)``.

        ``backward=True`` reads the tokens from last to first; its output is returned in the
        original token order. ``(scan_direction(fwd) + scan_direction(bwd)) / 2`` equals
        ``forward`` when ``out_proj`` has no bias.
        """
        x = self._check_input(x, 3)
        if state is not None:
            self._check_state(state, x.shape[0], x.device)
        xs, z = self._in_proj_channels_last(x)
        if backward:
            y, st = self._ssm_scan(xs.flip(-1), z.flip(-1), "_b", state)
            y = y.flip(-1)
        else:
            y, st = self._ssm_scan(xs, z, "", state)
        return self.out_proj(y.transpose(1, 2).to(x.dtype)), st

    def step_direction(self, x_t: torch.Tensor, state: MambaState, *, backward: bool = False
                       ) -> tuple[torch.Tensor, MambaState]:
        """One token of one direction: ``x_t (B, C) -> (B, C)``; for ``backward`` feed tokens last to first."""
        x_t = self._check_input(x_t, 2)
        self._check_state(state, x_t.shape[0], x_t.device)
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)
        y, st = self._ssm_step(xs, z, "_b" if backward else "", state)
        return self.out_proj(y.to(x_t.dtype)), st


class VimBlock(nn.Module):
    """``x + DropPath(BidirectionalMamba(RMSNorm(x)))`` on ``(B, N, C)``, residual in fp32."""

    def __init__(self, dim: int, drop_path: float = 0.0, norm_eps: float = 1e-5, **mixer_kwargs) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.mixer = BidirectionalMamba(dim, **mixer_kwargs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mixer(self.norm(x.to(self.norm.weight.dtype)))
        return x + self.drop_path(y).to(x.dtype)


class VisionMamba(nn.Module):
    """Vim image classifier ``(B, in_chans, H, W) -> (B, num_classes)``.

    Args:
        img_size, patch_size, in_chans: the patch grid is ``(img_size // patch_size)^2`` (M patches).
        embed_dim, depth: width and number of bidirectional blocks.
        d_state, d_conv, expand: Mamba settings of every block.
        drop_path_rate: linearly increasing stochastic depth.
        num_classes: head size (0 = return the class-token features ``(B, embed_dim)``).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 192, depth: int = 24, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-5, backend: str = "auto") -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be a multiple of patch_size={patch_size}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_classes, self.embed_dim = num_classes, embed_dim
        grid = img_size // patch_size
        self.num_patches = grid * grid
        self.cls_position = self.num_patches // 2
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.ModuleList(
            VimBlock(embed_dim, drop_path=r, norm_eps=norm_eps, d_state=d_state, d_conv=d_conv, expand=expand,
                     backend=backend) for r in rates)
        self.norm_f = RMSNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(depth)

    @torch.no_grad()
    def _init_weights(self, depth: int) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for layer in self.layers:
            # mamba-ssm's prenorm-residual rescaling of the output projection.
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            layer.mixer.out_proj.weight /= math.sqrt(depth)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, embed_dim)``: the normalised class token."""
        check_tensor("images", images, shape=(None, self.in_chans, self.img_size, self.img_size))
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, M, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        pos = self.cls_position
        x = torch.cat([x[:, :pos], cls, x[:, pos:]], dim=1) + self.pos_embed
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)[:, pos]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, num_classes)``."""
        return self.head(self.forward_features(images))


VIM_CONFIGS: dict[str, dict[str, int]] = {
    "vim_tiny": dict(embed_dim=192, depth=24, d_state=16),
    "vim_small": dict(embed_dim=384, depth=24, d_state=16),
    "vim_base": dict(embed_dim=768, depth=24, d_state=16),
}

__all__ = ["VIM_CONFIGS", "BidirectionalMamba", "BidirectionalMambaState", "VimBlock", "VisionMamba"]
