"""``causal_conv1d.causal_conv1d_varlen``: the conv states at the end of packed sequences.

Mirrors causal-conv1d 1.6 (``causal_conv1d/causal_conv1d_varlen.py`` at 0d2252d; BSD-3-Clause,
Copyright (c) 2024 Tri Dao). Upstream's Triton kernel is a gather; here it is one vectorised
gather in PyTorch (any device), which also handles empty sequences (zero states).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["causal_conv1d_varlen_states", "causal_conv1d_varlen_states_ref"]


def causal_conv1d_varlen_states(x: Tensor, cu_seqlens: Tensor, state_len: int) -> Tensor:
    """
    Forward pass only, does not support backward pass.
    Parameters:
        x: (total_tokens, dim)
        cu_seqlens: (batch + 1), must already be sorted. The cumulative sum of the sequence lengths, starting from 0.
        state_len: int. For each cu_seqlens, how many elements from x should be copied to the state.
            If some of those elements belong to a different sequence, the value of the states will be zero.
    Return:
        states: (batch, dim, state_len)
    """
    if x.dim() != 2:
        raise ValueError(f"x must have shape (total_tokens, dim), got {tuple(x.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 1:
        raise ValueError(f"cu_seqlens must have shape (batch + 1,), got {tuple(cu_seqlens.shape)}")
    total, dim = x.shape
    cu = cu_seqlens.to(device=x.device, dtype=torch.long)
    batch = cu.shape[0] - 1
    ends = cu[1:]
    starts = torch.maximum(cu[:-1], ends - state_len)
    pos = ends[:, None] - state_len + torch.arange(state_len, device=x.device)  # (batch, state_len)
    valid = pos >= starts[:, None]
    if total == 0:
        states = x.new_zeros(batch, state_len, dim)
    else:
        gathered = x.detach()[pos.clamp(0, total - 1)]  # (batch, state_len, dim)
        states = torch.where(valid[..., None], gathered, gathered.new_zeros(()))
    return states.transpose(1, 2)


def causal_conv1d_varlen_states_ref(x: Tensor, cu_seqlens: Tensor, state_len: int) -> Tensor:
    """
    Forward pass only, does not support backward pass.
    Parameters:
        x: (total_tokens, dim)
        cu_seqlens: (batch + 1), must already be sorted. The cumulative sum of the sequence lengths, starting from 0.
        state_len: int. For each cu_seqlens, how many elements from x should be copied to the state.
            If some of those elements belong to a different sequence, the value of the states will be zero.
    Return:
        states: (batch, dim, state_len)
    """
    _, dim = x.shape
    batch = cu_seqlens.shape[0] - 1
    cu_seqlens = cu_seqlens.contiguous()
    states = torch.zeros(batch, state_len, dim, dtype=x.dtype, device=x.device).transpose(1, 2)
    for i in range(batch):
        end_idx = cu_seqlens[i + 1]
        start_idx = torch.maximum(cu_seqlens[i], end_idx - state_len)
        states[i, :, -(end_idx - start_idx):] = x[start_idx:end_idx].T
    return states
