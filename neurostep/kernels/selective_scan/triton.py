"""Selective scan in Triton: fused forward and backward, one program per (batch row, block of channels).

Same contract and algorithm as :mod:`neurostep.kernels.selective_scan.cpu`: a program keeps the
``(BLOCK_D, N)`` state tile in registers and loops over time; the forward saves the state every
``CHUNK`` steps; the backward walks the chunks in reverse, recomputes a chunk's states into a small
scratch buffer (``(batch, CHUNK + 1, dim, N)``, each program owning its channel columns) and runs
the adjoint recurrence. Gradients shared across programs (dA, dD over the batch; dB, dC over the
channels of a group) are accumulated with atomic adds (so their summation order is not fixed).
softplus, bias and the SiLU gate are elementwise and stay in torch. Runs on CUDA tensors, or on CPU
tensors under ``TRITON_INTERPRET=1`` (how the tests run it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from neurostep.kernels.selective_scan.reference import (
    SOFTPLUS_THRESHOLD,
    backward_via_channels_first,
    effective_delta,
    forward_via_channels_first,
)

CHUNK = 32
BLOCK_D = 16


def saved_shape(batch: int, dim: int, length: int, d_state: int) -> tuple[int, ...]:
    """Checkpointed states ``(batch, ceil(L / CHUNK), dim, N)``."""
    return (batch, -(-length // CHUNK), dim, d_state)


@triton.jit
def _ss_forward_kernel(u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, gate_ptr, h0_ptr, out_ptr, last_ptr, ckpt_ptr,
                       dim, L, N, n_chunks, b_bs, b_gs, b_ns, b_ls, gs_b, c_bs, c_gs, c_ns, c_ls, gs_c,
                       HAS_Z: tl.constexpr, CHUNK_: tl.constexpr, BLOCK_D_: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D_ + tl.arange(0, BLOCK_D_)
    ns = tl.arange(0, BLOCK_N)
    dm = ds < dim
    m2 = dm[:, None] & (ns < N)[None, :]
    dn = ds[:, None] * N + ns[None, :]
    A = tl.load(a_ptr + dn, mask=m2, other=0.0)
    x = tl.load(h0_ptr + b * dim * N + dn, mask=m2, other=0.0)
    Dv = tl.load(d_ptr + ds, mask=dm, other=0.0)
    b_off = b * b_bs + (ds // gs_b)[:, None] * b_gs + ns[None, :] * b_ns
    c_off = b * c_bs + (ds // gs_c)[:, None] * c_gs + ns[None, :] * c_ns
    row = (b * dim + ds) * L
    for l in range(L):
        if l % CHUNK_ == 0:
            tl.store(ckpt_ptr + (b * n_chunks + l // CHUNK_) * dim * N + dn, x, mask=m2)
        dt = tl.load(dt_ptr + row + l, mask=dm, other=0.0)
        uu = tl.load(u_ptr + row + l, mask=dm, other=0.0)
        Bt = tl.load(b_ptr + b_off + l * b_ls, mask=m2, other=0.0)
        Ct = tl.load(c_ptr + c_off + l * c_ls, mask=m2, other=0.0)
        x = tl.exp(dt[:, None] * A) * x + (dt * uu)[:, None] * Bt
        y = tl.sum(x * Ct, axis=1) + Dv * uu
        if HAS_Z:
            y = y * tl.load(gate_ptr + row + l, mask=dm, other=0.0)
        tl.store(out_ptr + row + l, y, mask=dm)
    tl.store(last_ptr + b * dim * N + dn, x, mask=m2)


@triton.jit
def _ss_backward_kernel(gout_ptr, glast_ptr, u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, gate_ptr, ckpt_ptr,
                        scratch_ptr, du_ptr, ddt_ptr, da_ptr, db_ptr, dc_ptr, dd_ptr, dgate_ptr, dh0_ptr,
                        dim, L, N, n_chunks, b_bs, b_gs, b_ns, b_ls, gs_b, c_bs, c_gs, c_ns, c_ls, gs_c,
                        HAS_Z: tl.constexpr, CHUNK_: tl.constexpr, BLOCK_D_: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D_ + tl.arange(0, BLOCK_D_)
    ns = tl.arange(0, BLOCK_N)
    dm = ds < dim
    m2 = dm[:, None] & (ns < N)[None, :]
    dn = ds[:, None] * N + ns[None, :]
    A = tl.load(a_ptr + dn, mask=m2, other=0.0)
    Dv = tl.load(d_ptr + ds, mask=dm, other=0.0)
    dx = tl.load(glast_ptr + b * dim * N + dn, mask=m2, other=0.0)
    dA_acc = tl.zeros_like(dx)
    dD_acc = tl.zeros_like(Dv)
    b_off = b * b_bs + (ds // gs_b)[:, None] * b_gs + ns[None, :] * b_ns
    c_off = b * c_bs + (ds // gs_c)[:, None] * c_gs + ns[None, :] * c_ns
    row = (b * dim + ds) * L
    scratch = scratch_ptr + b * (CHUNK_ + 1) * dim * N + dn
    for cc in range(n_chunks):
        c = n_chunks - 1 - cc
        start = c * CHUNK_
        stop = tl.minimum(L, start + CHUNK_)
        # recompute the chunk's states from its checkpoint
        x = tl.load(ckpt_ptr + (b * n_chunks + c) * dim * N + dn, mask=m2, other=0.0)
        tl.store(scratch, x, mask=m2)
        for l in range(start, stop):
            dt = tl.load(dt_ptr + row + l, mask=dm, other=0.0)
            uu = tl.load(u_ptr + row + l, mask=dm, other=0.0)
            Bt = tl.load(b_ptr + b_off + l * b_ls, mask=m2, other=0.0)
            x = tl.exp(dt[:, None] * A) * x + (dt * uu)[:, None] * Bt
            tl.store(scratch + (l - start + 1) * dim * N, x, mask=m2)
        tl.debug_barrier()
        # adjoint recurrence backwards through the chunk
        for ll in range(start, stop):
            l = stop - 1 - (ll - start)
            k = l - start
            x_prev = tl.load(scratch + k * dim * N, mask=m2, other=0.0)
            x_cur = tl.load(scratch + (k + 1) * dim * N, mask=m2, other=0.0)
            dt = tl.load(dt_ptr + row + l, mask=dm, other=0.0)
            uu = tl.load(u_ptr + row + l, mask=dm, other=0.0)
            Bt = tl.load(b_ptr + b_off + l * b_ls, mask=m2, other=0.0)
            Ct = tl.load(c_ptr + c_off + l * c_ls, mask=m2, other=0.0)
            g = tl.load(gout_ptr + row + l, mask=dm, other=0.0)
            if HAS_Z:
                y = tl.sum(x_cur * Ct, axis=1) + Dv * uu
                tl.store(dgate_ptr + row + l, g * y, mask=dm)
                g = g * tl.load(gate_ptr + row + l, mask=dm, other=0.0)
            dD_acc += g * uu
            tl.atomic_add(dc_ptr + c_off + l * c_ls, g[:, None] * x_cur, mask=m2)
            dec = tl.exp(dt[:, None] * A)
            dxn = dx + g[:, None] * Ct
            t = dxn * x_prev * dec
            dA_acc += t * dt[:, None]
            dxb = tl.sum(dxn * Bt, axis=1)
            tl.store(ddt_ptr + row + l, tl.sum(t * A, axis=1) + dxb * uu, mask=dm)
            tl.store(du_ptr + row + l, g * Dv + dt * dxb, mask=dm)
            tl.atomic_add(db_ptr + b_off + l * b_ls, dxn * (dt * uu)[:, None], mask=m2)
            dx = dxn * dec
        tl.debug_barrier()
    tl.store(dh0_ptr + b * dim * N + dn, dx, mask=m2)
    tl.atomic_add(da_ptr + dn, dA_acc, mask=m2)
    tl.atomic_add(dd_ptr + ds, dD_acc, mask=dm)


def _bc_strides(M: torch.Tensor, dim: int) -> tuple[int, int, int, int, int]:
    """Strides (batch, group, n, time) of a canonical ``(Bb, G, N, Lb)`` tensor, 0 where broadcast."""
    bb, groups, n, lb = M.shape
    return (groups * n * lb if bb > 1 else 0, n * lb, lb, 1 if lb > 1 else 0, dim // groups)


def _launch_args(u, A, B, C):
    batch, dim, length = u.shape
    n_state = A.shape[1]
    grid = (batch, triton.cdiv(dim, BLOCK_D))
    meta = dict(CHUNK_=CHUNK, BLOCK_D_=BLOCK_D, BLOCK_N=triton.next_power_of_2(n_state))
    return grid, (dim, length, n_state, -(-length // CHUNK), *_bc_strides(B, dim), *_bc_strides(C, dim)), meta


def forward(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, channels_last=False):
    """Same contract as :func:`neurostep.kernels.selective_scan.reference.forward` (saved: checkpoints). The
    kernels read time-contiguous lanes: a channels-last call runs on transposed copies."""
    if channels_last:
        return forward_via_channels_first(forward, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus)
    batch, dim, length = u.shape
    n_state = A.shape[1]
    dt = effective_delta(delta, delta_bias, delta_softplus).contiguous()
    gate = F.silu(z).contiguous() if z is not None else u.new_empty(1)
    Dv = D if D is not None else u.new_zeros(dim)
    h0 = h0 if h0 is not None else u.new_zeros(batch, dim, n_state)
    out = torch.empty_like(u)
    last = u.new_empty(batch, dim, n_state)
    ckpt = u.new_empty(saved_shape(batch, dim, length, n_state))
    grid, sizes, meta = _launch_args(u, A, B, C)
    _ss_forward_kernel[grid](u, dt, A, B, C, Dv, gate, h0, out, last, ckpt, *sizes, HAS_Z=z is not None, **meta)
    return out, last, ckpt


def backward(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, h0, saved, delta_softplus,
             channels_last=False):
    """Same contract as :func:`neurostep.kernels.selective_scan.reference.backward`."""
    if channels_last:
        return backward_via_channels_first(backward, grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, h0,
                                           saved, delta_softplus)
    batch, dim, length = u.shape
    n_state = A.shape[1]
    dt = effective_delta(delta, delta_bias, delta_softplus).contiguous()
    gate = F.silu(z).contiguous() if z is not None else u.new_empty(1)
    Dv = D if D is not None else u.new_zeros(dim)
    glast = grad_last if grad_last is not None else u.new_zeros(batch, dim, n_state)
    scratch = u.new_empty(batch, CHUNK + 1, dim, n_state)
    du, ddt = torch.empty_like(u), torch.empty_like(u)
    dA, dB, dC, dD = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C), u.new_zeros(dim)
    dgate = torch.empty_like(u) if z is not None else u.new_empty(1)
    dh0 = u.new_empty(batch, dim, n_state)
    grid, sizes, meta = _launch_args(u, A, B, C)
    _ss_backward_kernel[grid](grad_out, glast, u, dt, A, B, C, Dv, gate, saved, scratch, du, ddt, dA, dB, dC, dD,
                              dgate, dh0, *sizes, HAS_Z=z is not None, **meta)
    if delta_softplus:
        pre = delta if delta_bias is None else delta + delta_bias[:, None]
        ddt = ddt * torch.where(pre <= SOFTPLUS_THRESHOLD, torch.sigmoid(pre), torch.ones_like(pre))
    dz = None
    if z is not None:
        sz = torch.sigmoid(z)
        dz = dgate * (sz * (1 + z * (1 - sz)))
    return (du, ddt, dA, dB, dC, dD if D is not None else None, dz,
            ddt.sum((0, 2)) if delta_bias is not None else None, dh0 if h0 is not None else None)
