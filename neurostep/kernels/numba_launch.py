"""Running a numba kernel's blocks on several threads without numba's ``parallel=True``.

Most CPU kernels are a serial ``@numba.njit(nogil=True)`` function over a range of independent work
items (blocks of lanes, batch rows, channels): ``kernel(*args, lo, hi)`` does items ``lo`` to
``hi - 1``. :func:`launch` splits the items into one contiguous range per thread, as numba's
``prange`` schedules them (``numba.get_num_threads()`` threads, so ``numba.set_num_threads`` keeps
working), runs the first range on the calling thread and the others on a small pool of Python
threads; the kernel releases the GIL, so the ranges run concurrently.

Why not ``prange``: compiling a ``parallel=True`` function is mostly numba's parfor machinery
(parfor analysis, then outlining and retyping the loop body as a gufunc and building its
launcher), which doubled or tripled each kernel's first-call compile time (LIF backward 14.6 s
CPU against 6.9 s, WKV forward 12.9 s against 4.4 s; ``benchmarks/compile_time.py``, loaded
machine). A pool launch costs a few tens of microseconds, about what numba's own launch does. It
also runs under any numba threading layer from any number of Python threads at once: numba's
``workqueue`` layer aborts the process when two threads launch parallel kernels concurrently.

Two kernel families keep ``prange`` because their serial form ran slower: the causal convolution
(2.2x on one thread) and the selective scan (1.25x at the median, 2 threads; its serial form with
non-inlined gather/scatter helpers compiled several times faster). Their entry points go through
:data:`serialized`, which under ``workqueue`` lets one launch run at a time and under the other
threading layers adds one attribute read per call.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numba

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                # at most NUMBA_NUM_THREADS - 1 helpers: the calling thread runs one range itself
                workers = max(1, numba.config.NUMBA_NUM_THREADS - 1)
                _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="neurostep-kernel")
    return _pool


def parts(n_items: int) -> int:
    """How many ranges (threads) :func:`launch` splits ``n_items`` items into: at least 1."""
    return max(1, min(numba.get_num_threads(), n_items))


def launch(kernel: Callable[..., Any], n_items: int, *args: Any, with_part: bool = False) -> None:
    """Run ``kernel(*args, lo, hi)`` over items ``0 .. n_items - 1``, one contiguous range per thread.

    ``kernel`` must be compiled with ``nogil=True`` and its items must be independent (each writes
    only its own part of the outputs). With ``with_part`` it is called as ``kernel(*args, lo, hi,
    part)``, ``part`` being the range's index below :func:`parts` ``(n_items)``: an index into
    per-thread buffers that the caller reduces afterwards.
    """
    threads = parts(n_items)
    bounds = [n_items * i // threads for i in range(threads + 1)]

    def ranged(i: int) -> tuple:
        return (*args, bounds[i], bounds[i + 1], i) if with_part else (*args, bounds[i], bounds[i + 1])

    if threads == 1:
        kernel(*ranged(0))
        return
    pool = _get_pool()
    futures: list[Future] = [pool.submit(kernel, *ranged(i)) for i in range(1, threads)]
    try:
        kernel(*ranged(0))
    finally:
        # wait for every range even when this one raised: they write into the caller's buffers
        errors = [f.exception() for f in futures]
    for err in errors:
        if err is not None:
            raise err


F = TypeVar("F", bound=Callable[..., Any])


class LaunchGuard:
    """Serializes ``parallel=True`` kernel launches when numba's threading layer is ``workqueue``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layer: str | None = None

    def needs_lock(self) -> bool:
        if self._layer is None:
            try:
                self._layer = numba.threading_layer()
            except ValueError:   # no parallel launch yet: the first one chooses the layer
                return True
        return self._layer == "workqueue"

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if not self.needs_lock():
                return fn(*args, **kwargs)
            with self._lock:
                return fn(*args, **kwargs)

        return guarded  # type: ignore[return-value]


# One guard for the process: the workqueue pool it protects is one per process too.
serialized = LaunchGuard()
