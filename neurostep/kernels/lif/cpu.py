"""CPU backend of the LIF scan: fused numba forward and backward kernels.

Layout (the choice that matters most on CPU): ``prange`` over a few contiguous blocks of
lanes, then time, then the lanes of the block in a branch-free inner loop that LLVM
vectorizes. The state of a block stays in L1/L2 across all T steps, and every time step
streams one contiguous row segment of x / h / spikes. Looping over time *inside* a lane
(strided access) is about 30x slower (docs/reference.md, "Measured machine facts").

The plain spikingjelly neurons (IF, LIF, PLIF) save nothing: the backward recomputes ``h`` (the
pre-reset membrane) from x with the forward's exact arithmetic (:func:`recomputes_h`). The
snntorch convention and the adaptive threshold save ``h`` (plus ``theta``), and the backward
recomputes spikes and the post-reset membrane from it. Scalars are passed in the data dtype
(float32 stays float32: numba would otherwise promote to float64 and round differently from the
torch reference). Mode flags are loop invariant and written as selects, which LLVM if-converts,
so the loops stay vectorizable.

Same signature as ``reference.forward`` / ``reference.backward``: contiguous ``(T, N)`` float32
or float64 tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numba
import numpy as np
import torch
from numba import prange

from neurostep.engine import check_numba_input
from neurostep.kernels.lif.common import LIFParams
from neurostep.kernels.lif.surrogates import sg_block_at, sg_block_function, sg_constant, sg_value
from neurostep.kernels.numba_launch import (
    CompiledFunction,
    launch_ranges,
    range_kernel,
    range_slots,
    serialized,
    stand_in,
)
from neurostep.kernels.numba_launch import as_array as _np
from neurostep.kernels.numba_sum import vsum64
from neurostep.memory import empty_with_array

# Lanes per block, at most: every step then reads and writes row segments of 32 KB, long enough for
# the hardware prefetchers, while the block's state stays in L2. Measured on the 2-core AMD EPYC
# (2026-12-04), alternating in one process at T=32 and 65,536 lanes: 8192 lanes against 1024 made the
# forward 10-17% and the backward 7-13% faster with 2 threads (23% and 13% with one); at T=4 the block
# size made no difference.
_BLOCK = 8192
# Blocks per call, at least (while blocks keep 1024 lanes or more), so that up to 8 threads share the lanes
# evenly. The block size depends on the lane count alone, never on the thread count: the per-block sums of
# the tau and threshold gradients, and so their rounding, are then the same for any number of threads.
_MIN_BLOCKS = 8
_MIN_BLOCK = 1024


def _block_size(n: int) -> int:
    """Lanes per block: a multiple of 16 (the widest float32 vector), at most :data:`_BLOCK`, and small
    enough for :data:`_MIN_BLOCKS` blocks, down to :data:`_MIN_BLOCK` lanes."""
    lanes = min(_BLOCK, max(_MIN_BLOCK, -(-n // _MIN_BLOCKS)), n)
    return -(-lanes // 16) * 16


_ROWS_BYTES = 1 << 20  # the T rows of a block that the recomputing backward keeps in L2 between its sweeps


def _recompute_block(n: int, steps: int, itemsize: int) -> int:
    """Lanes per block of the recomputing backward: as :func:`_block_size`, capped so that the
    block's ``T`` rows of h (parked in gx) fit in ``_ROWS_BYTES`` of L2."""
    cap = max(16, (_ROWS_BYTES // (steps * itemsize)) // 16 * 16)
    return min(_block_size(n), cap)


def recomputes_h(convention: str, adaptive: bool) -> bool:
    """Whether :func:`forward` returns no h, so that the backward recomputes it from x: the
    non-adaptive spikingjelly-convention neurons (IF, LIF, PLIF)."""
    return convention == "spikingjelly" and not adaptive


@numba.njit(inline="always")
def _charge(vj, xj, k, vr_c, decay):  # pragma: no cover - compiled
    """spikingjelly's charge: ``H = V + k (X - (V - V_r))``, or ``V - k (V - V_r) + X`` without decay_input."""
    return vj + k * (xj - (vj - vr_c)) if decay else vj - k * (vj - vr_c) + xj


@numba.njit(inline="always")
def _reset(hj, s, thj, vr, one, hard):  # pragma: no cover - compiled
    """The membrane after spike ``s``: hard ``S V_r + (1 - S) H``, soft ``H - S theta``."""
    return s * vr + (one - s) * hj if hard else hj - s * thj


@numba.njit(inline="always")
def _dcharge_dk(vj, xj, vr_c, decay):  # pragma: no cover - compiled
    """``d H / d k`` of :func:`_charge` at the previous membrane ``vj``."""
    return (xj - vj + vr_c) if decay else (vr_c - vj)


@numba.njit(inline="always")
def _spike_grads(hj, thj, s, gst, sgj, gv, extra, vr, one, hard, detach):  # pragma: no cover - compiled
    """Gradients of ``H`` and of the threshold through one step's fire and reset, from the spike's
    gradient ``gst`` (plus ``extra``, the adaptation's), the post-reset membrane's ``gv`` and the
    surrogate ``sgj``."""
    dvds = (vr - hj) if hard else -thj
    gs_tot = (gst if detach else gst + gv * dvds) + extra
    gh = gs_tot * sgj + (gv * (one - s) if hard else gv)
    gth = -gs_tot * sgj
    return gh, (gth if hard else gth - s * gv)


@numba.njit(inline="always")
def _fire(vj, xj, k, vth, vr, vr_c, one, hard, decay):  # pragma: no cover - compiled
    """One lane of one step of the non-adaptive spikingjelly neuron: ``(h, spike, membrane after the reset)``
    from the membrane ``vj`` and the input ``xj``. The forward and the recomputing backward both call it, so
    they round identically."""
    hj = _charge(vj, xj, k, vr_c, decay)
    s = one if hj - vth >= one - one else one - one
    return hj, s, _reset(hj, s, vth, vr, one, hard)


@numba.njit(inline="always")
def _set_lanes(dst, src, n, given, value):  # pragma: no cover - compiled
    """``dst[:n] = src[:n]`` where ``given`` (an optional input such as the initial membrane), else ``value``."""
    if given:
        for j in range(n):
            dst[j] = src[j]
    else:
        for j in range(n):
            dst[j] = value


@numba.njit(inline="always")
def _block_membrane(x, v0, b, block, has_v0, rest):  # pragma: no cover - compiled
    """Block ``b`` of a forward kernel over ``x (T, N)``: its first lane ``lo``, its lane count ``n`` and its
    membrane before step 0 (``v0``'s lanes where ``has_v0``, else ``rest``), a fresh vector of ``x``'s dtype."""
    lo = b * block
    n = min(block, x.shape[1] - lo)
    v = np.empty(n, dtype=x.dtype)
    _set_lanes(v, v0[lo:lo + n], n, has_v0, rest)
    return lo, n, v


@numba.njit(inline="always")
def _plain_step(xr, v, out, n, k, vth, vr, vr_c, one, hard, decay, store_h):  # pragma: no cover - compiled
    """One step of the non-adaptive spikingjelly neuron over a block's lanes (:func:`_fire`): charge from
    ``xr``, fire, reset ``v`` in place; ``out`` gets the spikes, or ``h`` when ``store_h``."""
    for j in range(n):
        hj, s, v[j] = _fire(v[j], xr[j], k, vth, vr, vr_c, one, hard, decay)
        out[j] = hj if store_h else s


@numba.njit(inline="always")
def _plain_steps(x, v, spikes, lo, n, k, vth, vr, vr_c, one, hard, decay):  # pragma: no cover - compiled
    """All ``T`` steps of :func:`_plain_step` (spikes out) over the lanes ``lo:lo + n``, four steps per pass over
    the lanes: the membrane stays in a register for the four instead of a trip through the ``v`` row per step,
    and eight row streams (four of x, four of spikes) are in flight instead of two. Same arithmetic, same
    spikes to the bit; measurements in ``docs/ssm.md``, "LIF forward"."""
    T = x.shape[0]
    t = 0
    while t + 4 <= T:
        x0, x1, x2, x3 = x[t, lo:lo + n], x[t + 1, lo:lo + n], x[t + 2, lo:lo + n], x[t + 3, lo:lo + n]
        s0, s1, s2, s3 = (spikes[t, lo:lo + n], spikes[t + 1, lo:lo + n], spikes[t + 2, lo:lo + n],
                          spikes[t + 3, lo:lo + n])
        for j in range(n):
            _, s0[j], vj = _fire(v[j], x0[j], k, vth, vr, vr_c, one, hard, decay)
            _, s1[j], vj = _fire(vj, x1[j], k, vth, vr, vr_c, one, hard, decay)
            _, s2[j], vj = _fire(vj, x2[j], k, vth, vr, vr_c, one, hard, decay)
            _, s3[j], v[j] = _fire(vj, x3[j], k, vth, vr, vr_c, one, hard, decay)
        t += 4
    while t < T:
        _plain_step(x[t, lo:lo + n], v, spikes[t, lo:lo + n], n, k, vth, vr, vr_c, one, hard, decay, False)
        t += 1


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _forward_kernel(x, v0, a0, spikes, h_out, theta_out, vseq, v_last, a_last, k, omk, vth, vr, vr_c, rho, beta, one,
                    hard, decay, snn, snn_reset, adaptive, write_vseq, has_v0, block):  # pragma: no cover - compiled
    T, N = x.shape
    zero = one - one  # constants in the data dtype: a float literal would promote float32 math to float64
    rest = vr if (hard and not snn) else zero   # the membrane without an initial state (has_v0 False)
    nb = (N + block - 1) // block
    for b in prange(nb):
        lo, n, v = _block_membrane(x, v0, b, block, has_v0, rest)
        th = np.empty(n, dtype=v.dtype)
        th[:] = vth
        # the adaptation state exists only for adaptive neurons (a0 and a_last are 1-element otherwise)
        a = a0[lo:lo + n].copy() if adaptive else np.empty(0, dtype=v.dtype)
        for t in range(T):
            # row segments as slices indexed from 0: an index like lo + j could be negative to numba's
            # eyes, and the wraparound check that it then emits stops vectorization (13x slower)
            xr = x[t, lo:lo + n]
            sr = spikes[t, lo:lo + n]
            if snn:
                hr = h_out[t, lo:lo + n]
                for j in range(n):
                    vj = v[j]
                    r = one if vj > vth else zero
                    if snn_reset == 0:
                        hj = omk * vj + xr[j] - r * vth
                    elif snn_reset == 1:
                        hj = omk * ((one - r) * vj) + xr[j]
                    else:
                        hj = omk * vj + xr[j]
                    hr[j] = hj
                    sr[j] = one if hj - vth > zero else zero
                    v[j] = hj
            elif not adaptive:
                # IF/LIF/PLIF with the membrane trace, written below (without it _plain_forward_kernel runs;
                # the backward recomputes h, see recomputes_h)
                _plain_step(xr, v, sr, n, k, vth, vr, vr_c, one, hard, decay, False)
            else:
                hr = h_out[t, lo:lo + n]
                tr = theta_out[t, lo:lo + n]
                for j in range(n):
                    ap = rho * a[j]
                    a[j] = ap
                    th[j] = vth + ap
                    tr[j] = vth + ap
                for j in range(n):
                    vj = v[j]
                    hj = _charge(vj, xr[j], k, vr_c, decay)
                    thj = th[j]
                    s = one if hj - thj >= zero else zero
                    hr[j] = hj
                    sr[j] = s
                    v[j] = _reset(hj, s, thj, vr, one, hard)
                for j in range(n):
                    a[j] = a[j] + beta * sr[j]
            if write_vseq:
                vs = vseq[t, lo:lo + n]
                for j in range(n):
                    vs[j] = v[j]
        vl = v_last[lo:lo + n]
        for j in range(n):
            vl[j] = v[j]
        if adaptive:
            al = a_last[lo:lo + n]
            for j in range(n):
                al[j] = a[j]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _plain_forward_kernel(x, v0, spikes, v_last, k, vth, vr, vr_c, one, hard, decay, has_v0,
                          block):  # pragma: no cover - compiled
    """The forward of the IF, LIF and PLIF neurons without a membrane trace (x in, spikes out), four steps per pass
    (:func:`_plain_steps`): a kernel of its own, so that the common neuron compiles only this on its first call
    (the general :func:`_forward_kernel` compiles every convention and option) and passes it fewer arguments."""
    T, N = x.shape
    rest = vr if hard else one - one   # the membrane without an initial state (has_v0 False)
    nb = (N + block - 1) // block
    for b in prange(nb):
        lo, n, v = _block_membrane(x, v0, b, block, has_v0, rest)
        _plain_steps(x, v, spikes, lo, n, k, vth, vr, vr_c, one, hard, decay)
        vl = v_last[lo:lo + n]
        for j in range(n):
            vl[j] = v[j]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _backward_kernel(x, v0, h, theta, g_spikes, g_vseq, g_vlast, g_alast, gx, gv0, ga0, gk_part, gvth_part,
                     k, omk, vth, vr, vr_c, rho, beta, one, hard, decay, detach, snn, snn_reset, adaptive,
                     has_gs, has_gvseq, need_k, sg_address, alpha, sg_c, block):  # pragma: no cover - compiled
    """Reverse-time sweep over a saved h (the snntorch convention and the adaptive threshold; see
    recomputes_h); g_spikes / g_vseq are (1, N) zero rows when absent (has_* False); ``sg_address`` is the
    address of the surrogate's row function (``sg_block_function(...).address``)."""
    T, N = h.shape
    sg_block = sg_block_at(sg_address, alpha)
    zero = one - one  # constants in the data dtype: a float literal would promote float32 math to float64
    nb = (N + block - 1) // block
    for b in prange(nb):
        lo = b * block
        n = min(block, N - lo)
        cv = g_vlast[lo:lo + n].copy()
        ca = g_alast[lo:lo + n].copy()
        th = np.empty(n, dtype=cv.dtype)
        th[:] = vth
        z = np.empty(n, dtype=cv.dtype)
        sg = np.empty(n, dtype=cv.dtype)
        gh_s = np.empty(n, dtype=cv.dtype)
        gk_acc = np.zeros(n, dtype=cv.dtype)
        gvth_acc = np.zeros(n, dtype=cv.dtype)
        for t in range(T - 1, -1, -1):
            hr = h[t, lo:lo + n]
            gsr = g_spikes[t if has_gs else 0, lo:lo + n]
            gvr = g_vseq[t if has_gvseq else 0, lo:lo + n]
            gxr = gx[t, lo:lo + n]
            if adaptive:
                tr = theta[t, lo:lo + n]
                for j in range(n):
                    th[j] = tr[j]
            for j in range(n):
                z[j] = hr[j] - th[j]
            sg_block(alpha, sg_c, z, sg, n)
            # Loads and stores are unconditional and flags only pick between computed values
            # (selects): a load or store under an `if` cannot be if-converted, and the branch would
            # stop LLVM from vectorizing the loop.
            if snn:
                vp = h[t - 1, lo:lo + n] if t > 0 else v0[lo:lo + n]
                for j in range(n):
                    vpj = vp[j]
                    r = one if vpj > vth else zero
                    gst = gsr[j]
                    sgj = sg[j]
                    gh = gst * sgj + cv[j] + gvr[j]
                    gth = -gst * sgj
                    gth = gth - r * gh if snn_reset == 0 else gth
                    gvth_acc[j] += gth
                    gxr[j] = gh
                    keep = (one - r) if snn_reset == 1 else one
                    cv[j] = gh * omk * keep
                    gk_acc[j] -= gh * (keep * vpj)
                continue
            for j in range(n):
                hj = hr[j]
                thj = th[j]
                caj = ca[j]
                gst = gsr[j]
                sgj = sg[j]
                s = one if z[j] >= zero else zero
                gv = cv[j] + gvr[j]
                gh, gth = _spike_grads(hj, thj, s, gst, sgj, gv, beta * caj if adaptive else zero, vr, one, hard,
                                       detach)
                ca[j] = rho * (caj + gth) if adaptive else caj
                gvth_acc[j] += gth
                gxr[j] = gh * k if decay else gh
                cv[j] = gh * omk
                gh_s[j] = gh
            if need_k:
                # x_arr is a (1, N) zero row unless decay_input needs X
                xr = x[t if decay else 0, lo:lo + n]
                if t > 0:
                    hp = h[t - 1, lo:lo + n]
                    tp = theta[t - 1, lo:lo + n] if adaptive else hp
                    for j in range(n):
                        hpj = hp[j]
                        tpj = tp[j]
                        xj = xr[j]
                        thp = tpj if adaptive else vth
                        sp = one if hpj - thp >= zero else zero
                        gk_acc[j] += gh_s[j] * _dcharge_dk(_reset(hpj, sp, thp, vr, one, hard), xj, vr_c, decay)
                else:
                    vp0 = v0[lo:lo + n]
                    for j in range(n):
                        gk_acc[j] += gh_s[j] * _dcharge_dk(vp0[j], xr[j], vr_c, decay)
        gv0b = gv0[lo:lo + n]
        ga0b = ga0[lo:lo + n]
        for j in range(n):
            gv0b[j] = cv[j]
            ga0b[j] = ca[j]
        gk_part[b] = vsum64(gk_acc, n)
        gvth_part[b] = vsum64(gvth_acc, n)


@numba.njit(inline="always")
def _reverse_lane(row, gsr, cv, gvth_acc, dh, j, hj, sgj, k, omk, vth, vr, one, hard, decay, detach,
                  keep_dh, need_vth):  # pragma: no cover - compiled
    """Lane ``j`` of one reverse step of the recomputing backward, given ``hj = h[t]`` (read from ``row``, which
    gets ``gx[t]``) and its surrogate ``sgj``: ``cv`` carries the membrane gradient to step t-1, ``dh`` gets the
    gradient of h[t] where ``keep_dh`` (for the tau_inv gradient), ``gvth_acc`` sums the threshold's where
    ``need_vth``."""
    zero = one - one
    s = one if hj - vth >= zero else zero
    gh, gth = _spike_grads(hj, vth, s, gsr[j], sgj, cv[j], zero, vr, one, hard, detach)
    if need_vth:
        gvth_acc[j] += gth
    row[j] = gh * k if decay else gh
    cv[j] = gh * omk
    if keep_dh:
        dh[j] = gh


@numba.njit(inline="always")
def _recompute_lane(xr, v, out, j, k, vth, vr, vr_c, one, hard, decay):  # pragma: no cover - compiled
    """Lane ``j`` of one recomputed forward step (:func:`_fire`): ``out[j]`` gets h, ``v[j]`` the membrane."""
    hj, _, v[j] = _fire(v[j], xr[j], k, vth, vr, vr_c, one, hard, decay)
    out[j] = hj


# The recomputing backward's arguments (kinds as in neurostep.kernels.numba_launch.numba_type), in order.
_RECOMPUTE_KINDS = ("f2", "f1", "f2", "f2", "f1", "f2", "f1", "d1", "d1", "f", "f", "f", "f", "f", "f", "b", "b", "b",
                    "f", "f", "i", "b")


def _recompute_backward_source(sid: int, hard: bool, decay: bool, detach: bool, need_k: bool,
                               need_vth: bool) -> Callable[..., None]:
    """The backward of the non-adaptive spikingjelly neuron without a saved ``h``, for surrogate ``sid`` and the
    neuron's flags, which the closure fixes at compile time: numba reads them as constants, folds the switch
    of :func:`sg_value` and the flags' selects, and the loops vectorize without a test of a flag per lane; the
    gradients of tau_inv (``need_k``) and of the threshold (``need_vth``) are computed only when asked for (one
    compiled variant per combination a process uses; measurements in ``docs/ssm.md``, "LIF backward").

    ``kernel(lo, hi, slot, variant, args)`` is a range kernel (:func:`~neurostep.kernels.numba_launch.launch_ranges`;
    ``args`` of the kinds :data:`_RECOMPUTE_KINDS`: ``x, v0, g_spikes, g_vseq, g_vlast, gx, gv0, gk_part,
    gvth_part, k, omk, vth, vr, vr_c, one, has_gs, has_gvseq, has_gvlast, alpha, sg_c, block, has_v0``) over the
    blocks of ``block`` lanes, ``lo <= b < hi`` in order; without ``has_v0`` the membrane starts at rest (``vr``
    for a hard reset, else 0) and no ``gv0`` is written. A block's ``h`` is recomputed from x with the
    forward's arithmetic (:func:`_fire`) and parked in the block's rows of ``gx``; the reverse sweep then reads
    ``h[t]`` from its row and overwrites it with ``gx[t]``. The ``T x block`` rows stay in L2 between the two.
    The next block's ``h`` is recomputed inside this block's reverse sweep, its step ``T - 1 - t`` in the same
    loop as this block's surrogate at step ``t``, so that its stream of x from memory overlaps arithmetic that
    a sweep of its own would wait on; the rows of the two blocks in L2 stay at ``T + 1`` (this block's rows
    ``0..t`` still to read, the next block's ``T - 1 - t..T - 1`` written). Measurements: ``docs/ssm.md``,
    "LIF backward".

    Every surrogate's derivative is computed in the loop that forms the gradients, an exponential one too: its
    arithmetic then overlaps the loop's streams of the spikes' gradient and of x, where a pass of its own
    before the gradients' pass left them waiting (measurements in ``docs/ssm.md``, "LIF backward").
    """

    def kernel(lo, hi, slot, variant, args):  # pragma: no cover - compiled
        (x, v0, g_spikes, g_vseq, g_vlast, gx, gv0, gk_part, gvth_part, k, omk, vth, vr, vr_c, one, has_gs, has_gvseq,
         has_gvlast, alpha, sg_c, block, has_v0) = args
        T, N = x.shape
        zero = one - one
        rest = vr if hard else zero
        ty = x.dtype
        v = np.empty(block, dtype=ty)         # the membrane of the block being recomputed
        cv = np.empty(block, dtype=ty)        # the membrane gradient carried to step t-1
        gh = np.empty(block, dtype=ty)        # the gradient of h[t] (need_k)
        dk = np.empty(block, dtype=ty)        # d h[t] / d tau_inv (need_k)
        gk_acc = np.empty(block, dtype=ty)
        gvth_acc = np.empty(block, dtype=ty)
        x_idle = np.zeros(block, dtype=ty)    # the recomputation's scratch where no next block is
        h_idle = np.empty(block, dtype=ty)
        v_idle = np.zeros(block, dtype=ty)
        if lo < hi:  # the first block's h, recomputed on its own
            start = lo * block
            n = min(block, N - start)
            _set_lanes(v, v0[start:start + n], n, has_v0, rest)
            for t in range(T):
                _plain_step(x[t, start:start + n], v, gx[t, start:start + n], n, k, vth, vr, vr_c, one, hard,
                            decay, True)
        for b in range(lo, hi):
            start = b * block
            n = min(block, N - start)
            nxt = start + n
            n2 = min(block, N - nxt) if b + 1 < hi else 0   # lanes of the next block, recomputed alongside
            # the block's rows of the lane vectors as views from 0 (an index like start + j could be negative to
            # numba's eyes, and its wraparound check stops vectorization)
            v0b, gv0b, v0n = v0[start:start + n], gv0[start:start + n], v0[nxt:nxt + n2]
            _set_lanes(cv, g_vlast[start:start + n], n, has_gvlast, zero)
            if need_k:
                for j in range(n):
                    gk_acc[j] = zero
            if need_vth:
                for j in range(n):
                    gvth_acc[j] = zero
            _set_lanes(v, v0n, n2, has_v0, rest)
            for t in range(T - 1, -1, -1):
                row = gx[t, start:start + n]
                gsr = g_spikes[t if has_gs else 0, start:start + n]
                if has_gvseq:
                    gvr = g_vseq[t, start:start + n]
                    for j in range(n):
                        cv[j] += gvr[j]
                if need_k:
                    # V[t-1] from h[t-1], which still sits in the row above (rows are overwritten top-down)
                    xr = x[t, start:start + n]
                    if t > 0:
                        hp = gx[t - 1, start:start + n]
                        for j in range(n):
                            hpj = hp[j]
                            sp = one if hpj - vth >= zero else zero
                            dk[j] = _dcharge_dk(_reset(hpj, sp, vth, vr, one, hard), xr[j], vr_c, decay)
                    else:
                        for j in range(n):
                            dk[j] = _dcharge_dk(v0b[j] if has_v0 else rest, xr[j], vr_c, decay)
                # the next block's step T-1-t goes through the loop below when it has as many lanes as this
                # one (every block but a range's last, and the array's last); otherwise the loop recomputes zeros
                # into scratch rows, and a partial next block gets a loop of its own. One call of the surrogate
                # per kernel: numba inlines it into each loop that calls it, and inlining the sigmoid's twice
                # trips an internal check of numba's (NumbaIRAssumptionWarning).
                if n2 == n:
                    xn, hn, vn = x[T - 1 - t, nxt:nxt + n], gx[T - 1 - t, nxt:nxt + n], v
                else:
                    xn, hn, vn = x_idle, h_idle, v_idle
                for j in range(n):
                    hj = row[j]
                    _reverse_lane(row, gsr, cv, gvth_acc, gh, j, hj, sg_value(sid, alpha, sg_c, hj - vth), k, omk,
                                  vth, vr, one, hard, decay, detach, need_k, need_vth)
                    _recompute_lane(xn, vn, hn, j, k, vth, vr, vr_c, one, hard, decay)
                if 0 < n2 < n:
                    xq, hq = x[T - 1 - t, nxt:nxt + n2], gx[T - 1 - t, nxt:nxt + n2]
                    for j in range(n2):
                        _recompute_lane(xq, v, hq, j, k, vth, vr, vr_c, one, hard, decay)
                if need_k:
                    for j in range(n):
                        gk_acc[j] += gh[j] * dk[j]
            if has_v0:
                for j in range(n):
                    gv0b[j] = cv[j]
            # the block's tau_inv and threshold gradients (where wanted), summed in vector lanes: as two serial
            # float64 chains they cost more than the rest of a block at T = 4
            if need_k:
                gk_part[b] = vsum64(gk_acc, n)
            if need_vth:
                gvth_part[b] = vsum64(gvth_acc, n)

    return kernel


@functools.cache
def recompute_backward_kernel(sid: int, hard: bool, decay: bool, detach: bool, need_k: bool,
                              need_vth: bool) -> Callable[..., None]:
    """The range kernel of the recomputing backward for surrogate ``sid`` and these flags
    (:func:`_recompute_backward_source`), one function object per combination for the process; numba compiles
    it per dtype on first use (:func:`~neurostep.kernels.numba_launch.launch_ranges`), or loads it from its disk
    cache: a first call compiles the surrogate and flags it uses, not every combination."""
    return _recompute_backward_source(sid, bool(hard), bool(decay), bool(detach), bool(need_k), bool(need_vth))


def recompute_backward_function(sid: int, dtype: str, hard: bool = True, decay: bool = True, detach: bool = False,
                                need_k: bool = False, need_vth: bool = False) -> CompiledFunction:
    """:func:`recompute_backward_kernel` compiled for ``dtype`` ("float32" or "float64") or loaded from numba's
    disk cache, without running it; the defaults are spikingjelly's LIF (hard reset, decay_input, no detached
    reset, a fixed time constant and threshold), the variant ``neurostep.kernels.precompile`` compiles for every
    surrogate."""
    kernel = recompute_backward_kernel(sid, hard, decay, detach, need_k, need_vth)
    return range_kernel(kernel, _RECOMPUTE_KINDS, dtype, "none")


_NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def _dtype_name(dtype: torch.dtype) -> str:
    return np.dtype(_NP_DTYPE[dtype]).name


def _np_or(t: torch.Tensor | None, stand_in: np.ndarray) -> np.ndarray:
    """``t``'s array, or the stand-in for an array the kernel does not touch."""
    return stand_in if t is None else _np(t)


def _scalar_tensor(value: float, dtype: torch.dtype) -> torch.Tensor:
    """A gradient summed in float64 as a 0-d tensor of ``dtype`` (``torch.scalar_tensor``: the value
    ``torch.tensor`` gives, for half its cost)."""
    return torch.scalar_tensor(float(value), dtype=dtype)


def _scalars(p: LIFParams, dtype: torch.dtype):
    """The kernels' scalars in the data dtype: ``(k, 1 - k, vth, vr, vr_charge, rho, beta, 1, alpha, sg_c)``, the
    last two as the surrogate functions take them (``sg_c = sg_constant(sid, alpha)``)."""
    # CPU tensors, read through numpy (a memory read, no device transfer; float() would dispatch a torch op)
    return _constants(_np(p.k).item(), _np(p.vth).item(), p.vr, p.vr_charge, p.rho, p.beta, p.sid, p.alpha,
                      dtype == torch.float32)


@functools.lru_cache(maxsize=64)
def _constants(k: float, vth: float, vr: float, vr_c: float, rho: float, beta: float, sid: int, alpha: float,
               single: bool) -> tuple:
    # made once per set of values: a layer calls the op with the same constants every step, and ten numpy
    # scalars cost more than the lookup (a learned time constant changes k every step, and misses)
    f = np.float32 if single else np.float64
    return (f(k), f(1.0 - k), f(vth), f(vr), f(vr_c), f(rho), f(beta), f(1.0), f(alpha), f(sg_constant(sid, alpha)))


@serialized
def forward(x: torch.Tensor, v0: torch.Tensor | None, a0: torch.Tensor | None, p: LIFParams, need_vseq: bool):
    """Fused forward on contiguous ``x (T, N)``; see ``reference.forward`` for the contract (``v0`` None: the
    kernel starts at rest and reads no state)."""
    check_numba_input(x)
    T, N = x.shape
    adaptive = p.adaptive and not p.snn
    save_h = not recomputes_h("snntorch" if p.snn else "spikingjelly", adaptive)
    np_dtype = _NP_DTYPE[x.dtype]
    spikes, spikes_arr = empty_with_array(x.shape, x.dtype)
    if not save_h and not need_vseq:   # IF/LIF/PLIF, spikes out: the kernel of that case alone
        v_last, v_last_arr = empty_with_array((N,), x.dtype)
        k, _, vth, vr, vr_c, _, _, one, _, _ = _scalars(p, x.dtype)
        _plain_forward_kernel(_np(x), _np_or(v0, stand_in("f1", np_dtype)), spikes_arr, v_last_arr, k, vth, vr, vr_c,
                              one, p.hard, p.decay_input, v0 is not None, _block_size(N))
        return spikes, v_last, None, None, None, None
    # Outputs the call does not return are one-element numpy stand-ins that the kernel skips: not
    # lane-sized arrays whose fresh pages every call pays for (at T=4, Spikformer's case, the lane-sized
    # side arrays are a large share of the op's traffic), nor torch tensors (a microsecond or more each).
    stub, stub1 = stand_in("f2", np_dtype), stand_in("f1", np_dtype)
    h, h_arr = empty_with_array(x.shape, x.dtype) if save_h else (None, stub)
    theta, theta_arr = empty_with_array(x.shape, x.dtype) if adaptive else (None, stub)
    vseq, vseq_arr = empty_with_array(x.shape, x.dtype) if need_vseq else (None, stub)
    v_last, v_last_arr = empty_with_array((N,), x.dtype)
    a_last, a_last_arr = empty_with_array((N,), x.dtype) if adaptive else (None, stub1)
    # Without adaptation the kernel reads no a0 either. Scratch zeros come from numpy: a torch fill of this
    # size is a parallel region, which waits for torch's worker thread to be scheduled (milliseconds on a
    # loaded machine).
    if not adaptive:
        a0_arr = stub1
    else:
        a0_arr = _np(a0) if a0 is not None else np.zeros(N, dtype=np_dtype)
    k, omk, vth, vr, vr_c, rho, beta, one, _, _ = _scalars(p, x.dtype)
    _forward_kernel(_np(x), _np_or(v0, stub1), a0_arr, spikes_arr, h_arr, theta_arr, vseq_arr, v_last_arr,
                    a_last_arr, k, omk, vth, vr, vr_c, rho, beta, one, p.hard, p.decay_input, p.snn, p.snn_reset,
                    adaptive, need_vseq, v0 is not None, _block_size(N))
    return spikes, v_last, a_last, vseq, h, theta


@serialized
def backward(x: torch.Tensor | None, v0: torch.Tensor | None, h: torch.Tensor, theta: torch.Tensor | None,
             g_spikes: torch.Tensor | None, g_vseq: torch.Tensor | None, g_vlast: torch.Tensor | None,
             g_alast: torch.Tensor | None, p: LIFParams, need_k_grad: bool, need_threshold_grad: bool = True):
    """Fused backward; see ``reference.backward`` for the contract. ``h`` is None when
    :func:`forward` did not save it (:func:`recomputes_h`); ``x`` is then required."""
    if h is None:
        return _backward_recompute(x, v0, g_spikes, g_vseq, g_vlast, p, need_k_grad, need_threshold_grad)
    check_numba_input(h)
    T, N = h.shape
    adaptive = theta is not None
    zrow = np.zeros((1, N), dtype=_NP_DTYPE[h.dtype])  # numpy, not torch: see forward()
    v0_arr = _np(v0) if v0 is not None else np.full(N, p.rest, dtype=_NP_DTYPE[h.dtype])
    zvec = np.zeros(N, dtype=_NP_DTYPE[h.dtype])
    block = _block_size(N)
    nb = -(-N // block)
    gx, gx_arr = empty_with_array(h.shape, h.dtype)
    gv0, gv0_arr = empty_with_array((N,), h.dtype)
    ga0, ga0_arr = empty_with_array((N,), h.dtype)
    gk_part = np.zeros(nb, dtype=np.float64)
    gvth_part = np.zeros(nb, dtype=np.float64)
    need_k = bool(need_k_grad) and not p.snn
    x_arr = _np(x) if (need_k and p.decay_input and x is not None) else zrow
    k, omk, vth, vr, vr_c, rho, beta, one, alpha, sg_c = _scalars(p, h.dtype)
    _backward_kernel(
        x_arr, v0_arr, _np(h), _np(theta) if adaptive else zrow,
        _np(g_spikes) if g_spikes is not None else zrow, _np(g_vseq) if g_vseq is not None else zrow,
        _np(g_vlast) if g_vlast is not None else zvec, _np(g_alast) if (adaptive and g_alast is not None) else zvec,
        gx_arr, gv0_arr, ga0_arr, gk_part, gvth_part, k, omk, vth, vr, vr_c, rho, beta, one,
        p.hard, p.decay_input, p.detach_reset, p.snn, p.snn_reset, adaptive,
        g_spikes is not None, g_vseq is not None, need_k, sg_block_function(p.sid, _dtype_name(h.dtype)).address,
        alpha, sg_c, block,
    )
    gk = _scalar_tensor(gk_part.sum(), h.dtype)
    gvth = _scalar_tensor(gvth_part.sum(), h.dtype)
    return gx, (gv0 if v0 is not None else None), (ga0 if adaptive else None), gk, gvth


def _backward_recompute(x: torch.Tensor, v0: torch.Tensor | None, g_spikes: torch.Tensor | None,
                        g_vseq: torch.Tensor | None, g_vlast: torch.Tensor | None, p: LIFParams, need_k_grad: bool,
                        need_threshold_grad: bool):
    if x is None:
        raise ValueError("the cpu LIF backward needs x when the forward saved no h")
    check_numba_input(x)
    T, N = x.shape
    np_dtype = _NP_DTYPE[x.dtype]
    # absent gradients: a row of zeros only where the kernel reads one (the spikes'); one-element
    # stand-ins for the others, which the kernel skips (lane-sized zeros would fault in fresh pages)
    block = _recompute_block(N, T, x.element_size())
    nb = -(-N // block)
    gx, gx_arr = empty_with_array(x.shape, x.dtype)
    vector_stand_in = stand_in("f1", np_dtype)
    gv0, gv0_arr = empty_with_array((N,), x.dtype) if v0 is not None else (None, vector_stand_in)
    # per-block sums of the tau_inv and threshold gradients, only where wanted (the kernel skips a stand-in)
    gk_part = np.zeros(nb, dtype=np.float64) if need_k_grad else stand_in("d1", np.float64)
    gvth_part = np.zeros(nb, dtype=np.float64) if need_threshold_grad else stand_in("d1", np.float64)
    k, omk, vth, vr, vr_c, _, _, one, alpha, sg_c = _scalars(p, x.dtype)
    kernel = recompute_backward_kernel(p.sid, p.hard, p.decay_input, p.detach_reset, need_k_grad, need_threshold_grad)
    args = (_np(x), _np_or(v0, vector_stand_in),
            _np(g_spikes) if g_spikes is not None else np.zeros((1, N), dtype=np_dtype),
            _np(g_vseq) if g_vseq is not None else stand_in("f2", np_dtype), _np_or(g_vlast, vector_stand_in),
            gx_arr, gv0_arr, gk_part, gvth_part, k, omk, vth, vr, vr_c, one, g_spikes is not None,
            g_vseq is not None, g_vlast is not None, alpha, sg_c, block, v0 is not None)
    launch_ranges(kernel, _RECOMPUTE_KINDS, range_slots(nb), nb, None, args)
    # a gradient nobody asked for is not formed: after a kernel that streamed megabytes, the two sums and
    # scalar tensors took 30-40 us of a call's Python (cold caches), about as long as all its other setup
    gk = _scalar_tensor(gk_part.sum(), x.dtype) if need_k_grad else None
    gvth = _scalar_tensor(gvth_part.sum(), x.dtype) if need_threshold_grad else None
    return gx, gv0, None, gk, gvth
