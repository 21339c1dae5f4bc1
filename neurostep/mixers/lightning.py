"""Lightning attention: TransNormerLLM's gated linear attention on the decayed linear-attention op.

TransNormerLLM (Qin et al. 2023, "TransNormerLLM: A Faster and Better Large Language Model with Improved
TransNormer") replaces softmax attention by a gated linear attention with one constant decay per head,
computed in chunks by Lightning Attention (-2: Qin et al. 2024, "Lightning Attention-2: A Free Lunch for
Handling Unlimited Sequence Lengths in Large Language Models"). Per token ``x_t`` and head ``h``::

    q, k, v, u = split(W_qkvu x)                       (no bias)
    q, k = silu(q), silu(k)                             (per head, head dim d = hidden / heads)
    o_t = sum_{s <= t} lambda_h^(t - s) (q_t . k_s) v_s    (no 1/sqrt(d) factor)
    y_t = W_o (u_t * SRMSNorm(o_t))                     (SRMSNorm(z) = z / (||z||_2 / sqrt(hidden) + eps))

with ``lambda_h = exp(-slope_h)``: ``slope_h`` are ALiBi's slopes for the head count (``2^(-8 (h + 1) / H)``
for a power-of-two ``H``), scaled by ``1 - l / (L - 1) + 1e-5`` for layer ``l`` of ``L``, so the first
layer decays fastest and the last barely at all; the decays are fixed, not learned. This is the
``NormLinearAttention`` of the released TransNormerLLM code (parameter names ``qkvu_proj``,
``out_proj``); the channel mixer, norms and residuals of its block belong to the host. The recurrence
is :func:`neurostep.kernels.decayed_linear_attention.decayed_linear_attention` with
``log_decay = -slope`` per head and ``scale=1``; its state is one ``(d, d)`` matrix per head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neurostep.engine import Recurrent, check_tensor, compute_dtype
from neurostep.kernels.decayed_linear_attention import decayed_linear_attention
from neurostep.layers import check_size
from neurostep.layers.tokens import check_tokens


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi's head slopes (Press et al. 2022), as TransNormerLLM builds its decays: a geometric sequence
    ``2^(-8/n), 2^(-16/n), ...`` for a power of two ``n``; otherwise those of the nearest lower power of
    two followed by every other slope of twice that count."""
    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    check_size("num_heads", num_heads)
    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    lower = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(lower) + alibi_slopes(2 * lower)[0::2][:num_heads - lower]


@dataclass
class LightningState:
    """The linear-attention state ``kv (B, H, d, d)`` (keys by values, per head), in the compute dtype
    (float32, or float64 for float64 inputs)."""

    kv: torch.Tensor


class LightningAttention(Recurrent):
    """TransNormerLLM's gated linear attention with lightning (chunked, decayed) attention: ``(B, N, C) -> (B, N, C)``.

    Args:
        dim: token channels ``C``.
        num_heads: heads; ``hidden_dim`` must be divisible by it.
        hidden_dim: width of q, k, v and the gate (default ``dim``).
        layer_idx, num_layers: the layer's place in the stack, which sets the decays (see the module
            docstring); the defaults give the first layer's, the fastest.
        bias: bias in the two projections (TransNormerLLM: none).
        eps: SRMSNorm's epsilon.
        backend, chunk_size: passed to the decayed linear-attention op.

    Always causal: token ``t`` sees tokens ``<= t``. ``scan(x, state)`` continues from a
    :class:`LightningState`; ``step(x_t, state)`` decodes one token.
    """

    time_dim = 1

    def __init__(self, dim: int, num_heads: int = 8, *, hidden_dim: int | None = None, layer_idx: int = 0,
                 num_layers: int = 1, bias: bool = False, eps: float = 1e-8, backend: str = "auto",
                 chunk_size: int | None = None) -> None:
        super().__init__()
        self.dim = check_size("dim", dim)
        self.num_heads = check_size("num_heads", num_heads)
        self.hidden_dim = check_size("hidden_dim", hidden_dim if hidden_dim is not None else dim)
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})")
        self.num_layers = check_size("num_layers", num_layers)
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or not 0 <= layer_idx < num_layers:
            raise ValueError(f"layer_idx must be an int in [0, num_layers) = [0, {num_layers}), got {layer_idx!r}")
        self.layer_idx = layer_idx
        self.head_dim = self.hidden_dim // self.num_heads
        self.eps = eps
        self.backend = backend
        self.chunk_size = chunk_size
        self.qkvu_proj = nn.Linear(dim, 4 * self.hidden_dim, bias=bias)
        self.out_proj = nn.Linear(self.hidden_dim, dim, bias=bias)
        depth = 1.0 - layer_idx / max(num_layers - 1, 1) + 1e-5
        slopes = torch.tensor(alibi_slopes(self.num_heads), dtype=torch.float64) * depth
        # fixed, as in TransNormerLLM (not a parameter, not in the state dict)
        self.register_buffer("log_decay", (-slopes).float(), persistent=False)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, hidden_dim={self.hidden_dim}, "
                f"layer_idx={self.layer_idx}, num_layers={self.num_layers}")

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> LightningState:
        """A zero state for per-token inputs ``(B, C)`` (``batch_shape = (B, C)`` or ``(B,)``)."""
        dtype = compute_dtype(dtype or torch.get_default_dtype())
        return LightningState(torch.zeros(batch_shape[0], self.num_heads, self.head_dim, self.head_dim,
                                          device=device, dtype=dtype))

    def _projections(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``q, k, v (..., H, d)`` and the gate ``u (..., hidden)``."""
        q, k, v, u = self.qkvu_proj(x).chunk(4, dim=-1)
        q, k, v = (t.unflatten(-1, (self.num_heads, self.head_dim)) for t in (q, k, v))
        return F.silu(q), F.silu(k), v, u

    def _output(self, o: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        o = o.flatten(-2)
        rms = o.norm(dim=-1, keepdim=True) * self.hidden_dim ** -0.5
        return self.out_proj(u * (o / (rms + self.eps)))

    def _check_state(self, state: LightningState | None, batch: int, x: torch.Tensor) -> torch.Tensor | None:
        if state is None:
            return None
        if not isinstance(state, LightningState):
            raise TypeError(f"state must be a LightningState or None, got {type(state).__name__}")
        return check_tensor("state.kv", state.kv, shape=(batch, self.num_heads, self.head_dim, self.head_dim),
                            device=x.device)

    def scan(self, x: torch.Tensor, state: LightningState | None = None) -> tuple[torch.Tensor, LightningState]:
        """``x (B, N, C)`` -> ``(y (B, N, C), state)``, from ``state`` (None: zeros)."""
        x = check_tokens(x, self.dim)
        kv = self._check_state(state, x.shape[0], x)
        q, k, v, u = self._projections(x)
        o, kv = decayed_linear_attention(q, k, v, self.log_decay, scale=1.0, initial_state=kv,
                                         output_final_state=True, chunk_size=self.chunk_size, backend=self.backend)
        return self._output(o, u), LightningState(kv)

    def step(self, x_t: torch.Tensor, state: LightningState | None) -> tuple[torch.Tensor, LightningState]:
        """One token ``x_t (B, C)`` -> ``(y_t (B, C), state)``: ``kv = lambda kv + k^T v``, ``o = q kv``."""
        x_t = check_tensor("x_t", x_t, ndim=2)
        if x_t.shape[-1] != self.dim:
            raise ValueError(f"x_t must have shape (B, {self.dim}), got {tuple(x_t.shape)}")
        kv = self._check_state(state, x_t.shape[0], x_t)
        if kv is None:
            kv = self.init_state(tuple(x_t.shape), x_t.device, x_t.dtype).kv
        q, k, v, u = self._projections(x_t)
        cd = kv.dtype
        decay = torch.exp(self.log_decay.to(cd))[:, None, None]
        kv = decay * kv + k.to(cd)[..., :, None] * v.to(cd)[..., None, :]
        o = torch.einsum("bhk,bhkv->bhv", q.to(cd), kv).to(x_t.dtype)
        return self._output(o, u), LightningState(kv)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Drop-in mixer call: ``(B, N, C) -> (B, N, C)`` from a zero state (``grid_size`` unused)."""
        return self.scan(x)[0]


__all__ = ["LightningAttention", "LightningState", "alibi_slopes"]
