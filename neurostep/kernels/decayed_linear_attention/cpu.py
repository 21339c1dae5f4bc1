"""Decayed linear attention on CPU: the chunked form on torch's batched matrix products.

The sequence is cut into chunks of ``C`` tokens. Inside a chunk, with ``b_i`` the cumulative sum of the
log-decays from the chunk's start (``b_i = g_0 + ... + g_i``), ``S`` the state entering the chunk and
``b_C`` the last ``b`` of the chunk::

    o_i     = scale * (exp(b_i) q_i S + sum_{j <= i} exp(b_i - b_j) (q_i . k_j) v_j)
    S_next  = exp(b_C) S + sum_j k_j^T exp(b_C - b_j) v_j

so the output is one intra-chunk product ``((Q K^T) * M) V`` with the decay mask
``M_ij = exp(b_i - b_j)`` for ``i >= j`` (0 above the diagonal), plus the inter-chunk term
``exp(b) * (Q S)``; the states entering the chunks follow from a short recurrence over the chunks
(Dao and Gu 2024, section 6; Qin et al. 2024, Lightning Attention-2, algorithm 1). Every exponent is
``<= 0``: ``b_i - b_j`` is formed before the exp, never as ``exp(b_i) / exp(b_j)``, so large decays
(Mamba-2's ``dt * A``) underflow to 0 instead of overflowing.

The backward recomputes the chunk states (one more state pass) and saves nothing per step or per
chunk; it reads the forward's chunked copies of q, k and v (the ``saved`` tensor), which autograd then
holds instead of q, k and v. With ``dO`` the output gradient, ``dS`` the gradient of the state leaving a
chunk and the scale folded into ``M`` and ``exp(b)``::

    P  = (Q K^T) * M,   dP = (dO V^T) * M
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

Layout: q, k, v (and the output gradient) are copied once into a chunk-major ``(n, B, H, C, D)`` block
layout (zero-padded to ``n`` full chunks), so that every product is one ``bmm`` over all chunks of all
heads, and the chunk states live in one ``(n + 1, B * H, K, V)`` buffer: slot ``j`` is the state entering
chunk ``j``, slot ``n`` the final state. Each chunk's contribution is written into slot ``j + 1`` by one
``bmm`` and the recurrence over the chunks is one in-place ``addcmul_`` per chunk; the backward's state
gradients use the same buffer scheme in reverse.

Exponents are clamped at ``-60`` before the exp (``exp(-60) = 9e-27``, far below the resolution of any
output, whose diagonal term has weight exactly 1): torch's vectorised exp and the products that follow
run 25-35 times slower on ``-inf`` and on results in the denormal range.
"""

from __future__ import annotations

import torch

CHUNK_SIZE = 64
"""Tokens per chunk. ``benchmarks/decayed_linear_attention.py`` on the development machine (2-core Xeon,
AVX-512, 2 torch threads, 2026-12-02, load average 0.7 to 1.5) measured forward+backward at B=1, H=24,
K=128, V=64, L=2048, fp32 in 202 ms (372 ms of CPU time) with chunks of 64, 216 ms (400) with 32 and
240 ms (444) with 128: smaller chunks do fewer multiply-adds in the masked products (``C (K + V)`` per
token) but run them as smaller matrix products at a lower rate, and write more chunk states."""
FLOOR = -60.0
"""Exponents are clamped here before the exp (see the module docstring)."""


def _chunk_count(length: int, chunk_size: int) -> tuple[int, int]:
    chunk = max(1, min(chunk_size, length))
    return chunk, -(-length // chunk)


def saved_numel(q_shape: tuple[int, ...], v_shape: tuple[int, ...], chunk_size: int) -> int:
    """Elements of the forward's ``saved`` tensor: the chunked copies of q, k and v."""
    B, L, H, K = q_shape
    chunk, n = _chunk_count(L, chunk_size)
    return n * B * H * chunk * (2 * K + v_shape[-1])


def _saved_blocks(saved: torch.Tensor, B: int, L: int, H: int, K: int, V: int, chunk_size: int):
    """The chunked q, k, v blocks laid out in ``saved`` (views)."""
    chunk, n = _chunk_count(L, chunk_size)
    rows = n * B * H
    qk = rows * chunk * K
    return (saved[:qk].view(rows, chunk, K), saved[qk:2 * qk].view(rows, chunk, K),
            saved[2 * qk:].view(rows, chunk, V))


def _chunks(x: torch.Tensor, n: int, chunk: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, L, *H, D)`` -> chunk-major blocks ``(n * B * H, chunk, D)``, zero-padded to ``n * chunk`` tokens
    (``x`` may also be the log-decays ``(B, L, H)``, giving ``(n * B * H, chunk)``), into ``out`` if given."""
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(-1)
    B, L, H, D = x.shape
    out = x.new_empty(n, B, H, chunk, D) if out is None else out.view(n, B, H, chunk, D)
    full = L // chunk
    if full:
        out[:full].copy_(x[:, :full * chunk].view(B, full, chunk, H, D).permute(1, 0, 3, 2, 4))
    if full < n:
        rest = L - full * chunk
        out[full, :, :, :rest].copy_(x[:, full * chunk:].permute(0, 2, 1, 3))
        out[full, :, :, rest:].zero_()
    out = out.view(n * B * H, chunk, D)
    return out.squeeze(-1) if squeeze else out


def _unchunk(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_chunks`: blocks ``(n * B * H, chunk, D)`` copied into ``out (B, L, H, D)``."""
    B, L, H, D = out.shape
    chunk = x.shape[1]
    xv = x.view(-1, B, H, chunk, D)
    full = L // chunk
    if full:
        out[:, :full * chunk].view(B, full, chunk, H, D).copy_(xv[:full].permute(1, 0, 3, 2, 4))
    if full < xv.shape[0]:
        rest = L - full * chunk
        out[:, full * chunk:].copy_(xv[full, :, :, :rest].permute(0, 2, 1, 3))
    return out


def _exp(x: torch.Tensor) -> torch.Tensor:
    """``exp`` of an exponent ``<= 0``, clamped at :data:`FLOOR` (in place on ``x``)."""
    return x.clamp_(min=FLOOR).exp_()


def _decays(g: torch.Tensor, n: int, chunk: int, scale: float):
    """Per chunk, from the cumulative log-decays ``b``: ``scale * exp(b)`` and ``exp(b_C - b)``, each
    ``(rows, chunk, 1)``; ``exp(b_C)`` as ``(n, B * H, 1, 1)``; and ``scale * M`` ``(rows, chunk, chunk)``,
    the decay mask ``exp(b_i - b_j)`` below and on the diagonal, 0 above. Padding tokens have ``g = 0``
    (no decay), so the state passes through them unchanged."""
    b = _chunks(g, n, chunk).cumsum_(-1)
    b_last = b[:, -1:]
    eb = _exp(b.clone())
    if scale != 1.0:
        eb.mul_(scale)
    ebl = _exp(b_last - b)
    lower = torch.ones(chunk, chunk, dtype=b.dtype, device=b.device).tril_().mul_(scale)
    # above the diagonal b_i - b_j >= 0: clamped to 0 (no overflow), then zeroed by the mask
    mask = (b.unsqueeze(-1) - b.unsqueeze(-2)).clamp_(FLOOR, 0.0).exp_().mul_(lower)
    decay = _exp(b_last.clone()).view(n, -1, 1, 1)
    return eb.unsqueeze(-1), ebl.unsqueeze(-1), decay, mask


def _states(kc: torch.Tensor, vd: torch.Tensor, decay: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """``(n + 1, B * H, K, V)``: slot ``j`` the state entering chunk ``j``, slot ``n`` the final state.
    ``vd = V * exp(b_C - b)``: chunk ``j`` adds ``K^T vd`` to its decayed entering state."""
    n, BH = decay.shape[:2]
    K, V = kc.shape[-1], vd.shape[-1]
    buf = kc.new_empty(n + 1, BH, K, V)
    if h0 is None:
        buf[0].zero_()
    else:
        buf[0].copy_(h0.reshape(BH, K, V))
    torch.bmm(kc.transpose(1, 2), vd, out=buf[1:].view(n * BH, K, V))   # each chunk's own contribution
    for j in range(n):
        buf[j + 1].addcmul_(decay[j], buf[j])
    return buf


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None,
            scale: float, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as :func:`neurostep.kernels.decayed_linear_attention.reference.forward`; ``saved`` holds
    the chunked copies of q, k and v."""
    B, L, H, K = q.shape
    V = v.shape[-1]
    chunk, n = _chunk_count(L, chunk_size)
    saved = q.new_empty(saved_numel(q.shape, v.shape, chunk_size))
    qc, kc, vc = (_chunks(x, n, chunk, out) for x, out in zip((q, k, v), _saved_blocks(saved, B, L, H, K, V,
                                                                                        chunk_size)))
    eb, ebl, decay, mask = _decays(g, n, chunk, scale)
    buf = _states(kc, vc * ebl, decay, h0)
    o = torch.bmm(qc, buf[:n].view(n * B * H, K, V)).mul_(eb)          # scale * exp(b) * (Q S)
    o.baddbmm_(torch.bmm(qc, kc.transpose(1, 2)).mul_(mask), vc)        # + ((Q K^T) * scale M) V
    return _unchunk(o, v.new_empty(B, L, H, V)), buf[n].view(B, H, K, V).clone(), saved


def backward(grad_o: torch.Tensor, grad_final: torch.Tensor | None, q: torch.Tensor | None,
             k: torch.Tensor | None, v: torch.Tensor | None, g: torch.Tensor, h0: torch.Tensor | None,
             final_state: torch.Tensor, saved: torch.Tensor, scale: float,
             chunk_size: int) -> tuple[torch.Tensor | None, ...]:
    """Same contract as :func:`neurostep.kernels.decayed_linear_attention.reference.backward`; q, k and v
    may be None (their chunked copies are in ``saved``)."""
    B, L, H = g.shape
    K, V = final_state.shape[-2:]
    BH = B * H
    chunk, n = _chunk_count(L, chunk_size)
    if saved.numel():
        qc, kc, vc = _saved_blocks(saved, B, L, H, K, V, chunk_size)
    else:
        qc, kc, vc = (_chunks(x, n, chunk) for x in (q, k, v))
    do = _chunks(grad_o, n, chunk)
    eb, ebl, decay, mask = _decays(g, n, chunk, scale)
    vd = vc * ebl
    states = _states(kc, vd, decay, h0)[:n].view(n * BH, K, V)           # entering each chunk (recomputed)
    dod = do * eb
    # gradients of the states: slot j + 1 that of the state leaving chunk j, slot 0 that of h0
    dbuf = g.new_empty(n + 1, BH, K, V)
    if grad_final is None:
        dbuf[n].zero_()
    else:
        dbuf[n].copy_(grad_final.reshape(BH, K, V))
    torch.bmm(qc.transpose(1, 2), dod, out=dbuf[:n].view(n * BH, K, V))
    for j in range(n - 1, -1, -1):
        dbuf[j].addcmul_(decay[j], dbuf[j + 1])
    dstates = dbuf[1:].view(n * BH, K, V)

    p = torch.bmm(qc, kc.transpose(1, 2)).mul_(mask)                     # P = (Q K^T) * scale M
    dv = torch.bmm(kc, dstates).mul_(ebl).baddbmm_(p.transpose(1, 2), do)
    dp = torch.bmm(do, vc.transpose(1, 2))
    w = p.mul_(dp)                     # W_ij = M_ij dL/dM_ij: what the pair (i, j) puts on every g between them
    del p
    dp.mul_(mask)                                                        # dP = (dO V^T) * scale M
    dq = torch.bmm(dod, states.transpose(1, 2))                          # the inter-chunk part first
    r_q = torch.einsum("mck,mck->mc", qc, dq)
    dq.baddbmm_(dp, kc)
    dk = torch.bmm(vd, dstates.transpose(1, 2))                          # the chunk-state part first
    r_k = torch.einsum("mck,mck->mc", kc, dk)
    dk.baddbmm_(dp.transpose(1, 2), qc)
    del dp, dod, vd

    # dg_t: every product exp(B_i - B_j) with j < t <= i contributes its gradient to g_t. Summing only such
    # straddling pairs (and never a difference of large sums such as q . dq - k . dk over the sequence)
    # keeps float32 rounding at the level of the other gradients. Per chunk, for t in it:
    #   pairs inside the chunk:          sum_{i >= t} sum_{j < t} W_ij
    #   i in the chunk, j before it:     sum_{i >= t} q_i . dq_inter_i
    #   j in the chunk, i after it:      sum_{j < t} k_j . dk_state_j
    #   j before the chunk, i after it:  exp(b_C) <S_entering, dS_leaving>
    # pairs inside: the prefix sum over j up to column t - 1, kept on rows i >= t, summed over the rows
    term = torch.zeros_like(r_q)
    term[:, 1:] = w.cumsum_(-1).tril_(-1).sum(1)[:, :-1]
    del w
    term += r_q.flip(-1).cumsum_(-1).flip(-1)
    term += r_k.cumsum(-1).sub_(r_k)
    through = torch.linalg.vecdot(states.view(n * BH, -1), dstates.view(n * BH, -1))
    term += (through * decay.reshape(-1))[:, None]
    dg = term.view(n, BH, chunk).permute(1, 0, 2).reshape(BH, n * chunk)[:, :L]
    dg = dg.view(B, H, L).permute(0, 2, 1).contiguous()
    dh0 = dbuf[0].view(B, H, K, V).clone() if h0 is not None else None
    return (_unchunk(dq, g.new_empty(B, L, H, K)), _unchunk(dk, g.new_empty(B, L, H, K)),
            _unchunk(dv, g.new_empty(B, L, H, V)), dg, dh0)
