"""LaMamba (LaMamba-Diff): a 2-D selective scan and local window attention in one block.

One block, three residual parts, each optionally modulated by adaLN-Zero from a conditioning
vector ``c`` (9 vectors: shift, scale and gate per part)::

    x += g1 * SS2D(mod1(LN x))              # global: 4-direction 2-D selective scan
    x += g2 * WindowAttention(mod2(LN x))   # local: 8x8 windows, shifted by 4 on odd blocks
    x += g3 * MLP(mod3(LN x))

with ``mod(h) = h * (1 + scale) + shift``. Without conditioning the gates are 1 and ``mod`` is
the identity (the norms then keep their affine parameters). When the map is no larger than
the window in both directions the window is the whole map (global attention, no shift).

SS2D (VMamba's 2-D scan): ``in_proj -> (x, z)``; x through a depthwise 3x3 conv and SiLU;
four selective scans over the ``(H, W)`` grid, row-major, column-major and both reversed,
each with its own ``x_proj``/``dt_proj``/``A``/``D`` (stacked over K = 4); the four outputs
mapped back to row-major order and summed; LayerNorm; times ``silu(z)``; ``out_proj``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from neurostep.engine import check_tensor
from neurostep.kernels.selective_scan import selective_scan, selective_state_update
from neurostep.layers import (
    DropPath,
    as_grid,
    check_tokens,
    inverse_softplus,
    log_uniform_steps,
    resolve_grid,
    s4d_real_log_A,
)

K_DIRECTIONS = 4


class SS2D(nn.Module):
    """4-direction 2-D selective scan, ``(B, N, C) -> (B, N, C)`` over an ``(H, W)`` grid.

    Parameters are stacked over the K = 4 directions: ``x_proj_weight (K, R + 2N, Di)``,
    ``dt_projs_weight (K, Di, R)``, ``dt_projs_bias (K, Di)``, ``A_logs (K * Di, N)``,
    ``Ds (K * Di,)`` (VMamba's names).
    """

    def __init__(self, dim: int, d_state: int = 1, ssm_ratio: float = 2.0, d_conv: int = 3,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, backend: str = "auto") -> None:
        super().__init__()
        if d_conv % 2 != 1:
            raise ValueError(f"d_conv must be odd (a centred 2-D conv), got {d_conv}")
        self.dim = dim
        self.d_state = d_state
        self.d_inner = int(ssm_ratio * dim)
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        di, r, n = self.d_inner, self.dt_rank, d_state
        self.in_proj = nn.Linear(dim, 2 * di, bias=False)
        self.conv2d = nn.Conv2d(di, di, d_conv, padding=d_conv // 2, groups=di, bias=True)
        bound = di ** -0.5
        self.x_proj_weight = nn.Parameter(torch.empty(K_DIRECTIONS, r + 2 * n, di).uniform_(-bound, bound))
        std = r ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(K_DIRECTIONS, di, r).uniform_(-std, std))
        # inverse softplus, so that softplus(bias) is the sampled dt
        self.dt_projs_bias = nn.Parameter(inverse_softplus(log_uniform_steps((K_DIRECTIONS, di), dt_min, dt_max,
                                                                             dt_init_floor)))
        self.A_logs = nn.Parameter(s4d_real_log_A(K_DIRECTIONS * di, n))
        self.Ds = nn.Parameter(torch.ones(K_DIRECTIONS * di))
        self.out_norm = nn.LayerNorm(di)
        self.out_proj = nn.Linear(di, dim, bias=False)

    def _directions(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """``(B, Di, H, W) -> (B, K, Di, L)``: row-major, column-major, and both reversed."""
        row = x.flatten(2)
        col = x.transpose(2, 3).flatten(2)
        return torch.stack([row, col, row.flip(-1), col.flip(-1)], dim=1)

    def _merge(self, y: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """``(B, K, Di, L)`` in each direction's order -> ``(B, Di, L)`` summed in row-major order."""
        b, _, di, _ = y.shape

        def col_to_row(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, di, W, H).transpose(2, 3).reshape(b, di, H * W)

        return y[:, 0] + col_to_row(y[:, 1]) + y[:, 2].flip(-1) + col_to_row(y[:, 3].flip(-1))

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None, *, by_steps: bool = False
                ) -> torch.Tensor:
        """``x (B, N, C) -> (B, N, C)`` with ``N = H * W`` in row-major order.

        ``by_steps=True`` runs every direction token by token through the decode step
        (``selective_state_update``) instead of the fused scan: the reference that the
        ``scan == step`` test compares with.
        """
        x = check_tokens(x, self.dim)
        H, W = resolve_grid(x.shape[1], grid_size, who="SS2D")
        b, L = x.shape[0], H * W
        di, r, n = self.d_inner, self.dt_rank, self.d_state
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, Di)
        xs = xs.transpose(1, 2).reshape(b, di, H, W)
        xs = F.silu(self.conv2d(xs))
        seqs = self._directions(xs, H, W)  # (B, K, Di, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", seqs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        A = -torch.exp(self.A_logs.float())
        u = seqs.reshape(b, K_DIRECTIONS * di, L)
        delta = dts.reshape(b, K_DIRECTIONS * di, L)
        bias = self.dt_projs_bias.reshape(-1).float()
        if by_steps:
            y = self._scan_by_steps(u, delta, A, Bs, Cs, bias)
        else:
            # B and C are grouped (B, K, N, L): direction k's lanes read group k.
            y, _ = selective_scan(u, delta, A, Bs.contiguous(), Cs.contiguous(), self.Ds.float(), None,
                                  delta_bias=bias, delta_softplus=True, backend=self.backend)
        y = self._merge(y.reshape(b, K_DIRECTIONS, di, L), H, W).transpose(1, 2)  # (B, L, Di)
        y = self.out_norm(y.to(x.dtype)) * F.silu(z)
        return self.out_proj(y)

    def _scan_by_steps(self, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor,
                       Cs: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, dim, L = u.shape
        state = u.new_zeros(b, dim, A.shape[1], dtype=torch.float32)
        outs = []
        for t in range(L):
            y_t, state = selective_state_update(state, u[:, :, t], delta[:, :, t], A, Bs[..., t], Cs[..., t],
                                                self.Ds.float(), dt_bias=bias, dt_softplus=True)
            outs.append(y_t)
        return torch.stack(outs, dim=-1)


def _window_labels(Hp: int, Wp: int, H: int, W: int, ws: int, shift: int, device: torch.device) -> torch.Tensor:
    """Region id per position of the padded, shifted map (Swin's mask regions); -1 marks padding."""
    lab = torch.zeros(Hp, Wp, dtype=torch.long, device=device)
    if shift:
        cuts = ((0, Hp - ws), (Hp - ws, Hp - shift), (Hp - shift, Hp))
        cuts_w = ((0, Wp - ws), (Wp - ws, Wp - shift), (Wp - shift, Wp))
        region = 0
        for h0, h1 in cuts:
            for w0, w1 in cuts_w:
                lab[h0:h1, w0:w1] = region
                region += 1
    pad = torch.zeros(Hp, Wp, dtype=torch.bool, device=device)
    pad[H:, :] = True
    pad[:, W:] = True
    if shift:
        pad = torch.roll(pad, shifts=(-shift, -shift), dims=(0, 1))
    return lab.masked_fill(pad, -1)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows of an ``(H, W)`` map.

    ``(B, N, C) -> (B, N, C)``. ``shift`` rolls the map by ``-shift`` first (Swin), with a mask
    that keeps attention inside the original regions; maps not divisible by the window are
    padded and the padding is masked out as keys. A map no larger than the window in both
    directions is one global window, unshifted.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 8, shift: int = 0, qkv_bias: bool = True
                 ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if not 0 <= shift < window_size:
            raise ValueError(f"shift must be in [0, window_size={window_size}), got {shift}")
        self.dim, self.num_heads, self.window_size, self.shift = dim, num_heads, window_size, shift
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        x = check_tokens(x, self.dim)
        H, W = resolve_grid(x.shape[1], grid_size, who="WindowAttention")
        b, _, c = x.shape
        if H <= self.window_size and W <= self.window_size:
            wh, ww, shift = H, W, 0
        else:
            wh = ww = self.window_size
            shift = self.shift
        Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
        m = x.reshape(b, H, W, c)
        if (Hp, Wp) != (H, W):
            m = F.pad(m, (0, 0, 0, Wp - W, 0, Hp - H))
        if shift:
            m = torch.roll(m, shifts=(-shift, -shift), dims=(1, 2))
        nh, nw = Hp // wh, Wp // ww
        win = m.reshape(b, nh, wh, nw, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, wh * ww, c)
        mask = None
        if shift or (Hp, Wp) != (H, W):
            lab = _window_labels(Hp, Wp, H, W, ws=wh, shift=shift, device=x.device)
            lab = lab.reshape(nh, wh, nw, ww).permute(0, 2, 1, 3).reshape(nh * nw, wh * ww)
            allowed = (lab[:, :, None] == lab[:, None, :]) & (lab[:, None, :] >= 0)
            # A padded query would see no key: let it see itself (its output is discarded).
            allowed |= torch.eye(wh * ww, dtype=torch.bool, device=x.device)
            mask = allowed.repeat(b, 1, 1)[:, None]  # (B * windows, 1, T, T)
        qkv = self.qkv(win).reshape(win.shape[0], wh * ww, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(b, nh, nw, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, Hp, Wp, c)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        out = out[:, :H, :W].reshape(b, H * W, c)
        return self.proj(out)


class LaMamba(nn.Module):
    """LaMamba block on tokens ``(B, N, C)`` of an ``(H, W)`` map.

    Args:
        dim, num_heads: width and attention heads.
        window_size, shift: attention windows (8) and their shift (4 on odd blocks, 0 on even).
        mlp_ratio: MLP hidden width / dim (4); 0 drops the MLP part.
        d_state, ssm_ratio, d_conv: SS2D settings (LaMamba-Diff: 1, 2, 3).
        cond_dim: size of a conditioning vector for adaLN-Zero modulation (None = unmodulated).
        residual: True (the block) returns ``x + updates``; False returns only the sum of the
            updates, so the block can stand in for an attention layer inside a host residual.
        grid_size: default ``(H, W)`` used when a call gives none and it fits the token count.
    """

    def __init__(self, dim: int, num_heads: int = 4, window_size: int = 8, shift: int = 0, mlp_ratio: float = 4.0,
                 d_state: int = 1, ssm_ratio: float = 2.0, d_conv: int = 3, cond_dim: int | None = None,
                 drop_path: float = 0.0, residual: bool = True, grid_size: tuple[int, int] | None = None,
                 backend: str = "auto") -> None:
        super().__init__()
        self.dim = dim
        self.grid_size = as_grid(grid_size)
        self.cond_dim = cond_dim
        self.residual = residual
        affine = cond_dim is None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=affine)
        self.ss2d = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, d_conv=d_conv, backend=backend)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=affine)
        self.attn = WindowAttention(dim, num_heads, window_size=window_size, shift=shift)
        hidden = int(dim * mlp_ratio)
        if hidden > 0:
            self.norm3 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=affine)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        else:
            self.norm3 = self.mlp = None
        self.drop_path = DropPath(drop_path)
        if cond_dim is not None:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 9 * dim))
            # adaLN-Zero: gates start at 0, so every block starts as the identity.
            nn.init.zeros_(self.adaLN_modulation[1].weight)
            nn.init.zeros_(self.adaLN_modulation[1].bias)
        else:
            self.adaLN_modulation = None

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None, cond: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``x (B, N, C)``, ``grid_size (H, W)`` (square inferred), ``cond (B, cond_dim)`` -> ``(B, N, C)``."""
        x = check_tokens(x, self.dim)
        grid = resolve_grid(x.shape[1], grid_size, self.grid_size, "LaMamba")
        if self.adaLN_modulation is not None:
            if cond is None:
                raise ValueError(f"this LaMamba block is conditioned (cond_dim={self.cond_dim}); pass cond (B, "
                                 f"{self.cond_dim})")
            check_tensor("cond", cond, shape=(x.shape[0], self.cond_dim), device=x.device)
            mods = self.adaLN_modulation(cond).unsqueeze(1).chunk(9, dim=-1)
        elif cond is not None:
            raise ValueError("cond was given but this LaMamba block has no modulation (build it with cond_dim=...)")
        else:
            mods = None

        def part(h: torch.Tensor, i: int, norm: nn.Module, fn) -> torch.Tensor:
            h = norm(h)
            if mods is not None:
                shift, scale, gate = mods[3 * i], mods[3 * i + 1], mods[3 * i + 2]
                return gate * fn(h * (1 + scale) + shift)
            return fn(h)

        h = x + self.drop_path(part(x, 0, self.norm1, lambda t: self.ss2d(t, grid)))
        h = h + self.drop_path(part(h, 1, self.norm2, lambda t: self.attn(t, grid)))
        if self.mlp is not None:
            h = h + self.drop_path(part(h, 2, self.norm3, self.mlp))
        return h if self.residual else h - x


class LaMambaNet(nn.Module):
    """Hierarchical image backbone of LaMamba blocks ``(B, in_chans, H, W) -> (B, num_classes)``.

    A 4x4 patch stem, stages of LaMamba blocks (odd blocks shifted by window_size // 2) with
    2x2 strided-conv downsampling between them, LayerNorm, mean pooling and a linear head.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, dims: tuple[int, ...] = (64, 128, 256, 512),
                 depths: tuple[int, ...] = (2, 2, 2, 2), head_dim: int = 32, window_size: int = 8,
                 mlp_ratio: float = 4.0, d_state: int = 1, ssm_ratio: float = 2.0, d_conv: int = 3,
                 patch_size: int = 4, drop_path_rate: float = 0.0, backend: str = "auto") -> None:
        super().__init__()
        if len(dims) != len(depths) or not dims:
            raise ValueError(f"dims {dims} and depths {depths} must be non-empty and of equal length")
        self.in_chans = in_chans
        self.stem = nn.Conv2d(in_chans, dims[0], patch_size, stride=patch_size)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        k = 0
        for s, (dim, depth) in enumerate(zip(dims, depths)):
            blocks = nn.ModuleList(
                LaMamba(dim, num_heads=max(dim // head_dim, 1), window_size=window_size,
                        shift=(window_size // 2) if i % 2 else 0, mlp_ratio=mlp_ratio, d_state=d_state,
                        ssm_ratio=ssm_ratio, d_conv=d_conv, drop_path=rates[k + i], backend=backend)
                for i in range(depth))
            k += depth
            self.stages.append(blocks)
            if s + 1 < len(dims):
                self.downsamples.append(_Downsample(dim, dims[s + 1]))
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_tensor("images", images, ndim=4)
        if images.shape[1] != self.in_chans:
            raise ValueError(f"images must have shape (B, {self.in_chans}, H, W), got {tuple(images.shape)}")
        m = self.stem(images)
        for s, blocks in enumerate(self.stages):
            H, W = m.shape[-2:]
            x = m.flatten(2).transpose(1, 2)
            for block in blocks:
                x = block(x, (H, W))
            if s < len(self.downsamples):
                m = self.downsamples[s](x, (H, W))
        return self.head(self.norm(x).mean(1))


class _Downsample(nn.Module):
    """LayerNorm then a 2x2 stride-2 conv: tokens ``(B, H*W, C)`` -> map ``(B, C_out, H/2, W/2)``."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, out_dim, 2, stride=2)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        H, W = grid
        return self.conv(self.norm(x).transpose(1, 2).reshape(x.shape[0], x.shape[2], H, W))


__all__ = ["LaMamba", "LaMambaNet", "SS2D", "WindowAttention"]
