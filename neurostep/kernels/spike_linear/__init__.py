"""Linear layer for spike inputs: ``y = x @ weight.T + bias``, computed from the nonzeros of ``x``.

The function is ``torch.nn.functional.linear``; what differs is the work. A spiking layer's input
holds few ones, and the ``cpu`` backend adds up the weight columns its nonzeros select instead of
multiplying every zero (see ``cpu.py``): the forward and the weight gradient then cost ``nnz(x) * O``
multiply-adds, while the input gradient stays a dense product. Denser or narrow inputs fall back to
the dense product. The ``reference`` backend is torch's dense product, which is also what runs on a
GPU (cuBLAS is the fast path there). Registered as ``neurostep::spike_linear_forward`` /
``_backward``; the operation counter counts it as the linear layer it is (ACs on binary inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neurostep.engine import CountAs, check_tensor, define_op
from neurostep.kernels import synapse_op

_NAME = "spike_linear"
# Inputs and outputs per row, at least, for the cpu backend's event-driven kernels: for narrower layers
# a GEMM call costs microseconds, and the kernels' passes and launches cost more than they save.
MIN_WIDTH = 128


def _output_like(x, weight):
    return x.new_empty((x.shape[0], weight.shape[0]))


SPIKE_LINEAR = define_op(
    _NAME,
    backends={name: f"neurostep.kernels.spike_linear.{name}" for name in ("reference", "cpu")},
    forward=synapse_op.forward, forward_fake=synapse_op.forward_fake(__name__, _output_like, lambda x: x.shape[0]),
    backward=synapse_op.backward_adapter(_output_like), backward_fake=synapse_op.backward_fake,
    save=synapse_op.save_inputs, internal_outputs=synapse_op.INTERNAL_OUTPUTS,
    cost=CountAs("aten::linear", output=0),
)


def spike_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 backend: str = "auto") -> torch.Tensor:
    """``x @ weight.T + bias`` for mostly-zero (spike) inputs.

    Args:
        x: ``(..., K)`` input, typically spikes or spike counts (any values are allowed: the result is
            the linear layer's for every input; zeros are what make it cheap).
        weight: ``(O, K)``; bias: ``(O,)`` or None. Same dtype and device as ``x``.
        backend: ``"auto"``: the ``cpu`` backend for float32/float64 CPU tensors of a layer at least
            :data:`MIN_WIDTH` wide both ways, else ``F.linear`` itself; or ``"cpu"`` or ``"reference"``.
    Returns:
        ``y (..., O)``.
    """
    x = check_tensor("x", x, min_ndim=1)
    weight = check_tensor("weight", weight, ndim=2, device=x.device)
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"x has {x.shape[-1]} features per row but weight expects {weight.shape[1]}")
    bias = synapse_op.check_bias_and_dtypes(x, weight, bias)
    name = synapse_op.event_driven_backend(SPIKE_LINEAR, backend, x, min(weight.shape) >= MIN_WIDTH)
    if name is None:
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    rows = rows if rows.is_contiguous() else rows.contiguous()
    y = SPIKE_LINEAR(rows, weight, bias, backend=name)[0]
    return y.reshape(*x.shape[:-1], weight.shape[0])


__all__ = ["MIN_WIDTH", "SPIKE_LINEAR", "spike_linear"]
