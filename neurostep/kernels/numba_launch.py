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

:func:`range_launcher` runs a serial kernel (:func:`range_kernel`) over ranges of work items on the
same threading layer as ``prange``, for kernels whose ``prange`` body takes too long to compile.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

import numba
import numpy as np
from numba.core import event as numba_event
from numba.core import types
from numba.core.typing.templates import Signature

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



@numba.njit(inline="always")
def span_of(slot, n_slots, n_items):
    """Items ``lo <= i < hi`` of range ``slot`` when ``n_items`` are cut into ``n_slots`` contiguous ranges
    whose sizes differ by at most one (the static schedule ``prange`` uses)."""
    base, extra = n_items // n_slots, n_items % n_slots
    lo = slot * base + min(slot, extra)
    return lo, lo + base + (1 if slot < extra else 0)


def range_slots(n_items: int) -> int:
    """How many ranges a kernel's ``n_items`` are cut into in this thread: ``numba.get_num_threads()`` (so
    ``numba.set_num_threads`` and ``NUMBA_NUM_THREADS`` apply as to ``prange``), at most one per item, at
    least one. Per-range output buffers are sized by it."""
    return max(1, min(numba.get_num_threads(), n_items))


def numba_type(kind: str, dtype: str) -> types.Type:
    """The numba type of one kernel argument: ``"i"`` int64, ``"b"`` bool, ``"f"`` a ``dtype`` scalar,
    ``"fR"`` a C-contiguous ``dtype`` array of rank R, ``"i8"`` a C-contiguous int8 vector, ``"none"``
    None (an argument whose absence the kernel tests at compile time)."""
    fixed = {"i": types.int64, "b": types.boolean, "i8": types.int8[::1], "none": types.none}
    if kind in fixed:
        return fixed[kind]
    scalar = numba.from_dtype(np.dtype(dtype))
    if kind == "f":
        return scalar
    if kind[:1] == "f" and kind[1:].isdigit():
        return types.Array(scalar, int(kind[1:]), "C")
    raise ValueError(f"unknown argument kind {kind!r} (one of i, b, f, fR, i8, none)")


def range_kernel_signature(kinds: tuple[str, ...], dtype: str) -> Signature:
    """``void(lo, hi, slot, *args)`` for arguments of these kinds (:func:`numba_type`)."""
    return types.void(types.int64, types.int64, types.int64, *(numba_type(k, dtype) for k in kinds))


@functools.cache
def range_kernel(kernel: Callable[..., None], kinds: tuple[str, ...], dtype: str) -> Any:
    """``kernel(lo, hi, slot, *args)`` compiled (or loaded from numba's disk cache) for one signature: a
    serial function over the work items ``lo <= i < hi``, which may use ``slot`` (its range's index, below
    :func:`range_slots`) to pick a per-range output buffer.

    Kept per process. Launch it with a :func:`range_launcher` compiled for the same kinds and dtype.
    """
    return numba.njit(range_kernel_signature(kinds, dtype), cache=True, nogil=True, error_model="numpy")(kernel)


@functools.cache
def range_launcher(launcher: Callable[..., None], kinds: tuple[str, ...], dtype: str) -> Any:
    """``launcher(kernel, n_slots, n_items, *args)`` compiled with ``parallel=True``: a ``prange`` over the
    slots whose body calls ``kernel(lo, hi, slot, *args)`` on the span (:func:`span_of`) of each.

    Why not a ``prange`` over the items in the kernel itself: numba compiles a ``prange`` loop by
    copying its body into a generated function and compiling both, and the body's library is linked
    into the kernel's and optimized by LLVM again, which for the selective scan took about 2.5 times as
    long as compiling the same loop as a serial function (13 s and 25 s for its forward and backward
    from a cold cache, 2-core AMD EPYC, 2026-12-04). Here the kernel is an argument of function type,
    called through its address, so the launcher compiles in well under a second, the kernel compiles
    as a serial function, and both are cached on disk apart. The launcher runs on numba's threading
    layer like any ``prange`` loop, on the same threads (a pool of Python threads instead ran a Mamba
    training step 1.13-1.33x slower when torch's OpenMP threads spin between operations).
    """
    signature = range_kernel_signature(kinds, dtype)
    launch_types = types.void(types.FunctionType(signature), types.int64, types.int64, *signature.args[3:])
    return numba.njit(launch_types, parallel=True, cache=True)(launcher)
