"""Selective scan on CPU with numba: fused forward and backward.

Layout (why it is fast): the kernels work on blocks of ``W = 16`` consecutive channels ``d`` of one
batch row. Inside a block the ``W`` channels are the vector lanes: for every time step and every
state index ``n`` the update ``x[n, j] = exp(dt[j] A[n, j]) x[n, j] + dt[j] u[j] B[n, j]`` runs over
``j`` in vector registers with the vectorizable ``vexp``, and the output ``y[j] = sum_n x[n, j] C[n, j]``
accumulates vertically, so no horizontal reduction sits on the critical path (N may be 1, as in
LaMamba). The lane values of a span of ``SPAN`` chunks (delta, u, z, grad) are gathered once into
block-local arrays, channel by channel from channels-first ``(batch, dim, L)`` tensors or step by step
from channels-last ``(batch, L, dim)`` ones (the ``channels_last`` argument; the arithmetic after the
gather is the same, so are the results), so the N loop touches only block-local memory; the loops
over (step, n, lane) are functions of their own, one call per chunk (see the note above
:func:`_forward_chunk`). When every block's channels share one B/C group (one group, or groups of a
multiple of W channels), B[n] and C[n] enter the lane loops as scalars; the other layouts read them
per lane. The two are separate compilations, chosen by the type of the ``mixed`` argument
(:func:`_forward_chunk_of`). Channels are padded to a multiple of W only when needed.

Memory: the forward never stores per-step states. It saves only the state entering every chunk of
``CHUNK`` steps (``(batch, ceil(L / CHUNK), N, dim)``). The backward walks the chunks in reverse,
recomputes a chunk's states and decays from its checkpoint into a thread-local buffer
(``CHUNK x N x W``, L2-resident), then runs the adjoint recurrence over it. The bias, softplus, the
SiLU gate and their derivatives are applied per span inside the kernels (:func:`_prepare_chunk`).

B and C are read from their canonical ``(Bb, G, N, Lb)`` layout transposed to ``(Bb, G, Lb, N)``;
channel ``d`` reads group ``d // (dim // G)``. Their gradients are reduced over the channels of a
group into one buffer per range of blocks (``slot``), summed afterwards in slot order: no races.

Threads: each kernel is a serial function over a range of work items (``lo <= item < hi``; blocks of
one batch row in the forward, blocks over every batch row in the backward), compiled on its own and
called through its address from a small ``prange`` launcher over the ranges
(:func:`neurostep.kernels.numba_launch.launch_ranges`). With the ``prange`` over the items in the
kernel itself, numba compiled the body twice over and the first forward and backward took 13 s and
25 s from a cold cache; as serial functions they take about 5 s and 8 s (2-core AMD EPYC,
2026-12-04), and they run on the same OpenMP threads as before. Each range allocates its block
buffers once.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import types
from numba.extending import overload

from neurostep.kernels.numba_exp import vexp, vlog1p_unit
from neurostep.kernels.numba_launch import NoAliasCompiler, launch_ranges, range_slots, run_time, serialized, stand_in
from neurostep.kernels.numba_launch import as_array as _np
from neurostep.kernels.numba_sum import TREE_LANES, tree_sum16
from neurostep.kernels.selective_scan.reference import SOFTPLUS_THRESHOLD
from neurostep.memory import empty, empty_like

CHUNK = 32
W = TREE_LANES  # channels per block (16): two AVX2 or one AVX-512 float32 register
SPAN = 8
"""Chunks whose lane values the kernels gather (and store) at once: 256 steps, 1 KB of each channel's
row read in one go. With one chunk at a time, the 128 bytes read from each of the block's rows, 4 KB or
more apart, came from memory with no prefetch and the gathers took a third of the forward (2-core AMD
EPYC, 2026-12-04, B = 1, D = 1536, L = 1024, one thread, sampled with ``perf``)."""


def saved_shape(batch: int, dim: int, length: int, d_state: int) -> tuple[int, ...]:
    """Checkpointed states ``(batch, ceil(L / CHUNK), N, dim padded to W)``."""
    return (batch, -(-length // CHUNK), d_state, -(-dim // W) * W)


def group_of(d: int, group_size: int, groups: int) -> int:
    """The B/C group that channel ``d`` reads; padded channels read the last group (their inputs are 0).
    Plain Python, so that :func:`every_block_in_one_group` asks the same rule the kernels use."""
    g = d // group_size
    return g if g < groups else groups - 1


_group = numba.njit(inline="always")(group_of)


@functools.lru_cache(maxsize=64)
def every_block_in_one_group(dim: int, groups_b: int, groups_c: int) -> bool:
    """Whether each block of ``W`` channels (padded ones included) reads a single B group and a single
    C group: then B[n] and C[n] are one value per step for the whole block, and the kernels compile
    only that path (the ``mixed`` argument is None). True for one group, and for groups of a multiple
    of W channels. Cached: every kernel call asks, with the few layouts a model has."""
    dpad = -(-dim // W) * W
    gs_b, gs_c = dim // groups_b, dim // groups_c
    return all(group_of(d0, gs_b, groups_b) == group_of(d0 + W - 1, gs_b, groups_b)
               and group_of(d0, gs_c, groups_c) == group_of(d0 + W - 1, gs_c, groups_c) for d0 in range(0, dpad, W))


@numba.njit(error_model="numpy")
def _fill(buf, M, bi, d0, lt, group_size):
    """buf[n, j] = M[bi, group(d0 + j), lt, n] for the W channels of a block.

    A function of its own (see the note above :func:`_reduce_chunk`): the per-lane layouts call it four
    times in each kernel, and inlined it made their first backward call 11-12 s instead of 9 s from a
    cold cache, for the same run time (2-core AMD EPYC, 2026-12-04)."""
    groups = M.shape[1]
    g0 = _group(d0, group_size, groups)
    if g0 == _group(d0 + W - 1, group_size, groups):
        for n in range(M.shape[3]):
            v = M[bi, g0, lt, n]
            for j in range(W):
                buf[n, j] = v
    else:
        for j in range(W):
            g = _group(d0 + j, group_size, groups)
            for n in range(M.shape[3]):
                buf[n, j] = M[bi, g, lt, n]


@numba.njit(inline="always")
def _scatter(dst, src, slot, bi, d0, lt, group_size):
    """dst[slot, bi, group(d0 + j), lt, n] += src[n, j], summed over the block's channels.

    A block inside one group (the common case) sums its W lanes by a fixed pairwise tree
    (:func:`~neurostep.kernels.numba_sum.tree_sum16`): vector adds instead of a serial chain, and a
    deterministic order."""
    groups = dst.shape[2]
    g0 = _group(d0, group_size, groups)
    if g0 == _group(d0 + W - 1, group_size, groups):
        for n in range(src.shape[0]):
            dst[slot, bi, g0, lt, n] += tree_sum16(src[n])
    else:
        for j in range(W):
            g = _group(d0 + j, group_size, groups)
            for n in range(src.shape[0]):
                dst[slot, bi, g, lt, n] += src[n, j]


# The per-chunk helpers (_reduce_chunk, _scatter_once, _gather_rows, _store_rows, _prepare_chunk) are
# compiled as functions of their own, not inlined into the kernels as numba IR: numba then types and
# lowers a smaller kernel body (LLVM still inlines them). When the kernels were prange loops this halved
# the backward's first call from a cold cache (21 s against 38-45 s, 2-core AMD EPYC, 2026-12-03). They,
# like the kernels, use error_model="numpy": under Python's error model every division checks for zero
# and the loops stay scalar.
@numba.njit(error_model="numpy")
def _reduce_chunk(dst, src, acc, vary, slot, bi, d0, start, nk, group_size):
    """A chunk's B or C gradient terms ``src (nk, N, W)``: with ``vary`` (B or C varies over time) step
    ``k`` into ``dst[slot, bi, group, start + k]`` (:func:`_scatter`), else summed into ``acc (N, W)``,
    scattered once per batch row (:func:`_scatter_once`)."""
    for k in range(nk):
        if vary:
            _scatter(dst, src[k], slot, bi, d0, start + k, group_size)
        else:
            for n in range(src.shape[1]):
                for j in range(src.shape[2]):
                    acc[n, j] += src[k, n, j]


@numba.njit(error_model="numpy")
def _scatter_once(dst, src, slot, bi, d0, lt, group_size):
    """:func:`_scatter` as a function of its own (see the note above :func:`_reduce_chunk`)."""
    _scatter(dst, src, slot, bi, d0, lt, group_size)


@numba.njit(error_model="numpy")
def _gather_rows(dst, src, b, d0, start, nk, w, channels_last):
    """dst[k, j] = src[b, d0 + j, start + k] for a chunk of ``nk`` steps and ``w`` lanes; with
    ``channels_last`` (``src (batch, L, dim)``) dst[k, j] = src[b, start + k, d0 + j], a row copy per step.

    Channels-first, channel by channel, so each channel's ``nk`` contiguous values are read in one go:
    with L = 1024 the rows of a ``(batch, dim, L)`` fp32 tensor are exactly 4 KB apart, all W of them
    map to the same L1 sets, and a step-by-step gather across them evicts its own lines (4K
    aliasing; measured 10 ms of a 70 ms backward)."""
    if channels_last:
        for k in range(nk):
            row = src[b, start + k, d0:d0 + w]
            for j in range(w):
                dst[k, j] = row[j]
        return
    for j in range(w):
        # a slice indexed from 0: an index like start + k could be negative to numba's eyes, and
        # the wraparound select it then emits keeps the loop scalar
        row = src[b, d0 + j, start:start + nk]
        for k in range(nk):
            dst[k, j] = row[k]


@numba.njit(error_model="numpy")
def _store_rows(dst, src, b, d0, start, nk, w, channels_last):
    """dst[b, d0 + j, start + k] = src[k, j] (channels-last: dst[b, start + k, d0 + j]); see
    :func:`_gather_rows`."""
    if channels_last:
        for k in range(nk):
            row = dst[b, start + k, d0:d0 + w]
            for j in range(w):
                row[j] = src[k, j]
        return
    for j in range(w):
        row = dst[b, d0 + j, start:start + nk]
        for k in range(nk):
            row[k] = src[k, j]


@numba.njit(inline="always")
def _sigmoid(x, one):
    """sigmoid(x) from u = exp(-|x|) <= 1: no overflow for any finite x."""
    u = vexp(-abs(x))
    r = one / (one + u)
    return r if x >= one - one else u * r


@numba.njit(inline="always")
def _softplus(x, one, threshold):
    """torch's softplus (beta 1): x above the threshold, else max(x, 0) + log1p(exp(-|x|))."""
    sp = max(x, one - one) + vlog1p_unit(vexp(-abs(x)))
    return x if x > threshold else sp


@numba.njit(error_model="numpy")
def _prepare_chunk(dts, spd, gts, gzd, biasv, d0, nk, w, softplus, has_z, need_grads, one, threshold):
    """In place on a chunk of raw lanes: ``dts`` delta -> dt = softplus(delta + bias) (or
    delta + bias), ``gts`` z -> silu(z); with ``need_grads`` also d dt / d delta into ``spd`` and
    d silu / d z into ``gzd``. Elementwise, so these loops vectorize over (k, lane): the flags are
    tested outside them (this function is compiled on its own, not inlined, where they are not
    constants)."""
    bl = biasv[d0:d0 + w]
    if softplus and need_grads:
        for k in range(nk):
            for j in range(w):
                pre = dts[k, j] + bl[j]
                dts[k, j] = _softplus(pre, one, threshold)
                spd[k, j] = one if pre > threshold else _sigmoid(pre, one)
    elif softplus:
        for k in range(nk):
            for j in range(w):
                dts[k, j] = _softplus(dts[k, j] + bl[j], one, threshold)
    else:
        for k in range(nk):
            for j in range(w):
                dts[k, j] = dts[k, j] + bl[j]
    if has_z and need_grads:
        for k in range(nk):
            for j in range(w):
                zz = gts[k, j]
                sz = _sigmoid(zz, one)
                gts[k, j] = zz * sz
                gzd[k, j] = sz * (one + zz * (one - sz))
    elif has_z:
        for k in range(nk):
            for j in range(w):
                zz = gts[k, j]
                gts[k, j] = zz * _sigmoid(zz, one)


# The loops over (step, n, lane) live in functions of their own, one call per chunk, whose block arrays
# arrive as arguments compiled as not overlapping (:class:`NoAliasCompiler`), with a lane count W known at
# compile time, and multiply-adds contracted to FMAs (``fastmath={"contract"}``; results move by about
# one ulp). Inside the kernels the same loops work on the kernel's own buffers, which LLVM cannot tell
# apart: it vectorizes them behind run-time overlap checks, paid for every (step, n). A forward state
# loop, one thread (2-core AMD EPYC, 2026-12-04): 0.76 ns per (step, n, lane) in the kernel, 0.52 as such
# a function, 0.39 with FMAs. One exception: with W known, LLVM fully unrolls the adjoint's lane loop
# and leaves it scalar, so :func:`_adjoint_chunk` reads W from its arguments (then the loop vectorizer
# takes it: 16-wide, no overlap checks). Called once per step instead of per chunk, the functions'
# argument passing (seven words per array) cost the backward about a fifth.
_step_jit = numba.njit(error_model="numpy", pipeline_class=NoAliasCompiler, fastmath={"contract"})


@_step_jit
def _forward_chunk(x, a, dts, uvs, k0, nk, dvl, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step, ys):
    """Rows ``k0 .. k0 + nk - 1`` of a span, B and C one value per state: step by step
    ``x[n, j] = exp(dt[j] a[n, j]) x[n, j] + dt[j] u[j] B[n]`` in place and
    ``ys[k, j] = D[j] u[j] + sum_n x[n, j] C[n]``, with ``dt = dts[k]``, ``u = uvs[k]`` and the B and C of
    row ``k0 + i`` at ``B[bi, gb, lb0 + i lb_step]``, ``C[ci, gc, lc0 + i lc_step]`` (a step of 0: constant
    over time)."""
    for i in range(nk):
        k = k0 + i
        lb = lb0 + i * lb_step
        lc = lc0 + i * lc_step
        for j in range(W):
            ys[k, j] = dvl[j] * uvs[k, j]
        for n in range(x.shape[0]):
            bv = B[bi, gb, lb, n]
            cv = C[ci, gc, lc, n]
            for j in range(W):
                xn = vexp(dts[k, j] * a[n, j]) * x[n, j] + dts[k, j] * uvs[k, j] * bv
                x[n, j] = xn
                ys[k, j] += xn * cv


@_step_jit
def _forward_chunk_lanes(x, a, dts, uvs, k0, nk, dvl, bks, cks, ys):
    """:func:`_forward_chunk` with B and C per lane, ``bks[i]``, ``cks[i]`` ``(N, W)`` for row ``k0 + i``."""
    for i in range(nk):
        k = k0 + i
        for j in range(W):
            ys[k, j] = dvl[j] * uvs[k, j]
        for n in range(x.shape[0]):
            for j in range(W):
                xn = vexp(dts[k, j] * a[n, j]) * x[n, j] + dts[k, j] * uvs[k, j] * bks[i, n, j]
                x[n, j] = xn
                ys[k, j] += xn * cks[i, n, j]


# The kernels pick the chunk functions for B and C shared by a block's lanes (``mixed`` is None) or per
# lane through the functions below, overloaded on the type of ``mixed``: numba then compiles only the pair
# a kernel variant calls. (A branch on ``mixed is None`` in the kernel is pruned when ``mixed`` is None,
# not when it is an array: the mixed variants compiled both sets, and their first backward call from a
# cold cache took 11.2 s instead of 8.7.) Called from Python they dispatch the same way.
def _forward_chunk_of(mixed, x, a, dts, uvs, k0, nk, dvl, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step, bks, cks,
                      ys):
    """:func:`_forward_chunk`, or :func:`_forward_chunk_lanes` when ``mixed`` is not None."""
    if mixed is None:
        _forward_chunk(x, a, dts, uvs, k0, nk, dvl, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step, ys)
    else:
        _forward_chunk_lanes(x, a, dts, uvs, k0, nk, dvl, bks, cks, ys)


@overload(_forward_chunk_of)
def _forward_chunk_of_typed(mixed, x, a, dts, uvs, k0, nk, dvl, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step, bks,
                            cks, ys):
    if isinstance(mixed, types.NoneType):
        def one_group(mixed, x, a, dts, uvs, k0, nk, dvl, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step, bks, cks,
                      ys):
            _forward_chunk(x, a, dts, uvs, k0, nk, dvl, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step, ys)
        return one_group

    def per_lane(mixed, x, a, dts, uvs, k0, nk, dvl, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step, bks, cks, ys):
        _forward_chunk_lanes(x, a, dts, uvs, k0, nk, dvl, bks, cks, ys)
    return per_lane


def _forward_kernel(lo, hi, slot, mixed, args):
    (u, delta, biasv, softplus, At, B, C, Dv, z, has_z, ckpt, gs_b, gs_c, chunk, one, threshold, w, cl, h0t, out,
     last, _, _, _, _, _, _, _, _, _, _, _) = args   # _: the backward's fields (see _ARGS)
    # ``w`` is W passed at run time, as in the backward (see there). ``mixed`` is None when every block
    # reads one B group and one C group (:func:`every_block_in_one_group`), else an empty array: numba
    # prunes the branches on ``mixed is None`` while typing, so each call compiles only its path
    # (first call from a cold cache, fp32, 2026-12-02, when the kernels were prange loops: 19 s for the
    # forward and 61 s for the backward, against 33 s and 114 s for both paths in one compilation).
    dpad, length = (u.shape[2], u.shape[1]) if cl else (u.shape[1], u.shape[2])
    n_state = At.shape[0]
    n_blocks = dpad // W
    n_chunks = ckpt.shape[1]
    b_time, c_time = B.shape[2] > 1, C.shape[2] > 1
    # per-thread buffers, allocated once per range of items
    ty = u.dtype
    x = np.empty((n_state, W), dtype=ty)
    bks = np.empty((chunk, n_state, W), dtype=ty)  # B and C of a chunk's steps, per lane (mixed layouts)
    cks = np.empty((chunk, n_state, W), dtype=ty)
    a = np.empty((n_state, W), dtype=ty)
    dts = np.empty((SPAN * chunk, W), dtype=ty)
    uvs = np.empty((SPAN * chunk, W), dtype=ty)
    gts = np.empty((SPAN * chunk, W), dtype=ty)
    ys = np.empty((SPAN * chunk, W), dtype=ty)
    for item in range(lo, hi):
        b = item // n_blocks
        d0 = (item - b * n_blocks) * W
        bi = b if B.shape[0] > 1 else 0
        ci = b if C.shape[0] > 1 else 0
        for n in range(n_state):
            for j in range(w):
                x[n, j] = h0t[b, n, d0 + j]
                a[n, j] = At[n, d0 + j]
        dvl = Dv[d0:d0 + w]
        gb = _group(d0, gs_b, B.shape[1])
        gc = _group(d0, gs_c, C.shape[1])
        if mixed is not None:
            for k in range(chunk):
                if not b_time:
                    _fill(bks[k], B, bi, d0, run_time(0), gs_b)
                if not c_time:
                    _fill(cks[k], C, ci, d0, run_time(0), gs_c)
        for s0 in range(0, n_chunks, SPAN):
            # the lane values of a span of chunks are gathered once, channel by channel, into
            # block-local arrays (softplus and the SiLU gate computed there), so the N loop below
            # touches only block-local memory
            start = s0 * chunk
            ns = min(SPAN * chunk, length - start)
            _gather_rows(dts, delta, b, d0, start, ns, w, cl)
            _gather_rows(uvs, u, b, d0, start, ns, w, cl)
            if has_z:
                _gather_rows(gts, z, b, d0, start, ns, w, cl)
            _prepare_chunk(dts, dts, gts, gts, biasv, d0, ns, w, softplus, has_z, run_time(False), one,
                           threshold)
            for k0 in range(0, ns, chunk):
                nk = min(chunk, ns - k0)
                for n in range(n_state):   # the state entering each chunk is its checkpoint
                    ck = ckpt[b, s0 + k0 // chunk, n, d0:d0 + w]
                    for j in range(w):
                        ck[j] = x[n, j]
                l0 = start + k0
                if mixed is not None:
                    for i in range(nk):
                        if b_time:
                            _fill(bks[i], B, bi, d0, l0 + i, gs_b)
                        if c_time:
                            _fill(cks[i], C, ci, d0, l0 + i, gs_c)
                # B[n] and C[n] the same for all lanes: scalars in the lane loop, which then reads only x and
                # a from memory (measured 2x faster than broadcast arrays); else per lane
                lb0, lb_step = (l0, 1) if b_time else (0, 0)
                lc0, lc_step = (l0, 1) if c_time else (0, 0)
                _forward_chunk_of(mixed, x, a, dts, uvs, k0, nk, dvl, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step,
                                  bks, cks, ys)
            if has_z:
                for k in range(ns):
                    for j in range(w):
                        ys[k, j] *= gts[k, j]
            _store_rows(out, ys, b, d0, start, ns, w, cl)
        for n in range(n_state):
            for j in range(w):
                last[b, n, d0 + j] = x[n, j]


@_step_jit
def _recompute_chunk(xs, dec, a, dts, uvs, k0, nk, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step, dvl, ys):
    """A chunk's decays ``dec[i] = exp(dt a)`` and states ``xs[i + 1]`` from its checkpoint ``xs[0]``, and the
    output before the gate ``ys[i] = D u + sum_n x C`` (the gate's gradient needs it), as the forward forms
    it; row ``i`` of the chunk is row ``k0 + i`` of the span's ``dts``, ``uvs``; B and C one value per state,
    as in :func:`_forward_chunk`."""
    for i in range(nk):
        k = k0 + i
        lb = lb0 + i * lb_step
        lc = lc0 + i * lc_step
        for j in range(W):
            ys[i, j] = dvl[j] * uvs[k, j]
        for n in range(xs.shape[1]):
            bv = B[bi, gb, lb, n]
            cv = C[ci, gc, lc, n]
            for j in range(W):
                e = vexp(dts[k, j] * a[n, j])
                dec[i, n, j] = e
                xn = e * xs[i, n, j] + dts[k, j] * uvs[k, j] * bv
                xs[i + 1, n, j] = xn
                ys[i, j] += xn * cv


@_step_jit
def _recompute_chunk_lanes(xs, dec, a, dts, uvs, k0, nk, bks, cks, dvl, ys):
    """:func:`_recompute_chunk` with B and C per lane (``bks``, ``cks`` ``(chunk, N, W)``)."""
    for i in range(nk):
        k = k0 + i
        for j in range(W):
            ys[i, j] = dvl[j] * uvs[k, j]
        for n in range(xs.shape[1]):
            for j in range(W):
                e = vexp(dts[k, j] * a[n, j])
                dec[i, n, j] = e
                xn = e * xs[i, n, j] + dts[k, j] * uvs[k, j] * bks[i, n, j]
                xs[i + 1, n, j] = xn
                ys[i, j] += xn * cks[i, n, j]


@_step_jit
def _adjoint_chunk(dx, dxs, dec, gs, k0, nk, C, ci, gc, lc0, lc_step):
    """The adjoint recurrence backwards through a chunk, C one value per state: ``dxs[i] = dx + g C`` (the
    gradient of the state after step i, output term included) and ``dx = dxs[i] dec[i]`` (of the state
    before it); ``dx`` enters with the gradient of the chunk's last state and leaves with its first's."""
    w = dx.shape[1]  # W, unknown to the compiler (see the note above _forward_chunk)
    for i in range(nk - 1, -1, -1):
        k = k0 + i
        lc = lc0 + i * lc_step
        for n in range(dx.shape[0]):
            cv = C[ci, gc, lc, n]
            for j in range(w):
                dxn = dx[n, j] + gs[k, j] * cv
                dxs[i, n, j] = dxn
                dx[n, j] = dxn * dec[i, n, j]


@_step_jit
def _adjoint_chunk_lanes(dx, dxs, dec, gs, k0, nk, cks):
    """:func:`_adjoint_chunk` with C per lane (``cks (chunk, N, W)``)."""
    w = dx.shape[1]  # W, unknown to the compiler (see the note above _forward_chunk)
    for i in range(nk - 1, -1, -1):
        k = k0 + i
        for n in range(dx.shape[0]):
            for j in range(w):
                dxn = dx[n, j] + gs[k, j] * cks[i, n, j]
                dxs[i, n, j] = dxn
                dx[n, j] = dxn * dec[i, n, j]


@_step_jit
def _grad_terms_chunk(dxs, xs, dec, a, dts, uvs, gs, k0, nk, B, bi, gb, lb0, lb_step, dA_acc, pa, sb, tbs, tcs):
    """The terms of a chunk's steps that need their state gradients, B one value per state, in one pass
    over (n, lane) per step: A's gradient into ``dA_acc``, ``pa[i] = sum_n pt A`` and ``sb[i] = sum_n dx B``
    (what the gradients of dt and u need; ``pt = dx x_prev decay``), and the B and C gradient terms
    ``tbs[i]``, ``tcs[i]`` per (n, lane), reduced over the lanes afterwards."""
    for i in range(nk):
        k = k0 + i
        lb = lb0 + i * lb_step
        for j in range(W):
            pa[i, j] = 0
            sb[i, j] = 0
        for n in range(dxs.shape[1]):
            bv = B[bi, gb, lb, n]
            for j in range(W):
                d = dxs[i, n, j]
                pt = d * xs[i, n, j] * dec[i, n, j]
                dA_acc[n, j] += pt * dts[k, j]
                pa[i, j] += pt * a[n, j]
                sb[i, j] += d * bv
                tbs[i, n, j] = d * (dts[k, j] * uvs[k, j])
                tcs[i, n, j] = gs[k, j] * xs[i + 1, n, j]


@_step_jit
def _grad_terms_chunk_lanes(dxs, xs, dec, a, dts, uvs, gs, k0, nk, bks, dA_acc, pa, sb, tbs, tcs):
    """:func:`_grad_terms_chunk` with B per lane (``bks (chunk, N, W)``)."""
    for i in range(nk):
        k = k0 + i
        for j in range(W):
            pa[i, j] = 0
            sb[i, j] = 0
        for n in range(dxs.shape[1]):
            for j in range(W):
                d = dxs[i, n, j]
                pt = d * xs[i, n, j] * dec[i, n, j]
                dA_acc[n, j] += pt * dts[k, j]
                pa[i, j] += pt * a[n, j]
                sb[i, j] += d * bks[i, n, j]
                tbs[i, n, j] = d * (dts[k, j] * uvs[k, j])
                tcs[i, n, j] = gs[k, j] * xs[i + 1, n, j]


@_step_jit
def _lane_sums_into(dst, slot, bi, g, l0, src, nk):
    """``dst[slot, bi, g, l0 + i, n] += sum_j src[i, n, j]`` for the ``nk`` steps of a chunk whose block
    reads one B (or C) group ``g``: :func:`_scatter`'s pairwise tree over the lanes, the same sums in the
    same order, as a chunk function (no per-step array view or group lookup). The tree as scalar loops
    was about a seventh of the backward (Mamba's main-job shape, N = 8, sampled with ``perf``); as vector
    adds (:func:`~neurostep.kernels.numba_sum.tree_sum16`) a chunk's sums take 2.6 times less."""
    for i in range(nk):
        for n in range(src.shape[1]):
            dst[slot, bi, g, l0 + i, n] += tree_sum16(src[i, n])


def _recompute_chunk_of(mixed, xs, dec, a, dts, uvs, k0, nk, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step, bks,
                        cks, dvl, ys):
    """:func:`_recompute_chunk`, or :func:`_recompute_chunk_lanes` when ``mixed`` is not None (see the note
    above :func:`_forward_chunk_of`)."""
    if mixed is None:
        _recompute_chunk(xs, dec, a, dts, uvs, k0, nk, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step, dvl, ys)
    else:
        _recompute_chunk_lanes(xs, dec, a, dts, uvs, k0, nk, bks, cks, dvl, ys)


@overload(_recompute_chunk_of)
def _recompute_chunk_of_typed(mixed, xs, dec, a, dts, uvs, k0, nk, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step,
                              bks, cks, dvl, ys):
    if isinstance(mixed, types.NoneType):
        def one_group(mixed, xs, dec, a, dts, uvs, k0, nk, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step, bks, cks,
                      dvl, ys):
            _recompute_chunk(xs, dec, a, dts, uvs, k0, nk, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step, dvl, ys)
        return one_group

    def per_lane(mixed, xs, dec, a, dts, uvs, k0, nk, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step, bks, cks, dvl,
                 ys):
        _recompute_chunk_lanes(xs, dec, a, dts, uvs, k0, nk, bks, cks, dvl, ys)
    return per_lane


def _adjoint_and_terms_of(mixed, dx, dxs, xs, dec, a, dts, uvs, gs, k0, nk, B, bi, gb, lb0, lb_step, C, ci, gc, lc0,
                          lc_step, bks, cks, dA_acc, pa, sb, tbs, tcs):
    """:func:`_adjoint_chunk` then :func:`_grad_terms_chunk`, or their per-lane versions when ``mixed`` is not
    None (see the note above :func:`_forward_chunk_of`)."""
    if mixed is None:
        _adjoint_chunk(dx, dxs, dec, gs, k0, nk, C, ci, gc, lc0, lc_step)
        _grad_terms_chunk(dxs, xs, dec, a, dts, uvs, gs, k0, nk, B, bi, gb, lb0, lb_step, dA_acc, pa, sb, tbs, tcs)
    else:
        _adjoint_chunk_lanes(dx, dxs, dec, gs, k0, nk, cks)
        _grad_terms_chunk_lanes(dxs, xs, dec, a, dts, uvs, gs, k0, nk, bks, dA_acc, pa, sb, tbs, tcs)


@overload(_adjoint_and_terms_of)
def _adjoint_and_terms_of_typed(mixed, dx, dxs, xs, dec, a, dts, uvs, gs, k0, nk, B, bi, gb, lb0, lb_step, C, ci, gc,
                                lc0, lc_step, bks, cks, dA_acc, pa, sb, tbs, tcs):
    if isinstance(mixed, types.NoneType):
        def one_group(mixed, dx, dxs, xs, dec, a, dts, uvs, gs, k0, nk, B, bi, gb, lb0, lb_step, C, ci, gc, lc0,
                      lc_step, bks, cks, dA_acc, pa, sb, tbs, tcs):
            _adjoint_chunk(dx, dxs, dec, gs, k0, nk, C, ci, gc, lc0, lc_step)
            _grad_terms_chunk(dxs, xs, dec, a, dts, uvs, gs, k0, nk, B, bi, gb, lb0, lb_step, dA_acc, pa, sb, tbs,
                              tcs)
        return one_group

    def per_lane(mixed, dx, dxs, xs, dec, a, dts, uvs, gs, k0, nk, B, bi, gb, lb0, lb_step, C, ci, gc, lc0, lc_step,
                 bks, cks, dA_acc, pa, sb, tbs, tcs):
        _adjoint_chunk_lanes(dx, dxs, dec, gs, k0, nk, cks)
        _grad_terms_chunk_lanes(dxs, xs, dec, a, dts, uvs, gs, k0, nk, bks, dA_acc, pa, sb, tbs, tcs)
    return per_lane


def _backward_kernel(lo, hi, slot, mixed, args):
    (u, delta, biasv, softplus, At, B, C, Dv, z, has_z, ckpt, gs_b, gs_c, chunk, one, threshold, w, cl, _, _, _,
     gout, glast, du_out, ddelta_out, dAt, dBbuf, dCbuf, dDv, dbias, dz_out, dh0t) = args   # _: the forward's (_ARGS)
    # ``w`` is W passed at run time: with a compile-time trip count of 16, LLVM fully unrolls the
    # cheap lane loops left here and leaves them scalar (the SLP pass cannot prove the block arrays
    # disjoint); with a run-time count the loop vectorizer handles them. The per-step loops over
    # (n, lane) are the chunk functions above. Per span of chunks (walked in reverse): gather and
    # prepare the lane values; per chunk (in reverse): recompute the states from the checkpoint, the
    # gate's gradient, the dx recurrence alone, then the terms that need dx; store the span's rows.
    batch = u.shape[0]
    length = u.shape[1] if cl else u.shape[2]
    n_state = At.shape[0]
    n_chunks = ckpt.shape[1]
    b_time, c_time = B.shape[2] > 1, C.shape[2] > 1
    # per-thread buffers, allocated once per range of items; (span, W): a span's rows, (chunk, ...): a chunk's
    ty = u.dtype
    xs = np.empty((chunk + 1, n_state, W), dtype=ty)
    dec = np.empty((chunk, n_state, W), dtype=ty)
    dxs = np.empty((chunk, n_state, W), dtype=ty)
    bks = np.empty((chunk, n_state, W), dtype=ty)
    cks = np.empty((chunk, n_state, W), dtype=ty)
    dx = np.empty((n_state, W), dtype=ty)
    a = np.empty((n_state, W), dtype=ty)
    tbs = np.empty((chunk, n_state, W), dtype=ty)
    tcs = np.empty((chunk, n_state, W), dtype=ty)
    pa = np.empty((chunk, W), dtype=ty)  # sum_n pt * A
    sb = np.empty((chunk, W), dtype=ty)  # sum_n dx * B
    ys = np.empty((chunk, W), dtype=ty)
    acc_b = np.empty((n_state, W), dtype=ty)
    acc_c = np.empty((n_state, W), dtype=ty)
    dA_acc = np.empty((n_state, W), dtype=ty)
    dD_acc = np.empty(W, dtype=ty)
    span = SPAN * chunk
    dts = np.empty((span, W), dtype=ty)
    uvs = np.empty((span, W), dtype=ty)
    gs = np.empty((span, W), dtype=ty)
    dus = np.empty((span, W), dtype=ty)
    ddts = np.empty((span, W), dtype=ty)
    gts = np.empty((span, W), dtype=ty)  # silu(z)
    spd = np.empty((span, W), dtype=ty)  # d softplus / d delta
    gzd = np.empty((span, W), dtype=ty)  # d silu / d z
    dzs = np.empty((span, W), dtype=ty)
    dbias_acc = np.empty(W, dtype=ty)
    for blk in range(lo, hi):
        d0 = blk * W
        dA_acc[:] = 0
        dD_acc[:] = 0
        dbias_acc[:] = 0
        for n in range(n_state):
            for j in range(w):
                a[n, j] = At[n, d0 + j]
        dvl = Dv[d0:d0 + w]
        gb = _group(d0, gs_b, B.shape[1])
        gc = _group(d0, gs_c, C.shape[1])
        for b in range(batch):
            bi = b if B.shape[0] > 1 else 0
            ci = b if C.shape[0] > 1 else 0
            for n in range(n_state):
                for j in range(w):
                    dx[n, j] = glast[b, n, d0 + j]
            if not b_time:
                if mixed is not None:
                    for k in range(chunk):
                        _fill(bks[k], B, bi, d0, run_time(0), gs_b)
                acc_b[:, :] = 0
            if not c_time:
                if mixed is not None:
                    for k in range(chunk):
                        _fill(cks[k], C, ci, d0, run_time(0), gs_c)
                acc_c[:, :] = 0
            for s0 in range((n_chunks - 1) // SPAN * SPAN, -1, -SPAN):
                s_start = s0 * chunk
                ns = min(span, length - s_start)
                _gather_rows(dts, delta, b, d0, s_start, ns, w, cl)
                _gather_rows(uvs, u, b, d0, s_start, ns, w, cl)
                _gather_rows(gs, gout, b, d0, s_start, ns, w, cl)
                if has_z:
                    _gather_rows(gts, z, b, d0, s_start, ns, w, cl)
                _prepare_chunk(dts, spd, gts, gzd, biasv, d0, ns, w, softplus, has_z, run_time(True), one,
                               threshold)
                for c in range(min(s0 + SPAN, n_chunks) - 1, s0 - 1, -1):
                    start = c * chunk
                    nk = min(length, start + chunk) - start
                    k0 = start - s_start  # the chunk's first row in the span
                    for n in range(n_state):
                        ck = ckpt[b, c, n, d0:d0 + w]
                        for j in range(w):
                            xs[0, n, j] = ck[j]
                    # recompute this chunk's decays and states from its checkpoint (and the output
                    # before the gate, which the gate's gradient needs)
                    lb0, lb_step = (start, 1) if b_time else (0, 0)
                    lc0, lc_step = (start, 1) if c_time else (0, 0)
                    if mixed is not None:
                        for k in range(nk):
                            if b_time:
                                _fill(bks[k], B, bi, d0, start + k, gs_b)
                            if c_time:
                                _fill(cks[k], C, ci, d0, start + k, gs_c)
                    _recompute_chunk_of(mixed, xs, dec, a, dts, uvs, k0, nk, B, bi, gb, lb0, lb_step, C, ci, gc, lc0,
                                        lc_step, bks, cks, dvl, ys)
                    # output gradient through the gate
                    if has_z:
                        for k in range(nk):
                            for j in range(w):
                                dzs[k0 + k, j] = gs[k0 + k, j] * ys[k, j] * gzd[k0 + k, j]
                                gs[k0 + k, j] *= gts[k0 + k, j]
                    # adjoint recurrence backwards through the chunk, then everything that depends on
                    # its state gradients
                    _adjoint_and_terms_of(mixed, dx, dxs, xs, dec, a, dts, uvs, gs, k0, nk, B, bi, gb, lb0, lb_step, C,
                                          ci, gc, lc0, lc_step, bks, cks, dA_acc, pa, sb, tbs, tcs)
                    for k in range(nk):
                        kk = k0 + k
                        for j in range(w):
                            dD_acc[j] += gs[kk, j] * uvs[kk, j]
                            dus[kk, j] = gs[kk, j] * dvl[j] + dts[kk, j] * sb[k, j]
                            ddts[kk, j] = pa[k, j] + uvs[kk, j] * sb[k, j]
                    if softplus:
                        for k in range(nk):
                            for j in range(w):
                                ddts[k0 + k, j] *= spd[k0 + k, j]
                    for k in range(nk):
                        for j in range(w):
                            dbias_acc[j] += ddts[k0 + k, j]
                    if b_time and mixed is None:
                        _lane_sums_into(dBbuf, slot, bi, gb, start, tbs, nk)
                    else:
                        _reduce_chunk(dBbuf, tbs, acc_b, b_time, slot, bi, d0, start, nk, gs_b)
                    if c_time and mixed is None:
                        _lane_sums_into(dCbuf, slot, ci, gc, start, tcs, nk)
                    else:
                        _reduce_chunk(dCbuf, tcs, acc_c, c_time, slot, ci, d0, start, nk, gs_c)
                if has_z:
                    _store_rows(dz_out, dzs, b, d0, s_start, ns, w, cl)
                _store_rows(du_out, dus, b, d0, s_start, ns, w, cl)
                _store_rows(ddelta_out, ddts, b, d0, s_start, ns, w, cl)
            if not b_time:
                _scatter_once(dBbuf, acc_b, slot, bi, d0, 0, gs_b)
            if not c_time:
                _scatter_once(dCbuf, acc_c, slot, ci, d0, 0, gs_c)
            for n in range(n_state):
                for j in range(w):
                    dh0t[b, n, d0 + j] = dx[n, j]
        for n in range(n_state):
            for j in range(w):
                dAt[n, d0 + j] = dA_acc[n, j]
        for j in range(w):
            dDv[d0 + j] = dD_acc[j]
            dbias[d0 + j] = dbias_acc[j]


# The kernels' ``args``: names and kinds (:func:`neurostep.kernels.numba_launch.numba_type`), in order. One layout
# for both kernels, so that they share one compiled launcher (a launcher compiles per argument layout: about
# 1 s of the backward's first call from a cold cache, 2-core AMD EPYC, 2026-12-05); each kernel reads the
# fields it needs and gets 1-element stand-ins for the others' (:func:`_kernel_args`).
_ARGS = (("u", "f3"), ("delta", "f3"), ("biasv", "f1"), ("softplus", "b"), ("At", "f2"), ("B", "f4"), ("C", "f4"),
         ("Dv", "f1"), ("z", "f3"), ("has_z", "b"), ("ckpt", "f4"), ("gs_b", "i"), ("gs_c", "i"), ("chunk", "i"),
         ("one", "f"), ("threshold", "f"), ("w", "i"), ("channels_last", "b"),
         # the forward's
         ("h0t", "f3"), ("out", "f3"), ("last", "f3"),
         # the backward's
         ("gout", "f3"), ("glast", "f3"), ("du_out", "f3"), ("ddelta_out", "f3"), ("dAt", "f2"), ("dBbuf", "f5"),
         ("dCbuf", "f5"), ("dDv", "f1"), ("dbias", "f1"), ("dz_out", "f3"), ("dh0t", "f3"))
_KINDS = tuple(kind for _, kind in _ARGS)
_ARG_NAMES = frozenset(name for name, _ in _ARGS)


def _kernel_args(dtype: np.dtype, **fields) -> tuple:
    """The kernels' ``args`` in the order of :data:`_ARGS`, the fields not given as stand-ins of their kind."""
    if not fields.keys() <= _ARG_NAMES:
        raise TypeError(f"unknown kernel arguments {sorted(fields.keys() - _ARG_NAMES)}")
    return tuple(fields[name] if name in fields else stand_in(kind, dtype) for name, kind in _ARGS)


def _pad_dim(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``t`` zero-padded at the end of ``dim`` to ``size`` (channels to a multiple of W), contiguous; no copy
    when it already is both (a padding of zero width still copies, and a small op pads a dozen tensors per
    call)."""
    dim %= t.dim()
    if t.shape[dim] == size:
        return t.contiguous()
    return F.pad(t, (0, 0) * (t.dim() - 1 - dim) + (0, size - t.shape[dim])).contiguous()


def _state_lanes(t: torch.Tensor | None, shape: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
    """``(batch, dim, N) -> (batch, N, dpad)``: states with the channel lanes innermost."""
    batch, n_state, dpad = shape
    if t is None:
        return like.new_zeros(shape)
    return _pad_dim(t.transpose(1, 2), -1, dpad)


def _sizes(u: torch.Tensor, channels_last: bool) -> tuple[int, int, int, int]:
    """``(batch, dim, L)`` of ``u`` in either layout, and the dim of ``u`` that holds the channels."""
    if channels_last:
        return u.shape[0], u.shape[2], u.shape[1], 2
    return u.shape[0], u.shape[1], u.shape[2], 1


def _prepare(u, delta, A, B, C, D, z, delta_bias, channel_dim):
    """Kernel inputs: channels (dim ``channel_dim`` of u, delta and z) padded to a multiple of W (zeros), A
    and D in lane layout, B and C as ``(Bb, G, Lb, N)``. delta and z stay raw: the kernels apply the bias,
    softplus and SiLU."""
    dim = u.shape[channel_dim]
    dpad = -(-dim // W) * W
    At = _pad_dim(A.t(), -1, dpad)
    Dv = _pad_dim(D if D is not None else u.new_zeros(dim), -1, dpad)
    biasv = _pad_dim(delta_bias.to(u.dtype) if delta_bias is not None else u.new_zeros(dim), -1, dpad)
    zp = _pad_dim(z, channel_dim, dpad) if z is not None else u.new_empty(1, 1, 1)
    Bk, Ck = B.transpose(-1, -2).contiguous(), C.transpose(-1, -2).contiguous()
    return (dpad, _pad_dim(u, channel_dim, dpad), _pad_dim(delta, channel_dim, dpad), biasv, At, Bk, Ck, Dv,
            zp)


def _mixed(dim: int, B: torch.Tensor, C: torch.Tensor) -> np.ndarray | None:
    """The kernels' ``mixed`` argument: None when every block reads one B and one C group (the kernels then
    compile only the path with B and C as scalars), else an empty array."""
    return None if every_block_in_one_group(dim, B.shape[1], C.shape[1]) else np.empty(0, dtype=np.int8)


def _constants(dtype: torch.dtype) -> tuple:
    f = np.float32 if dtype == torch.float32 else np.float64
    return f(1.0), f(SOFTPLUS_THRESHOLD)


@serialized
def forward(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, channels_last=False):
    """Same contract as :func:`neurostep.kernels.selective_scan.reference.forward`; the saved
    tensor holds the chunk checkpoints. Channels-last lanes are read and written in place (each step's
    lanes a row), channels-first ones transposed block by block inside the kernel."""
    batch, dim, length, channel_dim = _sizes(u, channels_last)
    n_state = A.shape[1]
    dpad, up, dp, biasv, At, Bk, Ck, Dv, zp = _prepare(u, delta, A, B, C, D, z, delta_bias, channel_dim)
    h0t = _state_lanes(h0, (batch, n_state, dpad), u)
    out = empty_like(up)
    last = u.new_empty(batch, n_state, dpad)
    ckpt = empty(saved_shape(batch, dim, length, n_state), u.dtype)
    one, threshold = _constants(u.dtype)
    n_items = batch * (dpad // W)
    args = _kernel_args(one.dtype, u=_np(up), delta=_np(dp), biasv=_np(biasv), softplus=bool(delta_softplus),
                        At=_np(At), B=_np(Bk), C=_np(Ck), Dv=_np(Dv), z=_np(zp), has_z=z is not None, ckpt=_np(ckpt),
                        gs_b=dim // B.shape[1], gs_c=dim // C.shape[1], chunk=CHUNK, one=one, threshold=threshold, w=W,
                        channels_last=bool(channels_last), h0t=_np(h0t), out=_np(out), last=_np(last))
    launch_ranges(_forward_kernel, _KINDS, range_slots(n_items), n_items, _mixed(dim, B, C), args)
    if dpad != dim:
        out = out.narrow(channel_dim, 0, dim).contiguous()
    return out, last[..., :dim].transpose(1, 2).contiguous(), ckpt


@serialized
def backward(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, h0, saved, delta_softplus,
             channels_last=False):
    """Same contract as :func:`neurostep.kernels.selective_scan.reference.backward`."""
    batch, dim, length, channel_dim = _sizes(u, channels_last)
    n_state = A.shape[1]
    dpad, up, dp, biasv, At, Bk, Ck, Dv, zp = _prepare(u, delta, A, B, C, D, z, delta_bias, channel_dim)
    gp = _pad_dim(grad_out, channel_dim, dpad)
    glast = _state_lanes(grad_last, (batch, n_state, dpad), u)
    # one B and C gradient buffer per range of blocks (a range runs on one thread): no write races
    n_items = dpad // W
    n_slots = range_slots(n_items)
    dBbuf = u.new_zeros((n_slots, *Bk.shape))
    dCbuf = u.new_zeros((n_slots, *Ck.shape))
    du, ddelta = empty_like(up), empty_like(up)
    dAt = empty_like(At)
    dDv = empty_like(Dv)
    dbias = empty_like(Dv)
    dz = empty_like(up) if z is not None else u.new_empty(1, 1, 1)
    dh0t = u.new_empty(batch, n_state, dpad)
    one, threshold = _constants(u.dtype)
    args = _kernel_args(one.dtype, u=_np(up), delta=_np(dp), biasv=_np(biasv), softplus=bool(delta_softplus),
                        At=_np(At), B=_np(Bk), C=_np(Ck), Dv=_np(Dv), z=_np(zp), has_z=z is not None, ckpt=_np(saved),
                        gs_b=dim // B.shape[1], gs_c=dim // C.shape[1], chunk=CHUNK, one=one, threshold=threshold, w=W,
                        channels_last=bool(channels_last), gout=_np(gp), glast=_np(glast), du_out=_np(du),
                        ddelta_out=_np(ddelta), dAt=_np(dAt),
                        dBbuf=_np(dBbuf), dCbuf=_np(dCbuf), dDv=_np(dDv), dbias=_np(dbias), dz_out=_np(dz),
                        dh0t=_np(dh0t))
    launch_ranges(_backward_kernel, _KINDS, n_slots, n_items, _mixed(dim, B, C), args)
    if dpad != dim:
        du, ddelta = du.narrow(channel_dim, 0, dim), ddelta.narrow(channel_dim, 0, dim)
        dz = dz.narrow(channel_dim, 0, dim) if z is not None else dz
    dB = dBbuf.sum(0).transpose(-1, -2).contiguous()
    dC = dCbuf.sum(0).transpose(-1, -2).contiguous()
    return (du.contiguous(), ddelta.contiguous(), dAt[:, :dim].t().contiguous(), dB, dC,
            dDv[:dim].clone() if D is not None else None, dz.contiguous() if z is not None else None,
            dbias[:dim].clone() if delta_bias is not None else None,
            dh0t[..., :dim].transpose(1, 2).contiguous() if h0 is not None else None)
