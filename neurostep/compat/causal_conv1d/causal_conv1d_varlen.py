"""``causal_conv1d.causal_conv1d_varlen``: decode caches for the sequences of a packed prompt.

After a prefill over several sequences concatenated along time, each sequence's conv cache is its
last ``state_len`` inputs. Here that is one vectorised gather in PyTorch on any device; empty and
short sequences get zeros where they have no input.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["causal_conv1d_varlen_states", "causal_conv1d_varlen_states_ref"]


def causal_conv1d_varlen_states(x: Tensor, cu_seqlens: Tensor, state_len: int) -> Tensor:
    """Per-sequence conv caches ``(batch, dim, state_len)`` from packed inputs ``x (total_tokens, dim)``.

    ``cu_seqlens (batch + 1,)``: sorted offsets, ``0`` first and ``total_tokens`` last; sequence
    ``i`` is ``x[cu_seqlens[i]:cu_seqlens[i + 1]]``. Row ``i`` holds its last ``state_len`` tokens,
    right-aligned, zeros in front when it is shorter. Not differentiable.
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
    """Reference for :func:`causal_conv1d_varlen_states`: one slice copy per sequence."""
    bounds = [int(v) for v in cu_seqlens]
    out = x.new_zeros(len(bounds) - 1, x.shape[1], state_len)
    for row, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        kept = min(end - begin, state_len)
        if kept > 0:
            out[row, :, state_len - kept:] = x[end - kept:end].T
    return out
