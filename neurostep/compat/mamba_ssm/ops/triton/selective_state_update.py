"""``mamba_ssm.ops.triton.selective_state_update``: one decode step of the selective scan, in place.

Mirrors mamba-ssm (``mamba_ssm/ops/triton/selective_state_update.py`` at e9594ce; Apache-2.0,
Copyright (c) 2024 Tri Dao, Albert Gu): Mamba-1 layout ``state (batch, dim, dstate)`` and the
Mamba-2 layout with heads ``state (batch, nheads, headdim, dstate)``, grouped ``B``/``C``,
``state_batch_indices`` (a negative index marks a padding row: output 0, no state touched) and
upstream's contract that ``state`` is updated in place. The step runs
:func:`neurostep.kernels.selective_scan.selective_state_update` on the heads flattened into lanes.
``selective_state_update_ref`` is upstream's PyTorch reference, transcribed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neurostep.kernels.selective_scan import selective_state_update as _state_update

__all__ = ["selective_state_update", "selective_state_update_ref"]


def _with_heads(state, x, dt, A, B, C, D, z, dt_bias):
    """Upstream's normalisation of the Mamba-1 layout to the layout with one head."""
    if state.dim() == 3:
        state = state.unsqueeze(1)
    if x.dim() == 2:
        x = x.unsqueeze(1)
    if dt.dim() == 2:
        dt = dt.unsqueeze(1)
    if A.dim() == 2:
        A = A.unsqueeze(0)
    if B.dim() == 2:
        B = B.unsqueeze(1)
    if C.dim() == 2:
        C = C.unsqueeze(1)
    if D is not None and D.dim() == 1:
        D = D.unsqueeze(0)
    if z is not None and z.dim() == 2:
        z = z.unsqueeze(1)
    if dt_bias is not None and dt_bias.dim() == 1:
        dt_bias = dt_bias.unsqueeze(0)
    return state, x, dt, A, B, C, D, z, dt_bias


def _check_shape(name, t, shape):
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None):
    """
    Argument:
        state: (batch, dim, dstate) or (batch, nheads, dim, dstate)
        x: (batch, dim) or (batch, nheads, dim)
        dt: (batch, dim) or (batch, nheads, dim)
        A: (dim, dstate) or (nheads, dim, dstate)
        B: (batch, dstate) or (batch, ngroups, dstate)
        C: (batch, dstate) or (batch, ngroups, dstate)
        D: (dim,) or (nheads, dim)
        z: (batch, dim) or (batch, nheads, dim)
        dt_bias: (dim,) or (nheads, dim)
        state_batch_indices: (batch,) or None: the rows of ``state`` to update (state may hold more).
    Return:
        out: (batch, dim) or (batch, nheads, dim)

    ``state`` is updated in place.
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
    if not has_heads:
        out = out.squeeze(1)
    return out


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """
    Argument:
        state: (batch, dim, dstate) or (batch, nheads, dim, dstate)
        x: (batch, dim) or (batch, nheads, dim)
        dt: (batch, dim) or (batch, nheads, dim)
        A: (dim, dstate) or (nheads, dim, dstate)
        B: (batch, dstate) or (batch, ngroups, dstate)
        C: (batch, dstate) or (batch, ngroups, dstate)
        D: (dim,) or (nheads, dim)
        z: (batch, dim) or (batch, nheads, dim)
        dt_bias: (dim,) or (nheads, dim)
    Return:
        out: (batch, dim) or (batch, nheads, dim)
    """
    has_heads = state.dim() > 3
    state, x, dt, A, B, C, D, z, dt_bias = _with_heads(state, x, dt, A, B, C, D, z, dt_bias)
    batch, nheads, dim, dstate = state.shape
    assert x.shape == (batch, nheads, dim)
    assert dt.shape == x.shape
    assert A.shape == (nheads, dim, dstate)
    ngroups = B.shape[1]
    assert nheads % ngroups == 0, "nheads must be divisible by ngroups"
    assert B.shape == (batch, ngroups, dstate)
    assert C.shape == B.shape
    if D is not None:
        assert D.shape == (nheads, dim)
    if z is not None:
        assert z.shape == x.shape
    if dt_bias is not None:
        assert dt_bias.shape == (nheads, dim)
        dt = dt + dt_bias
    dt = F.softplus(dt) if dt_softplus else dt
    dA = torch.exp(dt[..., None] * A)  # (batch, nheads, dim, dstate)
    B = B.repeat_interleave(nheads // ngroups, dim=1)  # (batch, nheads, dstate)
    C = C.repeat_interleave(nheads // ngroups, dim=1)  # (batch, nheads, dstate)
    dB = dt[..., None] * B[:, :, None, :]  # (batch, nheads, dim, dstate)
    state.copy_(state * dA + dB * x[..., None])  # (batch, dim, dstate
    out = torch.einsum("bhdn,bhn->bhd", state.to(C.dtype), C)
    if D is not None:
        out += (x * D).to(out.dtype)
    out = (out if z is None else out * F.silu(z)).to(x.dtype)
    if not has_heads:
        out = out.squeeze(1)
    return out
