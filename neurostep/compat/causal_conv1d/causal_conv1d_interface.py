"""``causal_conv1d.causal_conv1d_interface``: the depthwise causal convolution and its decode update.

With ``W`` taps, per channel ``d``::

    out[b, d, t] = act(bias[d] + sum_k weight[d, k] * xpad[b, d, t + k])

where ``xpad`` is the input preceded by ``W - 1`` steps of history (zeros, or ``initial_states``)
and ``act`` is SiLU or the identity. :func:`causal_conv1d_fn` runs
:func:`neurostep.kernels.causal_conv1d.causal_conv1d` (numba on CPU, Triton on CUDA), differentiable
in ``x``, ``weight``, ``bias`` and ``initial_states``; :func:`causal_conv1d_update` advances a decode
cache in place. The ``_ref`` functions are plain-PyTorch oracles for the tests.

Accepted beyond causal-conv1d itself: any ``W >= 1``, ``initial_states`` / ``final_states_out`` in
either memory layout, float64, and the 1.0-era positional call ``causal_conv1d_fn(x, weight, bias, "silu")``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from neurostep.kernels.causal_conv1d import causal_conv1d as _causal_conv1d
from neurostep.kernels.causal_conv1d.reference import padded_input

__all__ = [
    "CausalConv1dFn",
    "causal_conv1d_fn",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "causal_conv1d_update_ref",
]


def _check_activation(activation: str | None) -> bool:
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError(f"activation is None, 'silu' or 'swish', got {activation!r}")
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
    x: Tensor, weight: Tensor, bias: Tensor | None = None, seq_idx: Tensor | None = None,
    initial_states: Tensor | None = None, return_final_states: bool = False, final_states_out: Tensor | None = None,
    activation: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Causal depthwise convolution of ``x (batch, dim, L)`` with ``weight (dim, W)``.

    Args:
        bias: ``(dim,)`` or None.
        seq_idx: ``(batch, L)`` integer sequence ids of packed sequences: a tap only reaches back
            within its own sequence; positions with a negative id output 0. Excludes
            ``initial_states`` and final states.
        initial_states: ``(batch, dim, W - 1)``, the history before ``x[..., 0]`` (default zeros).
        return_final_states: also return the last ``W - 1`` inputs (history included), ``(batch, dim, W - 1)``.
        final_states_out: a tensor of that shape to write them into (and return).
        activation: None, ``"silu"`` or ``"swish"`` (the same as ``"silu"``).

    Returns:
        ``out (batch, dim, L)`` in ``x``'s dtype, or ``(out, final_states)``.
    """
    if isinstance(seq_idx, str) and activation is None:
        # causal-conv1d 1.0's order was (x, weight, bias, activation); code written for it still runs.
        seq_idx, activation = None, seq_idx
    silu = _check_activation(activation)
    _check_conv_args(x, weight)
    if seq_idx is not None:
        if initial_states is not None:
            raise ValueError("initial_states must be None when seq_idx is given (packed sequences start from zeros)")
        if return_final_states:
            raise ValueError("with seq_idx there are no final states: leave return_final_states off "
                             "and final_states_out unset")
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
    def apply(
        x: Tensor, weight: Tensor, bias: Tensor | None = None, seq_idx: Tensor | None = None,
        initial_states: Tensor | None = None, return_final_states: bool = False,
        final_states_out: Tensor | None = None, activation: str | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        return causal_conv1d_fn(x, weight, bias, seq_idx, initial_states, return_final_states,
                                final_states_out, activation)


def _depthwise(history: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Valid (unpadded) depthwise conv of ``history (batch, dim, W - 1 + L)``: ``(batch, dim, L)``."""
    return F.conv1d(history, weight.unsqueeze(1), bias, groups=weight.shape[0])


def _last_steps(t: torch.Tensor, count: int) -> torch.Tensor:
    """The last ``count`` steps of ``t (..., T)`` (empty for ``count == 0``)."""
    return t[..., t.shape[-1] - count:]


def causal_conv1d_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, initial_states: Tensor | None = None,
    return_final_states: bool = False, final_states_out: Tensor | None = None, activation: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Reference for :func:`causal_conv1d_fn` (without ``seq_idx``) from ``F.conv1d``.

    Computed in ``weight``'s dtype; ``out (batch, dim, L)`` and the final states
    ``(batch, dim, W - 1)`` come back in ``x``'s dtype, the latter copied into
    ``final_states_out`` when given.
    """
    silu = _check_activation(activation)
    width = weight.shape[1]
    xw = x.to(weight.dtype)
    history = padded_input(xw, width, None if initial_states is None else initial_states.to(xw.dtype))
    out = _depthwise(history, weight, bias)
    out = (F.silu(out) if silu else out).to(x.dtype)
    if not return_final_states:
        return out
    final = _last_steps(history, width - 1).to(x.dtype)
    if final_states_out is None:
        return out, final
    final_states_out.copy_(final)
    return out, final_states_out


def causal_conv1d_update(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None,
    cache_seqlens: Tensor | None = None, conv_state_indices: Tensor | None = None,
) -> Tensor:
    """Decode step(s) against a conv cache: ``x (batch, dim)`` or ``(batch, dim, L)`` new inputs.

    Args:
        conv_state: ``(rows, dim, S)`` recent inputs, ``S >= W - 1``; updated in place.
        weight: ``(dim, W)``. bias: ``(dim,)`` or None. activation: None, ``"silu"`` or ``"swish"``.
        cache_seqlens: ``(batch,)`` int; when given the state is a ring buffer and row ``b``'s new
            inputs are written from position ``cache_seqlens[b] % S`` on (otherwise the state
            shifts left by ``L``).
        conv_state_indices: ``(batch,)`` int; row ``b`` of ``x`` uses row ``conv_state_indices[b]``
            of a larger cache (``rows`` may exceed ``batch``); a negative index is a padding row,
            which outputs 0 and leaves the cache alone.

    Returns:
        ``out`` with ``x``'s shape and dtype, differentiable in ``x``, ``weight`` and ``bias``
        (the write into ``conv_state`` is not recorded by autograd).
    """
    silu = _check_activation(activation)
    one_step = x.dim() == 2
    x = x.unsqueeze(-1) if one_step else x
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
    return out.squeeze(-1) if one_step else out


def causal_conv1d_update_ref(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None,
    cache_seqlens: Tensor | None = None,
) -> Tensor:
    """Reference for :func:`causal_conv1d_update` (without ``conv_state_indices``) from ``F.conv1d``.

    ``x (batch, dim)`` or ``(batch, dim, L)``; ``conv_state (batch, dim, S)`` with ``S >= W - 1``,
    updated in place: shifted left by ``L`` with ``x`` appended, or, with ``cache_seqlens
    (batch,)``, used as a ring buffer written from position ``cache_seqlens % S``. The
    convolution reads the ``W - 1`` entries before the new ones; output in ``x``'s dtype.
    """
    silu = _check_activation(activation)
    single = x.dim() == 2
    xs = x.unsqueeze(-1) if single else x
    batch, dim, length = xs.shape
    width = weight.shape[1]
    size = conv_state.shape[-1]
    if conv_state.shape != (batch, dim, size) or weight.shape != (dim, width):
        raise ValueError(f"shapes do not fit: x {tuple(x.shape)}, conv_state {tuple(conv_state.shape)}, "
                         f"weight {tuple(weight.shape)}")
    if cache_seqlens is None:
        # the state keeps its own dtype (a cast to weight's dtype first would round an fp64 state)
        stream = torch.cat([conv_state, xs], dim=-1)
        history = torch.cat([_last_steps(conv_state, width - 1), xs], dim=-1)
        conv_state.copy_(_last_steps(stream, size))
    else:
        start = cache_seqlens.to(torch.long).unsqueeze(1)
        behind = torch.remainder(start + torch.arange(1 - width, 0, device=x.device), size)
        window = conv_state.gather(2, behind.unsqueeze(1).expand(batch, dim, width - 1))
        history = torch.cat([window, xs], dim=-1)
        ahead = torch.remainder(start + torch.arange(length, device=x.device), size)
        conv_state.scatter_(2, ahead.unsqueeze(1).expand(batch, dim, length), xs.to(conv_state.dtype))
    out = _depthwise(history.to(weight.dtype), weight, bias)
    out = (F.silu(out) if silu else out).to(x.dtype)
    return out.squeeze(-1) if single else out
