"""numba's disk cache for the kernels, keyed on the sources of every kernel, not only the function's own file.

numba stamps a cached function with its own source file (its contents, through its time and size) and
loads the cached machine code while that file is unchanged. The kernels inline helpers from other files
(:func:`~neurostep.kernels.numba_exp.vexp`, the LIF surrogates, the selective scan's chunk functions
compiled into its range kernels), so after an edit to a helper alone, for example a ``git pull`` into the
editable install that ``make venv`` makes, every kernel that inlines it would go on loading its old code.
The locators here claim the functions defined in files under ``neurostep/kernels`` and stamp them with a
digest of all ``.py`` files there: any change to a kernel source compiles every kernel again on its
first call, as after an upgrade. Cache directories are numba's own (``NUMBA_CACHE_DIR`` when set, else
``__pycache__`` next to the source, else the user-wide one).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from numba.core import caching

KERNELS_DIR = Path(__file__).resolve().parent


def _source_stats(root: str) -> tuple[tuple[str, int, int], ...]:
    """``(relative path, mtime in ns, size)`` of every ``.py`` file under ``root``, sorted by path."""
    stats = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                st = os.stat(path)
                stats.append((os.path.relpath(path, root), st.st_mtime_ns, st.st_size))
    return tuple(sorted(stats))


def kernel_sources_stamp(root: Path | str = KERNELS_DIR) -> str:
    """A digest of the contents of every ``.py`` file under ``root``, with their relative paths.

    The files are read again only when one's time or size (or the set of files) changed since the last
    call."""
    return _digest(str(root), _source_stats(str(root)))


@functools.lru_cache(maxsize=8)
def _digest(root: str, stats: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for rel, _, _ in stats:
        h.update(rel.encode() + b"\0")
        h.update((Path(root) / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def is_kernel_source(py_file: str) -> bool:
    """Whether ``py_file`` lies under ``neurostep/kernels``."""
    try:
        return Path(py_file).resolve().is_relative_to(KERNELS_DIR)
    except OSError:
        return False


@functools.cache
def _process_stamp() -> str:
    """:func:`kernel_sources_stamp` of the kernels, once per process: numba asks each cached function for its
    stamp when the function is decorated, about twenty times while the kernel modules import, and reads it
    once per function as well (an edit after that is seen by the next process)."""
    return kernel_sources_stamp()


class _KernelSourcesStamp:
    """Locator mixin: claims kernel functions only, and stamps them with :func:`kernel_sources_stamp`."""

    def get_source_stamp(self) -> str:
        return _process_stamp()

    @classmethod
    def from_function(cls, py_func, py_file):
        if not is_kernel_source(py_file):
            return None
        return super().from_function(py_func, py_file)


class KernelUserProvidedCacheLocator(_KernelSourcesStamp, caching.UserProvidedCacheLocator):
    """numba's ``NUMBA_CACHE_DIR`` locator, stamped with every kernel source."""


class KernelInTreeCacheLocator(_KernelSourcesStamp, caching.InTreeCacheLocator):
    """numba's ``__pycache__`` locator, stamped with every kernel source."""


class KernelUserWideCacheLocator(_KernelSourcesStamp, caching.UserWideCacheLocator):
    """numba's user-wide locator (read-only installs), stamped with every kernel source."""


LOCATORS = (KernelUserProvidedCacheLocator, KernelInTreeCacheLocator, KernelUserWideCacheLocator)


def install_kernel_cache_locators() -> None:
    """Put :data:`LOCATORS` in front of numba's own (idempotent). numba picks a function's locator when
    the function is decorated, so this runs when ``neurostep.kernels`` is imported, before any kernel."""
    classes = caching.CacheImpl._locator_classes
    missing = [cls for cls in LOCATORS if cls not in classes]
    classes[:0] = missing
