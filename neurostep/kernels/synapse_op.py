"""The op-contract adapters shared by the spike synapse ops (``spike_linear``, ``spike_conv2d``).

Both are ops ``(x, weight, bias) -> y`` whose backends export ``forward(x, weight, bias)`` and
``backward(grad_y, x, weight, has_bias, needs)``; they differ only in the output's shape, which the
forward's fake implementation gives (``output_like``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from neurostep.engine import BackwardCall, FusedOp, check_tensor
from neurostep.engine.layout import in_layout

MAX_DENSITY = 0.1
"""Nonzeros per input element above which the cpu backends take the dense product. Measured on the 2-core
AMD EPYC (2026-12-04, 2 threads): at 1-3% ones the sparse linear forward took 1.3-5.6 ms against 4.4-16 ms
dense and its weight gradient 0.9-3.1 ms against 4.3-17 ms ((2048, 1536) x (1536, 384) and
(2048, 384) x (384, 384)); at 30% both took 1.0-2.3x as long as dense. The convolution's forward and
weight gradient at (32, 96 -> 192, 32 x 32), 17:24 UTC, load 0.4-0.6: 69 / 86 / 111 / 189 ms against
134 / 131 / 116 / 143 ms dense at 5 / 10 / 20 / 30% ones."""


def forward(impl, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The forward adapter (its type hints give the op's schema)."""
    return impl.forward(x, weight, bias)


def save_inputs(args, outputs):
    """The backward reads the three inputs."""
    return args["x"], args["weight"], args["bias"]


def backward_adapter(output_like: Callable[..., torch.Tensor],
                     grad_format: torch.memory_format = torch.contiguous_format,
                     ) -> Callable[..., Sequence[torch.Tensor | None]]:
    """The backward adapter of an op whose fake forward is ``output_like(x, weight, bias, backend=...)``: a
    missing output gradient becomes zeros of the output's shape. The backends get the output gradient in
    ``grad_format`` (the layout of the op's output), and the input gradient comes back laid out as ``x``."""

    def backward(impl, call: BackwardCall):
        (grad_y,) = call.grads
        x, weight, bias = call.saved
        if grad_y is None:
            grad_y = torch.zeros_like(output_like(x, weight, bias, backend=""))
        dx, dw, db = impl.backward(grad_y.contiguous(memory_format=grad_format), x, weight, bias is not None,
                                   tuple(call.needs_input_grad))
        return (None if dx is None else in_layout(dx, tuple(x.stride()))), dw, db

    return backward


def backward_fake(call: BackwardCall):
    x, weight, bias = call.saved
    return (x.new_empty_strided(x.shape, x.stride()), weight.new_empty(weight.shape),
            None if bias is None else bias.new_empty(bias.shape))


def check_bias_and_dtypes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """Refuse a weight or bias of another dtype than ``x`` and a bias that is not ``(C_out,)``; returns the bias."""
    if weight.dtype != x.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    if bias is not None:
        bias = check_tensor("bias", bias, shape=(weight.shape[0],), device=x.device)
        if bias.dtype != x.dtype:
            raise TypeError(f"bias dtype {bias.dtype} differs from x dtype {x.dtype}")
    return bias


def event_driven_backend(op: FusedOp, backend: str, x: torch.Tensor, wide_enough: bool = True) -> str | None:
    """The backend to run ``op`` on, or None where ``backend="auto"`` has no event-driven kernel for the
    call (another device, a dtype other than float32/float64, a layer too narrow to gain): the caller
    then runs torch's dense layer itself."""
    name = op.choose_backend(backend, x.device)
    if backend == "auto" and (name != "cpu" or x.dtype not in (torch.float32, torch.float64) or not wide_enough):
        return None
    return name
