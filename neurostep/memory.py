"""Memory for CPU training steps: fewer page faults on freshly allocated activations.

glibc's malloc serves blocks of a few megabytes with ``mmap``, or trims them off the top of the
heap when they are freed, so the same activations of the next training step land on fresh pages and
every 4 KB page faults on first touch. :func:`retain_freed_memory` (process-wide) keeps freed blocks
for reuse; :func:`empty`, which the CPU kernels allocate their large outputs with, reuses the blocks of
earlier outputs (:func:`output_pool`) and puts a fresh block on memory that faults in 2 MB pages.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import math
import os
import threading
import weakref

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
_HUGE_PAGE = 1 << 21
_DEFAULT_POOL_LIMIT = 256 << 20
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
                 torch.int64: np.int64, torch.int32: np.int32, torch.int8: np.int8, torch.uint8: np.uint8,
                 torch.bool: np.bool_}


class _Lease:
    """One use of a pooled block, as NumPy's array interface: the base object of every array on it."""

    __slots__ = ("__array_interface__", "__weakref__", "block")

    def __init__(self, block: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.block = block
        self.__array_interface__ = {"data": (block.ctypes.data, False), "shape": shape, "typestr": dtype.str,
                                    "version": 3}


class BlockPool:
    """Large blocks freed by kernel outputs, kept for the next output of the same size (thread-safe, capped).

    An op called in a loop returns outputs of the same sizes every call. Where glibc has unmapped or
    trimmed the previous call's blocks (which depends on everything else the process allocated in
    between), a fresh block costs a page fault per page and the kernel's zeroing of it, which can take
    longer than the op itself (measurements on the design page, ``docs/design.md``, Memory). The pool
    hands such a block straight back.

    Blocks are whole multiples of 2 MB that start on a 2 MB boundary, so that every page of them can be
    a huge page. A block returns to the pool when the last reference to its tensor (and to every view of
    it) is gone. The pool keeps at most ``limit_bytes``: beyond that, the blocks that have waited longest
    go back to the C library, so sizes a workload no longer uses make room for the ones it does.
    ``limit_bytes = 0`` keeps none.
    """

    def __init__(self, limit_bytes: int = _DEFAULT_POOL_LIMIT) -> None:
        # the waiting blocks by id, oldest first: the oldest leave when the pool is over its limit, the latest
        # of a size is reused first (the most likely to be still in the caches). At most limit / 4 MB of them
        # (64 by default), so a scan finds one of a size cheaply.
        self._waiting: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cached = 0
        self._hits = 0
        self._misses = 0
        # a block comes back in whichever thread drops its tensor, possibly inside a garbage collection
        # that started while this thread held the lock: a re-entrant lock
        self._lock = threading.RLock()
        self.limit_bytes = limit_bytes

    @property
    def limit_bytes(self) -> int:
        """The most bytes the pool keeps while nothing uses them."""
        return self._limit

    @limit_bytes.setter
    def limit_bytes(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"limit_bytes must be a non-negative int, got {value!r}")
        with self._lock:
            self._limit = value
            self._evict_oldest()

    @property
    def cached_bytes(self) -> int:
        """Bytes of the blocks waiting in the pool."""
        return self._cached

    def stats(self) -> dict[str, int]:
        """``hits`` (blocks reused), ``misses`` (blocks allocated), ``cached_bytes``, ``limit_bytes``."""
        with self._lock:
            return {"hits": self._hits, "misses": self._misses, "cached_bytes": self._cached,
                    "limit_bytes": self._limit}

    def clear(self) -> None:
        """Give every waiting block back to the C library."""
        with self._lock:
            self._waiting, self._cached = collections.OrderedDict(), 0

    def empty(self, shape: tuple[int, ...], np_dtype: type) -> np.ndarray:
        """An uninitialised C-contiguous array on a pooled block (a reused one where the pool has one of
        the size)."""
        nbytes = -(-math.prod(shape) * np.dtype(np_dtype).itemsize // _HUGE_PAGE) * _HUGE_PAGE
        block = self._take(nbytes)
        if block is None:
            raw = np.empty(nbytes + _HUGE_PAGE, dtype=np.uint8)  # NumPy advises huge pages for the whole of it
            start = -raw.ctypes.data % _HUGE_PAGE
            block = raw[start:start + nbytes]
        lease = _Lease(block, tuple(shape), np.dtype(np_dtype))
        # every array on the block, views included, keeps the lease alive (NumPy's base of a view is the
        # lease, not the array it was taken from; a tensor from torch.from_numpy keeps its array), so the
        # block is free when the lease dies
        weakref.finalize(lease, self._give_back, block).atexit = False
        return np.asarray(lease)

    def _take(self, nbytes: int) -> np.ndarray | None:
        with self._lock:
            for key in reversed(self._waiting):
                if self._waiting[key].nbytes == nbytes:
                    self._hits += 1
                    self._cached -= nbytes
                    return self._waiting.pop(key)
            self._misses += 1
            return None

    def _give_back(self, block: np.ndarray) -> None:
        nbytes = block.nbytes
        with self._lock:
            if nbytes > self._limit:
                return
            self._waiting[id(block)] = block
            self._cached += nbytes
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        # sizes a workload stopped using leave the pool first (with the lock held)
        while self._cached > self._limit:
            self._cached -= self._waiting.popitem(last=False)[1].nbytes

    def _forget_after_fork(self) -> None:
        # a forked child gets a copy of the blocks (copy-on-write) and maybe a lock that another thread held
        self._lock = threading.RLock()
        self.clear()


@functools.cache
def output_pool() -> BlockPool:
    """The process's pool of large kernel-output blocks (made on first use): see :class:`BlockPool`.

    ``output_pool().limit_bytes`` sets how much it keeps (256 MB by default; 0 turns reuse off),
    ``output_pool().clear()`` frees what it holds, ``output_pool().stats()`` counts its reuse.
    """
    pool = BlockPool()
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=pool._forget_after_fork)
    return pool


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor for a kernel's output, on memory that may use 2 MB pages.

    A freshly allocated output of a few megabytes or more lands on new pages, and the first write to each
    4 KB page faults (and the kernel zeroes it). Blocks of 4 MB and more come from :func:`output_pool`:
    a block that an earlier output of the same size (rounded up to 2 MB) freed, or a new one allocated
    through NumPy, which marks it for transparent huge pages where the system allows it (Linux with THP in
    ``madvise`` or ``always`` mode), so that one fault maps 2 MB. Smaller blocks, dtypes NumPy lacks
    (bfloat16) and other systems get ``torch.empty``. The tensor is an ordinary CPU tensor, except that its
    storage cannot be resized in place.
    """
    np_dtype = _NUMPY_DTYPES.get(dtype)
    numel = math.prod(shape)
    if np_dtype is None or numel * dtype.itemsize < _HUGE_PAGE_MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(output_pool().empty(tuple(shape), np_dtype))


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """:func:`empty` of ``t``'s shape and dtype (always contiguous, on the CPU)."""
    return empty(t.shape, t.dtype)
