"""``mamba_ssm.ops.selective_scan_interface`` on neurostep's selective-scan kernel.

Mirrors mamba-ssm (state-spaces/mamba, ``mamba_ssm/ops/selective_scan_interface.py`` at e9594ce;
Apache-2.0, Copyright (c) 2023 Tri Dao, Albert Gu) and the extra functions of Vision Mamba's
fork (hustvl/Vim, ``mamba-1p1p1``: ``mamba_inner_fn_no_out_proj``, ``bimamba_inner_fn``,
``bimamba_inner_ref``). ``selective_scan_fn`` runs :func:`neurostep.kernels.selective_scan.selective_scan`
(numba on CPU, Triton on CUDA) with gradients in every input; the fused ``mamba_inner_fn`` paths
chain neurostep's causal convolution, the projections and the scan, so autograd differentiates
them without a hand-written backward. ``selective_scan_ref`` and ``mamba_inner_ref`` are
upstream's PyTorch references, transcribed.

Complex ``A`` (upstream's S4D-complex option) runs through ``selective_scan_ref`` in PyTorch:
correct and differentiable, but slower and with memory O(batch x dim x L x N); real ``A`` never
takes that branch. Unlike upstream, the gradient of a returned last state is propagated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neurostep.compat.causal_conv1d.causal_conv1d_interface import causal_conv1d_fn
from neurostep.kernels.causal_conv1d import causal_conv1d as _causal_conv1d
from neurostep.kernels.selective_scan import selective_scan as _selective_scan

__all__ = [
    "BiMambaInnerFn",
    "MambaInnerFn",
    "MambaInnerFnNoOutProj",
    "SelectiveScanFn",
    "bimamba_inner_fn",
    "bimamba_inner_ref",
    "mamba_inner_fn",
    "mamba_inner_fn_no_out_proj",
    "mamba_inner_ref",
    "rms_norm_forward",
    "selective_scan_fn",
    "selective_scan_ref",
]


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """if return_last_state is True, returns (out, last_state)
    last_state has shape (batch, dim, dstate).

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (dim, N), (batch, N, L) or (batch, G, N, L);
    D, delta_bias: (dim,). ``out`` has ``u``'s dtype.
    """
    if isinstance(A, torch.Tensor) and A.is_complex():
        return _selective_scan_complex(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    out, last = _selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                output_final_state=bool(return_last_state))
    return (out, last) if return_last_state else out


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """
    u: r(B D L)
    delta: r(B D L)
    A: c(D N) or r(D N)
    B: c(D N) or r(B N L) or r(B N 2L) or r(B G N L) or (B G N L)
    C: c(D N) or r(B N L) or r(B N 2L) or r(B G N L) or (B G N L)
    D: r(D)
    z: r(B D L)
    delta_bias: r(D), fp32

    out: r(B D L)
    last_state (optional): r(B D dstate) or c(B D dstate)
    """
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    is_variable_B = B.dim() >= 3
    is_variable_C = C.dim() >= 3
    if A.is_complex():
        if is_variable_B:
            B = torch.view_as_complex(B.float().unflatten(-1, (-1, 2)).contiguous())
        if is_variable_C:
            C = torch.view_as_complex(C.float().unflatten(-1, (-1, 2)).contiguous())
    else:
        B = B.float()
        C = C.float()
    x = A.new_zeros((batch, dim, dstate))
    ys = []
    deltaA = torch.exp(torch.einsum('bdl,dn->bdln', delta, A))
    if not is_variable_B:
        deltaB_u = torch.einsum('bdl,dn,bdl->bdln', delta, B, u)
    else:
        if B.dim() == 3:
            deltaB_u = torch.einsum('bdl,bnl,bdl->bdln', delta, B, u)
        else:
            B = B.repeat_interleave(dim // B.shape[1], dim=1)
            deltaB_u = torch.einsum('bdl,bdnl,bdl->bdln', delta, B, u)
    if is_variable_C and C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    last_state = None
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        if not is_variable_C:
            y = torch.einsum('bdn,dn->bd', x, C)
        else:
            if C.dim() == 3:
                y = torch.einsum('bdn,bn->bd', x, C[:, :, i])
            else:
                y = torch.einsum('bdn,bdn->bd', x, C[:, :, :, i])
        if i == u.shape[2] - 1:
            last_state = x
        if y.is_complex():
            y = y.real * 2
        ys.append(y)
    y = torch.stack(ys, dim=2)  # (batch dim L)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype=dtype_in)
    return out if not return_last_state else (out, last_state)


def _complex_bc(M, dim):
    """Complex B/C as ``(dim, N)``, or ``(batch, dim, N, L)`` from upstream's interleaved real layout."""
    if M.dim() < 3:
        return M
    M = torch.view_as_complex(M.float().unflatten(-1, (-1, 2)).contiguous())  # (b, N, L) or (b, G, N, L)
    if M.dim() == 3:
        return M[:, None]
    return M.repeat_interleave(dim // M.shape[1], dim=1)


def _selective_scan_complex(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """Complex ``A``: upstream's semantics (``y = 2 Re<h, C>``) as a PyTorch loop that autograd differentiates.

    The same recurrence as ``selective_scan_ref`` with two elementwise ops per step and the
    readout vectorised after the loop (the reference runs an einsum per step).
    """
    dtype_in = u.dtype
    uf, dt = u.float(), delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias[..., None].float()
    if delta_softplus:
        dt = F.softplus(dt)
    dim = A.shape[0]
    Bc, Cc = _complex_bc(B, dim), _complex_bc(C, dim)
    dA = torch.exp(dt[..., None] * A[:, None, :])  # (b, d, l, n)
    if Bc.dim() == 2:
        dBu = (dt * uf)[..., None] * Bc[:, None, :]
    else:
        dBu = (dt * uf)[..., None] * Bc.transpose(-1, -2)
    x = dA.new_zeros(dA.shape[0], dim, A.shape[1])
    states = []
    # unbind, not dA[:, :, i]: the backward of each index would materialise a full-size zero gradient
    for dA_i, dBu_i in zip(dA.unbind(2), dBu.unbind(2)):
        x = dA_i * x + dBu_i
        states.append(x)
    hs = torch.stack(states, dim=2)  # (b, d, l, n)
    y = (hs * (Cc[:, None, :] if Cc.dim() == 2 else Cc.transpose(-1, -2))).sum(-1).real * 2
    out = y if D is None else y + uf * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype=dtype_in)
    return out if not return_last_state else (out, x)


def rms_norm_forward(x, weight, bias, eps=1e-6, is_rms_norm=True):
    """Row-wise RMSNorm (LayerNorm if not ``is_rms_norm``) of ``x (rows, d)`` in fp32, back in ``x``'s dtype."""
    xf = x.float() if x.dtype != torch.float64 else x
    w = weight.to(xf.dtype)
    b = None if bias is None else bias.to(xf.dtype)
    if is_rms_norm:
        y = F.rms_norm(xf, (x.shape[-1],), w, eps)
        y = y if b is None else y + b
    else:
        y = F.layer_norm(xf, (x.shape[-1],), w, b, eps)
    return y.to(x.dtype)


def _conv_weight_2d(conv1d_weight: torch.Tensor) -> torch.Tensor:
    """``(d, 1, w)`` -> ``(d, w)``."""
    return conv1d_weight.reshape(conv1d_weight.shape[0], conv1d_weight.shape[-1])


def _split_bc(M, bias, is_complex):
    """``(b, l, N)`` rows of ``x_dbl`` -> ``(b, N, L)`` real, or ``(b, N/2, 2L)`` interleaved for complex A."""
    if bias is not None:
        M = M + bias.to(dtype=M.dtype)
    if not is_complex:
        return M.transpose(1, 2)
    batch, length, two_n = M.shape
    return M.reshape(batch, length, two_n // 2, 2).permute(0, 2, 1, 3).reshape(batch, two_n // 2, 2 * length)


def _inner_scan_inputs(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C,
                       B_proj_bias, C_proj_bias, b_rms_weight=None, c_rms_weight=None, dt_rms_weight=None,
                       b_c_dt_rms_eps=1e-6):
    """Conv + SiLU, x_proj, dt projection and B/C of the fused Mamba path: ``(x, z, delta, B, C)``."""
    if xz.dim() != 3 or xz.shape[1] % 2:
        raise ValueError(f"xz must have shape (batch, 2 * dim, seqlen), got {tuple(xz.shape)}")
    length = xz.shape[-1]
    delta_rank = delta_proj_weight.shape[1]
    is_complex = A.is_complex()
    d_state = A.shape[-1] * (2 if is_complex else 1)
    x, z = xz.chunk(2, dim=1)
    xc, _ = _causal_conv1d(x, _conv_weight_2d(conv1d_weight), conv1d_bias, "silu")
    x_dbl = F.linear(xc.transpose(1, 2), x_proj_weight)  # (b, l, delta_rank + ...)
    # (dim, rank) @ (b, rank, l): delta comes out (b, dim, l), the scan's layout, with no transpose copy.
    delta = torch.matmul(delta_proj_weight, x_dbl[..., :delta_rank].transpose(1, 2))
    if B is None:
        B = _split_bc(x_dbl[..., delta_rank:delta_rank + d_state], B_proj_bias, is_complex)
        if b_rms_weight is not None:
            B = rms_norm_forward(B.transpose(1, 2), b_rms_weight, None, eps=b_c_dt_rms_eps).transpose(1, 2)
    if C is None:
        C = _split_bc(x_dbl[..., x_dbl.shape[-1] - d_state:], C_proj_bias, is_complex)
        if c_rms_weight is not None:
            C = rms_norm_forward(C.transpose(1, 2), c_rms_weight, None, eps=b_c_dt_rms_eps).transpose(1, 2)
    if dt_rms_weight is not None:
        delta = rms_norm_forward(delta.transpose(1, 2), dt_rms_weight, None, eps=b_c_dt_rms_eps).transpose(1, 2)
    assert delta.shape[-1] == length
    return xc, z, delta, B, C


def _out_proj(y, out_proj_weight, out_proj_bias):
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def mamba_inner_fn(
    xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
    out_proj_weight, out_proj_bias,
    A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None,
    C_proj_bias=None, delta_softplus=True, checkpoint_lvl=1, b_rms_weight=None, c_rms_weight=None,
    dt_rms_weight=None, b_c_dt_rms_eps=1e-6
):
    """The fused Mamba block after ``in_proj``: ``xz (batch, 2 * dim, L)`` -> ``(batch, L, out_dim)``.

    ``checkpoint_lvl`` is accepted for compatibility; neurostep's scan never stores per-step states.
    """
    x, z, delta, B, C = _inner_scan_inputs(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A,
                                           B, C, B_proj_bias, C_proj_bias, b_rms_weight, c_rms_weight,
                                           dt_rms_weight, b_c_dt_rms_eps)
    y = selective_scan_fn(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    return _out_proj(y, out_proj_weight, out_proj_bias)


def mamba_inner_fn_no_out_proj(
    xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
    A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None,
    C_proj_bias=None, delta_softplus=True, checkpoint_lvl=1
):
    """Vision Mamba's variant: the gated scan output ``(batch, dim, L)``, before ``out_proj``."""
    x, z, delta, B, C = _inner_scan_inputs(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A,
                                           B, C, B_proj_bias, C_proj_bias)
    return selective_scan_fn(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)


def bimamba_inner_fn(
    xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
    out_proj_weight, out_proj_bias,
    A, A_b, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None,
    C_proj_bias=None, delta_softplus=True, checkpoint_lvl=1
):
    """Vision Mamba's "v1" bidirectional block: one conv and projection, a forward scan with ``A`` and
    a scan of the flipped sequence with ``A_b``, summed before ``out_proj``."""
    if A_b.is_complex():
        raise ValueError("A_b should not be complex (Vision Mamba's bimamba_inner_fn asserts it too)")
    x, z, delta, B, C = _inner_scan_inputs(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A,
                                           B, C, B_proj_bias, C_proj_bias)
    y_f = selective_scan_fn(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    flip = [-1]
    y_b = selective_scan_fn(x.flip(flip), delta.flip(flip), A_b, B.flip(flip) if B.dim() >= 3 else B,
                            C.flip(flip) if C.dim() >= 3 else C, D, z=z.flip(flip), delta_bias=delta_bias,
                            delta_softplus=delta_softplus)
    return _out_proj(y_f + y_b.flip(flip), out_proj_weight, out_proj_bias)


def _ref_scan_inputs(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C,
                     B_proj_bias, C_proj_bias):
    """Upstream's reference preparation (through ``causal_conv1d_fn``), shared by the two ``_ref`` functions."""
    L = xz.shape[-1]
    delta_rank = delta_proj_weight.shape[1]
    d_state = A.shape[-1] * (1 if not A.is_complex() else 2)
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_fn(x, _conv_weight_2d(conv1d_weight), conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2).reshape(-1, x.shape[1]), x_proj_weight)  # (bl d)
    delta = delta_proj_weight @ x_dbl[:, :delta_rank].t()
    delta = delta.reshape(delta.shape[0], -1, L).transpose(0, 1)  # "d (b l) -> b d l"
    batch = xz.shape[0]
    if B is None:  # variable B
        B = _split_bc(x_dbl[:, delta_rank:delta_rank + d_state].reshape(batch, L, d_state), B_proj_bias,
                      A.is_complex()).contiguous()
    if C is None:  # variable C
        C = _split_bc(x_dbl[:, -d_state:].reshape(batch, L, d_state), C_proj_bias, A.is_complex()).contiguous()
    return x, z, delta, B, C


def mamba_inner_ref(
    xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
    out_proj_weight, out_proj_bias,
    A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None,
    C_proj_bias=None, delta_softplus=True
):
    x, z, delta, B, C = _ref_scan_inputs(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C,
                                         B_proj_bias, C_proj_bias)
    y = selective_scan_fn(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def bimamba_inner_ref(
    xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
    out_proj_weight, out_proj_bias,
    A, A_b, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None,
    C_proj_bias=None, delta_softplus=True
):
    x, z, delta, B, C = _ref_scan_inputs(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C,
                                         B_proj_bias, C_proj_bias)
    y = selective_scan_fn(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True)
    y_b = selective_scan_fn(x.flip([-1]), delta.flip([-1]), A_b, B.flip([-1]), C.flip([-1]), D, z.flip([-1]),
                            delta_bias, delta_softplus=True)
    y = y + y_b.flip([-1])
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


class SelectiveScanFn:
    """Upstream's autograd Function name, for code that calls ``SelectiveScanFn.apply(...)``."""

    @staticmethod
    def apply(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


class MambaInnerFn:
    """Upstream's autograd Function name, for code that calls ``MambaInnerFn.apply(...)``."""

    apply = staticmethod(mamba_inner_fn)


class MambaInnerFnNoOutProj:
    """Vision Mamba's autograd Function name for :func:`mamba_inner_fn_no_out_proj`."""

    apply = staticmethod(mamba_inner_fn_no_out_proj)


class BiMambaInnerFn:
    """Vision Mamba's autograd Function name for :func:`bimamba_inner_fn`."""

    apply = staticmethod(bimamba_inner_fn)
