"""Shared input checks. Every public op validates once, before any kernel runs.

numba does not check bounds, so a wrong shape that reached a kernel could read or write
outside an array: these checks are the only guard. Messages name the argument and shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(
    name: str,
    x: object,
    *,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    dtypes: Iterable[torch.dtype] | None = FLOAT_DTYPES,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Check that ``x`` is a tensor with the given rank, shape, dtype and device.

    ``shape`` may hold ``None`` for free dimensions. Raises ``TypeError`` for a non-tensor
    or a wrong dtype and ``ValueError`` for a wrong rank, shape or device.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if x.dtype not in dtypes:
            allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} must have dtype in ({allowed}), got {str(x.dtype).replace('torch.', '')}")
    if ndim is not None:
        allowed_ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed_ndims:
            wanted = " or ".join(map(str, allowed_ndims))
            raise ValueError(f"{name} must have {wanted} dims, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dims, got shape {tuple(x.shape)}")
    if shape is not None:
        if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
            dims = ", ".join("*" if s is None else str(s) for s in shape)
            expected = f"({dims},)" if len(shape) == 1 else f"({dims})"
            raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device} but the input is on {device}; move them to one device")
    return x


def check_same_shape(name: str, x: torch.Tensor, expected: Sequence[int], what: str = "the input") -> None:
    """Raise ``ValueError`` unless ``x.shape == expected``."""
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} to match {what}, got {tuple(x.shape)}")


def has_values(x: torch.Tensor) -> bool:
    """Whether ``x``'s values may be read for a check: not on the meta device (shapes only, as the
    operation counter and shape tracing use it) and not inside a ``torch.compile`` trace (a
    data-dependent check would break the graph). Value checks skip such tensors; shape checks never do."""
    return x.device.type != "meta" and not torch.compiler.is_compiling()


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` if a parameter tensor holds NaN or inf (inputs may hold NaN: it propagates)."""
    if not has_values(x):
        return
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.layout == torch.strided:
        # numpy reads the CPU tensor's memory in one call; the torch check is three dispatched ops and
        # cost 14 us against 4 us on a small parameter, several times per fused op call
        finite = bool(np.isfinite(x.detach().resolve_neg().numpy()).all())
    else:
        finite = bool(torch.isfinite(x).all())
    if not finite:
        raise ValueError(f"{name} must be finite, got {x.detach().flatten()[:8].tolist()}")


def check_token_range(name: str, ids: torch.Tensor, vocab_size: int) -> None:
    """Raise ``ValueError`` unless every token id lies in ``[0, vocab_size)``."""
    if ids.numel() and has_values(ids):
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} must lie in [0, {vocab_size}), got range [{low}, {high}]")


def check_nonempty(name: str, x: torch.Tensor, dim: int, what: str = "time steps") -> None:
    """Raise ``ValueError`` if ``x`` has length 0 along ``dim`` (an empty sequence)."""
    if x.shape[dim] == 0:
        raise ValueError(f"{name} has 0 {what} (shape {tuple(x.shape)}); sequences must be non-empty")


def check_backend_name(backend: str, choices: Sequence[str]) -> None:
    if not isinstance(backend, str) or (backend != "auto" and backend not in choices):
        raise ValueError(f"backend must be 'auto' or one of {tuple(choices)}, got {backend!r}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """State and accumulation dtype: fp16/bf16 inputs are computed in fp32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_numba_input(x: torch.Tensor, memory_format: torch.memory_format | None = None) -> None:
    """What a numba backend takes: a contiguous float32 or float64 CPU tensor (its kernels read the
    memory as a numpy array of that layout), or one contiguous in ``memory_format`` too (a backend that
    reads channels-last images as they are)."""
    laid_out = x.is_contiguous() or (memory_format is not None and x.is_contiguous(memory_format=memory_format))
    if x.dtype not in (torch.float32, torch.float64) or not x.is_cpu or not laid_out:
        raise TypeError(f"cpu backend expects contiguous float32/float64 CPU tensors, got {x.dtype} on {x.device}"
                        + ("" if laid_out else " with strides " + str(tuple(x.stride()))))
