"""CRATE (Yu et al., NeurIPS 2023): white-box transformer layers from sparse rate reduction.

- MSSA (multi-head subspace self-attention): per head one bias-free projection ``w = U_k^T z``
  serves as query, key and value, ``softmax(w w^T * d_h^-0.5) w``; heads are concatenated and
  mapped back by ``Linear(inner, d)`` with bias. It is a gradient step on the compression term
  ``R^c(Z; U) = sum_k 1/2 logdet(I + p / (N eps^2) (U_k^T Z)^T (U_k^T Z))``.
- ISTA: one proximal step towards a non-negative sparse code in the dictionary ``D`` (d x d),
  ``Z+ = ReLU(Z + eta D^T (Z - D Z) - eta lambda)`` (eta = lambda = 0.1).
- Layer: ``z = z + MSSA(LN z)``; ``z = ISTA(LN z)`` (no residual around ISTA, so outputs are >= 0).
- CRATE-alpha option (``overcomplete=4``): dictionary ``D`` of size d x 4d, ``ista_steps`` (2)
  proximal steps from a zero code, a separate decoder dictionary and a residual:
  ``A = ista(LN z)``, ``z = z + D_dec A`` (decoupled dictionaries, as in CRATE-alpha).

Tokens are row vectors here, so ``D Z`` (columns) is ``z @ D^T``.
Each layer exposes the measures the paper plots: :meth:`CRATELayer.coding_rate` (``R^c``)
and :meth:`CRATELayer.sparsity` (fraction of zero entries); :meth:`CRATE.measures` returns
them per layer for a batch of images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from neurostep.layers import check_images, check_size, check_tokens, resolve_head_dim, resolve_norm


class MSSA(nn.Module):
    """Multi-head subspace self-attention ``(B, N, d) -> (B, N, d)`` with shared Q = K = V per head.

    Args:
        dim: channels ``d``.
        num_heads: subspaces ``K``.
        head_dim: subspace dimension ``p`` (default ``d / K``).
        causal: mask future tokens (token ``i`` attends to tokens ``<= i``), as in autoregressive CRATE.
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int | None = None, attn_drop: float = 0.0,
                 causal: bool = False) -> None:
        super().__init__()
        head_dim = resolve_head_dim(dim, num_heads, head_dim)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.attn_drop = attn_drop
        self.causal = causal
        self.qkv = nn.Linear(dim, num_heads * head_dim, bias=False)  # the subspace bases U_k, stacked
        self.out = nn.Linear(num_heads * head_dim, dim)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Coordinates in each subspace ``U_k^T z``: ``(B, N, d) -> (B, K, N, p)``."""
        b, n, _ = x.shape
        return self.qkv(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, grid_size: Sequence[int] | None = None) -> torch.Tensor:
        """``x``: ``(B, N, d)`` -> ``(B, N, d)``; ``grid_size`` is unused."""
        check_tokens(x, self.dim)
        w = self.project(x)
        y = F.scaled_dot_product_attention(w, w, w, dropout_p=self.attn_drop if self.training else 0.0,
                                           is_causal=self.causal)
        return self.out(y.transpose(1, 2).flatten(2))

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same with an explicit softmax (no dropout): the readable ground truth."""
        check_tokens(x, self.dim)
        w = self.project(x)
        scores = w @ w.transpose(-1, -2) * self.head_dim ** -0.5
        if self.causal:
            n = x.shape[1]
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        attn = scores.softmax(-1)
        return self.out((attn @ w).transpose(1, 2).flatten(2))


class ISTA(nn.Module):
    """ISTA sparse-coding step(s) ``(B, N, d) -> (B, N, d)`` (square) or ``(B, N, m)`` codes (overcomplete).

    Square (CRATE): ``ReLU(z + eta D^T (z - D z) - eta lambda)`` with ``D`` of size d x d.
    Overcomplete (CRATE-alpha, ``overcomplete=m/d > 1``): ``steps`` proximal steps on the code
    ``a`` (size m) starting from 0: ``a <- ReLU(a + eta D^T (z - D a) - eta lambda)``.
    """

    def __init__(self, dim: int, *, overcomplete: int = 1, steps: int = 1, eta: float = 0.1,
                 lambd: float = 0.1) -> None:
        super().__init__()
        dim, steps = check_size("dim", dim), check_size("steps", steps)
        overcomplete = check_size("overcomplete", overcomplete)
        self.dim, self.code_dim, self.steps = dim, dim * overcomplete, steps
        self.overcomplete = overcomplete
        self.eta, self.lambd = eta, lambd
        self.weight = nn.Parameter(torch.empty(dim, self.code_dim))  # the dictionary D (d x m)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Sparse code of ``z`` ``(B, N, d)``: ``(B, N, d)`` for the square case, ``(B, N, m)`` otherwise."""
        d = self.weight
        if self.overcomplete == 1:
            # Square CRATE step warm-started at z itself (code and signal share coordinates).
            a = z
            for _ in range(self.steps):
                a = F.relu(a + self.eta * ((z - a @ d.T) @ d) - self.eta * self.lambd)
            return a
        a = F.relu(self.eta * (z @ d) - self.eta * self.lambd)  # first step from a = 0
        for _ in range(self.steps - 1):
            a = F.relu(a + self.eta * ((z - a @ d.T) @ d) - self.eta * self.lambd)
        return a


class CRATELayer(nn.Module):
    """One CRATE layer ``(B, N, d) -> (B, N, d)``: ``z + MSSA(LN z)`` then ``ISTA(LN z)``.

    With ``overcomplete > 1`` (CRATE-alpha) the second half is ``z + D_dec ISTA(LN z)``.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, *, overcomplete: int = 1,
                 ista_steps: int | None = None, eta: float = 0.1, lambd: float = 0.1,
                 norm_layer: str | type[nn.Module] = "layernorm") -> None:
        super().__init__()
        norm = resolve_norm(norm_layer)
        self.norm1 = norm(dim)
        self.attn = MSSA(dim, num_heads, head_dim)
        self.norm2 = norm(dim)
        steps = ista_steps if ista_steps is not None else (1 if overcomplete == 1 else 2)
        self.ista = ISTA(dim, overcomplete=overcomplete, steps=steps, eta=eta, lambd=lambd)
        self.decoder = nn.Linear(dim * overcomplete, dim, bias=False) if overcomplete > 1 else None

    def forward_parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z after MSSA, z after ISTA)``, both ``(B, N, d)``."""
        z_half = z + self.attn(self.norm1(z))
        code = self.ista(self.norm2(z_half))
        out = code if self.decoder is None else z_half + self.decoder(code)
        return z_half, out

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(z)[1]

    @torch.no_grad()
    def coding_rate(self, z: torch.Tensor, eps: float = 0.5) -> torch.Tensor:
        """Compression term ``R^c(Z; U)`` of tokens ``z`` ``(B, N, d)`` against this layer's subspaces.

        ``sum_k 1/2 logdet(I_p + p / (N eps^2) W_k^T W_k)`` with ``W_k = U_k^T Z`` (N x p), computed
        on the normalized input that MSSA sees and averaged over the batch. Returns a scalar.
        """
        check_tokens(z, self.attn.dim, "z")
        w = self.attn.project(self.norm1(z)).float()  # (B, K, N, p)
        n, p = w.shape[-2], w.shape[-1]
        gram = w.transpose(-1, -2) @ w * (p / (n * eps ** 2))
        eye = torch.eye(p, dtype=gram.dtype, device=gram.device)
        return 0.5 * torch.logdet(eye + gram).sum(-1).mean()

    @staticmethod
    @torch.no_grad()
    def sparsity(z: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
        """Fraction of entries of ``z`` (any shape) with ``|z| <= tol``: 1 is all zeros. Returns a scalar."""
        return (z.abs() <= tol).float().mean()


class CRATE(nn.Module):
    """CRATE vision classifier ``(B, 3, H, W) -> (B, num_classes)`` (ViT layout, class token).

    Patches are flattened and embedded by one Linear (patch_dim -> d); a class token and learned
    positional embeddings are added; ``depth`` :class:`CRATELayer`; head LN + Linear on the class token.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 dim: int = 384, depth: int = 12, num_heads: int = 6, head_dim: int | None = None,
                 overcomplete: int = 1, ista_steps: int | None = None, eta: float = 0.1, lambd: float = 0.1) -> None:
        super().__init__()
        img_size, patch_size = check_size("img_size", img_size), check_size("patch_size", patch_size)
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be divisible by patch_size={patch_size}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, check_size("in_chans", in_chans)
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Linear(in_chans * patch_size ** 2, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        self.layers = nn.ModuleList([CRATELayer(dim, num_heads, head_dim or dim // num_heads, overcomplete=overcomplete,
                                                ista_steps=ista_steps, eta=eta, lambd=lambd) for _ in range(depth)])
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> tokens ``(B, 1 + N, d)`` with the class token first."""
        check_images(x, self.in_chans, self.img_size)
        p = self.patch_size
        b = x.shape[0]
        patches = F.unfold(x, p, stride=p).transpose(1, 2)  # (B, N, C*p*p)
        tokens = self.patch_embed(patches)
        return torch.cat([self.cls_token.expand(b, -1, -1), tokens], 1) + self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        for layer in self.layers:
            z = layer(z)
        return self.head(z[:, 0])

    @torch.no_grad()
    def measures(self, x: torch.Tensor, eps: float = 0.5) -> list[dict[str, float]]:
        """Per layer, the paper's curves: ``coding_rate`` (R^c of the layer input against its
        subspaces), ``coding_rate_after_mssa`` (the same measure after the MSSA half-step) and
        ``sparsity`` (fraction of zeros of the layer output). ``x``: images ``(B, C, H, W)``.
        """
        z = self.embed(x)
        rows = []
        for layer in self.layers:
            z_half, z_next = layer.forward_parts(z)
            rows.append({"coding_rate": float(layer.coding_rate(z, eps)),
                         "coding_rate_after_mssa": float(layer.coding_rate(z_half, eps)),
                         "sparsity": float(layer.sparsity(z_next))})
            z = z_next
        return rows
