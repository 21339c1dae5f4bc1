"""Decayed linear attention in Triton: the chunked form of :mod:`neurostep.kernels.decayed_linear_attention.cpu`
as five kernels, on the ``(B, L, H, D)`` layout of the inputs (no transposed copies).

Forward:

1. ``_dla_fwd_states``, one program per (block of K, block of V, batch row and head): walks the chunks in
   order, stores the state entering each chunk in ``states (B*H, n, K, V)`` and updates it,
   ``S = exp(b_C) S + K^T (V * exp(b_C - b))``; stores the final state.
2. ``_dla_fwd_out``, one program per (block of V, chunk, batch row and head):
   ``o = scale * (exp(b) * (Q S) + ((Q K^T) * M) V``, reducing over blocks of K.

Backward (the states are recomputed by kernel 1; nothing per step is saved):

3. ``_dla_bwd_dstates``: walks the chunks last first, stores the gradient of the state leaving each
   chunk, ``dS = exp(b_C) dS + Q^T (dO * scale * exp(b))``; the last is the initial state's gradient.
4. ``_dla_bwd_dv``: ``dV = exp(b_C - b) * (K dS) + ((K Q^T) * M^T) dO``, and per block of V the
   log-decay gradient from the pairs inside the chunk, ``sum_{i >= t} sum_{j < t} P_ij (dO_i . v_j)``.
5. ``_dla_bwd_dqk``: ``dP = (dO V^T) * M``, ``dQ = dP K + scale * exp(b) * (dO S^T)``,
   ``dK = dP^T Q + exp(b_C - b) * (V dS^T)``, and per block of K the log-decay gradient from the pairs
   with one end outside the chunk (see :mod:`~neurostep.kernels.decayed_linear_attention.cpu`); torch adds
   the blocks' shares and ``exp(b_C) <S, dS>`` of the pairs that pass through the chunk.

``b`` (the cumulative log-decays inside each chunk) is computed in torch, zero-padded to whole chunks.
Products run at IEEE precision (no TF32), so float32 results agree with the reference; float64 stays
float64. Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests run it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from neurostep.kernels.decayed_linear_attention.reference import SAVED_TENSORS, per_head, scaled_v

CHUNK_SIZE = 64


def _block(size: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(size)))


@triton.jit
def _mask(b, C: tl.constexpr, TRANSPOSED: tl.constexpr):
    """The decay mask ``M_ij = exp(b_i - b_j)`` for ``i >= j``, 0 above the diagonal, as ``(C, C)``; with
    ``TRANSPOSED`` its transpose (rows ``j``, columns ``i``). The exponent is capped at 0 before the exp,
    so the discarded upper triangle never overflows."""
    if TRANSPOSED:
        diff = b[None, :] - b[:, None]
        keep = tl.arange(0, C)[None, :] >= tl.arange(0, C)[:, None]
    else:
        diff = b[:, None] - b[None, :]
        keep = tl.arange(0, C)[:, None] >= tl.arange(0, C)[None, :]
    return tl.where(keep, tl.exp(tl.minimum(diff, 0.0)), 0.0)


@triton.jit
def _dla_fwd_states(k_ptr, v_ptr, b_ptr, h0_ptr, states_ptr, final_ptr, L, Lp, H, K, V,
                    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr,
                    PRECISION: tl.constexpr):
    i_v, i_k, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    ks = i_k * BK + tl.arange(0, BK)
    vs = i_v * BV + tl.arange(0, BV)
    kv_mask = (ks[:, None] < K) & (vs[None, :] < V)
    kv_off = ks[:, None] * V + vs[None, :]
    if HAS_H0:
        state = tl.load(h0_ptr + i_bh * K * V + kv_off, mask=kv_mask, other=0.0)
    else:
        state = tl.zeros([BK, BV], dtype=states_ptr.dtype.element_ty)
    n = tl.cdiv(L, C)
    for c in range(n):
        tl.store(states_ptr + (i_bh * n + c) * K * V + kv_off, state, mask=kv_mask)
        ts = c * C + tl.arange(0, C)
        rows = (i_b * L + ts) * H + i_h
        t_ok = ts < L
        kb = tl.load(k_ptr + rows[:, None] * K + ks[None, :], mask=t_ok[:, None] & (ks[None, :] < K), other=0.0)
        vb = tl.load(v_ptr + rows[:, None] * V + vs[None, :], mask=t_ok[:, None] & (vs[None, :] < V), other=0.0)
        bb = tl.load(b_ptr + i_bh * Lp + ts)
        b_last = tl.load(b_ptr + i_bh * Lp + c * C + C - 1)
        vd = vb * tl.exp(b_last - bb)[:, None]
        state = state * tl.exp(b_last) + tl.dot(tl.trans(kb), vd, input_precision=PRECISION,
                                                out_dtype=states_ptr.dtype.element_ty)
    tl.store(final_ptr + i_bh * K * V + kv_off, state, mask=kv_mask)


@triton.jit
def _dla_fwd_out(q_ptr, k_ptr, v_ptr, b_ptr, states_ptr, o_ptr, scale_ptr, L, Lp, H, K, V,
                 C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    i_v, c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    n = tl.cdiv(L, C)
    dtype = o_ptr.dtype.element_ty
    scale = tl.load(scale_ptr)
    ts = c * C + tl.arange(0, C)
    rows = (i_b * L + ts) * H + i_h
    t_ok = ts < L
    vs = i_v * BV + tl.arange(0, BV)
    acc_o = tl.zeros([C, BV], dtype=dtype)
    acc_s = tl.zeros([C, C], dtype=dtype)
    for kk in range(0, K, BK):
        ks = kk + tl.arange(0, BK)
        qk_mask = t_ok[:, None] & (ks[None, :] < K)
        qb = tl.load(q_ptr + rows[:, None] * K + ks[None, :], mask=qk_mask, other=0.0)
        kb = tl.load(k_ptr + rows[:, None] * K + ks[None, :], mask=qk_mask, other=0.0)
        sb = tl.load(states_ptr + (i_bh * n + c) * K * V + ks[:, None] * V + vs[None, :],
                     mask=(ks[:, None] < K) & (vs[None, :] < V), other=0.0)
        acc_o += tl.dot(qb, sb, input_precision=PRECISION, out_dtype=dtype)
        acc_s += tl.dot(qb, tl.trans(kb), input_precision=PRECISION, out_dtype=dtype)
    bb = tl.load(b_ptr + i_bh * Lp + ts)
    vb = tl.load(v_ptr + rows[:, None] * V + vs[None, :], mask=t_ok[:, None] & (vs[None, :] < V), other=0.0)
    p = (acc_s * _mask(bb, C, False)).to(dtype)
    o = acc_o * tl.exp(bb)[:, None] + tl.dot(p, vb, input_precision=PRECISION, out_dtype=dtype)
    tl.store(o_ptr + rows[:, None] * V + vs[None, :], o * scale, mask=t_ok[:, None] & (vs[None, :] < V))


@triton.jit
def _dla_bwd_dstates(q_ptr, do_ptr, b_ptr, gfinal_ptr, dstates_ptr, dh0_ptr, scale_ptr, L, Lp, H, K, V,
                     C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_GFINAL: tl.constexpr,
                     PRECISION: tl.constexpr):
    i_v, i_k, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    scale = tl.load(scale_ptr)
    ks = i_k * BK + tl.arange(0, BK)
    vs = i_v * BV + tl.arange(0, BV)
    kv_mask = (ks[:, None] < K) & (vs[None, :] < V)
    kv_off = ks[:, None] * V + vs[None, :]
    if HAS_GFINAL:
        ds = tl.load(gfinal_ptr + i_bh * K * V + kv_off, mask=kv_mask, other=0.0)
    else:
        ds = tl.zeros([BK, BV], dtype=dstates_ptr.dtype.element_ty)
    n = tl.cdiv(L, C)
    for cc in range(n):
        c = n - 1 - cc
        tl.store(dstates_ptr + (i_bh * n + c) * K * V + kv_off, ds, mask=kv_mask)
        ts = c * C + tl.arange(0, C)
        rows = (i_b * L + ts) * H + i_h
        t_ok = ts < L
        qb = tl.load(q_ptr + rows[:, None] * K + ks[None, :], mask=t_ok[:, None] & (ks[None, :] < K), other=0.0)
        dob = tl.load(do_ptr + rows[:, None] * V + vs[None, :], mask=t_ok[:, None] & (vs[None, :] < V), other=0.0)
        bb = tl.load(b_ptr + i_bh * Lp + ts)
        b_last = tl.load(b_ptr + i_bh * Lp + c * C + C - 1)
        dod = dob * (tl.exp(bb) * scale)[:, None]
        ds = ds * tl.exp(b_last) + tl.dot(tl.trans(qb), dod, input_precision=PRECISION,
                                          out_dtype=dstates_ptr.dtype.element_ty)
    tl.store(dh0_ptr + i_bh * K * V + kv_off, ds, mask=kv_mask)


@triton.jit
def _dla_bwd_dv(q_ptr, k_ptr, v_ptr, do_ptr, b_ptr, dstates_ptr, dv_ptr, dgv_ptr, scale_ptr, L, Lp, H, K, V, BH,
                C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    i_v, c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    n = tl.cdiv(L, C)
    dtype = dv_ptr.dtype.element_ty
    scale = tl.load(scale_ptr)
    ts = c * C + tl.arange(0, C)
    rows = (i_b * L + ts) * H + i_h
    t_ok = ts < L
    vs = i_v * BV + tl.arange(0, BV)
    acc_pt = tl.zeros([C, C], dtype=dtype)        # rows j, columns i: k_j . q_i
    acc_dv = tl.zeros([C, BV], dtype=dtype)
    for kk in range(0, K, BK):
        ks = kk + tl.arange(0, BK)
        qk_mask = t_ok[:, None] & (ks[None, :] < K)
        qb = tl.load(q_ptr + rows[:, None] * K + ks[None, :], mask=qk_mask, other=0.0)
        kb = tl.load(k_ptr + rows[:, None] * K + ks[None, :], mask=qk_mask, other=0.0)
        dsb = tl.load(dstates_ptr + (i_bh * n + c) * K * V + ks[:, None] * V + vs[None, :],
                      mask=(ks[:, None] < K) & (vs[None, :] < V), other=0.0)
        acc_pt += tl.dot(kb, tl.trans(qb), input_precision=PRECISION, out_dtype=dtype)
        acc_dv += tl.dot(kb, dsb, input_precision=PRECISION, out_dtype=dtype)
    bb = tl.load(b_ptr + i_bh * Lp + ts)
    b_last = tl.load(b_ptr + i_bh * Lp + c * C + C - 1)
    dob = tl.load(do_ptr + rows[:, None] * V + vs[None, :], mask=t_ok[:, None] & (vs[None, :] < V), other=0.0)
    pt = (acc_pt * _mask(bb, C, True) * scale).to(dtype)
    dv = acc_dv * tl.exp(b_last - bb)[:, None] + tl.dot(pt, dob, input_precision=PRECISION, out_dtype=dtype)
    tl.store(dv_ptr + rows[:, None] * V + vs[None, :], dv, mask=t_ok[:, None] & (vs[None, :] < V))
    # this block of V's share of the pairs inside the chunk that straddle t: sum_{i >= t} sum_{j < t} W_ij,
    # with W^T_ji = P_ij (dO_i . v_j) (rows j, columns i)
    vb = tl.load(v_ptr + rows[:, None] * V + vs[None, :], mask=t_ok[:, None] & (vs[None, :] < V), other=0.0)
    wt = pt * tl.dot(vb, tl.trans(dob), input_precision=PRECISION, out_dtype=dtype)
    below = tl.arange(0, C)[:, None] < tl.arange(0, C)[None, :]
    straddle = tl.sum(tl.where(below, tl.cumsum(wt, axis=1, reverse=True), 0.0), axis=0)
    tl.store(dgv_ptr + (i_v * BH + i_bh) * Lp + ts, straddle)


@triton.jit
def _dla_bwd_dqk(q_ptr, k_ptr, v_ptr, do_ptr, b_ptr, states_ptr, dstates_ptr, dq_ptr, dk_ptr, db_ptr, scale_ptr,
                 L, Lp, H, K, V, BH,
                 C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    i_k, c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    n = tl.cdiv(L, C)
    dtype = dq_ptr.dtype.element_ty
    scale = tl.load(scale_ptr)
    ts = c * C + tl.arange(0, C)
    rows = (i_b * L + ts) * H + i_h
    t_ok = ts < L
    ks = i_k * BK + tl.arange(0, BK)
    acc_dp = tl.zeros([C, C], dtype=dtype)        # do_i . v_j
    acc_dq = tl.zeros([C, BK], dtype=dtype)       # do S^T
    acc_dk = tl.zeros([C, BK], dtype=dtype)       # v dS^T
    for vv in range(0, V, BV):
        vs = vv + tl.arange(0, BV)
        tv_mask = t_ok[:, None] & (vs[None, :] < V)
        dob = tl.load(do_ptr + rows[:, None] * V + vs[None, :], mask=tv_mask, other=0.0)
        vb = tl.load(v_ptr + rows[:, None] * V + vs[None, :], mask=tv_mask, other=0.0)
        kv_off = (i_bh * n + c) * K * V + ks[:, None] * V + vs[None, :]
        kv_mask = (ks[:, None] < K) & (vs[None, :] < V)
        sb = tl.load(states_ptr + kv_off, mask=kv_mask, other=0.0)
        dsb = tl.load(dstates_ptr + kv_off, mask=kv_mask, other=0.0)
        acc_dp += tl.dot(dob, tl.trans(vb), input_precision=PRECISION, out_dtype=dtype)
        acc_dq += tl.dot(dob, tl.trans(sb), input_precision=PRECISION, out_dtype=dtype)
        acc_dk += tl.dot(vb, tl.trans(dsb), input_precision=PRECISION, out_dtype=dtype)
    bb = tl.load(b_ptr + i_bh * Lp + ts)
    b_last = tl.load(b_ptr + i_bh * Lp + c * C + C - 1)
    qk_mask = t_ok[:, None] & (ks[None, :] < K)
    qb = tl.load(q_ptr + rows[:, None] * K + ks[None, :], mask=qk_mask, other=0.0)
    kb = tl.load(k_ptr + rows[:, None] * K + ks[None, :], mask=qk_mask, other=0.0)
    dp = (acc_dp * _mask(bb, C, False) * scale).to(dtype)
    dq_inter = acc_dq * (tl.exp(bb) * scale)[:, None]
    dk_state = acc_dk * tl.exp(b_last - bb)[:, None]
    dq = dq_inter + tl.dot(dp, kb, input_precision=PRECISION, out_dtype=dtype)
    dk = dk_state + tl.dot(tl.trans(dp), qb, input_precision=PRECISION, out_dtype=dtype)
    tl.store(dq_ptr + rows[:, None] * K + ks[None, :], dq, mask=qk_mask)
    tl.store(dk_ptr + rows[:, None] * K + ks[None, :], dk, mask=qk_mask)
    # this block of K's share of the pairs with one end outside the chunk that straddle t:
    # sum_{i >= t} q_i . dq_inter_i (j before the chunk) + sum_{j < t} k_j . dk_state_j (i after it)
    r_q = tl.sum(qb * dq_inter, axis=1)
    r_k = tl.sum(kb * dk_state, axis=1)
    tl.store(db_ptr + (i_k * BH + i_bh) * Lp + ts, tl.cumsum(r_q, axis=0, reverse=True) + tl.cumsum(r_k, axis=0) - r_k)


def _prepare(g: torch.Tensor, chunk: int) -> tuple[torch.Tensor, int, int]:
    """The cumulative log-decays inside each chunk, ``(B * H, n * chunk)``, zero-padded (no decay)."""
    B, L, H = g.shape
    n = triton.cdiv(L, chunk)
    gp = g.new_zeros(B, H, n * chunk)
    gp[:, :, :L] = g.permute(0, 2, 1)
    return gp.view(B * H, n, chunk).cumsum(-1).view(B * H, n * chunk).contiguous(), n, n * chunk


def _precision(dtype: torch.dtype) -> str:
    return "ieee"


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """A scalar as a one-element tensor of the data dtype (a Python float would reach the kernel as fp32)."""
    return torch.full((1,), value, dtype=like.dtype, device=like.device)


def _fwd_states(k, v, b, h0, chunk, n, Lp):
    B, L, H, K = k.shape
    V = v.shape[-1]
    BK, BV = _block(K, 64), _block(V, 64)
    states = k.new_empty(B * H, n, K, V)
    final = k.new_empty(B, H, K, V)
    grid = (triton.cdiv(V, BV), triton.cdiv(K, BK), B * H)
    _dla_fwd_states[grid](k, v, b, h0 if h0 is not None else final, states, final, L, Lp, H, K, V,
                          C=chunk, BK=BK, BV=BV, HAS_H0=h0 is not None, PRECISION=_precision(k.dtype))
    return states, final


def saved_shapes(q_shape: tuple[int, ...], v_shape: tuple[int, ...],
                 chunk_size: int) -> tuple[tuple[int, ...], ...]:
    """This backend saves nothing of its own (the backward reads q, k, v in place): empty tensors."""
    return ((0,),) * SAVED_TENSORS


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None,
            scale: float, chunk_size: int, v_scale: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Same contract as :func:`neurostep.kernels.decayed_linear_attention.reference.forward`
    (``chunk_size`` a power of two >= 16). ``v_scale`` is applied to ``v`` before the kernels (one
    elementwise product on the device)."""
    v = scaled_v(v, v_scale)
    B, L, H, V = v.shape
    K = q.shape[-1]
    q, k = per_head(q, H).contiguous(), per_head(k, H).contiguous()   # the kernels read one q and k per head
    b, n, Lp = _prepare(g, chunk_size)
    states, final = _fwd_states(k, v, b, h0, chunk_size, n, Lp)
    o = torch.empty_like(v)
    BK, BV = _block(K, 64), _block(V, 64)
    _dla_fwd_out[(triton.cdiv(V, BV), n, B * H)](q, k, v, b, states, o, _scalar(scale, q), L, Lp, H, K, V,
                                                 C=chunk_size, BK=BK, BV=BV, PRECISION=_precision(q.dtype))
    return o, final, tuple(q.new_empty(0) for _ in range(SAVED_TENSORS))


def backward(grad_o: torch.Tensor, grad_final: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None, final_state: torch.Tensor,
             saved: tuple[torch.Tensor, ...], scale: float, chunk_size: int,
             v_scale: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...]:
    """Same contract as :func:`neurostep.kernels.decayed_linear_attention.reference.backward`."""
    raw_v, v = v, scaled_v(v, v_scale)
    B, L, H, V = v.shape
    G, K = q.shape[2:]
    q, k = per_head(q, H).contiguous(), per_head(k, H).contiguous()
    BH = B * H
    chunk = chunk_size
    precision = _precision(q.dtype)
    scale_t = _scalar(scale, q)
    b, n, Lp = _prepare(g, chunk)
    states, _ = _fwd_states(k, v, b, h0, chunk, n, Lp)
    BK, BV = _block(K, 64), _block(V, 64)
    dstates = q.new_empty(BH, n, K, V)
    dh0 = q.new_empty(B, H, K, V)
    _dla_bwd_dstates[(triton.cdiv(V, BV), triton.cdiv(K, BK), BH)](
        q, grad_o, b, grad_final if grad_final is not None else dh0, dstates, dh0, scale_t, L, Lp, H, K, V,
        C=chunk, BK=BK, BV=BV, HAS_GFINAL=grad_final is not None, PRECISION=precision)
    dv = torch.empty_like(v)
    n_v = triton.cdiv(V, BV)
    dg_v = q.new_empty(n_v, BH, Lp)
    _dla_bwd_dv[(n_v, n, BH)](q, k, v, grad_o, b, dstates, dv, dg_v, scale_t, L, Lp, H, K, V, BH, C=chunk, BK=BK,
                              BV=BV, PRECISION=precision)
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    n_k = triton.cdiv(K, BK)
    dg_k = q.new_empty(n_k, BH, Lp)
    _dla_bwd_dqk[(n_k, n, BH)](q, k, v, grad_o, b, states, dstates, dq, dk, dg_k, scale_t, L, Lp, H, K, V, BH,
                               C=chunk, BK=BK, BV=BV, PRECISION=precision)
    # pairs with j before the chunk and i after it: exp(b_C) <S_entering, dS_leaving> for every t of the chunk
    through = torch.einsum("mnkv,mnkv->mn", states, dstates) * torch.exp(b.view(BH, n, chunk)[..., -1])
    dg = (dg_v.sum(0) + dg_k.sum(0)).view(BH, n, chunk).add_(through[..., None]).view(BH, Lp)[:, :L]
    dg = dg.reshape(B, H, L).permute(0, 2, 1).contiguous()
    if G != H:   # each group's gradient is the sum over its heads
        dq, dk = (x.view(B, L, G, H // G, K).sum(3) for x in (dq, dk))
    dv_scale = None
    if v_scale is not None:   # the chain rule through v_scale * v
        dv_scale = (dv * raw_v).sum(-1)
        dv = dv * v_scale[..., None]
    return dq, dk, dv, dg, (dh0 if h0 is not None else None), dv_scale
