"""Diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` (gated linear RNNs, decayed EMAs).

Layout: ``a`` and ``b`` are ``(batch, L, *lanes)``: time is dim 1, every trailing element is an
independent lane. Backends: ``reference`` (torch loop), ``cpu`` (numba), ``triton``. Registered as
``neurostep::linear_scan_forward`` / ``_backward``.
"""

from __future__ import annotations

import math

import torch

from neurostep.engine import BackwardCall, OpCost, check_nonempty, check_tensor, define_op


def _forward(impl, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    return impl.forward(a, b, h0)


def _forward_fake(a, b, h0, *, backend):
    return b.new_empty(b.shape)


def _save(args, outputs):
    return args["a"], args["h0"], outputs[0]


def _backward(impl, call: BackwardCall):
    (grad_h,) = call.grads
    a, h0, h = call.saved
    grad_h = torch.zeros_like(h) if grad_h is None else grad_h.contiguous()
    return impl.backward(grad_h, a, h, h0)


def _backward_fake(call: BackwardCall):
    a, h0, _ = call.saved
    return a.new_empty(a.shape), a.new_empty(a.shape), (None if h0 is None else h0.new_empty(h0.shape))


def _cost(args, kwargs, out) -> OpCost:
    """One multiply and one add per element (one state update each)."""
    b = args[1]
    elems = float(b.numel())
    return OpCost(muls=elems, adds=elems, state_updates=elems,
                  bytes_read=2.0 * elems * b.element_size(), bytes_written=elems * b.element_size())


LINEAR_SCAN = define_op(
    "linear_scan",
    backends={name: f"neurostep.kernels.linear_scan.{name}" for name in ("reference", "cpu", "triton")},
    forward=_forward, forward_fake=_forward_fake, backward=_backward, backward_fake=_backward_fake,
    save=_save, cost=_cost,
)


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    *,
    output_final_state: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``h_t = a_t * h_{t-1} + b_t`` over time dim 1.

    Args:
        a, b: ``(batch, L, *lanes)``, same shape; ``a`` must be finite (NaN in ``b`` propagates).
        initial_state: ``(batch, *lanes)`` state before step 0, or None (zeros).
        output_final_state: also return the final state (else None).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.
    Returns:
        ``(h, final_state)``: ``h (batch, L, *lanes)`` every state, in ``b``'s dtype; ``final_state
        (batch, *lanes)`` in the compute dtype (float32 for half inputs), or None.
    """
    h0 = initial_state
    b = check_tensor("b", b, min_ndim=2)
    check_nonempty("b", b, 1)
    a = check_tensor("a", a, min_ndim=2, device=b.device)
    if a.shape != b.shape:
        raise ValueError(f"a must have the shape of b {tuple(b.shape)}, got {tuple(a.shape)}")
    batch, length, lanes = b.shape[0], b.shape[1], tuple(b.shape[2:])
    if h0 is not None:
        check_tensor("initial_state", h0, shape=(batch, *lanes), device=b.device)
    LINEAR_SCAN.choose_backend(backend, b.device)
    cdtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    m = math.prod(lanes)

    def prep(t: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
        return None if t is None else t.to(cdtype).reshape(shape).contiguous()

    h = LINEAR_SCAN(prep(a, (batch, length, m)), prep(b, (batch, length, m)), prep(h0, (batch, m)), backend=backend)
    h = h.reshape(b.shape)
    return h.to(b.dtype), (h[:, -1] if output_final_state else None)


__all__ = ["linear_scan"]
