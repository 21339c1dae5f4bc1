"""Selective scan on CPU with numba: fused forward and backward.

Lanes ``(b, d)`` are independent: the kernels ``prange`` over lanes (forward) or over blocks of
``d`` (backward), run the time loop inside and keep the ``N`` states of a lane in a small
contiguous buffer (N innermost, so the state update vectorizes; ``exp`` is the vectorizable
:func:`~neurostep.kernels.selective_scan.numba_exp.vexp`).

Memory: the forward never stores per-step states. It saves only the state entering every chunk of
``CHUNK`` steps (``(batch, dim, ceil(L / CHUNK), N)``, 1/CHUNK of the states). The backward walks
the chunks in reverse, recomputes a chunk's states and decays from its checkpoint into a
thread-local ``(CHUNK + 1, N)`` buffer that stays in L1, then runs the adjoint recurrence over it.

B and C are consumed in the layout ``(Bb, G, Lb, N)`` (the canonical ``(Bb, G, N, Lb)`` with N made
innermost); lane ``(b, d)`` reads ``[b or 0, d // (dim // G), l or 0, :]``. Their gradients are
reduced over the lanes of a group without races: each parallel block of ``d`` accumulates into its
own slice of a buffer that is summed afterwards (or straight into the gradient when every lane has
its own group, e.g. constant B).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from neurostep.kernels.selective_scan.numba_exp import vexp

CHUNK = 64
_SOFTPLUS_THRESHOLD = 20.0


def saved_shape(batch: int, dim: int, length: int, d_state: int) -> tuple[int, ...]:
    """Checkpointed states ``(batch, dim, ceil(L / CHUNK), N)``."""
    return (batch, dim, -(-length // CHUNK), d_state)


@numba.njit(inline="always")
def _softplus(v, softplus):
    if not softplus:
        return v
    if v > _SOFTPLUS_THRESHOLD:
        return v
    return math.log1p(math.exp(v))


@numba.njit(inline="always")
def _softplus_grad(v, softplus):
    """d softplus(v) / dv = sigmoid(v) (1 above the threshold, where softplus is the identity)."""
    if not softplus or v > _SOFTPLUS_THRESHOLD:
        return 1.0
    return 1.0 / (1.0 + math.exp(-v))


@numba.njit(parallel=True, cache=True, fastmath=False)
def _forward_kernel(u, delta, A, B, C, D, z, bias, h0, has_z, softplus, chunk, out, last, ckpt):
    batch, dim, length = u.shape
    n_state = A.shape[1]
    b_batch, b_groups, b_time = B.shape[0] > 1, B.shape[1], B.shape[2] > 1
    c_batch, c_groups, c_time = C.shape[0] > 1, C.shape[1], C.shape[2] > 1
    for lane in numba.prange(batch * dim):
        b = lane // dim
        d = lane - b * dim
        bi = b if b_batch else 0
        bg = d // (dim // b_groups)
        ci = b if c_batch else 0
        cg = d // (dim // c_groups)
        x = h0[b, d].copy()
        a_row = A[d]
        for l in range(length):
            if l % chunk == 0:
                ckpt[b, d, l // chunk] = x
            dt = _softplus(delta[b, d, l] + bias[d], softplus)
            dtu = dt * u[b, d, l]
            b_row = B[bi, bg, l if b_time else 0]
            c_row = C[ci, cg, l if c_time else 0]
            # vectorized state update, then a separate (serial) reduction: keeping the reduction
            # out of this loop is what lets LLVM vectorize it under strict FP semantics
            for n in range(n_state):
                x[n] = vexp(dt * a_row[n]) * x[n] + dtu * b_row[n]
            y = x[0] * c_row[0]
            for n in range(1, n_state):
                y += x[n] * c_row[n]
            y += D[d] * u[b, d, l]
            if has_z:
                zz = z[b, d, l]
                y *= zz / (1.0 + math.exp(-zz))
            out[b, d, l] = y
        last[b, d] = x


@numba.njit(parallel=True, cache=True, fastmath=False)
def _backward_kernel(gout, glast, u, delta, A, B, C, D, z, bias, ckpt, has_z, softplus, chunk, block, b_direct,
                     c_direct, du, ddelta, dA, dB, dC, dD, dz, dbias, dh0):
    batch, dim, length = u.shape
    n_state = A.shape[1]
    b_batch, b_groups, b_time = B.shape[0] > 1, B.shape[1], B.shape[2] > 1
    c_batch, c_groups, c_time = C.shape[0] > 1, C.shape[1], C.shape[2] > 1
    n_chunks = ckpt.shape[2]
    n_blocks = (dim + block - 1) // block
    for blk_ in numba.prange(n_blocks):
        blk = np.int64(blk_)  # the parfor index may be unsigned; mixing it with int64 would give floats
        xs = np.empty((chunk + 1, n_state), dtype=u.dtype)
        decay = np.empty((chunk, n_state), dtype=u.dtype)
        dts = np.empty(chunk, dtype=u.dtype)
        dx = np.empty(n_state, dtype=u.dtype)
        slot_b = 0 if b_direct else blk
        slot_c = 0 if c_direct else blk
        for d in range(blk * block, min(dim, (blk + 1) * block)):
            a_row = A[d]
            bg = d // (dim // b_groups)
            cg = d // (dim // c_groups)
            dA_row = dA[d]
            d_d = D[d]
            for b in range(batch):
                bi = b if b_batch else 0
                ci = b if c_batch else 0
                dx[:] = glast[b, d]
                for c in range(n_chunks - 1, -1, -1):
                    start = c * chunk
                    stop = min(length, start + chunk)
                    # recompute this chunk's states and decays from its checkpoint
                    xs[0] = ckpt[b, d, c]
                    for l in range(start, stop):
                        k = l - start
                        dt = _softplus(delta[b, d, l] + bias[d], softplus)
                        dts[k] = dt
                        dtu = dt * u[b, d, l]
                        b_row = B[bi, bg, l if b_time else 0]
                        for n in range(n_state):
                            e = vexp(dt * a_row[n])
                            decay[k, n] = e
                            xs[k + 1, n] = e * xs[k, n] + dtu * b_row[n]
                    # adjoint recurrence, backwards through the chunk
                    for l in range(stop - 1, start - 1, -1):
                        k = l - start
                        dt = dts[k]
                        ul = u[b, d, l]
                        b_row = B[bi, bg, l if b_time else 0]
                        c_row = C[ci, cg, l if c_time else 0]
                        g = gout[b, d, l]
                        if has_z:
                            y = xs[k + 1, 0] * c_row[0]
                            for n in range(1, n_state):
                                y += xs[k + 1, n] * c_row[n]
                            y += d_d * ul
                            zz = z[b, d, l]
                            sz = 1.0 / (1.0 + math.exp(-zz))
                            dz[b, d, l] = g * y * (sz * (1.0 + zz * (1.0 - sz)))
                            g = g * zz * sz
                        dD[d] += g * ul
                        dc_row = dC[slot_c, ci, cg, l if c_time else 0]
                        db_row = dB[slot_b, bi, bg, l if b_time else 0]
                        dtu = dt * ul
                        for n in range(n_state):
                            dc_row[n] += g * xs[k + 1, n]
                            dx[n] += g * c_row[n]
                        ddt = 0.0
                        dxb = 0.0
                        for n in range(n_state):
                            t = dx[n] * xs[k, n] * decay[k, n]
                            ddt += t * a_row[n]
                            dA_row[n] += t * dt
                            dxb += dx[n] * b_row[n]
                            db_row[n] += dx[n] * dtu
                            dx[n] *= decay[k, n]
                        ddt += dxb * ul
                        du[b, d, l] = g * d_d + dt * dxb
                        dd = ddt * _softplus_grad(delta[b, d, l] + bias[d], softplus)
                        ddelta[b, d, l] = dd
                        dbias[d] += dd
                dh0[b, d] = dx


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _kernel_bc(M: torch.Tensor) -> torch.Tensor:
    """Canonical ``(Bb, G, N, Lb)`` -> kernel layout ``(Bb, G, Lb, N)``, contiguous."""
    return M.transpose(-1, -2).contiguous()


def forward(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus):
    """Same contract as :func:`neurostep.kernels.selective_scan.reference.forward`; the saved
    tensor holds the chunk checkpoints."""
    batch, dim, length = u.shape
    n_state = A.shape[1]
    zeros_d = u.new_zeros(dim)
    out = torch.empty_like(u)
    last = u.new_empty(batch, dim, n_state)
    ckpt = u.new_empty(saved_shape(batch, dim, length, n_state))
    h0 = u.new_zeros(batch, dim, n_state) if h0 is None else h0
    _forward_kernel(_np(u), _np(delta), _np(A), _np(_kernel_bc(B)), _np(_kernel_bc(C)),
                    _np(zeros_d if D is None else D), _np(u if z is None else z),
                    _np(zeros_d if delta_bias is None else delta_bias), _np(h0), z is not None,
                    bool(delta_softplus), CHUNK, _np(out), _np(last), _np(ckpt))
    return out, last, ckpt


def backward(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, h0, saved, delta_softplus):
    """Same contract as :func:`neurostep.kernels.selective_scan.reference.backward`."""
    batch, dim, length = u.shape
    n_state = A.shape[1]
    zeros_d = u.new_zeros(dim)
    n_threads = numba.get_num_threads()
    # a few blocks per thread for load balance; the B/C gradient buffers grow with the block count
    block = max(1, -(-dim // (4 * n_threads)))
    n_blocks = -(-dim // block)
    Bk, Ck = _kernel_bc(B), _kernel_bc(C)
    # a group of one lane (e.g. constant B) is written by one block only: no buffer needed
    b_direct = Bk.shape[1] == dim
    c_direct = Ck.shape[1] == dim
    dBbuf = u.new_zeros((1 if b_direct else n_blocks, *Bk.shape))
    dCbuf = u.new_zeros((1 if c_direct else n_blocks, *Ck.shape))
    du = torch.empty_like(u)
    ddelta = torch.empty_like(u)
    dA = torch.zeros_like(A)
    dD = u.new_zeros(dim)
    dz = torch.empty_like(u) if z is not None else u.new_empty(1, 1, 1)
    dbias = u.new_zeros(dim)
    dh0 = u.new_empty(batch, dim, n_state)
    glast = u.new_zeros(batch, dim, n_state) if grad_last is None else grad_last
    _backward_kernel(_np(grad_out), _np(glast), _np(u), _np(delta), _np(A), _np(Bk), _np(Ck),
                     _np(zeros_d if D is None else D), _np(u if z is None else z),
                     _np(zeros_d if delta_bias is None else delta_bias), _np(saved), z is not None,
                     bool(delta_softplus), CHUNK, block, b_direct, c_direct, _np(du), _np(ddelta), _np(dA),
                     _np(dBbuf), _np(dCbuf), _np(dD), _np(dz), _np(dbias), _np(dh0))
    dB = dBbuf.sum(0).transpose(-1, -2).contiguous()
    dC = dCbuf.sum(0).transpose(-1, -2).contiguous()
    return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None,
            dbias if delta_bias is not None else None, dh0 if h0 is not None else None)
