"""Diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` (gated linear RNNs, decayed EMAs).

Layout: ``a`` and ``b`` are ``(batch, L, *lanes)``: time is dim 1, every trailing element is an
independent lane. Backends: ``reference`` (torch loop), ``cpu`` (numba), ``triton``. Registered as
``neurostep::linear_scan_forward`` / ``_backward``.
"""

from __future__ import annotations

import math

import torch

from neurostep.engine import KERNELS, OpCost, check_nonempty, check_tensor, register_cost
from neurostep.engine.checks import check_backend_name

OP = "linear_scan"
KERNELS.register(OP, "reference", "neurostep.kernels.linear_scan.reference")
KERNELS.register(OP, "cpu", "neurostep.kernels.linear_scan.cpu")
KERNELS.register(OP, "triton", "neurostep.kernels.linear_scan.triton")

_BACKENDS = ("reference", "cpu", "triton")


@torch.library.custom_op("neurostep::linear_scan_forward", mutates_args=())
def _ls_forward(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, backend: str) -> torch.Tensor:
    return KERNELS.resolve(OP, backend, a.device).forward(a, b, h0)


@_ls_forward.register_fake
def _(a, b, h0, backend):
    return b.new_empty(b.shape)


@torch.library.custom_op("neurostep::linear_scan_backward", mutates_args=())
def _ls_backward(
    grad_h: torch.Tensor, a: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    da, db, dh0 = KERNELS.resolve(OP, backend, a.device).backward(grad_h.contiguous(), a, h, h0)
    return da, db, (a.new_empty(0) if dh0 is None else dh0)


@_ls_backward.register_fake
def _(grad_h, a, h, h0, backend):
    return a.new_empty(a.shape), a.new_empty(a.shape), (a.new_empty(0) if h0 is None else h0.new_empty(h0.shape))


def _setup_context(ctx, inputs, output):
    a, b, h0, backend = inputs
    ctx.backend = backend
    ctx.has_h0 = h0 is not None
    ctx.save_for_backward(a, output, h0 if h0 is not None else a.new_empty(0))


def _backward(ctx, grad_h):
    a, h, h0 = ctx.saved_tensors
    da, db, dh0 = _ls_backward(grad_h, a, h, h0 if ctx.has_h0 else None, ctx.backend)
    return da, db, (dh0 if ctx.has_h0 else None), None


_ls_forward.register_autograd(_backward, setup_context=_setup_context)


@register_cost("neurostep::linear_scan_forward")
def _linear_scan_cost(args, kwargs, out) -> OpCost:
    """One multiply and one add per element (one state update each)."""
    b = args[1]
    elems = float(b.numel())
    return OpCost(muls=elems, adds=elems, state_updates=elems,
                  bytes_read=2.0 * elems * b.element_size(), bytes_written=elems * b.element_size())


def linear_scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``h_t = a_t * h_{t-1} + b_t`` over time dim 1.

    Args:
        a, b: ``(batch, L, *lanes)``, same shape; ``a`` must be finite (NaN in ``b`` propagates).
        h0: ``(batch, *lanes)`` state before step 0, or None (zeros).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.
    Returns:
        ``h (batch, L, *lanes)`` (every state, in ``b``'s dtype) and ``h_last (batch, *lanes)`` (the
        final state in the compute dtype: float32 for half inputs).
    """
    check_backend_name(backend, _BACKENDS)
    b = check_tensor("b", b, min_ndim=2)
    check_nonempty("b", b, 1)
    a = check_tensor("a", a, min_ndim=2, device=b.device)
    if a.shape != b.shape:
        raise ValueError(f"a must have the shape of b {tuple(b.shape)}, got {tuple(a.shape)}")
    batch, length, lanes = b.shape[0], b.shape[1], tuple(b.shape[2:])
    if h0 is not None:
        check_tensor("h0", h0, shape=(batch, *lanes), device=b.device)
    name = KERNELS.choose(OP, backend, b.device)
    cdtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    m = math.prod(lanes)

    def prep(t: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
        return None if t is None else t.to(cdtype).reshape(shape).contiguous()

    h = _ls_forward(prep(a, (batch, length, m)), prep(b, (batch, length, m)), prep(h0, (batch, m)), name)
    h = h.reshape(b.shape)
    return h.to(b.dtype), h[:, -1]


__all__ = ["linear_scan"]
