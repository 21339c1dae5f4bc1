"""Depthwise causal 1-D convolution in Triton: fused forward and backward.

Programs cover (batch row, block of channels, block of time steps). The forward sums the ``W``
taps, reading the causal history from ``initial_states`` where ``t + k < W - 1``. The backward
first recomputes the pre-activation to form ``g = grad * silu'(pre)`` (one kernel), then one kernel
gives the input gradient as the transposed convolution of ``g`` (over the padded positions, so the
``initial_states`` gradient comes out of the same pass), and the weight and bias gradients are
accumulated per program with atomic adds. Runs on CUDA tensors, or on CPU tensors under
``TRITON_INTERPRET=1`` (how the tests run it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from neurostep.kernels.causal_conv1d.reference import backward_via_channels_first, forward_via_channels_first

BLOCK_D = 16
BLOCK_T = 32


@triton.jit
def _load_padded(x_ptr, init_ptr, bi, ds, dm, p, D, L, WM1, HAS_INIT: tl.constexpr):
    """xpad[bi, ds, p] for padded positions p (a (BLOCK_D, BLOCK_T) tile): history where p < W-1."""
    in_x = (p >= WM1) & (p < L + WM1)
    v = tl.load(x_ptr + (bi * D + ds[:, None]) * L + (p - WM1), mask=dm[:, None] & in_x, other=0.0)
    if HAS_INIT:
        in_h = (p >= 0) & (p < WM1)
        h = tl.load(init_ptr + (bi * D + ds[:, None]) * WM1 + p, mask=dm[:, None] & in_h, other=0.0)
        v = tl.where(in_h, h, v)
    return v


@triton.jit
def _cc_forward_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, out_ptr, D, L, W, SILU: tl.constexpr,
                       HAS_INIT: tl.constexpr, BLOCK_D_: tl.constexpr, BLOCK_T_: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D_ + tl.arange(0, BLOCK_D_)
    ts = tl.program_id(2) * BLOCK_T_ + tl.arange(0, BLOCK_T_)
    dm = ds < D
    m2 = dm[:, None] & (ts < L)[None, :]
    acc = tl.zeros([BLOCK_D_, BLOCK_T_], dtype=out_ptr.dtype.element_ty) + tl.load(bias_ptr + ds, mask=dm,
                                                                                  other=0.0)[:, None]
    for k in range(W):
        wk = tl.load(w_ptr + ds * W + k, mask=dm, other=0.0)
        acc += wk[:, None] * _load_padded(x_ptr, init_ptr, bi, ds, dm, ts[None, :] + k, D, L, W - 1, HAS_INIT)
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    tl.store(out_ptr + (bi * D + ds[:, None]) * L + ts[None, :], acc, mask=m2)


@triton.jit
def _cc_grad_pre_kernel(gout_ptr, x_ptr, w_ptr, bias_ptr, init_ptr, g_ptr, D, L, W, HAS_INIT: tl.constexpr,
                        BLOCK_D_: tl.constexpr, BLOCK_T_: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D_ + tl.arange(0, BLOCK_D_)
    ts = tl.program_id(2) * BLOCK_T_ + tl.arange(0, BLOCK_T_)
    dm = ds < D
    m2 = dm[:, None] & (ts < L)[None, :]
    pre = tl.zeros([BLOCK_D_, BLOCK_T_], dtype=g_ptr.dtype.element_ty) + tl.load(bias_ptr + ds, mask=dm,
                                                                                other=0.0)[:, None]
    for k in range(W):
        wk = tl.load(w_ptr + ds * W + k, mask=dm, other=0.0)
        pre += wk[:, None] * _load_padded(x_ptr, init_ptr, bi, ds, dm, ts[None, :] + k, D, L, W - 1, HAS_INIT)
    s = 1.0 / (1.0 + tl.exp(-pre))
    off = (bi * D + ds[:, None]) * L + ts[None, :]
    g = tl.load(gout_ptr + off, mask=m2, other=0.0)
    tl.store(g_ptr + off, g * s * (1.0 + pre * (1.0 - s)), mask=m2)


@triton.jit
def _cc_backward_kernel(g_ptr, x_ptr, w_ptr, init_ptr, dxpad_ptr, dw_ptr, dbias_ptr, D, L, W,
                        HAS_INIT: tl.constexpr, BLOCK_D_: tl.constexpr, BLOCK_T_: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D_ + tl.arange(0, BLOCK_D_)
    ps = tl.program_id(2) * BLOCK_T_ + tl.arange(0, BLOCK_T_)  # padded positions 0 .. L + W - 2
    dm = ds < D
    P = L + W - 1
    acc = tl.zeros([BLOCK_D_, BLOCK_T_], dtype=dxpad_ptr.dtype.element_ty)
    # this program's output steps t = ps (for the weight and bias gradients)
    t_ok = dm[:, None] & (ps < L)[None, :]
    g_own = tl.load(g_ptr + (bi * D + ds[:, None]) * L + ps[None, :], mask=t_ok, other=0.0)
    tl.atomic_add(dbias_ptr + ds, tl.sum(g_own, axis=1), mask=dm)
    for k in range(W):
        wk = tl.load(w_ptr + ds * W + k, mask=dm, other=0.0)
        t = ps[None, :] - k
        g = tl.load(g_ptr + (bi * D + ds[:, None]) * L + t, mask=dm[:, None] & (t >= 0) & (t < L), other=0.0)
        acc += wk[:, None] * g
        xk = _load_padded(x_ptr, init_ptr, bi, ds, dm, ps[None, :] + k, D, L, W - 1, HAS_INIT)
        tl.atomic_add(dw_ptr + ds * W + k, tl.sum(g_own * xk, axis=1), mask=dm)
    tl.store(dxpad_ptr + (bi * D + ds[:, None]) * P + ps[None, :], acc, mask=dm[:, None] & (ps < P)[None, :])


def _grid(batch, dim, length):
    return (batch, triton.cdiv(dim, BLOCK_D), triton.cdiv(length, BLOCK_T))


def forward(x, weight, bias, initial_states, silu, channels_last):
    """Same contract as :func:`neurostep.kernels.causal_conv1d.reference.forward`. The kernels index the
    channels-first layout: channels-last tensors are transposed to it and back."""
    if channels_last:
        return forward_via_channels_first(forward, x, weight, bias, initial_states, silu)
    batch, dim, length = x.shape
    width = weight.shape[1]
    out = torch.empty_like(x)
    bias_ = bias if bias is not None else x.new_zeros(dim)
    init = initial_states if initial_states is not None else x.new_empty(1)
    _cc_forward_kernel[_grid(batch, dim, length)](x, weight, bias_, init, out, dim, length, width, SILU=bool(silu),
                                                  HAS_INIT=initial_states is not None, BLOCK_D_=BLOCK_D,
                                                  BLOCK_T_=BLOCK_T)
    return out, x.new_empty(0)


def backward(grad_out, x, weight, bias, initial_states, saved, silu, channels_last):
    """Same contract as :func:`neurostep.kernels.causal_conv1d.reference.backward` (channels-last tensors
    transposed, as in :func:`forward`)."""
    if channels_last:
        return backward_via_channels_first(backward, grad_out, x, weight, bias, initial_states, saved, silu)
    batch, dim, length = x.shape
    width = weight.shape[1]
    bias_ = bias if bias is not None else x.new_zeros(dim)
    init = initial_states if initial_states is not None else x.new_empty(1)
    has_init = initial_states is not None
    if silu:
        g = torch.empty_like(x)
        _cc_grad_pre_kernel[_grid(batch, dim, length)](grad_out, x, weight, bias_, init, g, dim, length, width,
                                                       HAS_INIT=has_init, BLOCK_D_=BLOCK_D, BLOCK_T_=BLOCK_T)
    else:
        g = grad_out
    dxpad = x.new_empty(batch, dim, length + width - 1)
    dw = torch.zeros_like(weight)
    dbias = x.new_zeros(dim)
    _cc_backward_kernel[_grid(batch, dim, length + width - 1)](g, x, weight, init, dxpad, dw, dbias, dim, length,
                                                               width, HAS_INIT=has_init, BLOCK_D_=BLOCK_D,
                                                               BLOCK_T_=BLOCK_T)
    dx = dxpad[..., width - 1:].clone()
    dinit = dxpad[..., :width - 1].clone() if has_init else None
    return dx, dw, (dbias if bias is not None else None), dinit
