"""``mamba_ssm.ops.triton.ssd_combined``: Mamba-2's scan (SSD) on neurostep's selective-scan kernel.

Mirrors the public functions of mamba-ssm (``mamba_ssm/ops/triton/ssd_combined.py`` at e9594ce;
Apache-2.0, Copyright (c) 2024 Tri Dao, Albert Gu): ``mamba_chunk_scan_combined``,
``mamba_split_conv1d_scan_combined`` and the references ``ssd_selective_scan``,
``mamba_split_conv1d_scan_ref``. Mamba-2's recurrence is the selective scan with one scalar decay
per head: the heads are flattened into ``nheads * headdim`` lanes (``dt``, ``A``, ``D`` repeated
over ``headdim``, ``B``/``C`` as groups) and run through
:func:`neurostep.kernels.selective_scan.selective_scan`, which is exact, not chunked, so
``chunk_size`` only keeps the signature. Packed sequences (``seq_idx``) are scanned segment by
segment from a zero state (the first segment of a row from ``initial_states``); ``cu_seqlens``
with ``return_varlen_states`` gives each sequence's final state (an empty sequence: zeros).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neurostep.compat.causal_conv1d.causal_conv1d_interface import causal_conv1d_fn
from neurostep.compat.mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
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


def _to_lanes(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit):
    """Heads -> lanes: the arguments of the selective scan, ``(u, delta, A, B, C, D, z, delta_bias, softplus)``."""
    batch, seqlen, nheads, headdim = x.shape
    _, _, ngroups, dstate = B.shape
    if nheads % ngroups:
        raise ValueError(f"nheads={nheads} must be a multiple of ngroups={ngroups}")
    if B.shape != (batch, seqlen, ngroups, dstate) or C.shape != B.shape:
        raise ValueError(f"B and C must have shape (batch, seqlen, ngroups, dstate) = {tuple(B.shape)}, "
                         f"got {tuple(B.shape)} and {tuple(C.shape)}")
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
    if tuple(dt_limit) != _NO_LIMIT:
        delta = delta.float() if delta.dtype != torch.float64 else delta
        if dt_bias is not None:
            delta = delta + dt_bias[:, None]
        if dt_softplus:
            delta = F.softplus(delta)
        delta = delta.clamp(min=dt_limit[0], max=dt_limit[1])
        dt_bias, dt_softplus = None, False
    return u, delta, A, B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1), D, z, dt_bias, bool(dt_softplus)


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
            raise ValueError("cu_seqlens must be provided if return_varlen_states is True")
        if batch != 1:
            raise ValueError("passing cu_seqlens to get the varlen states is only supported if batch dimension is 1")
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


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=_NO_LIMIT,
                              return_final_states=False, return_varlen_states=False, state_dtype=None):
    """
    Argument:
        x: (batch, seqlen, nheads, headdim)
        dt: (batch, seqlen, nheads)
        A: (nheads)
        B: (batch, seqlen, ngroups, dstate)
        C: (batch, seqlen, ngroups, dstate)
        chunk_size: int (kept for the signature; the scan is exact)
        D: (nheads, headdim) or (nheads,)
        z: (batch, seqlen, nheads, headdim)
        dt_bias: (nheads,)
        initial_states: (batch, nheads, headdim, dstate)
        seq_idx: (batch, seqlen)
        cu_seqlens: (num_sequences + 1) or None, only used if return_varlen_states is True
        dt_softplus: Whether to apply softplus to dt
        state_dtype: dtype of the returned states (default: C's dtype, as upstream).
    Return:
        out: (batch, seqlen, nheads, headdim), then final_states (batch, nheads, headdim, dstate) with
        return_final_states, then varlen_states (num_sequences, nheads, headdim, dstate) with return_varlen_states.
    """
    batch, seqlen, nheads, headdim = x.shape
    if tuple(dt.shape) != (batch, seqlen, nheads):
        raise ValueError(f"dt must have shape (batch, seqlen, nheads) = {(batch, seqlen, nheads)}, "
                         f"got {tuple(dt.shape)}")
    if tuple(A.shape) != (nheads,):
        raise ValueError(f"A must have shape (nheads={nheads},), got {tuple(A.shape)}")
    args = _to_lanes(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
    out, final, varlen = _scan_lanes(args, initial_states, seq_idx, cu_seqlens, return_varlen_states)
    dstate = B.shape[-1]
    out = out.transpose(1, 2).reshape(batch, seqlen, nheads, headdim).to(x.dtype)
    sdtype = state_dtype if state_dtype is not None else C.dtype
    final = final.reshape(batch, nheads, headdim, dstate).to(sdtype)
    if not return_varlen_states:
        return out if not return_final_states else (out, final)
    varlen = varlen.reshape(-1, nheads, headdim, dstate).to(sdtype)
    return (out, varlen) if not return_final_states else (out, final, varlen)


def mamba_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False):
    """:func:`mamba_chunk_scan_combined` without states (upstream's unfused variant)."""
    return mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)


def ssd_chunk_scan_combined_ref(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Reference: the same recurrence through upstream's ``selective_scan_ref`` (PyTorch loop)."""
    return ssd_selective_scan(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, _ref=True)


def ssd_selective_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=_NO_LIMIT,
                       _ref=False):
    """
    Argument:
        x: (batch, seqlen, nheads, headdim)
        dt: (batch, seqlen, nheads) or (batch, seqlen, nheads, headdim)
        A: (nheads) or (dim, dstate)
        B: (batch, seqlen, ngroups, dstate)
        C: (batch, seqlen, ngroups, dstate)
        D: (nheads, headdim) or (nheads,)
        z: (batch, seqlen, nheads, headdim)
        dt_bias: (nheads,) or (nheads, headdim)
    Return:
        out: (batch, seqlen, nheads, headdim)
    """
    from neurostep.compat.mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref

    batch, seqlen, nheads, headdim = x.shape
    u, delta, A, B, C, D, z, delta_bias, softplus = _to_lanes(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
    scan = selective_scan_ref if _ref else selective_scan_fn
    out = scan(u, delta.to(x.dtype) if tuple(dt_limit) != _NO_LIMIT else delta, A.float(), B, C, D=D, z=z,
               delta_bias=delta_bias, delta_softplus=softplus)
    return out.transpose(1, 2).reshape(batch, seqlen, nheads, headdim)


def _split_conv1d_scan(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, initial_states, seq_idx, dt_limit,
                       activation, rmsnorm_weight, rmsnorm_eps, outproj_weight, outproj_bias, headdim, ngroups,
                       norm_before_gate, state_dtype, return_final_states):
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError("activation must be None, silu, or swish")
    if D.dim() == 1:
        if headdim is None:
            raise ValueError("headdim must be passed when D is 1-D")
        nheads, = D.shape
    else:
        nheads, headdim = D.shape
    batch, seqlen, _ = zxbcdt.shape
    dim = nheads * headdim
    dstate = (conv1d_weight.shape[0] - dim) // ngroups // 2
    d_nonssm = (zxbcdt.shape[-1] - 2 * dim - 2 * ngroups * dstate - nheads) // 2
    if d_nonssm < 0 or zxbcdt.shape[-1] != 2 * d_nonssm + 2 * dim + 2 * ngroups * dstate + nheads:
        raise ValueError(f"zxbcdt's last dim {zxbcdt.shape[-1]} does not split into z, x, B, C, dt for "
                         f"nheads={nheads}, headdim={headdim}, ngroups={ngroups}, dstate={dstate}")
    zx0, z, xBC, dt = torch.split(zxbcdt, [2 * d_nonssm, dim, dim + ngroups * dstate * 2, nheads], dim=-1)
    xBC = causal_conv1d_fn(xBC.transpose(1, 2), conv1d_weight.reshape(conv1d_weight.shape[0], -1), conv1d_bias,
                           seq_idx=seq_idx, activation=activation).transpose(1, 2)
    x, B, C = torch.split(xBC, [dim, ngroups * dstate, ngroups * dstate], dim=-1)
    x = x.unflatten(-1, (nheads, headdim))
    B = B.unflatten(-1, (ngroups, dstate))
    C = C.unflatten(-1, (ngroups, dstate))
    z = z.unflatten(-1, (nheads, headdim))
    res = mamba_chunk_scan_combined(x, dt, A, B, C, 256, D=D, z=z if rmsnorm_weight is None else None,
                                    dt_bias=dt_bias, initial_states=initial_states, seq_idx=seq_idx,
                                    dt_softplus=True, dt_limit=dt_limit, return_final_states=True,
                                    state_dtype=state_dtype)
    out, final = res
    out = out.flatten(-2)
    if rmsnorm_weight is not None:
        out = rmsnorm_fn(out, rmsnorm_weight, None, z=z.flatten(-2), eps=rmsnorm_eps, group_size=dim // ngroups,
                         norm_before_gate=norm_before_gate)
    if d_nonssm > 0:
        z0, x0 = zx0.chunk(2, dim=-1)
        out = torch.cat([F.silu(z0) * x0, out.to(zx0.dtype)], dim=-1)
    if outproj_weight is not None:
        out = F.linear(out.to(outproj_weight.dtype), outproj_weight, outproj_bias)
    elif outproj_bias is not None:
        raise ValueError("outproj_bias needs outproj_weight")
    return out if not return_final_states else (out, final)


def mamba_split_conv1d_scan_combined(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
                                     initial_states=None, seq_idx=None, dt_limit=_NO_LIMIT, return_final_states=False,
                                     activation="silu", rmsnorm_weight=None, rmsnorm_eps=1e-6, outproj_weight=None,
                                     outproj_bias=None, headdim=None, ngroups=1, norm_before_gate=True,
                                     state_dtype=None):
    """
    Argument:
        zxbcdt: (batch, seqlen, 2 * dim + 2 * ngroups * dstate + nheads) where dim == nheads * headdim
            (plus 2 * d_mlp leading channels for Mamba-2's gated-MLP part, if any)
        conv1d_weight: (dim + 2 * ngroups * dstate, width)
        conv1d_bias: (dim + 2 * ngroups * dstate,)
        dt_bias: (nheads,)
        A: (nheads)
        D: (nheads, headdim) or (nheads,)
        initial_states: (batch, nheads, headdim, dstate)
        seq_idx: (batch, seqlen), int32
        rmsnorm_weight: (dim,)
        outproj_weight: (out_dim, dim)
        outproj_bias: (out_dim,)
        headdim: if D is 1D, headdim must be passed in
        norm_before_gate: if True, we do RMSNorm(x) * F.silu(z). If False, we do RMSNorm(x * F.silu(z))
        state_dtype: dtype of the returned final state.
    Return:
        out: (batch, seqlen, dim)
    """
    return _split_conv1d_scan(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, initial_states, seq_idx, dt_limit,
                              activation, rmsnorm_weight, rmsnorm_eps, outproj_weight, outproj_bias, headdim, ngroups,
                              norm_before_gate, state_dtype, return_final_states)


def mamba_split_conv1d_scan_ref(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size, dt_limit=_NO_LIMIT,
                                activation="silu", rmsnorm_weight=None, rmsnorm_eps=1e-6, outproj_weight=None,
                                outproj_bias=None, headdim=None, ngroups=1, norm_before_gate=True):
    """Upstream's reference signature; same computation as :func:`mamba_split_conv1d_scan_combined`."""
    return _split_conv1d_scan(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, None, None, dt_limit, activation,
                              rmsnorm_weight, rmsnorm_eps, outproj_weight, outproj_bias, headdim, ngroups,
                              norm_before_gate, None, False)
