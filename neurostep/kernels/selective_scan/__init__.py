"""Selective scan (Mamba's S6) and its one-token decode step.

``selective_scan_fn`` follows mamba-ssm's signature and semantics and adds ``initial_state`` (with a
gradient) and ``backend``. Backends: ``reference`` (torch loop), ``cpu`` (numba, fused forward and
backward that never stores per-step states), ``triton`` (CUDA, or CPU under ``TRITON_INTERPRET=1``),
and ``mamba_ssm`` (delegates to mamba-ssm's CUDA kernels when that package is importable; no
initial state there). The op is registered as ``neurostep::selective_scan_forward`` / ``_backward``.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from neurostep.engine import KERNELS, BackwardCall, OpCost, check_finite, check_nonempty, check_tensor, define_op
from neurostep.engine.layout import channels_last_layout

_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _mamba_ssm_missing(device: torch.device) -> str | None:
    if importlib.util.find_spec("mamba_ssm") is None:
        return "mamba-ssm is not installed (pip install neurostep[cuda]); it needs CUDA tensors"
    return None


def _forward(
    impl, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None, delta_softplus: bool, channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(out, last_state, saved)``; ``saved`` is what the backend's backward reads. With
    ``channels_last``, ``u``, ``delta``, ``z`` and ``out`` are ``(batch, L, dim)``."""
    return impl.forward(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, channels_last)


def _forward_fake(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, channels_last, *, backend):
    impl = KERNELS.resolve("selective_scan", backend, u.device)
    batch, dim, length = (u.shape[0], u.shape[2], u.shape[1]) if channels_last else u.shape
    n = A.shape[1]
    return u.new_empty(u.shape), u.new_empty(batch, dim, n), u.new_empty(impl.saved_shape(batch, dim, length, n))


def _save(args, outputs):
    return (*(args[name] for name in _INPUTS), outputs[2])


def _backward(impl, call: BackwardCall):
    grad_out, grad_last = call.grads
    *inputs, saved = call.saved
    grad_out = torch.zeros_like(inputs[0]) if grad_out is None else grad_out.contiguous()
    grad_last = None if grad_last is None else grad_last.contiguous()
    return impl.backward(grad_out, grad_last, *inputs, saved, call.attrs["delta_softplus"],
                         call.attrs["channels_last"])


def _backward_fake(call: BackwardCall):
    return [None if t is None else t.new_empty(t.shape) for t in call.saved[:-1]]


def _cost(args, kwargs, out) -> OpCost:
    """Per element and state: 1 exp, 4 muls (dt*A, decay*x, dtBu*B, x*C), 2 adds; per element the rest."""
    u, A = args[0], args[2]
    D, z, delta_bias, delta_softplus = args[5], args[6], args[7], args[9]
    elems = float(u.numel())
    n = float(A.shape[1])
    per_elem_exps = (1.0 if delta_softplus else 0.0) + (1.0 if z is not None else 0.0)
    per_elem_muls = 1.0 + (1.0 if D is not None else 0.0) + (2.0 if z is not None else 0.0)
    per_elem_adds = (1.0 if D is not None else 0.0) + (1.0 if delta_bias is not None else 0.0)
    itemsize = u.element_size()
    return OpCost(
        exps=elems * (n + per_elem_exps),
        muls=elems * (4.0 * n + per_elem_muls),
        adds=elems * (2.0 * n + per_elem_adds),
        state_updates=elems * n,
        bytes_read=float(sum(t.numel() for t in args[:9] if isinstance(t, torch.Tensor))) * itemsize,
        bytes_written=float(out[0].numel() + out[1].numel()) * itemsize,
    )


SELECTIVE_SCAN = define_op(
    "selective_scan",
    backends={
        **{name: f"neurostep.kernels.selective_scan.{name}" for name in ("reference", "cpu", "triton")},
        "mamba_ssm": "neurostep.kernels.selective_scan.mamba_ssm_backend",
    },
    backend_options={"mamba_ssm": {"devices": ("cuda",), "missing": _mamba_ssm_missing}},
    forward=_forward, forward_fake=_forward_fake, backward=_backward, backward_fake=_backward_fake,
    save=_save, internal_outputs=(2,), cost=_cost,
)


def _canonical_bc(name: str, M: object, batch: int, dim: int, length: int, n: int,
                  device: torch.device) -> torch.Tensor:
    M = check_tensor(name, M, ndim=(2, 3, 4), device=device)
    if M.dim() == 2:
        check_tensor(name, M, shape=(dim, n))
        return M[None, :, :, None]
    if M.dim() == 3:
        check_tensor(name, M, shape=(batch, n, length))
        return M[:, None]
    check_tensor(name, M, shape=(batch, None, n, length))
    groups = M.shape[1]
    if groups == 0 or dim % groups != 0:
        raise ValueError(f"{name} has {groups} groups (shape {tuple(M.shape)}) but dim={dim} is not a multiple of it")
    return M


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Selective scan (Mamba's S6) with mamba-ssm's semantics and neurostep's state convention.

    ``u`` may be channels-first (time contiguous: mamba-ssm's layout) or channels-last (its channels
    contiguous, ``u.stride(1) == 1``: the transpose of a token-major ``(batch, L, dim)`` block, such as the
    output of a linear layer). The kernels read either without a transposing copy; ``delta`` and ``z`` are
    read in ``u``'s layout (copied into it if they come in the other), and ``out`` comes in ``u``'s layout.

    Args:
        u, delta: ``(batch, dim, L)``.
        A: ``(dim, N)`` real, finite.
        B, C: ``(dim, N)`` constant, ``(batch, N, L)`` per step, or ``(batch, G, N, L)`` grouped
            (``dim % G == 0``; lane ``d`` uses group ``d // (dim // G)``).
        D, delta_bias: ``(dim,)`` or None. z: ``(batch, dim, L)`` or None.
        delta_softplus: apply ``softplus(delta + delta_bias)``.
        initial_state: ``(batch, dim, N)`` state before step 0, or None (zeros); differentiable.
        output_final_state: also return the final state (else None).
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"mamba_ssm"``.

    Returns:
        ``(out, final_state)``: ``out (batch, dim, L)`` in ``u``'s dtype; ``final_state (batch, dim, N)``
        in the compute dtype (float32, or float64 for float64 inputs), or None.
    """
    u = check_tensor("u", u, ndim=3)
    device = u.device
    batch, dim, length = u.shape
    check_nonempty("u", u, 2)
    delta = check_tensor("delta", delta, shape=(batch, dim, length), device=device)
    A = check_tensor("A", A, ndim=2, device=device)
    if A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim={dim}, N), got {tuple(A.shape)} (u has shape {tuple(u.shape)})")
    n = A.shape[1]
    if n == 0:
        raise ValueError(f"A must have at least one state (N >= 1), got shape {tuple(A.shape)}")
    check_finite("A", A)
    Bc = _canonical_bc("B", B, batch, dim, length, n, device)
    Cc = _canonical_bc("C", C, batch, dim, length, n, device)
    if D is not None:
        check_tensor("D", D, shape=(dim,), device=device)
        check_finite("D", D)
    if delta_bias is not None:
        check_tensor("delta_bias", delta_bias, shape=(dim,), device=device)
        check_finite("delta_bias", delta_bias)
    if z is not None:
        check_tensor("z", z, shape=(batch, dim, length), device=device)
    if initial_state is not None:
        check_tensor("initial_state", initial_state, shape=(batch, dim, n), device=device)
    if not isinstance(delta_softplus, bool):
        raise TypeError(f"delta_softplus must be a bool, got {type(delta_softplus).__name__}")

    name = SELECTIVE_SCAN.choose_backend(backend, device)
    if name == "mamba_ssm":
        if initial_state is not None:
            raise ValueError("backend 'mamba_ssm' does not take an initial_state; use another backend")
        impl = KERNELS.resolve(SELECTIVE_SCAN.name, name, device)
        result = impl.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, output_final_state)
        return result if output_final_state else (result, None)

    cdtype = torch.float64 if u.dtype == torch.float64 else torch.float32

    def prep(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(cdtype).contiguous()

    channels_last = channels_last_layout(u)

    def lanes(t: torch.Tensor | None) -> torch.Tensor | None:
        """A ``(batch, dim, L)`` input in the kernels' layout: ``(batch, L, dim)`` when channels-last."""
        return prep(t.transpose(1, 2)) if channels_last and t is not None else prep(t)

    out, last, _ = SELECTIVE_SCAN(lanes(u), lanes(delta), prep(A), prep(Bc), prep(Cc), prep(D), lanes(z),
                                  prep(delta_bias), prep(initial_state), delta_softplus, channels_last, backend=name)
    out = out.transpose(1, 2) if channels_last else out
    return out.to(u.dtype), (last if output_final_state else None)


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """mamba-ssm's ``selective_scan_fn`` signature and return convention over :func:`selective_scan`.

    Returns ``out``, or ``(out, last_state)`` with ``return_last_state`` (mamba-ssm's spelling of
    ``output_final_state``); ``initial_state`` and ``backend`` are neurostep's additions. Code written
    for mamba-ssm calls this; neurostep's own code calls :func:`selective_scan`.
    """
    out, last = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state=initial_state,
                               output_final_state=return_last_state, backend=backend)
    return (out, last) if return_last_state else out


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of the selective scan; the state is returned, never modified in place.

    Args:
        state: ``(batch, dim, N)``. x, dt, z: ``(batch, dim)``. A: ``(dim, N)``.
        B, C: ``(batch, N)`` or grouped ``(batch, G, N)``. D, dt_bias: ``(dim,)``.
    Returns:
        ``out (batch, dim)`` in ``x``'s dtype and ``new_state (batch, dim, N)`` in the state's
        compute dtype (float32 for half inputs).
    """
    x = check_tensor("x", x, ndim=2)
    device = x.device
    batch, dim = x.shape
    state = check_tensor("state", state, ndim=3, device=device)
    if state.shape[:2] != (batch, dim):
        raise ValueError(f"state must have shape (batch={batch}, dim={dim}, N), got {tuple(state.shape)}")
    n = state.shape[2]
    check_tensor("dt", dt, shape=(batch, dim), device=device)
    check_tensor("A", A, shape=(dim, n), device=device)
    check_finite("A", A)
    bc = []
    for name, M in (("B", B), ("C", C)):
        M = check_tensor(name, M, ndim=(2, 3), device=device)
        if M.dim() == 2:
            check_tensor(name, M, shape=(batch, n))
            M = M[:, None]
        else:
            check_tensor(name, M, shape=(batch, None, n))
            if M.shape[1] == 0 or dim % M.shape[1] != 0:
                raise ValueError(f"{name} has {M.shape[1]} groups (shape {tuple(M.shape)}), not a divisor of dim={dim}")
        bc.append(M)
    if D is not None:
        check_tensor("D", D, shape=(dim,), device=device)
    if z is not None:
        check_tensor("z", z, shape=(batch, dim), device=device)
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, shape=(dim,), device=device)

    cdtype = torch.float64 if torch.float64 in (x.dtype, state.dtype) else torch.float32
    s = state.to(cdtype)
    xf, dtf = x.to(cdtype), dt.to(cdtype)
    if dt_bias is not None:
        dtf = dtf + dt_bias.to(cdtype)
    if dt_softplus:
        dtf = F.softplus(dtf, threshold=20.0)
    Bf, Cf = (M.to(cdtype).repeat_interleave(dim // M.shape[1], dim=1) for M in bc)  # (batch, dim, N)
    new_state = torch.exp(dtf[..., None] * A.to(cdtype)) * s + (dtf * xf)[..., None] * Bf
    out = (new_state * Cf).sum(-1)
    if D is not None:
        out = out + D.to(cdtype) * xf
    if z is not None:
        out = out * F.silu(z.to(cdtype))
    return out.to(x.dtype), new_state


__all__ = ["selective_scan", "selective_scan_fn", "selective_state_update"]
