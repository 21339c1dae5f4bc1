"""Memory for CPU training steps: fewer page faults on freshly allocated activations.

glibc's malloc serves blocks of a few megabytes with ``mmap``, or trims them off the top of the
heap when they are freed, so the same activations of the next training step land on fresh pages and
every 4 KB page faults on first touch. :func:`retain_freed_memory` (process-wide) keeps freed blocks
for reuse; :func:`empty`, which the CPU kernels allocate their large outputs with, reuses the blocks of
earlier outputs (:func:`output_pool`) and puts a fresh block on memory that faults in 2 MB pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import sys
import threading

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


class BlockPool:
    """Large blocks of kernel outputs, kept for the next output of the same size (thread-safe, capped).

    An op called in a loop returns outputs of the same sizes every call. Where glibc has unmapped or
    trimmed the previous call's blocks (which depends on everything else the process allocated in
    between), a fresh block costs a page fault per page and the kernel's zeroing of it, which can take
    longer than the op itself (measurements on the design page, ``docs/design.md``, Memory). The pool
    hands such a block straight back.

    Blocks are whole multiples of 2 MB that start on a 2 MB boundary, so that every page of them can be
    a huge page. The pool keeps every block it handed out, with the array it handed out on it, and counts
    references to know which are free: a block is free again once no array, tensor or view on it is left
    (NumPy's views of an array refer to the block's owner, a tensor to the array it was made from, so
    the two counts see them all): two reference counts per block looked at, and no finalizer per output,
    which with cold caches cost several times as much (``docs/design.md``, Memory). The free blocks beyond
    ``limit_bytes`` (those handed out longest ago first, and any larger than the limit) go back to the C
    library when the pool next looks: at each allocation, and when ``cached_bytes``, ``stats`` or the limit
    is read or set. ``limit_bytes = 0`` keeps none.
    """

    def __init__(self, limit_bytes: int = _DEFAULT_POOL_LIMIT) -> None:
        # [owner, array] per block, in the order they were last handed out (oldest first): the owner is the
        # NumPy array that allocated the memory, the array what the last caller got. At most limit / 4 MB of
        # them wait (64 by default), so the scan is short.
        self._blocks: list[list] = []
        self._free_counts: tuple[int, int] | None = None
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()
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
            self._trim()

    @property
    def cached_bytes(self) -> int:
        """Bytes of the free blocks the pool keeps."""
        with self._lock:
            return self._trim()

    def stats(self) -> dict[str, int]:
        """``hits`` (blocks reused), ``misses`` (blocks allocated), ``cached_bytes``, ``limit_bytes``."""
        with self._lock:
            return {"hits": self._hits, "misses": self._misses, "cached_bytes": self._trim(),
                    "limit_bytes": self._limit}

    def clear(self) -> None:
        """Give every free block back to the C library (blocks in use return to the pool when freed)."""
        with self._lock:
            self._blocks = [entry for entry in self._blocks if not self._is_free(entry)]

    def empty(self, shape: tuple[int, ...], np_dtype: type) -> np.ndarray:
        """An uninitialised C-contiguous array on a pooled block (a free one of the size where the pool has
        one: the one handed out last, the likeliest to be in the caches)."""
        count = math.prod(shape)
        dtype = np.dtype(np_dtype)
        nbytes = -(-count * dtype.itemsize // _HUGE_PAGE) * _HUGE_PAGE
        with self._lock:
            entry = self._scan(take=nbytes + _HUGE_PAGE)[1]
            if entry is not None:
                self._hits += 1
                if entry[1].shape != shape or entry[1].dtype != dtype:
                    entry[1] = _on(entry[0], nbytes, dtype, count, shape)
                return entry[1]
            self._misses += 1
            owner = np.empty(nbytes + _HUGE_PAGE, dtype=np.uint8)  # NumPy advises huge pages for the whole of it
            self._blocks.append([owner, _on(owner, nbytes, dtype, count, shape)])
            del owner
            if self._free_counts is None:
                # the counts of a block nobody uses, taken as the scan takes them (the interpreter's own
                # references, such as the call's argument, differ between Python versions)
                entry = self._blocks[-1]
                self._free_counts = (sys.getrefcount(entry[0]), sys.getrefcount(entry[1]))
                del entry
            return self._blocks[-1][1]

    def _is_free(self, entry: list) -> bool:
        # the owner is referred to by the entry and by the handed-out array (both counted in _free_counts);
        # any other array on the memory refers to it or to the handed-out array
        return (sys.getrefcount(entry[0]), sys.getrefcount(entry[1])) == self._free_counts

    def _trim(self) -> int:
        """Drop the free blocks over the limit (with the lock held); returns the bytes of those kept."""
        return self._scan()[0]

    def _scan(self, take: int = 0) -> tuple[int, list | None]:
        """One pass over the blocks, the latest handed out first (with the lock held): take out the first free
        block of ``take`` bytes (its owner's size) where ``take`` is given, and drop the other free blocks over
        the limit. Returns the bytes of the free blocks kept and the taken block's entry (None where there was
        none), which moves to the end, as the latest handed out."""
        kept, cached, taken = [], 0, None
        for entry in reversed(self._blocks):
            if self._is_free(entry):
                size = entry[0].nbytes
                if taken is None and size == take:
                    taken = entry
                    continue
                if cached + size - _HUGE_PAGE > self._limit:
                    continue   # dropped: its memory goes back to the C library
                cached += size - _HUGE_PAGE
            kept.append(entry)
        kept.reverse()
        if taken is not None:
            kept.append(taken)
        self._blocks = kept
        return cached, taken

    def _forget_after_fork(self) -> None:
        # a forked child gets a copy of the blocks (copy-on-write) and maybe a lock that another thread held
        self._lock = threading.Lock()
        self._blocks = []


def _on(owner: np.ndarray, nbytes: int, dtype: np.dtype, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """An array of ``shape`` and ``dtype`` on the 2 MB aligned ``nbytes`` of ``owner``."""
    start = -owner.ctypes.data % _HUGE_PAGE
    return owner[start:start + nbytes].view(dtype)[:count].reshape(shape)


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
    array = _pooled(shape, dtype)
    return torch.empty(shape, dtype=dtype) if array is None else torch.from_numpy(array)


def _pooled(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> np.ndarray | None:
    """An array from :func:`output_pool` for a block of 4 MB and more of a dtype NumPy has, else None."""
    np_dtype = _NUMPY_DTYPES.get(dtype)
    if np_dtype is None or math.prod(shape) * dtype.itemsize < _HUGE_PAGE_MIN_BYTES:
        return None
    return output_pool().empty(tuple(shape), np_dtype)


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """:func:`empty` of ``t``'s shape and dtype (always contiguous, on the CPU)."""
    return empty(t.shape, t.dtype)


def empty_with_array(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray]:
    """An uninitialised contiguous CPU tensor and its memory as a NumPy array, for a kernel that writes the tensor
    it returns: a block of 4 MB and more comes from :func:`output_pool`, as for :func:`empty`, a smaller one from
    NumPy's allocator. Either way the array is the one the tensor was made from (``torch.from_numpy``), not a
    ``numpy()`` of the tensor, and no torch factory call is made: with cold caches each costs a small op about as
    much as the pool's lookup. ``dtype`` must be one NumPy has (not bfloat16)."""
    if dtype not in _NUMPY_DTYPES:
        raise TypeError(f"empty_with_array needs a dtype NumPy has, got {dtype}")
    array = _pooled(shape, dtype)
    if array is None:
        array = np.empty(tuple(shape), dtype=_NUMPY_DTYPES[dtype])
    return torch.from_numpy(array), array
