"""``mamba_ssm.ops.triton.selective_state_update``: one decode step of the selective scan, updating the state in place.

Two layouts are accepted. Mamba-1: ``state (batch, dim, N)``, ``x``/``dt``/``z`` ``(batch, dim)``,
``A (dim, N)``. Mamba-2 (heads): ``state (batch, H, P, N)``, ``x``/``dt``/``z`` ``(batch, H, P)``,
``A (H, P, N)``, ``B``/``C`` ``(batch, G, N)`` shared by ``H / G`` consecutive heads. Per lane::

    dt' = softplus(dt + dt_bias) (or dt + dt_bias) ;  h = exp(dt' A) h + dt' x B ;  y = (<h, C> + D x) * silu(z)

The step itself is :func:`neurostep.kernels.selective_scan.selective_state_update` on the
``H * P`` lanes; this module adds the layouts, ``state_batch_indices`` and the in-place write.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from neurostep.kernels.selective_scan import selective_state_update as _state_update

__all__ = ["selective_state_update", "selective_state_update_ref"]


def _head_axis(t: torch.Tensor | None, flat_ndim: int, axis: int) -> torch.Tensor | None:
    """Insert a length-1 head axis at ``axis`` when ``t`` is in the Mamba-1 layout (``flat_ndim`` dims)."""
    return t.unsqueeze(axis) if t is not None and t.dim() == flat_ndim else t


def _with_heads(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    dt_bias: Tensor | None,
) -> tuple[Tensor | None, ...]:
    """Every argument in the head layout; each one is converted on its own (views, no copies)."""
    per_row = [_head_axis(t, 2, 1) for t in (x, dt, B, C, z)]
    per_lane = [_head_axis(t, ndim, 0) for t, ndim in ((A, 2), (D, 1), (dt_bias, 1))]
    x, dt, B, C, z = per_row
    A, D, dt_bias = per_lane
    return _head_axis(state, 3, 1), x, dt, A, B, C, D, z, dt_bias


def _check_shape(name, t, shape):
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def selective_state_update(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor | None, C: Tensor | None, D: Tensor | None = None,
    z: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = False,
    state_batch_indices: Tensor | None = None,
) -> Tensor:
    """Advance ``state`` by one token and return the output.

    Args:
        state: ``(rows, dim, N)`` or ``(rows, H, P, N)``, updated in place.
        x, dt, z: ``(batch, dim)`` or ``(batch, H, P)`` (``z`` optional).
        A: ``(dim, N)`` or ``(H, P, N)``. B, C: ``(batch, N)`` or ``(batch, G, N)``.
        D, dt_bias: ``(dim,)`` or ``(H, P)``, optional. dt_softplus: apply softplus to ``dt + dt_bias``.
        state_batch_indices: ``(batch,)`` int, the ``state`` row of each batch row (``rows`` may
            exceed ``batch``); a negative index is a padding row, which outputs 0 and touches nothing.
            Without it ``rows == batch``.

    Returns:
        ``out`` shaped like ``x``, in ``x``'s dtype.
    """
    has_heads = state.dim() > 3
    state_og = state
    state, x, dt, A, B, C, D, z, dt_bias = _with_heads(state, x, dt, A, B, C, D, z, dt_bias)
    if state.dim() != 4:
        raise ValueError(f"state must have 3 or 4 dims, got shape {tuple(state_og.shape)}")
    _, nheads, dim, dstate = state.shape
    batch = x.shape[0]
    _check_shape("x", x, (batch, nheads, dim))
    _check_shape("dt", dt, x.shape)
    _check_shape("A", A, (nheads, dim, dstate))
    ngroups = B.shape[1]
    if B.dim() != 3 or nheads % ngroups != 0:
        raise ValueError(f"B must have shape (batch, ngroups, dstate) with nheads={nheads} divisible by ngroups, "
                         f"got {tuple(B.shape)}")
    _check_shape("B", B, (batch, ngroups, dstate))
    _check_shape("C", C, B.shape)
    _check_shape("D", D, (nheads, dim))
    _check_shape("z", z, x.shape)
    _check_shape("dt_bias", dt_bias, (nheads, dim))

    rows = valid = None
    if state_batch_indices is None:
        if state.shape[0] != batch:
            raise ValueError(f"state has batch {state.shape[0]} but x has batch {batch}; "
                             "pass state_batch_indices to address a larger cache")
        s = state
    else:
        _check_shape("state_batch_indices", state_batch_indices, (batch,))
        idx = state_batch_indices.to(device=x.device, dtype=torch.long)
        valid = idx >= 0
        if bool(valid.all()):
            valid = None
            rows = idx
        else:
            rows = idx[valid]
            x, dt, B, C = x[valid], dt[valid], B[valid], C[valid]
            z = None if z is None else z[valid]
        if rows.numel() and int(rows.max()) >= state.shape[0]:
            raise IndexError(f"state_batch_indices reach {int(rows.max())} but state has {state.shape[0]} rows")
        s = state.index_select(0, rows)

    nb = x.shape[0]
    lanes = nheads * dim
    out, new_state = _state_update(
        s.reshape(nb, lanes, dstate), x.reshape(nb, lanes), dt.reshape(nb, lanes), A.reshape(lanes, dstate),
        B, C, None if D is None else D.reshape(lanes), None if z is None else z.reshape(nb, lanes),
        None if dt_bias is None else dt_bias.reshape(lanes), bool(dt_softplus))
    new_state = new_state.reshape(nb, nheads, dim, dstate).to(state.dtype)
    with torch.no_grad():
        if rows is None:
            state.copy_(new_state)
        else:
            state.index_copy_(0, rows, new_state)
    out = out.reshape(nb, nheads, dim)
    if valid is not None:
        full = out.new_zeros(batch, nheads, dim)
        full[valid] = out
        out = full
    return out if has_heads else out.squeeze(1)


def selective_state_update_ref(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor | None, C: Tensor | None, D: Tensor | None = None,
    z: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = False,
) -> Tensor:
    """Reference for :func:`selective_state_update` (without ``state_batch_indices``) in plain PyTorch.

    Same layouts; ``state`` is updated in place and the output returned in ``x``'s dtype.
    """
    headless = state.dim() == 3
    state, x, dt, A, B, C, D, z, dt_bias = _with_heads(state, x, dt, A, B, C, D, z, dt_bias)
    batch, nheads, width, n = state.shape
    groups = B.shape[1]
    if nheads % groups:
        raise ValueError(f"{nheads} heads cannot share {groups} groups of B and C")
    for name, t, shape in (("x", x, (batch, nheads, width)), ("dt", dt, (batch, nheads, width)),
                           ("A", A, (nheads, width, n)), ("B", B, (batch, groups, n)), ("C", C, (batch, groups, n)),
                           ("D", D, (nheads, width)), ("z", z, (batch, nheads, width)),
                           ("dt_bias", dt_bias, (nheads, width))):
        _check_shape(name, t, shape)
    step = dt if dt_bias is None else dt + dt_bias
    if dt_softplus:
        step = F.softplus(step)
    B_heads = B.repeat_interleave(nheads // groups, dim=1).unsqueeze(2)  # (batch, H, 1, N)
    C_heads = C.repeat_interleave(nheads // groups, dim=1).unsqueeze(2)
    state.copy_(torch.exp(step.unsqueeze(-1) * A) * state + (step * x).unsqueeze(-1) * B_heads)
    y = (state.to(C_heads.dtype) * C_heads).sum(-1)
    if D is not None:
        y = y + (D * x).to(y.dtype)
    if z is not None:
        y = y * F.silu(z)
    y = y.to(x.dtype)
    return y.squeeze(1) if headless else y
