"""Memory for CPU training steps: fewer page faults on freshly allocated activations.

glibc's malloc serves blocks of a few megabytes with ``mmap``, or trims them off the top of the
heap when they are freed, so the same activations of the next training step land on fresh pages and
every 4 KB page faults on first touch. :func:`retain_freed_memory` (process-wide) keeps freed blocks
for reuse; :func:`empty`, which the CPU kernels allocate their large outputs with, puts a block that
is fresh anyway on memory that faults in 2 MB pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math

import numpy as np
import torch

# glibc's mallopt parameters (malloc.h): the size from which a block is its own mmap, the free memory
# at the top of the heap above which free() returns it to the system, and how many blocks may be mmaps.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper limit on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def retain_freed_memory(*, large_blocks: bool = False) -> bool:
    """Make glibc's malloc keep freed blocks of up to 32 MB (or of any size) for reuse instead of unmapping them.

    A training step allocates and frees the same few-megabyte activations over and over; with this
    setting the next step reuses them instead of faulting in fresh pages. It changes the whole
    process (glibc has one allocator) and keeps up to 1 GB of freed memory mapped; ``neurostep run``
    calls it in every process that trains.

    Args:
        large_blocks: also serve blocks above 32 MB (glibc's ceiling for the setting above) from the
            heap, by turning malloc's own ``mmap`` off, so that they are reused too: a language model's
            weight gradients, such as the 154 MB one of a tied 50k-token embedding, or the decayed linear
            attention's chunk states at long lengths. The price: a large block freed below the top of the
            heap stays in the process for later allocations instead of going back to the system, so the
            process keeps its peak memory.

    Returns:
        True when glibc accepted the settings; False, with nothing changed, where the C library is not
        glibc. Measured effects are on the design page (``docs/design.md``, Memory).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return ok and (not large_blocks or bool(mallopt(_M_MMAP_MAX, 0)))


# NumPy asks the kernel for transparent huge pages (madvise MADV_HUGEPAGE) on every block it allocates from
# this size up, on Linux; torch's CPU allocator does not unless THP_MEM_ALLOC_ENABLE is set before torch starts.
_HUGE_PAGE_MIN_BYTES = 1 << 22
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
                 torch.int64: np.int64, torch.int32: np.int32, torch.int8: np.int8, torch.uint8: np.uint8,
                 torch.bool: np.bool_}


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor for a kernel's output, on memory that may use 2 MB pages.

    A freshly allocated output of a few megabytes or more lands on new pages, and the first write to each
    4 KB page faults (and the kernel zeroes it). Blocks of 4 MB and more are allocated through NumPy, which
    marks them for transparent huge pages where the system allows it (Linux with THP in ``madvise`` or
    ``always`` mode), so that one fault maps 2 MB. Smaller blocks, dtypes NumPy lacks (bfloat16) and other
    systems get ``torch.empty``. The tensor is an ordinary CPU tensor, except that its storage cannot be
    resized in place.
    """
    np_dtype = _NUMPY_DTYPES.get(dtype)
    numel = math.prod(shape)
    if np_dtype is None or numel * dtype.itemsize < _HUGE_PAGE_MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(np.empty(tuple(shape), dtype=np_dtype))


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """:func:`empty` of ``t``'s shape and dtype (always contiguous, on the CPU)."""
    return empty(t.shape, t.dtype)
