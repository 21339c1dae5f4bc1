"""The op-contract adapters shared by the spike synapse ops (``spike_linear``, ``spike_conv2d``).

Both are ops ``(x, weight, bias) -> (y, indptr, idx, val)`` whose backends export ``forward(x, weight, bias)``,
``backward(grad_y, x, weight, has_bias, needs, lists)`` and ``LISTS_EVENTS``; they differ only in the output's
shape, which the forward's fake implementation gives (``output_like``).

The last three outputs are internal (not returned to the caller): the event lists of ``x`` that an
event-driven forward built, kept for the backward's weight gradient so that it does not list the nonzeros
of ``x`` again (at Spikformer's ``fc2``, (2048, 1536) with 3% ones, listing takes 1.4-2 ms of a 3.5 ms
forward). Row ``r`` (a row of a linear layer's input, a pixel of a convolution's) holds the nonzeros
``idx[indptr[r]:indptr[r + 1]]`` (their columns or channels, ascending) with the values ``val[...]``. The
lists have a fixed capacity, :func:`event_capacity` (the fake tensors need their shapes before any value
is known); an input with more nonzeros takes the dense product, and ``indptr`` all -1 then says that
the lists are empty. Elements past the last nonzero are zeros. A backend that lists nothing
(``LISTS_EVENTS = False``) returns zero-size lists.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch

from neurostep.engine import BackwardCall, FusedOp, check_tensor
from neurostep.engine.layout import in_layout

ELEMENTS_PER_EVENT = 10
"""The cpu backends take the dense product above one nonzero per this many input elements
(:data:`MAX_DENSITY`), in integers so that traced shapes stay integer expressions."""
MAX_DENSITY = 1 / ELEMENTS_PER_EVENT
"""Nonzeros per input element above which the cpu backends take the dense product. Measured on the 2-core
AMD EPYC (2026-12-04, 2 threads): at 1-3% ones the sparse linear forward took 1.3-5.6 ms against 4.4-16 ms
dense and its weight gradient 0.9-3.1 ms against 4.3-17 ms ((2048, 1536) x (1536, 384) and
(2048, 384) x (384, 384)); at 30% both took 1.0-2.3x as long as dense. The convolution's forward and
weight gradient at (32, 96 -> 192, 32 x 32), 17:24 UTC, load 0.4-0.6: 69 / 86 / 111 / 189 ms against
134 / 131 / 116 / 143 ms dense at 5 / 10 / 20 / 30% ones."""


def event_capacity(numel: int) -> int:
    """The most nonzeros the event lists of an input of ``numel`` elements hold (:data:`MAX_DENSITY` of them)."""
    return numel // ELEMENTS_PER_EVENT


def empty_event_lists(x: torch.Tensor, rows: int, listed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uninitialised event lists for ``x`` cut into ``rows`` rows: ``indptr (rows + 1,)`` int64 and ``idx``
    (int32), ``val`` (``x``'s dtype) of :func:`event_capacity` elements; zero-size where not ``listed``."""
    cap = event_capacity(x.numel()) if listed else 0
    return (torch.empty(rows + 1 if listed else 0, dtype=torch.int64, device=x.device),
            torch.empty(cap, dtype=torch.int32, device=x.device), torch.empty(cap, dtype=x.dtype, device=x.device))


def settle_event_lists(lists: tuple[torch.Tensor, torch.Tensor, torch.Tensor], listed: bool) -> None:
    """Give the lists' unused elements fixed values, so that the op's outputs depend on its inputs only (as
    ``torch.compile`` and ``opcheck`` require): zeros past the last nonzero; without lists, ``indptr``
    all -1 and zeros."""
    indptr, idx, val = lists
    used = int(indptr[-1]) if listed else 0
    if not listed:
        indptr.fill_(-1)
    idx[used:].zero_()
    val[used:].zero_()


def has_event_lists(indptr: torch.Tensor) -> bool:
    """Whether the event lists whose ``indptr`` a forward returned hold lists (not all -1, not zero-size)."""
    return indptr.shape[0] > 0 and int(indptr[0]) == 0


def lists_events(package: str, backend: str) -> bool:
    """Whether ``backend`` of the op in ``package`` returns event lists; imported by name, as the fakes run on
    meta tensors, where no backend is "available"."""
    return importlib.import_module(f"{package}.{backend}").LISTS_EVENTS


def forward_fake(package: str, output_like: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 rows: Callable[[torch.Tensor], int]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The fake forward of the op in ``package``: its output shaped as ``output_like(x, weight)`` and the
    event lists of ``x`` cut into ``rows(x)`` rows, sized as the backend lists them (:data:`LISTS_EVENTS`)."""

    def fake(x, weight, bias, *, backend):
        return output_like(x, weight), *empty_event_lists(x, rows(x), lists_events(package, backend))

    return fake


def forward(impl, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward adapter (its type hints give the op's schema): ``(y, indptr, idx, val)``."""
    return impl.forward(x, weight, bias)


INTERNAL_OUTPUTS = (1, 2, 3)
"""The event lists: outputs that only carry values to the backward."""


def save_inputs(args, outputs):
    """The backward reads the three inputs and the forward's event lists."""
    return args["x"], args["weight"], args["bias"], *outputs[1:]


def backward_adapter(output_like: Callable[..., torch.Tensor],
                     grad_format: torch.memory_format = torch.contiguous_format,
                     ) -> Callable[..., Sequence[torch.Tensor | None]]:
    """The backward adapter of an op whose output is shaped as ``output_like(x, weight)``: a missing output
    gradient becomes zeros of the output's shape. The backends get the output gradient in ``grad_format``
    (the layout of the op's output), and the input gradient comes back laid out as ``x``."""

    def backward(impl, call: BackwardCall):
        (grad_y,) = call.grads
        x, weight, bias, *lists = call.saved
        if grad_y is None:
            grad_y = torch.zeros_like(output_like(x, weight))
        dx, dw, db = impl.backward(grad_y.contiguous(memory_format=grad_format), x, weight, bias is not None,
                                   tuple(call.needs_input_grad), tuple(lists))
        return (None if dx is None else in_layout(dx, tuple(x.stride()))), dw, db

    return backward


def backward_fake(call: BackwardCall):
    x, weight, bias = call.saved[:3]
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
