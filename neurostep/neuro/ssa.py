"""Spiking self-attention (SSA, Spikformer, ICLR 2023) and its drop-in mixer wrapper.

SSA works on spike tensors ``(T, B, N, C)`` (time, batch, tokens, channels)::

    Q, K, V = LIF(BN(W_q X)), LIF(BN(W_k X)), LIF(BN(W_v X))      # binary spikes, no bias
    A       = Q K^T V * scale                                     # no softmax
    Y       = LIF_{V_th=0.5}(A) -> LIF(BN(W_o .))

Q, K and V are non-negative spikes, so ``Q K^T`` needs no softmax to stay non-negative and the
product can be evaluated as ``Q (K^T V)``: linear in N (cost ``N d^2`` per head instead of
``N^2 d``). Because every operand is an exact small integer in float32, both orders give
bit-identical results; ``order`` only changes cost (and rounding for non-spike inputs).

All neurons are spikingjelly-exact LIFs: tau=2, hard reset to 0, V_th=1 (0.5 for the attention
LIF), Sigmoid(alpha=4) surrogate, detach_reset=True, as in the official code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neurostep.engine import Composite, check_tensor, run_child
from neurostep.layers import resolve_norm
from neurostep.neuro.neurons import LIF
from neurostep.neuro.surrogate import Sigmoid
from neurostep.neuro.synapses import SpikeLinear

ATTENTION_ORDERS = ("q(kv)", "(qk)v")

__all__ = [
    "ATTENTION_ORDERS",
    "SSAState",
    "SpikingSelfAttention",
    "SpikingSelfAttentionMixer",
    "default_num_heads",
    "check_tokens_in_time",
    "spikformer_lif",
    "spiking_attention",
]


def spikformer_lif(v_threshold: float = 1.0, backend: str = "auto") -> LIF:
    """The LIF every Spikformer layer uses (tau=2, hard reset 0, Sigmoid(4), detach_reset)."""
    return LIF(tau=2.0, v_threshold=v_threshold, v_reset=0.0, decay_input=True, surrogate=Sigmoid(alpha=4.0),
               detach_reset=True, backend=backend)


def check_tokens_in_time(name: str, x: torch.Tensor, dim: int, stepping: bool) -> None:
    """Tokens ``(B, N, C)`` (one step) or ``(T, B, N, C)`` (a sequence) with ``C = dim``, non-empty."""
    layout = "(B, N, C)" if stepping else "(T, B, N, C)"
    check_tensor(name, x, ndim=3 if stepping else 4)
    if x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape {layout} with C={dim}, got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")


def spiking_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 0.125,
                      order: str = "q(kv)", causal: bool = False) -> torch.Tensor:
    """Softmax-free attention ``Q K^T V * scale`` (pure torch; the reference for both orders).

    Args:
        q, k, v: ``(..., N, d)`` (usually binary spikes, ``...`` = time, batch, heads).
        scale: multiplier applied to the product (0.125 in Spikformer).
        order: ``"q(kv)"`` computes ``Q (K^T V)`` (cost ``N d^2``, linear in N);
            ``"(qk)v"`` computes ``(Q K^T) V`` (cost ``N^2 d``, as in the official CIFAR code).
        causal: token ``i`` attends to tokens ``<= i`` only: ``((Q K^T) * M) V`` with the
            lower-triangular mask ``M`` (computed in the ``(qk)v`` order whatever ``order`` says).
    Returns:
        ``(..., N, d)``.
    """
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k and v must have one shape (..., N, d), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if order not in ATTENTION_ORDERS:
        raise ValueError(f"order must be one of {ATTENTION_ORDERS}, got {order!r}")
    if causal:
        n = q.shape[-2]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        return ((q @ k.transpose(-2, -1)).masked_fill(~mask, 0.0) @ v) * scale
    if order == "q(kv)":
        return (q @ (k.transpose(-2, -1) @ v)) * scale
    return ((q @ k.transpose(-2, -1)) @ v) * scale


@dataclass
class SSAState:
    """Membrane states of the three LIF layers of :class:`SpikingSelfAttention` (``None`` = fresh)."""

    qkv: Any = None   # LIFState with v of shape (B, N, 3C)
    attn: Any = None  # (B, N, C)
    proj: Any = None  # (B, N, C)


class SpikingSelfAttention(Composite):
    """Spikformer's spiking self-attention on ``(T, B, N, C)``.

    Args:
        dim: channels C (divisible by ``num_heads``).
        num_heads: attention heads.
        scale: multiplier of ``Q K^T V`` (0.125 in the paper, independent of the head size).
        order: ``"q(kv)"`` (default, linear in N) or ``"(qk)v"``; equal results on spikes.
        backend: LIF kernel backend (``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"``).
        proj_bias: bias on the output projection (the official ImageNet code has one;
            spikingjelly's port and the default here do not).
        norm_layer: norm after each projection (name or class); ``"batchnorm"`` as in the paper.
        causal: token ``i`` attends to tokens ``<= i`` only (masked ``Q K^T``); Spikformer itself
            is bidirectional, the causal form lets SSA replace causal attention.

    ``scan(x, state)`` runs a whole ``(T, B, N, C)`` sequence; ``step(x_t, state)`` one timestep
    ``(B, N, C)``. In training mode BatchNorm pools statistics over every position it sees, so
    ``scan`` (statistics over T, B, N) equals ``step`` looped over T only in eval mode.
    """

    time_dim = 0

    def __init__(self, dim: int, num_heads: int = 8, scale: float = 0.125, order: str = "q(kv)",
                 backend: str = "auto", proj_bias: bool = False, norm_layer: str | type[nn.Module] = "batchnorm",
                 causal: bool = False) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(num_heads, int) or num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(f"num_heads must be a positive divisor of dim={dim}, got {num_heads!r}")
        if order not in ATTENTION_ORDERS:
            raise ValueError(f"order must be one of {ATTENTION_ORDERS}, got {order!r}")
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale!r}")
        norm = resolve_norm(norm_layer)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale, self.order, self.causal = float(scale), order, bool(causal)
        # One fused projection for Q, K and V: per-channel BN and elementwise LIF make it identical
        # to three separate ones (channels [0:C] are Q, [C:2C] K, [2C:3C] V, head-major inside).
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.qkv_norm = norm(3 * dim)
        self.qkv_lif = spikformer_lif(1.0, backend)
        self.attn_lif = spikformer_lif(0.5, backend)
        self.proj = SpikeLinear(dim, dim, bias=proj_bias)   # its input is attn_lif's spikes
        self.proj_norm = norm(dim)
        self.proj_lif = spikformer_lif(1.0, backend)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, scale={self.scale}, order={self.order!r}, "
                f"causal={self.causal}")

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> SSAState:
        """Fresh state for steps of shape ``batch_shape = (B, N, C)``."""
        *lead, c = batch_shape
        return SSAState(
            qkv=self.qkv_lif.init_state((*lead, 3 * c), device=device, dtype=dtype),
            attn=self.attn_lif.init_state((*lead, c), device=device, dtype=dtype),
            proj=self.proj_lif.init_state((*lead, c), device=device, dtype=dtype),
        )

    def check_input(self, x: torch.Tensor, stepping: bool) -> None:
        check_tokens_in_time("x_t" if stepping else "x", x, self.dim, stepping)

    def advance(self, x: torch.Tensor, state: SSAState | None, stepping: bool) -> tuple[torch.Tensor, SSAState]:
        """One timestep ``(B, N, C)`` or a whole ``(T, B, N, C)`` sequence -> spikes of the same shape."""
        state = state if state is not None else SSAState()
        qkv, s_qkv = run_child(self.qkv_lif, self.qkv_norm(self.qkv(x)), state.qkv, stepping)
        lead, n = qkv.shape[:-2], qkv.shape[-2]
        # (..., N, 3C) -> three (..., heads, N, d) views. unbind, not indexing: the backward of
        # each index would zero-fill a gradient of the whole (3, ...) tensor (three fills and
        # three copies of it per call), where unbind's backward stacks the three once.
        q, k, v = (t.transpose(-3, -2) for t in qkv.reshape(*lead, n, 3, self.num_heads, self.head_dim).unbind(-3))
        attn = spiking_attention(q, k, v, self.scale, self.order, self.causal)
        attn = attn.transpose(-3, -2).reshape(*lead, n, self.dim)
        attn, s_attn = run_child(self.attn_lif, attn, state.attn, stepping)
        y, s_proj = run_child(self.proj_lif, self.proj_norm(self.proj(attn)), state.proj, stepping)
        return y, SSAState(s_qkv, s_attn, s_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(T, B, N, C) -> (T, B, N, C)`` spikes, from a fresh state."""
        return self.scan(x)[0]


def default_num_heads(dim: int, wanted: int = 8) -> int:
    """``wanted`` heads when they divide ``dim``, else the largest divisor of ``dim`` below it."""
    for h in range(min(wanted, dim), 0, -1):
        if dim % h == 0:
            return h
    return 1


class SpikingSelfAttentionMixer(nn.Module):
    """Drop-in token mixer ``(B, N, C) -> (B, N, C)`` around :class:`SpikingSelfAttention`.

    The input is repeated over ``T`` timesteps (direct encoding, as Spikformer does with
    images), run through SSA, and decoded by the mean over T: the output is a firing rate in
    ``[0, 1]`` per token and channel.

    Args:
        dim: channels C.
        num_heads: heads (default: 8, or the largest divisor of ``dim`` below 8).
        T: timesteps.
        **ssa_options: passed to :class:`SpikingSelfAttention` (``scale``, ``order``, ``backend``, ...).
    """

    def __init__(self, dim: int, num_heads: int | None = None, T: int = 4, **ssa_options: Any) -> None:
        super().__init__()
        if not isinstance(T, int) or T <= 0:
            raise ValueError(f"T must be a positive int, got {T!r}")
        self.T = T
        self.ssa = SpikingSelfAttention(dim, num_heads=num_heads or default_num_heads(dim), **ssa_options)

    @property
    def causal(self) -> bool:
        return self.ssa.causal

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``x`` ``(B, N, C)`` -> ``(B, N, C)``; ``grid_size`` is accepted for the mixer contract and unused."""
        check_tensor("x", x, ndim=3)
        if x.shape[-1] != self.ssa.dim:
            raise ValueError(f"x must have shape (B, N, C) with C={self.ssa.dim}, got {tuple(x.shape)}")
        x_seq = x.unsqueeze(0).expand(self.T, *x.shape)
        return self.ssa(x_seq).mean(0)
