"""``mamba_ssm.ops.selective_scan_interface``: the selective scan and the fused Mamba-block functions.

Per lane ``(b, d)`` and state index ``n``, with ``dt = softplus(delta + delta_bias)`` when
``delta_softplus``::

    h_l = exp(dt_l A[d, n]) h_{l-1} + dt_l B_l[n] u_l ;   out_l = (<h_l, C_l> + D[d] u_l) * silu(z_l)

:func:`selective_scan_fn` runs :func:`neurostep.kernels.selective_scan.selective_scan` (numba on
CPU, Triton on CUDA), differentiable in every input including a returned last state. A complex
``A`` (S4D-complex, where the readout is ``2 Re<h, C>``) instead goes through :func:`_scan_loop`,
a PyTorch loop that autograd differentiates: correct, slower, memory ``O(batch dim L N)``.

``mamba_inner_fn`` and its Vision Mamba variants (``mamba_inner_fn_no_out_proj``,
``bimamba_inner_fn``) chain the causal conv, ``x_proj``, the step-size projection and the scan;
autograd provides the backward. The ``*_ref`` functions are plain-PyTorch oracles built
independently of those fused paths (the loop scan, the public ``causal_conv1d_fn``).
The ``*Fn`` classes only carry ``apply``, for callers written against upstream's autograd Functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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


# -- the scan ---------------------------------------------------------------------------------------

def selective_scan_fn(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False, return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan over ``L`` steps.

    Args:
        u, delta: ``(batch, dim, L)``; z: ``(batch, dim, L)`` or None (no gate).
        A: ``(dim, N)``, real or complex.
        B, C: ``(dim, N)`` (constant), ``(batch, N, L)`` or grouped ``(batch, G, N, L)``; for a
            complex ``A`` the variable forms hold real/imaginary pairs along the last axis (``2L``).
        D, delta_bias: ``(dim,)`` or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return ``h_{L-1}``.

    Returns:
        ``out (batch, dim, L)`` in ``u``'s dtype, or ``(out, last_state (batch, dim, N))``.
    """
    if isinstance(A, Tensor) and A.is_complex():
        return _scan_loop(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    out, last = _selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                output_final_state=bool(return_last_state))
    return (out, last) if return_last_state else out


def selective_scan_ref(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False, return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`selective_scan_fn` computed by :func:`_scan_loop`: the PyTorch oracle the kernels are tested against.

    Same arguments and return convention; fp32 arithmetic (fp64 for fp64 ``u``).
    """
    return _scan_loop(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def _lanes_bc(M: Tensor, dim: int, complex_A: bool, cdtype: torch.dtype) -> Tensor:
    """B or C in a layout that broadcasts against ``(batch, dim, L, N)``.

    Constant ``(dim, N)`` -> ``(1, dim, 1, N)``; ``(batch, N, L)`` -> ``(batch, 1, L, N)``;
    grouped ``(batch, G, N, L)`` -> ``(batch, dim, L, N)`` (lane ``d`` takes group ``d // (dim / G)``).
    For a complex ``A`` the variable forms' interleaved ``2L`` axis becomes ``L`` complex values.
    """
    if M.dim() == 2:
        return (M if M.is_complex() else M.to(cdtype))[None, :, None, :]
    M = M.to(cdtype)
    if complex_A:
        M = torch.view_as_complex(M.unflatten(-1, (-1, 2)).contiguous())
    M = M.unsqueeze(1) if M.dim() == 3 else M.repeat_interleave(dim // M.shape[1], dim=1)
    return M.transpose(-1, -2)


def _scan_loop(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool, return_last_state: bool,
) -> Tensor | tuple[Tensor, Tensor]:
    """The scan as a Python loop over time that autograd differentiates; real or complex ``A``.

    The per-step work is two elementwise ops on ``(batch, dim, N)``; the readout against ``C``
    runs once on the stacked states. With a complex ``A`` the output is ``2 Re<h, C>``.
    """
    cdtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    dim, complex_A = A.shape[0], A.is_complex()
    uc = u.to(cdtype)
    dt = delta.to(cdtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdtype).unsqueeze(-1)
    if delta_softplus:
        dt = F.softplus(dt)
    rates = A if complex_A else A.to(cdtype)
    decay = torch.exp(dt.unsqueeze(-1) * rates[:, None, :])  # (batch, dim, L, N)
    drive = (dt * uc).unsqueeze(-1) * _lanes_bc(B, dim, complex_A, cdtype)
    h = decay.new_zeros(decay.shape[0], dim, A.shape[1])
    history = []
    # unbind rather than index: indexing's backward would allocate a full-size zero gradient per step
    for a_t, b_t in zip(decay.unbind(2), drive.unbind(2)):
        h = a_t * h + b_t
        history.append(h)
    y = (torch.stack(history, dim=2) * _lanes_bc(C, dim, complex_A, cdtype)).sum(-1)
    if y.is_complex():
        y = 2 * y.real
    if D is not None:
        y = y + D.to(cdtype).unsqueeze(-1) * uc
    if z is not None:
        y = y * F.silu(z.to(cdtype))
    out = y.to(u.dtype)
    return (out, h) if return_last_state else out


# -- pieces of the fused block ------------------------------------------------------------------------

def rms_norm_forward(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float = 1e-6,
is_rms_norm: bool = True) -> Tensor:
    """Normalise each row of ``x (..., d)`` (RMSNorm, or LayerNorm when not ``is_rms_norm``), weight and bias applied.

    Computed in fp32 (fp64 stays fp64) and returned in ``x``'s dtype.
    """
    work = x if x.dtype == torch.float64 else x.float()
    w = weight.to(work.dtype)
    b = None if bias is None else bias.to(work.dtype)
    width = (x.shape[-1],)
    if is_rms_norm:
        y = F.rms_norm(work, width, w, eps)
        if b is not None:
            y = y + b
    else:
        y = F.layer_norm(work, width, w, b, eps)
    return y.to(x.dtype)


def _norm_over_channels(M: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """RMSNorm of ``M (batch, channels, L)`` over its channel axis (identity when ``weight`` is None)."""
    return M if weight is None else rms_norm_forward(M.mT, weight, None, eps=eps).mT


def _bc_from_rows(rows: Tensor, bias: Tensor | None, complex_A: bool) -> Tensor:
    """A B or C block of ``x_proj``'s output, ``(batch, L, N')`` -> the scan's ``(batch, N', L)``.

    For a complex ``A``, ``N' = 2N`` real/imaginary pairs are moved next to each other along
    time: ``(batch, N, 2L)``.
    """
    if bias is not None:
        rows = rows + bias.to(rows.dtype)
    if not complex_A:
        return rows.mT
    batch, length, width = rows.shape
    pairs = rows.view(batch, length, width // 2, 2).permute(0, 2, 1, 3)
    return pairs.reshape(batch, width // 2, 2 * length)


def _selection(x_dbl: Tensor, delta_proj_weight: Tensor, A: Tensor, B: Tensor | None, C: Tensor | None,
               B_proj_bias: Tensor | None, C_proj_bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``delta (batch, dim, L)`` and ``B``, ``C`` from ``x_dbl (batch, L, R + 2N')`` (given B/C are kept)."""
    rank = delta_proj_weight.shape[1]
    width = A.shape[-1] * (2 if A.is_complex() else 1)
    # (dim, R) @ (batch, R, L) lands directly in the scan's (batch, dim, L) layout
    delta = delta_proj_weight @ x_dbl[..., :rank].mT
    if B is None:
        B = _bc_from_rows(x_dbl[..., rank:rank + width], B_proj_bias, A.is_complex())
    if C is None:
        C = _bc_from_rows(x_dbl[..., x_dbl.shape[-1] - width:], C_proj_bias, A.is_complex())
    return delta, B, C


def _conv_and_select(
    xz: Tensor, conv1d_weight: Tensor, conv1d_bias: Tensor | None, x_proj_weight: Tensor, delta_proj_weight: Tensor,
    A: Tensor, B: Tensor | None, C: Tensor | None, B_proj_bias: Tensor | None, C_proj_bias: Tensor | None,
    b_rms_weight: Tensor | None = None,
    c_rms_weight: Tensor | None = None, dt_rms_weight: Tensor | None = None, eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Everything before the scan in the fused block: ``(x, z, delta, B, C)`` from ``xz (batch, 2 dim, L)``."""
    if xz.dim() != 3 or xz.shape[1] % 2:
        raise ValueError(f"xz is (batch, 2 * dim, seqlen); got shape {tuple(xz.shape)}")
    x, z = xz.chunk(2, dim=1)
    x, _ = _causal_conv1d(x, conv1d_weight.reshape(conv1d_weight.shape[0], -1), conv1d_bias, "silu")
    x_dbl = F.linear(x.mT, x_proj_weight)  # (batch, L, R + 2N')
    given_B, given_C = B, C
    delta, B, C = _selection(x_dbl, delta_proj_weight, A, B, C, B_proj_bias, C_proj_bias)
    if given_B is None:
        B = _norm_over_channels(B, b_rms_weight, eps)
    if given_C is None:
        C = _norm_over_channels(C, c_rms_weight, eps)
    return x, z, _norm_over_channels(delta, dt_rms_weight, eps), B, C


def _reverse_time(M: Tensor) -> Tensor:
    """Flip the last (time) axis of a per-step tensor; a constant ``(dim, N)`` B/C is returned as is."""
    return M.flip(-1) if M.dim() >= 3 else M


def _project_out(y: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``(batch, dim, L)`` -> ``(batch, L, out)``."""
    return F.linear(y.mT, weight, bias)


# -- fused block functions -----------------------------------------------------------------------------

def mamba_inner_fn(
    xz: Tensor, conv1d_weight: Tensor, conv1d_bias: Tensor | None, x_proj_weight: Tensor, delta_proj_weight: Tensor,
    out_proj_weight: Tensor, out_proj_bias: Tensor | None, A: Tensor, B: Tensor | None = None, C: Tensor | None = None,
    D: Tensor | None = None, delta_bias: Tensor | None = None, B_proj_bias: Tensor | None = None,
    C_proj_bias: Tensor | None = None, delta_softplus: bool = True, checkpoint_lvl: int = 1,
    b_rms_weight: Tensor | None = None, c_rms_weight: Tensor | None = None, dt_rms_weight: Tensor | None = None,
    b_c_dt_rms_eps: float = 1e-6,
) -> Tensor:
    """A Mamba layer after ``in_proj``: ``xz (batch, 2 dim, L)`` -> ``(batch, L, out)``.

    ``xz`` holds the conv input and the gate ``z``. ``conv1d_weight (dim, 1, W)``,
    ``x_proj_weight (R + 2N, dim)``, ``delta_proj_weight (dim, R)``, ``out_proj_weight (out, dim)``.
    ``B`` / ``C`` given explicitly replace the projected ones; ``B_proj_bias`` / ``C_proj_bias`` and
    the ``*_rms_weight`` norms (over channels, ``eps = b_c_dt_rms_eps``) shape the projected ones.
    ``checkpoint_lvl`` is accepted and has no effect: the scan stores no per-step states.
    """
    x, z, delta, B, C = _conv_and_select(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B,
                                         C, B_proj_bias, C_proj_bias, b_rms_weight, c_rms_weight, dt_rms_weight,
                                         b_c_dt_rms_eps)
    y = selective_scan_fn(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    return _project_out(y, out_proj_weight, out_proj_bias)


def mamba_inner_fn_no_out_proj(
    xz: Tensor, conv1d_weight: Tensor, conv1d_bias: Tensor | None, x_proj_weight: Tensor, delta_proj_weight: Tensor,
    A: Tensor, B: Tensor | None = None, C: Tensor | None = None, D: Tensor | None = None,
    delta_bias: Tensor | None = None, B_proj_bias: Tensor | None = None, C_proj_bias: Tensor | None = None,
    delta_softplus: bool = True, checkpoint_lvl: int = 1,
) -> Tensor:
    """:func:`mamba_inner_fn` stopped before ``out_proj``: the gated scan output ``(batch, dim, L)`` (Vision Mamba)."""
    x, z, delta, B, C = _conv_and_select(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B,
                                         C, B_proj_bias, C_proj_bias)
    return selective_scan_fn(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)


def bimamba_inner_fn(
    xz: Tensor, conv1d_weight: Tensor, conv1d_bias: Tensor | None, x_proj_weight: Tensor, delta_proj_weight: Tensor,
    out_proj_weight: Tensor, out_proj_bias: Tensor | None, A: Tensor, A_b: Tensor, B: Tensor | None = None,
    C: Tensor | None = None, D: Tensor | None = None, delta_bias: Tensor | None = None,
    B_proj_bias: Tensor | None = None, C_proj_bias: Tensor | None = None, delta_softplus: bool = True,
    checkpoint_lvl: int = 1,
) -> Tensor:
    """Vision Mamba's ``"v1"`` bidirectional layer: ``xz (batch, 2 dim, L)`` -> ``(batch, L, out)``.

    One conv and one set of projections feed two scans, forward in time with ``A`` and backward
    with ``A_b`` (real); their outputs are added before ``out_proj``.
    """
    if A_b.is_complex():
        raise ValueError("A_b should not be complex: the reversed scan of bimamba_inner_fn is real")
    x, z, delta, B, C = _conv_and_select(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B,
                                         C, B_proj_bias, C_proj_bias)
    forward = selective_scan_fn(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    backward = selective_scan_fn(x.flip(-1), delta.flip(-1), A_b, _reverse_time(B), _reverse_time(C), D,
                                 z=z.flip(-1), delta_bias=delta_bias, delta_softplus=delta_softplus)
    return _project_out(forward + backward.flip(-1), out_proj_weight, out_proj_bias)


# -- references -----------------------------------------------------------------------------------------

def _reference_inputs(
    xz: Tensor, conv1d_weight: Tensor, conv1d_bias: Tensor | None, x_proj_weight: Tensor, delta_proj_weight: Tensor,
    A: Tensor, B: Tensor | None, C: Tensor | None, B_proj_bias: Tensor | None, C_proj_bias: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(x, z, delta, B, C)`` through the public ``causal_conv1d_fn`` (independent of the fused path's kernel call)."""
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_fn(x, conv1d_weight.reshape(conv1d_weight.shape[0], -1), conv1d_bias, activation="silu")
    delta, B, C = _selection(F.linear(x.mT, x_proj_weight), delta_proj_weight, A, B, C, B_proj_bias, C_proj_bias)
    return x, z, delta, B.contiguous(), C.contiguous()


def mamba_inner_ref(
    xz: Tensor, conv1d_weight: Tensor, conv1d_bias: Tensor | None, x_proj_weight: Tensor, delta_proj_weight: Tensor,
    out_proj_weight: Tensor, out_proj_bias: Tensor | None, A: Tensor, B: Tensor | None = None, C: Tensor | None = None,
    D: Tensor | None = None, delta_bias: Tensor | None = None, B_proj_bias: Tensor | None = None,
    C_proj_bias: Tensor | None = None, delta_softplus: bool = True,
) -> Tensor:
    """Reference for :func:`mamba_inner_fn`, built from the unfused public ops (softplus always applied)."""
    x, z, delta, B, C = _reference_inputs(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B,
                                          C, B_proj_bias, C_proj_bias)
    y = selective_scan_fn(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True)
    return _project_out(y, out_proj_weight, out_proj_bias)


def bimamba_inner_ref(
    xz: Tensor, conv1d_weight: Tensor, conv1d_bias: Tensor | None, x_proj_weight: Tensor, delta_proj_weight: Tensor,
    out_proj_weight: Tensor, out_proj_bias: Tensor | None, A: Tensor, A_b: Tensor, B: Tensor | None = None,
    C: Tensor | None = None, D: Tensor | None = None, delta_bias: Tensor | None = None,
    B_proj_bias: Tensor | None = None, C_proj_bias: Tensor | None = None, delta_softplus: bool = True,
) -> Tensor:
    """Reference for :func:`bimamba_inner_fn`, built from the unfused public ops (softplus always applied)."""
    x, z, delta, B, C = _reference_inputs(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B,
                                          C, B_proj_bias, C_proj_bias)
    ahead = selective_scan_fn(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True)
    behind = selective_scan_fn(x.flip(-1), delta.flip(-1), A_b, B.flip(-1), C.flip(-1), D, z.flip(-1), delta_bias,
                               delta_softplus=True)
    return _project_out(ahead + behind.flip(-1), out_proj_weight, out_proj_bias)


# -- upstream's autograd.Function names -------------------------------------------------------------

class SelectiveScanFn:
    """``SelectiveScanFn.apply(...)`` is :func:`selective_scan_fn` (positional arguments in the same order)."""

    @staticmethod
    def apply(
        u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
        delta_bias: Tensor | None = None, delta_softplus: bool = False, return_last_state: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


class MambaInnerFn:
    """``MambaInnerFn.apply(...)`` is :func:`mamba_inner_fn`."""

    apply = staticmethod(mamba_inner_fn)


class MambaInnerFnNoOutProj:
    """``MambaInnerFnNoOutProj.apply(...)`` is :func:`mamba_inner_fn_no_out_proj`."""

    apply = staticmethod(mamba_inner_fn_no_out_proj)


class BiMambaInnerFn:
    """``BiMambaInnerFn.apply(...)`` is :func:`bimamba_inner_fn`."""

    apply = staticmethod(bimamba_inner_fn)
