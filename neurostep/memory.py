"""Process-wide memory settings that make CPU training steps faster.

glibc's malloc serves blocks of a few megabytes with ``mmap``, or trims them off the top of the
heap when they are freed, so the same activations of the next training step land on fresh pages and
every 4 KB page faults on first touch. Keeping freed blocks for reuse removes those faults.
"""

from __future__ import annotations

import ctypes
import ctypes.util

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
