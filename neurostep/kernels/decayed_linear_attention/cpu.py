"""Decayed linear attention on CPU: the chunked form on torch's batched matrix products, numba for the rest.

The sequence is cut into chunks of ``C`` tokens. Inside a chunk, with ``b_i`` the cumulative sum of the
log-decays from the chunk's start (``b_i = g_0 + ... + g_i``), ``S`` the state entering the chunk and
``b_C`` the last ``b`` of the chunk::

    o_i     = scale * (exp(b_i) q_i S + sum_{j <= i} exp(b_i - b_j) (q_i . k_j) v_j)
    S_next  = exp(b_C) S + sum_j k_j^T exp(b_C - b_j) v_j

so the output is one intra-chunk product ``((Q K^T) * M) V`` with the decay mask
``M_ij = exp(b_i - b_j)`` for ``i >= j`` (0 above the diagonal), plus the inter-chunk term
``exp(b) * (Q S)``; the states entering the chunks follow from a short recurrence over the chunks
(Dao and Gu 2024, section 6; Qin et al. 2024, Lightning Attention-2, algorithm 1). Large decays
(Mamba-2's ``dt * A``) must underflow to 0, never overflow: in a chunk whose whole decay is strong
(``b_C < -60``) every mask entry is one exp of ``b_i - b_j <= 0``, formed before the exp. Otherwise the
mask is the product ``exp(b_i) * exp(-b_j)`` (``C`` exps per factor instead of ``C^2 / 2``), whose factors
lie in ``[exp(-60), exp(60)]``: no overflow, no denormals, a few ulp from the single exp.

The forward's ``saved`` tensors are the chunked copies of q, k and v (autograd then holds them instead
of q, k and v), the masked scores ``P = (Q K^T) * scale M`` of every chunk and the state entering every
chunk, so the backward recomputes neither the states nor the scores (2 of the 10 products a recomputing
backward runs), for ``C^2 + K V`` more saved elements per chunk and head (at
the benchmark size 100 MB saved instead of 63 MB). They are five tensors, not one flat buffer: glibc
serves blocks of up to 32 MB from its heap once one of that size has been freed, while a larger block is
a fresh ``mmap`` whose every page faults on its first write. At the benchmark size, three runs of each
in turn (development machine, 2026-12-02, load 0.5 to 1.5): one 100 MB buffer took 16,000-31,000 page
faults and 162-179 ms per forward+backward, the five tensors of 12.5-25 MB 1,200-12,000 faults and
139-161 ms. With ``dO`` the output gradient, ``dS`` the gradient
of the state leaving a chunk and the scale folded into ``M`` and ``exp(b)``::

    dP = (dO V^T) * M
    dQ = dP K + (dO * exp(b)) S^T
    dK = dP^T Q + (V * exp(b_C - b)) dS^T
    dV = P^T dO + exp(b_C - b) * (K dS)
    dS_prev = exp(b_C) dS + Q^T (dO * exp(b))          (carried backwards over the chunks)

The log-decays need no products of their own. ``o`` and the final state depend on the cumulative sums
``B_t`` of the whole sequence only through factors ``exp(B_i - B_j)`` (``j <= i``), so ``g_t`` receives the
gradient of every pair with ``j < t <= i``. Summing ``q_t . dq_t - k_t . dk_t`` over ``t' >= t`` gives the
same in exact arithmetic but cancels large terms over the whole sequence: in float32 Mamba-2's ``dA``
(``L = 256``, 4 heads, ``K = 128``, ``V = 64``) came out with a relative error of 1.5e-4 against the float64
reference, transformers' autograd with 5e-7 (2026-12-02). The backend sums only straddling pairs, per
chunk: those inside it (``sum_{i >= t} sum_{j < t} W_ij`` with ``W = P * (dO V^T)``), those with one end in
it (``sum_{i >= t} q_i . dq_inter_i`` and ``sum_{j < t} k_j . dk_state_j``) and those through it
(``exp(b_C) <S, dS>``): 9e-7 on the same inputs.

Layout: numba kernels copy q, k, v (and in the backward dO) once into head-major ``(B * H * n, C, D)``
blocks, zero-padded to ``n`` full chunks (padding tokens have ``g = 0``, so the state passes through
them unchanged), writing the scaled copies the products need (``V * exp(b_C - b)``, ``dO * scale
exp(b)``) in the same pass; every product is then one ``bmm`` over all chunks of all heads. (Strided
per-head views instead of copies were measured: ``bmm`` runs 1.5 to 3 times slower on them, and the 24
times more calls each wake the thread pool.) The outputs go back with one kernel each that also adds the
two products forming them (``o = scale exp(b) (Q S) + P V``, ``dV = exp(b_C - b) (K dS) + P^T dO``), so
no separate elementwise pass runs over them. When q and k come in ``G < H`` groups (Mamba-2's
``ngroups``), every head still gets its block copy (the per-head products need them), but ``Q K^T`` runs
once per group, and in the backward ``dP`` is summed over a group's heads before its two products with
``K`` and ``Q`` (``dQ = sum_h dP_h K + ...``). At Mamba-2's sizes (chunks of 64, ``K = N = 128``,
``V = P = 64``) these products are 29% of the multiply-adds of each pass; with one group for all heads
they all but vanish. Chunk states live in one ``(B * H * n, K, V)`` buffer, slot ``j`` of each head the state
entering chunk ``j``: one ``bmm`` writes every chunk's own contribution there and one numba pass turns
them into the entering states in place; the backward's state gradients use the same scheme in reverse,
with the same pass forming ``exp(b_C) <S, dS>``. The decay mask is never materialised: numba kernels
apply it to the raw scores (forward) and to ``dO V^T`` (backward, together with the ``W`` sums of the
log-decay gradient).

Exponents are clamped at ``-60`` before the exp (``exp(-60) = 9e-27``, far below the resolution of any
output, whose diagonal term has weight exactly 1): torch's vectorised exp and the products that follow
run 25-35 times slower on ``-inf`` and on results in the denormal range.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from neurostep.kernels.numba_exp import vexp
from neurostep.kernels.numba_launch import as_array as _np
from neurostep.kernels.numba_launch import serialized, stand_in
from neurostep.kernels.numba_sum import vsum
from neurostep.memory import empty, empty_like

CHUNK_SIZE = 64
"""Tokens per chunk where nothing was measured on the machine (``tuning.py``: ``python -m neurostep tune``
records the fastest size per machine and workload). ``benchmarks/decayed_linear_attention.py`` on the
development machine (2-core Xeon, AVX-512, 2 torch threads, 2026-12-02 10:10 UTC, load average 1.4 to 1.6)
measured forward+backward at B=1, H=24, K=128, V=64, L=2048, fp32 in 150 ms (279 ms of CPU time) with chunks
of 64, 187 ms (332) with 32 and 171 ms (323) with 128, medians of 7 (transformers' chunk scan at its default
chunk of 256: 666 ms, 1211 ms of CPU time, in the same run). A backward that recomputes the chunk states and
scores, with the layout copies done by torch, measured 202 ms (372) at load 0.7 to 1.5 on the same machine.
Smaller chunks do fewer multiply-adds in the masked products (``C (K + V)`` per token) but run them as smaller
matrix products at a lower rate, and write more chunk states."""
FLOOR = -60.0
"""Exponents are clamped here before the exp (see the module docstring)."""


# -- numba kernels ------------------------------------------------------------------------------------
# Scalars arrive in the data dtype (float32 stays float32: numba would otherwise promote to float64).
# Rows and blocks are filled and copied with explicit loops, never with array expressions (``s[:] = x``,
# ``out[r] = s``, ``np.zeros``): inside a ``prange`` body numba turns each of those into a nested parallel
# loop, which runs serially anyway and costs only compile time. First forward call from a cold cache: 8.0 s
# against 14-16 s with them, the score-masking kernel 2.5 s against 6.4-7.2 s (development machine, 2-core
# AMD EPYC, 2026-12-03; outputs bit-identical, run time unchanged).


@numba.njit(inline="always")
def _mask_row(row, i, bm, e, f, split, scale, floor):
    """Row ``i`` of a chunk's scores times ``scale * M_i.``: ``M_ij = exp(b_i - b_j)`` for ``j <= i``, 0 above.
    With ``split`` (the chunk's whole decay ``b_C >= FLOOR``) ``M_ij = e_i f_j``, ``e = exp(b)``,
    ``f = exp(-b) <= exp(60)``: no exp per element, and neither factor nor product leaves float32's normal
    range; else one clamped exp per element (a strong decay inside the chunk)."""
    zero = row.dtype.type(0)
    if split:
        ei = scale * e[i]
        for j in range(i + 1):
            row[j] *= ei * f[j]
    else:
        bi = bm[i]
        for j in range(i + 1):
            row[j] *= scale * vexp(min(max(bi - bm[j], floor), zero))
    for j in range(i + 1, row.shape[0]):
        row[j] = zero


@numba.njit(inline="always")
def _mask_factors(bm, e, f, floor):
    """``e = exp(b)`` and ``f = exp(-b)`` of a chunk; True if its whole decay allows the split mask."""
    split = bm[bm.shape[0] - 1] >= floor
    if split:
        for j in range(bm.shape[0]):
            e[j] = vexp(bm[j])
            f[j] = vexp(-bm[j])
    return split


@numba.njit(parallel=True, cache=True)
def _mask_scores(raw, p, b, n, heads, groups, scale, floor):
    """Head block ``m`` of ``p (M, C, C)`` (``M = B H n``, head-major, ``n`` chunks per head) becomes
    ``raw_ij * scale * exp(b_i - b_j)`` for ``j <= i``, 0 above the diagonal, ``raw`` holding the scores of
    each group's blocks (``(B G n, C, C)``; head ``h`` reads group ``h // (H / G)``). With one head per group
    ``raw`` is ``p`` itself and the mask is applied in place."""
    M, C, _ = p.shape
    rep = heads // groups
    for m in numba.prange(M):
        e = np.empty(C, dtype=p.dtype)
        f = np.empty(C, dtype=p.dtype)
        bm = b[m]
        split = _mask_factors(bm, e, f, floor)
        if rep > 1:
            bi, h, j = _block_coords(m, n, heads)
            _copy_block(raw[(bi * groups + h // rep) * n + j], p[m])
        for i in range(C):
            _mask_row(p[m, i], i, bm, e, f, split, scale, floor)


@numba.njit(parallel=True, cache=True, fastmath={"reassoc"})
def _state_pass(buf, decay, h0, has_h0, final):
    """Forward state recurrence over the chunks, in place. ``buf (R, n, E)`` (``E = K V``, ``R = H B``) holds
    each chunk's own contribution and leaves with the state entering each chunk; ``decay (R, n)`` is
    ``exp(b_C)``; ``final (R, E)`` receives the state after the last chunk."""
    R, n, E = buf.shape
    for r in numba.prange(R):
        s = final[r]          # the running state lives in its output row
        h0r = h0[r]
        for e in range(E):
            s[e] = h0r[e] if has_h0 else buf.dtype.type(0)
        for j in range(n):
            row = buf[r, j]
            d = decay[r, j]
            for e in range(E):
                c = row[e]
                row[e] = s[e]
                s[e] = d * s[e] + c


@numba.njit(parallel=True, cache=True, fastmath={"reassoc"})
def _dstate_pass(dbuf, decay, gfinal, has_gfinal, states, through, dh0):
    """Backward state recurrence, in place. ``dbuf (R, n, E)`` holds ``Q_j^T (dO_j * exp(b))`` of each
    chunk and leaves with the gradient of the state leaving each chunk; ``through (R, n)`` receives
    ``exp(b_C) <S_entering, dS_leaving>`` per chunk (the log-decay gradient of the pairs that pass through
    the chunk; reassociating this sum only lets it vectorise) and ``dh0 (R, E)`` the initial state's
    gradient."""
    R, n, E = dbuf.shape
    for r in numba.prange(R):
        s = dh0[r]            # the running gradient lives in its output row
        gr = gfinal[r]
        for e in range(E):
            s[e] = gr[e] if has_gfinal else dbuf.dtype.type(0)
        for j in range(n - 1, -1, -1):
            row = dbuf[r, j]
            st = states[r, j]
            d = decay[r, j]
            acc = dbuf.dtype.type(0)
            for e in range(E):
                acc += st[e] * s[e]
            through[r, j] = d * acc
            for e in range(E):
                c = row[e]
                row[e] = s[e]
                s[e] = d * s[e] + c


@numba.njit(parallel=True, cache=True)
def _dg_scores(p, dp, b, scale, floor, r_q, r_k, through, term):
    """Per chunk ``m``: ``dp (M, C, C)`` in place from ``dO V^T`` to ``dP = (dO V^T) * scale M``, and the
    log-decay gradient of the chunk's tokens into ``term (M, C)``: the straddling pairs inside the chunk
    (``sum_{i >= t} sum_{j < t} W_ij``, ``W = P * (dO V^T)``), ``sum_{i >= t} r_q[i]`` (``q_i . dq_inter_i``),
    ``sum_{j < t} r_k[j]`` (``k_j . dk_state_j``) and ``through[m]``."""
    M, C, _ = p.shape
    zero = p.dtype.type(0)
    for m in numba.prange(M):
        acc = term[m]                         # written in place
        col = np.empty(C, dtype=p.dtype)      # col[j]: sum of W_ij over the rows i seen so far (i > j)
        for j in range(C):
            col[j] = zero
        e = np.empty(C, dtype=p.dtype)
        f = np.empty(C, dtype=p.dtype)
        bm = b[m]
        split = _mask_factors(bm, e, f, floor)
        # rows from the last: after row i, col holds the rows >= i, and the pairs straddling t = i are
        # those of col's first i columns
        for i in range(C - 1, -1, -1):
            prow = p[m, i]
            drow = dp[m, i]
            for j in range(i):
                col[j] += prow[j] * drow[j]
            acc[i] = vsum(col, i)
            _mask_row(drow, i, bm, e, f, split, scale, floor)
        rq, rk = r_q[m], r_k[m]
        run = zero
        for t in range(C - 1, -1, -1):
            run += rq[t]
            acc[t] += run
        run = zero
        for t in range(C):
            acc[t] += run + through[m]
            run += rk[t]


@numba.njit(parallel=True, cache=True, fastmath={"reassoc"})
def _row_dots(qc, dq, kc, dk, ebl, r_q, r_k):
    """Per token of every chunk: ``r_q = q . dq_inter``; ``dk`` (``V dS^T``) scaled in place by
    ``exp(b_C - b)`` to ``dk_state``, then ``r_k = k . dk_state`` (reassociated sums: they vectorise)."""
    M, C, K = qc.shape
    for m in numba.prange(M):
        for t in range(C):
            qrow, dqrow, krow, dkrow = qc[m, t], dq[m, t], kc[m, t], dk[m, t]
            f = ebl[m, t]
            aq = qc.dtype.type(0)
            ak = qc.dtype.type(0)
            for i in range(K):
                aq += qrow[i] * dqrow[i]
                d = dkrow[i] * f
                dkrow[i] = d
                ak += krow[i] * d
            r_q[m, t] = aq
            r_k[m, t] = ak


@numba.njit(inline="always")
def _copy_block(src, dst):
    """``dst[:] = src`` for 2-D blocks, as loops (see the note above the kernels)."""
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = src[i, j]


@numba.njit(inline="always")
def _block_coords(m, n, H):
    """Batch row, head and chunk of block ``m`` of the head-major ``(B * H * n, C, D)`` layout."""
    return m // (n * H), (m // n) % H, m % n


@numba.njit(parallel=True, cache=True)
def _gather(x, out, heads, scaled, factor, has_scaled, pre, has_pre):
    """``x (B, L, G, D)`` -> head-major blocks ``out (B * H * n, C, D)`` for ``H = heads`` (block ``(b, h, j)``
    holds tokens ``j C .. j C + C - 1`` of group ``h // (H / G)``: with ``H = G`` each head its own),
    zero-padded to ``n C`` tokens, each token's row times ``pre[b, t, g]`` with ``has_pre`` (``pre (B, L, G)``);
    with ``has_scaled`` also ``scaled = out * factor`` (``factor (B * H * n, C)``, one value per token)."""
    B, L, G, D = x.shape
    M, C, _ = out.shape
    n = M // (B * heads)
    rep = heads // G
    zero = out.dtype.type(0)
    for m in numba.prange(M):
        bi, h, j = _block_coords(m, n, heads)
        for c in range(C):
            t = j * C + c
            orow = out[m, c]
            srow = scaled[m, c] if has_scaled else orow
            if t < L:
                xrow = x[bi, t, h // rep]
                if has_pre:
                    w = pre[bi, t, h // rep]
                    for d in range(D):
                        orow[d] = xrow[d] * w
                else:
                    for d in range(D):
                        orow[d] = xrow[d]
                if has_scaled:
                    f = factor[m, c]
                    for d in range(D):
                        srow[d] = orow[d] * f
            else:
                for d in range(D):
                    orow[d] = zero
                    srow[d] = zero


@numba.njit(parallel=True, cache=True)
def _scatter(a, heads, factor, has_factor, c, has_c, out):
    """The inverse of :func:`_gather`, summing over the heads of a group: ``out[b, t, g]`` is the sum over
    the heads ``h`` of group ``g`` of ``a * factor`` of block ``(b, h, j)`` (``a (B H n, C, D)``, ``factor``
    one value per token), plus ``c`` of the group's block ``(b, g, j)`` (``c (B G n, C, D)``); each term only
    if its flag is set; padding dropped."""
    B, L, G, D = out.shape
    M, C, _ = a.shape
    n = M // (B * heads)
    rep = heads // G
    one = a.dtype.type(1)
    for mg in numba.prange(B * G * n):
        bi, gi, j = _block_coords(mg, n, G)
        for t in range(min(C, L - j * C)):
            orow = out[bi, j * C + t, gi]
            crow = c[mg, t]
            for r in range(rep):   # the first head writes the row (with c), the others add to it
                m = (bi * heads + gi * rep + r) * n + j
                arow = a[m, t]
                f = factor[m, t] if has_factor else one
                if r > 0:
                    for d in range(D):
                        orow[d] += arow[d] * f
                elif has_c:
                    for d in range(D):
                        orow[d] = arow[d] * f + crow[d]
                else:
                    for d in range(D):
                        orow[d] = arow[d] * f


@numba.njit(parallel=True, cache=True, fastmath={"reassoc"})
def _scatter_scaled(a, factor, c, x, w, out, dw):
    """:func:`_scatter` of the gradient of the scaled values ``u = w * x`` (one head per group) and the chain
    rule through the scale: with ``du = a * factor + c`` of block ``(b, h, j)`` (``a, c (B H n, C, D)``,
    ``factor`` one value per token), ``out[b, t, h] = w[b, t, h] * du`` (``x``'s gradient) and ``dw[b, t, h] =
    du . x[b, t, h]`` (``w``'s; a reassociated sum: it vectorises), for ``x, out (B, L, H, D)`` and ``w, dw
    (B, L, H)``; padding dropped."""
    B, L, H, D = out.shape
    M, C, _ = a.shape
    n = M // (B * H)
    for m in numba.prange(M):
        bi, h, j = _block_coords(m, n, H)
        for t in range(min(C, L - j * C)):
            tok = j * C + t
            orow, xrow, arow, crow = out[bi, tok, h], x[bi, tok, h], a[m, t], c[m, t]
            f = factor[m, t]
            s = w[bi, tok, h]
            acc = a.dtype.type(0)
            for d in range(D):
                du = arow[d] * f + crow[d]
                orow[d] = du * s
                acc += du * xrow[d]
            dw[bi, tok, h] = acc


# -- layout helpers -----------------------------------------------------------------------------------


def _chunk_count(length: int, chunk_size: int) -> tuple[int, int]:
    chunk = max(1, min(chunk_size, length))
    return chunk, -(-length // chunk)


def saved_shapes(q_shape: tuple[int, ...], v_shape: tuple[int, ...],
                 chunk_size: int) -> tuple[tuple[int, ...], ...]:
    """Shapes of the forward's ``saved`` tensors: the blocks of q and k (``(M, C, K)``, ``M = B H n``, q and
    k copied per head) and v (``(M, C, V)``), the masked scores ``P (M, C, C)`` and the entering states
    ``(M, K, V)``."""
    B, L, _, K = q_shape
    H, V = v_shape[-2:]
    chunk, n = _chunk_count(L, chunk_size)
    M = B * H * n
    return (M, chunk, K), (M, chunk, K), (M, chunk, V), (M, chunk, chunk), (M, K, V)


def _decays(g: torch.Tensor, n: int, chunk: int, scale: float):
    """From the log-decays ``g (B, L, H)``, per block (``M = B H n``, head-major): the cumulative sums
    ``b (M, C)``, ``scale * exp(b)`` and ``exp(b_C - b)`` (each ``(M, C)``) and ``exp(b_C)`` ``(B H, n)``.
    Padding tokens have ``g = 0`` (no decay), so the state passes through them unchanged."""
    B, L, H = g.shape
    b = g.new_zeros(B, H, n * chunk)
    b[:, :, :L] = g.transpose(1, 2)
    b = b.view(B * H * n, chunk).cumsum_(-1)
    b_last = b[:, -1:]
    eb = b.clamp(min=FLOOR).exp_()
    if scale != 1.0:
        eb.mul_(scale)
    ebl = (b_last - b).clamp_(min=FLOOR).exp_()
    decay = b_last.clamp(min=FLOOR).exp_().view(B * H, n)
    return b, eb, ebl, decay


def _scalar(value: float, like: torch.Tensor):
    return np.float64(value) if like.dtype == torch.float64 else np.float32(value)


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.bmm(a, b)`` into a new :func:`~neurostep.memory.empty` tensor (2 MB pages where it is large)."""
    return torch.bmm(a, b, out=empty((a.shape[0], a.shape[1], b.shape[2]), a.dtype))


@serialized
def _launch(kernel, *args) -> None:
    kernel(*args)


def _to_blocks(x: torch.Tensor, out: torch.Tensor, heads: int, scaled: torch.Tensor | None = None,
               factor: torch.Tensor | None = None, pre: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`_gather` of ``x`` (times ``pre`` per token if given) into ``out`` for ``heads`` heads (and
    ``scaled = out * factor`` if given); returns ``out``."""
    has = scaled is not None
    out_np = _np(out)
    # an absent factor: a stand-in of the factors' type, so that both cases share one compiled variant
    _launch(_gather, _np(x), out_np, heads, _np(scaled) if has else out_np,
            _np(factor) if has else stand_in("f2", out_np.dtype), has,
            _np(pre) if pre is not None else stand_in("f3", out_np.dtype), pre is not None)
    return out


def _from_blocks(a: torch.Tensor, out: torch.Tensor, heads: int, factor: torch.Tensor | None = None,
                 c: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`_scatter`: ``out`` = the sum over each group's heads of ``a * factor``, plus ``c`` (each term if
    given), in ``out``'s layout; returns ``out``."""
    _launch(_scatter, _np(a), heads, _np(factor) if factor is not None else stand_in("f2", _np(a).dtype),
            factor is not None, _np(c if c is not None else a), c is not None, _np(out))
    return out


def _group_blocks(xc: torch.Tensor, B: int, H: int, G: int) -> torch.Tensor:
    """The blocks of the first head of every group, ``(B G n, C, D)`` from head blocks ``xc (B H n, C, D)``
    (the heads of a group hold the same copy of its q or k); a view when ``B G = 1``, else a copy."""
    M, C, D = xc.shape
    return xc.view(B * G, H // G, M // (B * H), C, D)[:, 0].reshape(-1, C, D)


def _masked_scores(qc: torch.Tensor, kc: torch.Tensor, p: torch.Tensor, b: torch.Tensor, B: int, H: int, G: int,
                   n: int, scale: float) -> None:
    """``P = (Q K^T) * scale M`` into ``p``; ``Q K^T`` once per group, masked with each head's decays."""
    if G == H:
        raw = torch.bmm(qc, kc.transpose(1, 2), out=p)
    else:
        raw = torch.bmm(_group_blocks(qc, B, H, G), _group_blocks(kc, B, H, G).transpose(1, 2))
    _launch(_mask_scores, _np(raw), _np(p), _np(b), n, H, G, _scalar(scale, p), _scalar(FLOOR, p))


# -- forward and backward -----------------------------------------------------------------------------


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None,
            scale: float, chunk_size: int, v_scale: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Same contract as :func:`neurostep.kernels.decayed_linear_attention.reference.forward`; ``saved`` holds
    the chunked copies of q, k and v (``v_scale * v`` where ``v_scale`` is given, scaled in the copy), the
    masked scores and the entering state of every chunk."""
    B, L, G, K = q.shape
    H, V = v.shape[-2:]
    chunk, n = _chunk_count(L, chunk_size)
    saved = tuple(empty(shape, q.dtype) for shape in saved_shapes(q.shape, v.shape, chunk_size))
    qc, kc, vc, p, states = saved
    b, eb, ebl, decay = _decays(g, n, chunk, scale)
    vd = empty_like(vc)                                                  # V * exp(b_C - b)
    _to_blocks(q, qc, H)
    _to_blocks(k, kc, H)
    _to_blocks(v, vc, H, vd, ebl, v_scale)
    _masked_scores(qc, kc, p, b, B, H, G, n, scale)                      # P = (Q K^T) * scale M
    torch.bmm(kc.transpose(1, 2), vd, out=states)                        # each chunk's own contribution
    final = q.new_empty(B, H, K, V)
    _launch(_state_pass, _np(states.view(B * H, n, K * V)), _np(decay),
            _np(h0.view(B * H, K * V) if h0 is not None else final.view(B * H, K * V)), h0 is not None,
            _np(final.view(B * H, K * V)))
    # o = scale exp(b) (Q S) + P V, combined while written into o's layout (vd's buffer reused)
    o = _from_blocks(torch.bmm(qc, states, out=vd), empty((B, L, H, V), v.dtype), H, eb, _bmm(p, vc))
    return o, final, saved


def backward(grad_o: torch.Tensor, grad_final: torch.Tensor | None, q: torch.Tensor,
             k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None,
             final_state: torch.Tensor, saved: tuple[torch.Tensor, ...], scale: float,
             chunk_size: int, v_scale: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...]:
    """Same contract as :func:`neurostep.kernels.decayed_linear_attention.reference.backward`; q and k come
    without elements, for their shapes only (their chunked copies are in ``saved``, with the masked scores
    and the entering states), and v too unless ``v_scale``'s gradient is wanted: its gradient and v's are then
    formed from the scaled values' gradient in the pass that writes it into v's layout."""
    B, L, H = g.shape
    G = q.shape[2]
    K, V = final_state.shape[-2:]
    BH = B * H
    chunk, n = _chunk_count(L, chunk_size)
    qc, kc, vc, p, states = saved
    b, eb, ebl, decay = _decays(g, n, chunk, scale)
    doc, dod = empty_like(vc), empty_like(vc)                             # dO and dO * scale exp(b)
    _to_blocks(grad_o, doc, H, dod, eb)
    # gradients of the states leaving each chunk: each chunk's own contribution, then the recurrence
    dstates = _bmm(qc.transpose(1, 2), dod)
    through = g.new_empty(BH, n)
    dh0 = g.new_empty(B, H, K, V)
    _launch(_dstate_pass, _np(dstates.view(BH, n, K * V)), _np(decay),
            _np(grad_final.view(BH, K * V) if grad_final is not None else dh0.view(BH, K * V)),
            grad_final is not None, _np(states.view(BH, n, K * V)), _np(through), _np(dh0.view(BH, K * V)))
    dqc = _bmm(dod, states.transpose(1, 2))                              # the inter-chunk part first
    # dV = exp(b_C - b) (K dS) + P^T dO, combined while written into dv's layout (dod's buffer reused)
    du_own, du_scores = torch.bmm(kc, dstates, out=dod), _bmm(p.transpose(1, 2), doc)
    dv, dv_scale = empty((B, L, H, V), g.dtype), None
    if v_scale is not None and v.shape[-1]:   # v_scale's gradient wanted (v came whole): both in one pass
        dv_scale = g.new_empty(B, L, H)
        _launch(_scatter_scaled, _np(du_own), _np(ebl), _np(du_scores), _np(v), _np(v_scale), _np(dv),
                _np(dv_scale))
    else:
        _from_blocks(du_own, dv, H, ebl, du_scores)
        if v_scale is not None:
            dv.mul_(v_scale[..., None])
    del du_own, du_scores
    del dod
    dp = _bmm(doc, vc.transpose(1, 2))
    del doc
    dkc = _bmm(vc, dstates.transpose(1, 2))                              # the chunk-state part first
    del dstates
    r_q, r_k = g.new_empty(BH * n, chunk), g.new_empty(BH * n, chunk)
    _launch(_row_dots, _np(qc), _np(dqc), _np(kc), _np(dkc), _np(ebl), _np(r_q), _np(r_k))
    # dp becomes dP = (dO V^T) * scale M; term the log-decay gradient of every token (module docstring)
    term = g.new_empty(BH * n, chunk)
    _launch(_dg_scores, _np(p), _np(dp), _np(b), _scalar(scale, g), _scalar(FLOOR, g), _np(r_q), _np(r_k),
            _np(through.view(-1)), _np(term))
    if G == H:
        dq = _from_blocks(dqc.baddbmm_(dp, kc), empty((B, L, G, K), g.dtype), H)
        dk = _from_blocks(dkc.baddbmm_(dp.transpose(1, 2), qc), empty((B, L, G, K), g.dtype), H)
    else:   # q and k are shared by the heads of a group: dP summed over them, then one product per group
        dpg = dp.view(B * G, H // G, n, chunk, chunk).sum(1).view(-1, chunk, chunk)
        dq = _from_blocks(dqc, empty((B, L, G, K), g.dtype), H, c=torch.bmm(dpg, _group_blocks(kc, B, H, G)))
        dk = _from_blocks(dkc, empty((B, L, G, K), g.dtype), H,
                          c=torch.bmm(dpg.transpose(1, 2), _group_blocks(qc, B, H, G)))
    dg = term.view(B, H, n * chunk)[:, :, :L].transpose(1, 2).contiguous()
    return dq, dk, dv, dg, (dh0 if h0 is not None else None), dv_scale
