"""``mamba_ssm.ops.triton.ssd_combined``: Mamba-2's state-space scan (SSD) and its conv-fused wrapper.

Mamba-2's recurrence is a selective scan whose decay is one scalar per head. With ``H`` heads of
``P`` channels, ``G`` groups of ``B``/``C`` and state size ``N``, per head ``h`` and channel ``p``::

    dt' = softplus(dt + dt_bias), clamped to dt_limit ;  S_t = exp(dt' A_h) S_{t-1} + dt' x_t B_t^T
    y_t = S_t C_t + D x_t  (then times silu(z_t) when a gate is given)

A whole batch (no ``seq_idx``, no per-sequence states, every decay ``exp(dt' A) <= 1``) runs on the chunked
:func:`neurostep.kernels.decayed_linear_attention.decayed_linear_attention` op (``q = C``, ``k = B`` in
their groups, ``v = dt' x``, ``log_decay = dt' A``), with the op's own chunk size: upstream's
``chunk_size`` is accepted and unused. The other cases lay the heads out as ``H * P`` lanes of
:func:`neurostep.kernels.selective_scan.selective_scan` (``dt``, ``A``, ``D`` repeated over ``P``,
``B``/``C`` as groups), an exact scan; packed sequences (``seq_idx``) are scanned one segment at a time,
each from a zero state except a row's first, which starts from ``initial_states``; ``cu_seqlens`` with
``return_varlen_states`` yields every sequence's last state. The chunked path does the work of
matrix products over chunks; the lanes step through every token of every lane, several times slower at
Mamba-2's sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from neurostep.compat.causal_conv1d.causal_conv1d_interface import causal_conv1d_fn
from neurostep.compat.mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
from neurostep.engine import compute_dtype
from neurostep.kernels.decayed_linear_attention import decayed_linear_attention
from neurostep.kernels.selective_scan import selective_scan as _selective_scan

__all__ = [
    "mamba_chunk_scan",
    "mamba_chunk_scan_combined",
    "mamba_split_conv1d_scan_combined",
    "mamba_split_conv1d_scan_ref",
    "ssd_chunk_scan_combined_ref",
    "ssd_selective_scan",
]

_NO_LIMIT = (0.0, float("inf"))


def _check_groups(x: Tensor, B: Tensor, C: Tensor) -> None:
    """``B`` and ``C`` are ``(batch, seqlen, ngroups, dstate)`` with ``nheads`` a multiple of ``ngroups``."""
    batch, seqlen, nheads, _ = x.shape
    _, _, ngroups, dstate = B.shape
    if nheads % ngroups:
        raise ValueError(f"nheads={nheads} must be a multiple of ngroups={ngroups}")
    if B.shape != (batch, seqlen, ngroups, dstate) or C.shape != B.shape:
        raise ValueError(f"B and C must have shape (batch, seqlen, ngroups, dstate) = {tuple(B.shape)}, "
                         f"got {tuple(B.shape)} and {tuple(C.shape)}")


def _discretize(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool, dt_limit: tuple[float, float]) -> Tensor:
    """The step upstream's kernels use: ``clamp(softplus(dt + dt_bias), *dt_limit)`` (softplus if asked);
    ``dt_bias`` broadcasts against ``dt``."""
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != _NO_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _to_lanes(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit):
    """Heads -> lanes: the arguments of the selective scan, ``(u, delta, A, B, C, D, z, delta_bias, softplus)``;
    ``B`` and ``C`` already checked by :func:`_check_groups`."""
    batch, seqlen, nheads, headdim = x.shape
    dstate = B.shape[-1]
    lanes = nheads * headdim
    u = x.reshape(batch, seqlen, lanes).transpose(1, 2)
    if dt.dim() == 3:
        dt = dt[..., None].expand(batch, seqlen, nheads, headdim)
    delta = dt.reshape(batch, seqlen, lanes).transpose(1, 2)
    if A.dim() == 1:
        A = A.float()[:, None, None].expand(nheads, headdim, dstate).reshape(lanes, dstate)
    if D is not None:
        D = D.reshape(lanes) if D.dim() == 2 else D.repeat_interleave(headdim)
    if z is not None:
        z = z.reshape(batch, seqlen, lanes).transpose(1, 2)
    if dt_bias is not None:
        dt_bias = (dt_bias.reshape(lanes) if dt_bias.dim() == 2 else dt_bias.repeat_interleave(headdim)).float()
    if tuple(dt_limit) != _NO_LIMIT:   # the clamp has no place in the scan's kernel: the step is formed here
        delta = _discretize(delta.float() if delta.dtype != torch.float64 else delta,
                            None if dt_bias is None else dt_bias[:, None], dt_softplus, dt_limit)
        dt_bias, dt_softplus = None, False
    return u, delta, A, B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1), D, z, dt_bias, bool(dt_softplus)


def _scan_chunked(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_limit):
    """The whole-batch scan on the chunked op: ``(out (batch, L, H, P), final (batch, H, P, N))``, or None
    where a decay ``exp(dt' A)`` exceeds 1 (a raw negative ``dt`` or a positive ``A``), which the op refuses."""
    cd = compute_dtype(x.dtype)
    # dt_bias and A in float32, as upstream keeps them (and as the lanes path reads them)
    dt = _discretize(dt.to(cd), None if dt_bias is None else dt_bias.float().to(cd), dt_softplus, dt_limit)
    log_decay = dt * A.float().to(cd)
    if not bool((log_decay.detach() <= 0).all()):
        return None
    xc = x.to(cd)
    init = None if initial_states is None else initial_states.to(cd).transpose(-1, -2)   # (b, H, N, P)
    out, final = decayed_linear_attention(C.to(cd), B.to(cd), xc, log_decay, v_scale=dt, scale=1.0,
                                          initial_state=init, output_final_state=True)
    if D is not None:
        out = out + xc * (D.to(cd) if D.dim() == 2 else D.to(cd)[:, None])
    if z is not None:
        out = out * F.silu(z.to(cd))
    return out, final.transpose(-1, -2)


def _segments(ids: torch.Tensor) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the runs of equal values in a 1-D tensor."""
    change = (torch.nonzero(ids[1:] != ids[:-1]).flatten() + 1).tolist()
    starts = [0, *change]
    ends = [*change, ids.shape[0]]
    return list(zip(starts, ends))


def _scan_lanes(args, initial_states, seq_idx, cu_seqlens, want_varlen):
    """Run the scan (per segment if ``seq_idx``); ``(out (b, lanes, L), final (b, lanes, N), varlen or None)``."""
    u, delta, A, B, C, D, z, delta_bias, softplus = args
    batch, lanes, seqlen = u.shape

    def scan(rows, s, e, init):
        def cut(t):
            return None if t is None else t[rows, ..., s:e]
        return _selective_scan(cut(u), cut(delta), A, cut(B), cut(C), D, cut(z), delta_bias, softplus,
                               initial_state=init, output_final_state=True)

    init_all = None if initial_states is None else initial_states.reshape(batch, lanes, -1)
    finals: dict[tuple[int, int], torch.Tensor] = {}
    if seq_idx is None:
        out, final = scan(slice(None), 0, seqlen, init_all)
        if batch == 1:
            finals[(0, seqlen)] = final
    else:
        if tuple(seq_idx.shape) != (batch, seqlen):
            raise ValueError(f"seq_idx must have shape (batch={batch}, seqlen={seqlen}), got {tuple(seq_idx.shape)}")
        per_row = [_segments(seq_idx[r]) for r in range(batch)]
        if all(segs == per_row[0] for segs in per_row):
            groups = [(slice(None), per_row[0], init_all)]
        else:
            groups = [(slice(r, r + 1), per_row[r], None if init_all is None else init_all[r:r + 1])
                      for r in range(batch)]
        outs_rows, finals_rows = [], []
        for rows, segs, init in groups:
            pieces = []
            for s, e in segs:
                out_s, final = scan(rows, s, e, init if s == 0 else None)
                pieces.append(out_s)
                if batch == 1:
                    finals[(s, e)] = final
            outs_rows.append(torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0])
            finals_rows.append(final)
        out = torch.cat(outs_rows, dim=0) if len(outs_rows) > 1 else outs_rows[0]
        final = torch.cat(finals_rows, dim=0) if len(finals_rows) > 1 else finals_rows[0]
    varlen = None
    if want_varlen:
        if cu_seqlens is None:
            raise ValueError("return_varlen_states needs cu_seqlens (the sequence boundaries)")
        if batch != 1:
            raise ValueError(f"per-sequence states come from a packed batch of one row, got batch={batch}")
        bounds = cu_seqlens.tolist()
        states = []
        for s, e in zip(bounds[:-1], bounds[1:]):
            if (s, e) in finals:
                states.append(finals[(s, e)])
            elif e <= s:
                states.append(u.new_zeros(1, lanes, A.shape[1], dtype=final.dtype) if s > 0 or init_all is None
                              else init_all.to(final.dtype))
            else:
                states.append(scan(slice(None), s, e, init_all if s == 0 else None)[1])
        varlen = torch.cat(states, dim=0)
    return out, final, varlen


def mamba_chunk_scan_combined(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor | None, C: Tensor | None, chunk_size: int, D: Tensor | None = None,
    z: Tensor | None = None, dt_bias: Tensor | None = None, initial_states: Tensor | None = None,
    seq_idx: Tensor | None = None, cu_seqlens: Tensor | None = None, dt_softplus: bool = False,
    dt_limit: tuple[float, float] = _NO_LIMIT, return_final_states: bool = False, return_varlen_states: bool = False,
    state_dtype: torch.dtype | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """Mamba-2's scan over ``L`` steps of ``H`` heads.

    Args:
        x: ``(batch, L, H, P)``. dt: ``(batch, L, H)``. A: ``(H,)`` (negative decay rates).
        B, C: ``(batch, L, G, N)``, ``H`` a multiple of ``G``.
        chunk_size: unused (the scan is exact).
        D: ``(H, P)`` or ``(H,)``. z: ``(batch, L, H, P)`` gate. dt_bias: ``(H,)``.
        initial_states: ``(batch, H, P, N)`` state before step 0 (a row's first segment with ``seq_idx``).
        seq_idx: ``(batch, L)`` int ids of packed sequences; no state crosses a change of id.
        cu_seqlens: ``(S + 1,)`` boundaries of the packed sequences, read for ``return_varlen_states``.
        dt_softplus: apply softplus to ``dt + dt_bias``. dt_limit: ``(low, high)`` clamp of the step.
        return_final_states, return_varlen_states: what to return besides ``out``.
        state_dtype: dtype of returned states (default ``C``'s).

    Returns:
        ``out (batch, L, H, P)`` in ``x``'s dtype; then ``final_states (batch, H, P, N)`` if asked,
        then ``varlen_states (S, H, P, N)`` if asked.
    """
    batch, seqlen, nheads, headdim = x.shape
    if tuple(dt.shape) != (batch, seqlen, nheads):
        raise ValueError(f"dt must have shape (batch, seqlen, nheads) = {(batch, seqlen, nheads)}, "
                         f"got {tuple(dt.shape)}")
    if tuple(A.shape) != (nheads,):
        raise ValueError(f"A must have shape (nheads={nheads},), got {tuple(A.shape)}")
    _check_groups(x, B, C)
    dstate = B.shape[-1]
    sdtype = state_dtype if state_dtype is not None else C.dtype
    chunked = None if seq_idx is not None or return_varlen_states else _scan_chunked(
        x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_limit)
    if chunked is not None:
        out, final = chunked[0].to(x.dtype), chunked[1].to(sdtype)
        return (out, final) if return_final_states else out
    args = _to_lanes(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
    out, final, varlen = _scan_lanes(args, initial_states, seq_idx, cu_seqlens, return_varlen_states)
    out = out.transpose(1, 2).reshape(batch, seqlen, nheads, headdim).to(x.dtype)
    final = final.reshape(batch, nheads, headdim, dstate).to(sdtype)
    if not return_varlen_states:
        return out if not return_final_states else (out, final)
    varlen = varlen.reshape(-1, nheads, headdim, dstate).to(sdtype)
    return (out, varlen) if not return_final_states else (out, final, varlen)


def mamba_chunk_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor | None, C: Tensor | None, chunk_size: int, D: Tensor | None = None,
    z: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = False,
) -> Tensor:
    """:func:`mamba_chunk_scan_combined` without states (upstream's unfused variant)."""
    return mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)


def ssd_chunk_scan_combined_ref(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor | None, C: Tensor | None, chunk_size: int, D: Tensor | None = None,
    z: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = False,
) -> Tensor:
    """Reference for :func:`mamba_chunk_scan`: the SSD recurrence through the loop-based ``selective_scan_ref``."""
    return ssd_selective_scan(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, _ref=True)


def ssd_selective_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor | None, C: Tensor | None, D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None, dt_softplus: bool = False, dt_limit: tuple[float, float] = _NO_LIMIT,
    _ref: bool = False,
) -> Tensor:
    """The SSD recurrence through :func:`selective_scan_fn`, without states; ``out (batch, L, H, P)``.

    Shapes as :func:`mamba_chunk_scan_combined`, and more general: ``dt`` may be per channel
    ``(batch, L, H, P)``, ``A`` a full ``(H * P, N)`` matrix, ``dt_bias`` ``(H, P)``.
    """
    from neurostep.compat.mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref

    batch, seqlen, nheads, headdim = x.shape
    _check_groups(x, B, C)
    u, delta, A, B, C, D, z, delta_bias, softplus = _to_lanes(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
    scan = selective_scan_ref if _ref else selective_scan_fn
    out = scan(u, delta.to(x.dtype) if tuple(dt_limit) != _NO_LIMIT else delta, A.float(), B, C, D=D, z=z,
               delta_bias=delta_bias, delta_softplus=softplus)
    return out.transpose(1, 2).reshape(batch, seqlen, nheads, headdim)


def _head_sizes(zxbcdt: torch.Tensor, conv_channels: int, D: torch.Tensor, headdim: int | None,
                ngroups: int) -> tuple[int, int, int, int]:
    """``(H, P, N, M)`` read off the shapes: heads, head width, state size and MLP width."""
    if D.dim() == 2:
        nheads, headdim = D.shape
    elif headdim is None:
        raise ValueError("with a per-head D of shape (H,) the head width must be given as headdim")
    else:
        nheads = D.shape[0]
    width = nheads * headdim
    d_state = (conv_channels - width) // (2 * ngroups)
    ssm_part = 2 * width + 2 * ngroups * d_state + nheads
    d_mlp, odd = divmod(zxbcdt.shape[-1] - ssm_part, 2)
    if d_mlp < 0 or odd:
        raise ValueError(f"a last axis of {zxbcdt.shape[-1]} does not hold z, x, B, C and dt for H={nheads}, "
                         f"P={headdim}, G={ngroups}, N={d_state} (plus an MLP pair)")
    return nheads, headdim, d_state, d_mlp


def _split_conv1d_scan(
    zxbcdt: Tensor, conv1d_weight: Tensor, conv1d_bias: Tensor | None, dt_bias: Tensor, A: Tensor, D: Tensor,
    initial_states: Tensor | None, seq_idx: Tensor | None, dt_limit: tuple[float, float], activation: str | None,
    rmsnorm_weight: Tensor | None, rmsnorm_eps: float, outproj_weight: Tensor | None, outproj_bias: Tensor | None,
    headdim: int,
    ngroups: int, norm_before_gate: bool, state_dtype: torch.dtype | None, return_final_states: bool,
) -> Tensor | tuple[Tensor, Tensor]:
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError(f"activation is None, 'silu' or 'swish', got {activation!r}")
    if outproj_weight is None and outproj_bias is not None:
        raise ValueError("an outproj_bias without outproj_weight has nothing to be added to")
    channels = conv1d_weight.shape[0]
    H, P, N, M = _head_sizes(zxbcdt, channels, D, headdim, ngroups)
    mlp, gate, xbc, dt = zxbcdt.split([2 * M, H * P, channels, H], dim=-1)
    xbc = causal_conv1d_fn(xbc.mT, conv1d_weight.reshape(channels, -1), conv1d_bias, seq_idx=seq_idx,
                           activation=activation).mT
    x, B, C = xbc.split([H * P, ngroups * N, ngroups * N], dim=-1)
    gate_heads = gate.unflatten(-1, (H, P))
    y, final = mamba_chunk_scan_combined(
        x.unflatten(-1, (H, P)), dt, A, B.unflatten(-1, (ngroups, N)), C.unflatten(-1, (ngroups, N)), 256, D=D,
        z=gate_heads if rmsnorm_weight is None else None, dt_bias=dt_bias, initial_states=initial_states,
        seq_idx=seq_idx, dt_softplus=True, dt_limit=dt_limit, return_final_states=True, state_dtype=state_dtype)
    y = y.flatten(-2)
    if rmsnorm_weight is not None:
        y = rmsnorm_fn(y, rmsnorm_weight, None, z=gate, eps=rmsnorm_eps, group_size=H * P // ngroups,
                       norm_before_gate=norm_before_gate)
    if M:
        z0, x0 = mlp.chunk(2, dim=-1)
        y = torch.cat([x0 * F.silu(z0), y.to(mlp.dtype)], dim=-1)
    if outproj_weight is not None:
        y = F.linear(y.to(outproj_weight.dtype), outproj_weight, outproj_bias)
    return (y, final) if return_final_states else y


def mamba_split_conv1d_scan_combined(
    zxbcdt: Tensor, conv1d_weight: Tensor, conv1d_bias: Tensor | None, dt_bias: Tensor, A: Tensor, D: Tensor,
    chunk_size: int,
    initial_states: Tensor | None = None, seq_idx: Tensor | None = None, dt_limit: tuple[float, float] = _NO_LIMIT,
    return_final_states: bool = False, activation: str | None = "silu", rmsnorm_weight: Tensor | None = None,
    rmsnorm_eps: float = 1e-6, outproj_weight: Tensor | None = None, outproj_bias: Tensor | None = None,
    headdim: int | None = None, ngroups: int = 1, norm_before_gate: bool = True,
    state_dtype: torch.dtype | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Conv, scan, optional gated RMSNorm and optional output projection of a Mamba-2 layer, after ``in_proj``.

    ``zxbcdt (batch, L, 2 M + 2 H P + 2 G N + H)`` is split along its last axis into an MLP pair
    ``z0, x0`` of width ``M`` each (``M`` may be 0), the gate ``z``, the conv input ``xBC`` and ``dt``.

    Args:
        conv1d_weight: ``(H P + 2 G N, W)`` (or with a singleton middle axis); conv1d_bias: ``(H P + 2 G N,)``.
        dt_bias, A: ``(H,)``. D: ``(H, P)``, or ``(H,)`` together with ``headdim``.
        initial_states: ``(batch, H, P, N)``. seq_idx: ``(batch, L)`` packed-sequence ids.
        rmsnorm_weight: ``(H P,)``: gate through a grouped RMSNorm (``norm_before_gate`` picks
            ``norm(y) * silu(z)`` or ``norm(y * silu(z))``); without it ``z`` gates the scan directly.
        outproj_weight: ``(out, M + H P)``, outproj_bias: ``(out,)``.
        state_dtype: dtype of the final state.

    Returns:
        ``out (batch, L, out)`` (``M + H P`` channels without a projection), and the final state
        ``(batch, H, P, N)`` with ``return_final_states``.
    """
    return _split_conv1d_scan(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, initial_states, seq_idx, dt_limit,
                              activation, rmsnorm_weight, rmsnorm_eps, outproj_weight, outproj_bias, headdim, ngroups,
                              norm_before_gate, state_dtype, return_final_states)


def mamba_split_conv1d_scan_ref(
    zxbcdt: Tensor, conv1d_weight: Tensor, conv1d_bias: Tensor | None, dt_bias: Tensor, A: Tensor, D: Tensor,
    chunk_size: int,
    dt_limit: tuple[float, float] = _NO_LIMIT, activation: str | None = "silu", rmsnorm_weight: Tensor | None = None,
    rmsnorm_eps: float = 1e-6, outproj_weight: Tensor | None = None, outproj_bias: Tensor | None = None,
    headdim: int | None = None, ngroups: int = 1, norm_before_gate: bool = True,
) -> Tensor:
    """Reference for :func:`mamba_split_conv1d_scan_combined` (no initial state, no ``seq_idx``, no states returned)."""
    return _split_conv1d_scan(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, None, None, dt_limit, activation,
                              rmsnorm_weight, rmsnorm_eps, outproj_weight, outproj_bias, headdim, ngroups,
                              norm_before_gate, None, False)
