"""``causal_conv1d.causal_conv1d_interface`` on neurostep's causal-convolution kernel.

Mirrors causal-conv1d 1.6 (Dao-AILab/causal-conv1d, ``causal_conv1d/causal_conv1d_interface.py``
at 0d2252d; BSD-3-Clause, Copyright (c) 2024 Tri Dao). ``causal_conv1d_fn`` runs
:func:`neurostep.kernels.causal_conv1d.causal_conv1d` (numba on CPU, Triton on CUDA) and is
differentiable in ``x``, ``weight``, ``bias`` and ``initial_states``; ``causal_conv1d_update``
updates ``conv_state`` in place as the CUDA kernel does. The ``_ref`` functions are upstream's
PyTorch references, transcribed.

Beyond upstream (never less): any width ``W >= 1`` (upstream: 2 to 4), both memory layouts for
``initial_states`` / ``final_states_out`` (upstream: channel-last only), float64, and
causal-conv1d 1.0's positional order ``causal_conv1d_fn(x, weight, bias, "silu")``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neurostep.kernels.causal_conv1d import causal_conv1d as _causal_conv1d

__all__ = [
    "CausalConv1dFn",
    "causal_conv1d_fn",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "causal_conv1d_update_ref",
]


def _check_activation(activation: str | None) -> bool:
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError("activation must be None, silu, or swish")
    return activation is not None


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_conv_args(x: torch.Tensor, weight: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a (batch, dim, seqlen) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight must have shape (dim={x.shape[1]}, width), got {tuple(getattr(weight, 'shape', ()))}")


def _causal_conv1d_seq_idx(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           seq_idx: torch.Tensor, silu: bool) -> torch.Tensor:
    """Packed sequences: tap ``t - s`` feeds output ``t`` only if ``seq_idx`` is equal at both; ``seq_idx < 0`` gives 0.

    The CUDA kernel's rule, as W shifted multiply-adds in PyTorch (differentiable, W x the memory
    traffic of one pass; varlen batches are a training-time layout, so this is not on a decode path).
    """
    batch, dim, seqlen = x.shape
    if not isinstance(seq_idx, torch.Tensor) or seq_idx.shape != (batch, seqlen):
        raise ValueError(f"seq_idx must have shape (batch={batch}, seqlen={seqlen}), "
                         f"got {tuple(getattr(seq_idx, 'shape', ()))}")
    if seq_idx.dtype.is_floating_point or seq_idx.dtype == torch.bool:
        raise TypeError(f"seq_idx must be an integer tensor (int32 upstream), got {seq_idx.dtype}")
    width = weight.shape[1]
    cdtype = _compute_dtype(x, weight)
    xc = x.to(cdtype)
    w = weight.to(cdtype)
    sid = seq_idx.to(device=x.device, dtype=torch.long)
    if bias is None:
        out = xc.new_zeros(batch, dim, seqlen)
    else:
        out = bias.to(cdtype)[None, :, None].expand(batch, dim, seqlen)
    for k in range(width):
        shift = width - 1 - k
        if shift >= seqlen:
            continue
        xs = F.pad(xc, (shift, 0))[..., :seqlen] if shift else xc
        ss = F.pad(sid, (shift, 0), value=-1)[..., :seqlen] if shift else sid
        out = out + w[None, :, k, None] * xs * (ss == sid).unsqueeze(1).to(cdtype)
    if silu:
        out = F.silu(out)
    out = torch.where((sid >= 0).unsqueeze(1), out, out.new_zeros(()))
    return out.to(x.dtype)


def causal_conv1d_fn(
    x,
    weight,
    bias=None,
    seq_idx=None,
    initial_states=None,
    return_final_states=False,
    final_states_out=None,
    activation=None,
):
    """
    x: (batch, dim, seqlen)
    weight: (dim, width)
    bias: (dim,)
    seq_idx: (batch, seqlen)
    initial_states: (batch, dim, width - 1)
    final_states_out: (batch, dim, width - 1), to be written to
    activation: either None or "silu" or "swish"

    out: (batch, dim, seqlen)
    """
    if isinstance(seq_idx, str) and activation is None:
        # causal-conv1d 1.0's order was (x, weight, bias, activation); code written for it still runs.
        seq_idx, activation = None, seq_idx
    silu = _check_activation(activation)
    _check_conv_args(x, weight)
    if seq_idx is not None:
        if initial_states is not None:
            raise ValueError("initial_states must be None if seq_idx is not None")
        if return_final_states:
            raise ValueError("If seq_idx is not None, we don't return final_states_out")
        return _causal_conv1d_seq_idx(x, weight, bias, seq_idx, silu)
    if not return_final_states:
        out, _ = _causal_conv1d(x, weight, bias, activation if silu else None, initial_state=initial_states)
        return out
    out, final = _causal_conv1d(x, weight, bias, activation if silu else None, initial_state=initial_states,
                                output_final_state=True)
    if final_states_out is not None:
        if tuple(final_states_out.shape) != tuple(final.shape):
            raise ValueError(f"final_states_out must have shape {tuple(final.shape)} (batch, dim, width - 1), "
                             f"got {tuple(final_states_out.shape)}")
        final_states_out.copy_(final)
        final = final_states_out
    return out, final


class CausalConv1dFn:
    """Upstream's autograd Function, for code that calls ``CausalConv1dFn.apply(...)`` directly."""

    @staticmethod
    def apply(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
              final_states_out=None, activation=None):
        return causal_conv1d_fn(x, weight, bias, seq_idx, initial_states, return_final_states,
                                final_states_out, activation)


def causal_conv1d_ref(
    x,
    weight,
    bias=None,
    initial_states=None,
    return_final_states=False,
    final_states_out=None,
    activation=None,
):
    """
    x: (batch, dim, seqlen)
    weight: (dim, width)
    bias: (dim,)
    initial_states: (batch, dim, width - 1)
    final_states_out: (batch, dim, width - 1)

    out: (batch, dim, seqlen)
    """
    if activation not in [None, "silu", "swish"]:
        raise NotImplementedError("activation must be None, silu, or swish")
    dtype_in = x.dtype
    x = x.to(weight.dtype)
    seqlen = x.shape[-1]
    dim, width = weight.shape
    if initial_states is None:
        out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=dim)
    else:
        # .to(x.dtype): upstream relies on type promotion (fp16/bf16 states with fp32 x), which fails for fp64
        x = torch.cat([initial_states.to(x.dtype), x], dim=-1)
        out = F.conv1d(x, weight.unsqueeze(1), bias, padding=0, groups=dim)
    out = out[..., :seqlen]
    if return_final_states:
        final_states = F.pad(x, (width - 1 - x.shape[-1], 0)).to(
            dtype_in
        )  # (batch, dim, width - 1)
        if final_states_out is not None:
            final_states_out.copy_(final_states)
        else:
            final_states_out = final_states
    out = (out if activation is None else F.silu(out)).to(dtype=dtype_in)
    return out if not return_final_states else (out, final_states_out)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """
    x: (batch, dim) or (batch, dim, seqlen)
    conv_state: (batch, dim, state_len), where state_len >= width - 1
    weight: (dim, width)
    bias: (dim,)
    cache_seqlens: (batch,), dtype int32.
        If not None, the conv_state is treated as a circular buffer.
        The conv_state will be updated by copying x to the conv_state starting at the index
        @cache_seqlens % state_len.
    conv_state_indices: (batch,), dtype int32
        If not None, the conv_state is a larger tensor along the batch dim,
        and we are selecting the batch coords specified by conv_state_indices.
        Useful for a continuous batching scenario. A negative index marks a padding row: its
        output is 0 and no state is touched.

    out: (batch, dim) or (batch, dim, seqlen)

    ``conv_state`` is updated in place (upstream's contract); the output is differentiable in
    ``x``, ``weight`` and ``bias``, the state write is not.
    """
    silu = _check_activation(activation)
    unsqueeze = x.dim() == 2
    if unsqueeze:
        x = x.unsqueeze(-1)
    _check_conv_args(x, weight)
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    if conv_state.dim() != 3 or conv_state.shape[1] != dim:
        raise ValueError(f"conv_state must have shape (batch, dim={dim}, state_len), got {tuple(conv_state.shape)}")
    state_len = conv_state.shape[2]
    if state_len < width - 1:
        raise ValueError(f"conv_state holds {state_len} steps but width {width} needs state_len >= {width - 1}")
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"bias must have shape ({dim},), got {tuple(bias.shape)}")

    rows = valid = None
    xv = x
    if conv_state_indices is None:
        if conv_state.shape[0] != batch:
            raise ValueError(f"conv_state has batch {conv_state.shape[0]} but x has batch {batch}; "
                             "pass conv_state_indices to address a larger cache")
        states = conv_state
    else:
        if tuple(conv_state_indices.shape) != (batch,):
            raise ValueError(f"conv_state_indices must have shape ({batch},), got {tuple(conv_state_indices.shape)}")
        idx = conv_state_indices.to(device=x.device, dtype=torch.long)
        valid = idx >= 0
        if bool(valid.all()):
            valid = None
            rows = idx
        else:
            rows = idx[valid]
            xv = x[valid]
        if rows.numel() and int(rows.max()) >= conv_state.shape[0]:
            raise IndexError(f"conv_state_indices reach {int(rows.max())} but conv_state has "
                             f"{conv_state.shape[0]} rows")
        states = conv_state.index_select(0, rows)
    if cache_seqlens is not None:
        cache = cache_seqlens.to(device=x.device, dtype=torch.long)
        if tuple(cache.shape) != (batch,):
            raise ValueError(f"cache_seqlens must have shape ({batch},), got {tuple(cache.shape)}")
        if valid is not None:
            cache = cache[valid]

    nb = xv.shape[0]
    x_state = xv.detach().to(conv_state.dtype)
    if state_len == 0:
        window = states
        new_states = None
    elif cache_seqlens is None:
        window = states[..., state_len - (width - 1):]
        new_states = torch.cat([states, x_state], dim=-1)[..., -state_len:]
    else:
        offs = torch.arange(-(width - 1), 0, device=x.device)
        win_idx = torch.remainder(cache[:, None] + offs, state_len)
        window = states.gather(2, win_idx[:, None, :].expand(nb, dim, width - 1))
        n_write = min(seqlen, state_len)  # the kernel writes in order: with seqlen > state_len the last ones stay
        put_idx = torch.remainder(cache[:, None] + torch.arange(seqlen - n_write, seqlen, device=x.device), state_len)
        new_states = states.clone() if states is conv_state else states
        new_states.scatter_(2, put_idx[:, None, :].expand(nb, dim, n_write), x_state[..., seqlen - n_write:])

    cdtype = _compute_dtype(x, conv_state, weight)
    history = torch.cat([window.to(cdtype), xv.to(cdtype)], dim=-1)  # (nb, dim, width - 1 + seqlen)
    w = weight.to(cdtype)
    # W shifted multiply-adds: a depthwise F.conv1d costs ~30 ms per call on CPU at decode sizes, this ~0.1 ms.
    if seqlen == 1:
        out = (history * w).sum(-1, keepdim=True)
    else:
        out = history[..., :seqlen] * w[:, :1]
        for k in range(1, width):
            out = out + history[..., k:k + seqlen] * w[:, k:k + 1]
    if bias is not None:
        out = out + bias.to(cdtype)[:, None]
    if silu:
        out = F.silu(out)
    out = out.to(x.dtype)

    if new_states is not None:
        with torch.no_grad():
            if rows is None:
                conv_state.copy_(new_states)
            else:
                conv_state.index_copy_(0, rows, new_states)
    if valid is not None:
        full = out.new_zeros(batch, dim, seqlen)
        full[valid] = out
        out = full
    if unsqueeze:
        out = out.squeeze(-1)
    return out


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None):
    """
    x: (batch, dim) or (batch, dim, seqlen)
    conv_state: (batch, dim, state_len), where state_len >= width - 1
    weight: (dim, width)
    bias: (dim,)
    cache_seqlens: (batch,), dtype int32.
        If not None, the conv_state is treated as a circular buffer.
        The conv_state will be updated by copying x to the conv_state starting at the index
        @cache_seqlens % state_len before performing the convolution.

    out: (batch, dim) or (batch, dim, seqlen)
    """
    if activation not in [None, "silu", "swish"]:
        raise NotImplementedError("activation must be None, silu, or swish")
    dtype_in = x.dtype
    unsqueeze = x.dim() == 2
    if unsqueeze:
        x = x.unsqueeze(-1)
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    state_len = conv_state.shape[-1]
    assert conv_state.shape == (batch, dim, state_len)
    assert weight.shape == (dim, width)
    if cache_seqlens is None:
        # The state keeps its own dtype; upstream casts to weight.dtype first, which would round fp64 states.
        x_new = torch.cat([conv_state, x], dim=-1)  # (batch, dim, state_len + seqlen)
        conv_state.copy_(x_new[:, :, -state_len:])
        x_new = x_new.to(weight.dtype)
    else:
        width_idx = torch.arange(-(width - 1), 0, dtype=torch.long, device=x.device).unsqueeze(0) \
            + cache_seqlens.unsqueeze(1)
        width_idx = torch.remainder(width_idx, state_len).unsqueeze(1).expand(-1, dim, -1)
        x_new = torch.cat([conv_state.gather(2, width_idx), x], dim=-1).to(weight.dtype)
        copy_idx = torch.arange(seqlen, dtype=torch.long, device=x.device).unsqueeze(0) + cache_seqlens.unsqueeze(1)
        copy_idx = torch.remainder(copy_idx, state_len).unsqueeze(1).expand(-1, dim, -1)
        conv_state.scatter_(2, copy_idx, x)
    out = F.conv1d(x_new, weight.unsqueeze(1), bias, padding=0, groups=dim)[:, :, -seqlen:]
    if unsqueeze:
        out = out.squeeze(-1)
    return (out if activation is None else F.silu(out)).to(dtype=dtype_in)
