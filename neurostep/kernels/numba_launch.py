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
import sys
import threading
import time
from collections.abc import Callable
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
