"""New tensors filled with one value, without waking torch's thread pool on the CPU.

torch fills a CPU tensor of more than 32,768 elements (its parallel grain size) in a parallel region
on its OpenMP thread pool. The numba kernels run on a second OpenMP runtime whose workers keep spinning
on the cores for a while after each kernel, so a fill between two kernels waits until torch's worker
thread is scheduled. Measured on the 2-core AMD EPYC (2026-12-05, 09:40-10:00 UTC, load 0.4-1): in a
loop of a LIF forward+backward at T=32 and 65,536 lanes and a torch copy, the rest state made by
``Tensor.new_full`` cost about 0.4 ms of the op's 3.7-4.3 ms; in the round-robin of
``benchmarks/neurons.py`` (25-second loops) the op took 3.46-3.47 ms with numpy's fill against
3.55-3.67 ms with torch's. numpy fills the same 256 KB on the calling thread in 10-20 us.
"""

from __future__ import annotations

import torch

from neurostep.engine.ops import dispatch_is_unobserved

_NUMPY_FILLED = (torch.float32, torch.float64, torch.float16)


def filled(like: torch.Tensor, shape: tuple[int, ...], value: float,
           strides: tuple[int, ...] | None = None) -> torch.Tensor:
    """A new ``shape`` tensor on ``like``'s device, in its dtype, every element ``value``.

    Args:
        like: gives the device and dtype.
        shape: the new tensor's shape.
        value: the fill value.
        strides: its strides (dense, e.g. channels-last); None for the contiguous layout.

    Returns:
        The tensor. On the CPU in float32, float64 or float16, numpy writes the value on the calling
        thread (see the module docstring); elsewhere, and wherever something watches torch's calls (the op
        counter, fake tensors, ``torch.compile``: :func:`~neurostep.engine.ops.dispatch_is_unobserved`),
        torch fills it.
    """
    if strides is None:
        t = like.new_empty(shape)
    else:
        t = like.new_empty_strided(shape, strides)
    if t.device.type == "cpu" and t.dtype in _NUMPY_FILLED and dispatch_is_unobserved((t,)):
        t.numpy().fill(value)
        return t
    return t.fill_(value)


__all__ = ["filled"]
