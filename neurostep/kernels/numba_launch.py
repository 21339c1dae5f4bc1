"""Launching numba's parallel kernels from several Python threads without aborting the process.

numba runs ``prange`` loops on one of three threading layers, picked at the first parallel
launch: TBB, then OpenMP, then its own ``workqueue`` when neither is installed (or when the
user asks for it with ``NUMBA_THREADING_LAYER``). OpenMP and TBB accept launches from several
Python threads at once; ``workqueue`` does not and terminates the process. :data:`serialized`
decorates every CPU kernel entry point: under ``workqueue`` it lets one launch run at a time,
under the other layers it adds one attribute read per call and nothing else.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numba

F = TypeVar("F", bound=Callable[..., Any])


class LaunchGuard:
    """Serializes kernel launches when numba's threading layer is ``workqueue``."""

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
        def launch(*args: Any, **kwargs: Any) -> Any:
            if not self.needs_lock():
                return fn(*args, **kwargs)
            with self._lock:
                return fn(*args, **kwargs)

        return launch  # type: ignore[return-value]


# One guard for the process: the workqueue pool it protects is one per process too.
serialized = LaunchGuard()
