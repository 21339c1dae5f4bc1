"""2-D "same" convolution for spike inputs, computed from the nonzeros of ``x``.

The function is ``torch.nn.functional.conv2d(x, weight, bias, padding=k // 2)`` (stride 1, odd square
kernel, one group), the convolution of Spikformer's stem stages after the first. A spiking stage's
input holds few ones; the ``cpu`` backend adds, for each nonzero, the weights it reaches into the
output instead of multiplying every zero (see ``cpu.py``): the forward and the weight gradient then
cost in proportion to the spikes, while the input gradient stays torch's dense convolution backward.
Denser inputs fall back to the dense convolution. The ``reference`` backend is torch's dense
convolution, which is also what runs on a GPU. Registered as ``neurostep::spike_conv2d_forward`` /
``_backward``; the operation counter counts it as the convolution it is (ACs on binary inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neurostep.engine import CountAs, check_tensor, define_op
from neurostep.kernels import synapse_op

_NAME = "spike_conv2d"


def _output_like(x, weight):
    return torch.empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


def _pixels(x):
    return x.shape[0] * x.shape[2] * x.shape[3]


def _as_convolution(args: tuple) -> tuple:
    """``aten::convolution``'s arguments for a call ``(x, weight, bias, backend)``."""
    x, weight, bias = args[:3]
    pad = weight.shape[-1] // 2
    return x, weight, bias, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1


SPIKE_CONV2D = define_op(
    _NAME,
    backends={name: f"neurostep.kernels.spike_conv2d.{name}" for name in ("reference", "cpu")},
    forward=synapse_op.forward, forward_fake=synapse_op.forward_fake(__name__, _output_like, _pixels),
    backward=synapse_op.backward_adapter(_output_like, torch.channels_last), backward_fake=synapse_op.backward_fake,
    save=synapse_op.save_inputs, internal_outputs=synapse_op.INTERNAL_OUTPUTS,
    cost=CountAs("aten::convolution", _as_convolution, output=0),
)


def spike_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 backend: str = "auto") -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=k // 2)`` for mostly-zero (spike) inputs.

    Args:
        x: ``(N, C_in, H, W)`` input, typically spikes (any values are allowed: the result is the
            convolution's for every input; zeros are what make it cheap).
        weight: ``(C_out, C_in, k, k)`` with odd ``k``; bias: ``(C_out,)`` or None. Same dtype and device
            as ``x``.
        backend: ``"auto"``: the ``cpu`` backend for float32/float64 CPU tensors, else ``F.conv2d``
            itself; or ``"cpu"`` or ``"reference"``.
    Returns:
        ``y (N, C_out, H, W)``, channels-last where the event-driven op computes it (the layout it builds;
        a channels-last ``x`` is read without a copy).
    """
    x = check_tensor("x", x, ndim=4)
    weight = check_tensor("weight", weight, ndim=4, device=x.device)
    k = weight.shape[-1]
    if weight.shape[-2] != k or k % 2 == 0:
        raise ValueError(f"weight must have an odd square kernel, got {tuple(weight.shape[-2:])}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"x has {x.shape[1]} channels but weight expects {weight.shape[1]}")
    bias = synapse_op.check_bias_and_dtypes(x, weight, bias)
    name = synapse_op.event_driven_backend(SPIKE_CONV2D, backend, x)
    if name is None:
        return F.conv2d(x, weight, bias, padding=k // 2)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    return SPIKE_CONV2D(x, weight, bias, backend=name)[0]


__all__ = ["SPIKE_CONV2D", "spike_conv2d"]
