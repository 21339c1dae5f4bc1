"""Launching numba's parallel kernels from several Python threads without aborting the process.

numba runs ``prange`` loops on one of three threading layers, picked at the first parallel
launch: TBB, then OpenMP, then its own ``workqueue`` when neither is installed (or when the
user asks for it with ``NUMBA_THREADING_LAYER``). OpenMP and TBB accept launches from several
Python threads at once; ``workqueue`` does not and terminates the process. :data:`serialized`
decorates every CPU kernel entry point: under ``workqueue`` it lets one launch run at a time,
under the other layers it adds one attribute read per call and nothing else.

The first launch also registers a :class:`CompileNotice` with numba's event API, so that a kernel
compiling on its first use (seconds to a minute on a fresh machine; numba's disk cache serves every
later process) says so instead of leaving the user at a silent prompt.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TextIO, TypeVar

import numba
from numba.core import event as numba_event

F = TypeVar("F", bound=Callable[..., Any])


class CompileNotice(numba_event.Listener):
    """Reports the compilation of a kernel whose module starts with ``prefix``: one line when it starts
    and one when it ends, with the seconds it took.

    A kernel compiles on its first call in a process whose numba cache lacks it (a fresh clone, a new
    dtype or layout); a large one takes up to a minute, during which nothing else happens. The lines go
    to ``stream`` when it is a terminal and to the ``neurostep.kernels`` logger (INFO) otherwise, so
    logs and batch jobs stay quiet unless logging asks for them. Only the outermost compilation is
    reported: helpers compiled on the way belong to it.

    Args:
        prefix: module prefix of the functions to report (``"neurostep."``).
        stream: where the lines go when it is a terminal (None: ``sys.stderr`` at the time of the event).
    """

    def __init__(self, prefix: str = "neurostep.", stream: TextIO | None = None) -> None:
        self.prefix = prefix
        self.stream = stream
        self._depth = 0
        self._reported: tuple[str, float] | None = None   # name and start time of the reported compile

    def _emit(self, message: str) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        if getattr(stream, "isatty", lambda: False)():
            print(message, file=stream, flush=True)
        else:
            logging.getLogger("neurostep.kernels").info(message)

    def on_start(self, event: numba_event.Event) -> None:
        self._depth += 1
        if self._depth != 1:
            return
        fn = getattr(event.data.get("dispatcher"), "py_func", None)
        module = getattr(fn, "__module__", "") or ""
        if fn is None or not module.startswith(self.prefix):
            return
        name = f"{module.removeprefix(self.prefix)}.{fn.__name__}"
        types = ", ".join(sorted({str(t.dtype) for t in event.data.get("args", ()) if hasattr(t, "ndim")}))
        self._reported = (name, time.perf_counter())
        self._emit(f"neurostep: compiling {name}" + (f" ({types})" if types else "")
                   + " on its first use; numba caches it on disk for later runs ...")

    def on_end(self, event: numba_event.Event) -> None:
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0 and self._reported is not None:
            name, start = self._reported
            self._reported = None
            self._emit(f"neurostep: compiled {name} in {time.perf_counter() - start:.1f} s")


class LaunchGuard:
    """Serializes kernel launches when numba's threading layer is ``workqueue``; registers a
    :class:`CompileNotice` at the first launch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layer: str | None = None
        self._notice: CompileNotice | None = None
        self._notice_lock = threading.Lock()

    def watch_compiles(self) -> None:
        """Register the compile notice with numba (once, even when several threads launch first; at the
        first launch, not at import)."""
        with self._notice_lock:
            if self._notice is None:
                self._notice = CompileNotice()
                numba_event.register("numba:compile", self._notice)

    def needs_lock(self) -> bool:
        if self._layer is None:
            try:
                self._layer = numba.threading_layer()
            except ValueError:   # no parallel launch yet: the first one chooses the layer
                return True
        return self._layer == "workqueue"

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def launch(*args: Any, **kwargs: Any) -> Any:
            if self._notice is None:
                self.watch_compiles()
            if not self.needs_lock():
                return fn(*args, **kwargs)
            with self._lock:
                return fn(*args, **kwargs)

        return launch  # type: ignore[return-value]


# One guard for the process: the workqueue pool it protects is one per process too.
serialized = LaunchGuard()


def spans(n_items: int, parts: int) -> list[tuple[int, int]]:
    """``[0, n_items)`` cut into ``min(parts, n_items)`` contiguous ranges whose sizes differ by at most one
    (numba's static ``prange`` schedule does the same)."""
    parts = max(1, min(parts, n_items))
    base, extra = divmod(n_items, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + base + (1 if i < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


class KernelThreads:
    """Runs a ``nogil`` numba kernel over ranges of work items on several threads.

    The kernels that would take longest to compile are plain ``@numba.njit(nogil=True)`` functions with
    the signature ``kernel(lo, hi, slot, *args)``: they process items ``lo <= i < hi`` and may use
    ``slot`` (the range's index) to pick a per-thread output buffer. This class plays the part of
    ``prange``: the calling thread runs the first range and a pool of waiting threads the others.
    Why not ``prange``: numba compiles a ``prange`` loop by copying its body into a generated function
    and compiling both, which for the selective scan took 2.5 times as long as the same loop without
    ``parallel=True`` (13 s and 25 s against 5 s and 9 s for its forward and backward from a cold cache;
    2-core AMD EPYC, 2026-12-04), for the same speed. Threads waiting on a queue also do not spin
    between kernels, as OpenMP's do.

    The number of ranges is ``numba.get_num_threads()`` in the calling thread (so ``numba.set_num_threads``
    and ``NUMBA_NUM_THREADS`` apply as to every other kernel), capped by the number of items. The pool is
    created on first use and again in a forked child, where the parent's threads do not exist.

    Args:
        workers: pool threads besides the caller (None: ``NUMBA_NUM_THREADS - 1``, enough for every range
            :meth:`spans` gives). Ranges beyond ``workers + 1`` still run, waiting for a free thread.
    """

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                workers = self.workers or max(numba.config.NUMBA_NUM_THREADS - 1, 1)
                self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="neurostep-kernel")
                self._pid = os.getpid()
            return self._pool

    @staticmethod
    def spans(n_items: int) -> list[tuple[int, int]]:
        """The ranges :meth:`run` will use for ``n_items`` items in this thread (their count sizes
        per-slot buffers)."""
        return spans(n_items, numba.get_num_threads())

    def run(self, kernel: Callable[..., Any], ranges: list[tuple[int, int]], *args: Any) -> None:
        """``kernel(lo, hi, slot, *args)`` for every ``(lo, hi)`` of ``ranges`` (``slot`` its index), all
        at once; returns when every range is done and raises the first error any of them raised."""
        if len(ranges) == 1:
            kernel(ranges[0][0], ranges[0][1], 0, *args)
            return
        pool = self._executor()
        futures = [pool.submit(kernel, lo, hi, slot, *args) for slot, (lo, hi) in enumerate(ranges[1:], start=1)]
        try:
            kernel(ranges[0][0], ranges[0][1], 0, *args)
        finally:
            wait(futures)   # never leave a range running on buffers the caller frees
        for future in futures:
            future.result()


# One pool for the process, like the guard above.
kernel_threads = KernelThreads()
