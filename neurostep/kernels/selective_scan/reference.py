"""Selective scan (Mamba's S6 recurrence), pure torch: the ground truth of every backend.

Per lane ``(b, d)`` and state index ``n``, with ``dt = softplus(delta + delta_bias)`` when asked::

    x_l = exp(dt_l * A[d, n]) * x_{l-1} + dt_l * B_l[n] * u_l
    y_l = sum_n x_l[n] * C_l[n]
    out_l = (y_l + D[d] * u_l) * silu(z_l)

Every backend module exports ``forward`` and ``backward`` with the signatures below and works on
contiguous tensors of one compute dtype (float32 or float64). With ``channels_last``, ``u``, ``delta``, ``z``,
``out``, ``grad_out`` and their gradients are ``(batch, L, dim)`` instead of ``(batch, dim, L)`` (the memory
order of a channels-last input, which the public op passes without a transposing copy); everything else
keeps its shape. ``B`` and ``C`` arrive in the canonical 4-D layout ``(Bb, G, N, Lb)`` built by the public
op:

- constant ``(dim, N)``           -> ``(1, dim, N, 1)``  (one group per lane, no batch, no time)
- per step ``(batch, N, L)``      -> ``(batch, 1, N, L)``
- grouped ``(batch, G, N, L)``    -> unchanged (lane ``d`` reads group ``d // (dim // G)``)

The backward is written out (adjoint recurrence) rather than left to autograd so that it can be
read next to the fused kernels; the tests check it against autograd through :func:`forward`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neurostep.engine.layout import swapped_time_and_channels

# torch's and mamba-ssm's softplus switch to the identity above this input.
SOFTPLUS_THRESHOLD = 20.0


def saved_shape(batch: int, dim: int, length: int, d_state: int) -> tuple[int, ...]:
    """Shape of the extra tensor ``forward`` saves for ``backward`` (nothing: it recomputes)."""
    return (0,)


def expand_groups(M: torch.Tensor, dim: int) -> torch.Tensor:
    """``(Bb, G, N, Lb) -> (Bb, dim, N, Lb)``: give every lane the B or C of its group."""
    groups = M.shape[1]
    return M.repeat_interleave(dim // groups, dim=1) if groups != dim else M


def reduce_groups(M_full: torch.Tensor, canon_shape: tuple[int, ...]) -> torch.Tensor:
    """Adjoint of :func:`expand_groups` plus broadcasting: ``(batch, dim, N, L) -> (Bb, G, N, Lb)``."""
    bb, groups, n, lb = canon_shape
    batch, dim, _, length = M_full.shape
    if lb == 1 and length != 1:
        M_full = M_full.sum(-1, keepdim=True)
    if bb == 1 and batch != 1:
        M_full = M_full.sum(0, keepdim=True)
    return M_full.reshape(M_full.shape[0], groups, dim // groups, n, M_full.shape[-1]).sum(2)


def effective_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """``softplus(delta + delta_bias)`` (or without softplus), ``(batch, dim, L)``."""
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    return F.softplus(dt, threshold=SOFTPLUS_THRESHOLD) if delta_softplus else dt


def _states(u, dt, A, Bf, h0):
    """All states: a list of ``L + 1`` tensors ``(batch, dim, N)``, starting with ``x_{-1}``."""
    batch, dim, length = u.shape
    x = h0 if h0 is not None else u.new_zeros(batch, dim, A.shape[1])
    states = [x]
    for l in range(length):
        Bl = Bf[..., l if Bf.shape[-1] > 1 else 0]
        x = torch.exp(dt[:, :, l, None] * A) * x + (dt[:, :, l] * u[:, :, l])[..., None] * Bl
        states.append(x)
    return states


def forward_via_channels_first(forward_first, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus):
    """A channels-last forward on a backend's channels-first one: ``u``, ``delta`` and ``z`` transposed in,
    ``out`` transposed back."""
    u, delta, z = (swapped_time_and_channels(t) for t in (u, delta, z))
    out, last, saved = forward_first(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus)
    return swapped_time_and_channels(out), last, saved


def backward_via_channels_first(backward_first, grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, h0, saved,
                                delta_softplus):
    """The channels-last backward on a channels-first one, as :func:`forward_via_channels_first`: du, ddelta
    and dz transposed back, the other gradients as they come."""
    grad_out, u, delta, z = (swapped_time_and_channels(t) for t in (grad_out, u, delta, z))
    du, ddt, dA, dB, dC, dD, dz, d_bias, dh0 = backward_first(grad_out, grad_last, u, delta, A, B, C, D, z,
                                                              delta_bias, h0, saved, delta_softplus)
    du, ddt, dz = (swapped_time_and_channels(t) for t in (du, ddt, dz))
    return du, ddt, dA, dB, dC, dD, dz, d_bias, dh0


def forward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    h0: torch.Tensor | None,
    delta_softplus: bool,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the scan.

    Args: u, delta, z ``(batch, dim, L)`` (``(batch, L, dim)`` with ``channels_last``); A ``(dim, N)``; B, C
    canonical ``(Bb, G, N, Lb)``; D, delta_bias ``(dim,)``; h0 ``(batch, dim, N)``; optional ones may be None.
    Returns ``out`` in ``u``'s layout, ``last_state (batch, dim, N)`` and the saved tensor (empty).
    """
    if channels_last:
        return forward_via_channels_first(forward, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus)
    dim, length = u.shape[1], u.shape[2]
    dt = effective_delta(delta, delta_bias, delta_softplus)
    Bf, Cf = expand_groups(B, dim), expand_groups(C, dim)
    states = _states(u, dt, A, Bf, h0)
    y = torch.stack(
        [(states[l + 1] * Cf[..., l if Cf.shape[-1] > 1 else 0]).sum(-1) for l in range(length)], dim=-1
    )
    out = y if D is None else y + D[:, None] * u
    if z is not None:
        out = out * F.silu(z)
    return out, states[-1], u.new_empty(saved_shape(*u.shape, A.shape[1]))


def backward(
    grad_out: torch.Tensor,
    grad_last: torch.Tensor | None,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    h0: torch.Tensor | None,
    saved: torch.Tensor,
    delta_softplus: bool,
    channels_last: bool = False,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0)`` (None where the input is None).

    ``grad_out`` (in ``u``'s layout) and ``grad_last (batch, dim, N)`` (or None) are the incoming gradients.
    du, ddelta and dz come back in ``u``'s layout, dB and dC in the canonical shapes of B and C.
    """
    if channels_last:
        return backward_via_channels_first(backward, grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, h0,
                                           saved, delta_softplus)
    batch, dim, length = u.shape
    pre = delta if delta_bias is None else delta + delta_bias[:, None]
    dt = effective_delta(delta, delta_bias, delta_softplus)
    Bf, Cf = expand_groups(B, dim), expand_groups(C, dim)
    states = _states(u, dt, A, Bf, h0)

    g = grad_out
    dz = None
    if z is not None:
        y = torch.stack(
            [(states[l + 1] * Cf[..., l if Cf.shape[-1] > 1 else 0]).sum(-1) for l in range(length)], dim=-1
        )
        out_pre = y if D is None else y + D[:, None] * u
        sz = torch.sigmoid(z)
        # d silu(z)/dz = s + z s (1 - s)
        dz = g * out_pre * (sz * (1 + z * (1 - sz)))
        g = g * z * sz
    dD = None if D is None else (g * u).sum((0, 2))
    du = torch.zeros_like(u) if D is None else g * D[:, None]
    ddt = torch.zeros_like(u)
    dA = torch.zeros_like(A)
    dBf = u.new_zeros(batch, dim, A.shape[1], length)
    dCf = u.new_zeros(batch, dim, A.shape[1], length)
    dx = grad_last.clone() if grad_last is not None else u.new_zeros(batch, dim, A.shape[1])
    for l in reversed(range(length)):
        Bl = Bf[..., l if Bf.shape[-1] > 1 else 0]
        Cl = Cf[..., l if Cf.shape[-1] > 1 else 0]
        dCf[..., l] = g[:, :, l, None] * states[l + 1]
        dx = dx + g[:, :, l, None] * Cl
        x_prev = states[l]
        dt_l = dt[:, :, l, None]
        decay = torch.exp(dt_l * A)
        ddt[:, :, l] = (dx * (Bl * u[:, :, l, None] + x_prev * decay * A)).sum(-1)
        du[:, :, l] += dt[:, :, l] * (dx * Bl).sum(-1)
        dBf[..., l] = dx * dt_l * u[:, :, l, None]
        dA += (dx * x_prev * decay * dt_l).sum(0)
        dx = dx * decay
    if delta_softplus:
        # softplus'(x) = sigmoid(x), and exactly 1 where softplus is the identity
        ddt = ddt * torch.where(pre <= SOFTPLUS_THRESHOLD, torch.sigmoid(pre), torch.ones_like(pre))
    d_bias = None if delta_bias is None else ddt.sum((0, 2))
    dB = reduce_groups(dBf, tuple(B.shape))
    dC = reduce_groups(dCf, tuple(C.shape))
    dh0 = dx if h0 is not None else None
    return du, ddt, dA, dB, dC, dD, dz, d_bias, dh0
