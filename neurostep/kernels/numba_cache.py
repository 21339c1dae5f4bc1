"""numba's disk cache for the kernels, keyed on the sources of every kernel, not only the function's own file.

numba stamps a cached function with its own source file (its contents, through its time and size) and
loads the cached machine code while that file is unchanged. The kernels inline helpers from other files
(:func:`~neurostep.kernels.numba_exp.vexp`, the LIF surrogates, the selective scan's chunk functions
compiled into its range kernels), so after an edit to a helper alone, for example a ``git pull`` into the
editable install that ``make venv`` makes, every kernel that inlines it would go on loading its old code.
The locators here claim the functions defined in files under ``neurostep/kernels`` and stamp them with a
digest of all ``.py`` files there: any change to a kernel source compiles every kernel again on its
first call, as after an upgrade.

Each version of the sources gets a directory of its own, inside numba's (``NUMBA_CACHE_DIR`` when set, else
``__pycache__`` next to the source, else the user-wide one): numba keeps one stamp per function and drops a
function's cached code whenever it meets another, so with one directory for all versions, going back to
sources compiled before (``git checkout`` of a branch and back, an edit undone) would compile every kernel
again. The :data:`KEEP_VERSIONS` most recently used versions are kept, and older ones are removed once unused
for an hour (a process still running one of them writes its directory again before saving: numba calls
``ensure_cache_path`` first).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import time
from pathlib import Path

from numba.core import caching

KERNELS_DIR = Path(__file__).resolve().parent
VERSION_PREFIX = "neurostep-"
"""Name prefix of a cache directory of one version of the kernel sources (followed by its stamp)."""
KEEP_VERSIONS = 3
"""Versions of the kernel sources whose cache directories are kept (per numba cache directory)."""
# A version's directory is removed only when unused for this long, so that a process that still runs older
# sources (a long experiment while the sources are edited) keeps loading its cache.
_STALE_S = 3600.0


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


def version_dir(parent: str, stamp: str) -> str:
    """The cache directory of the kernel sources with ``stamp`` inside numba's cache directory ``parent``."""
    return os.path.join(parent, VERSION_PREFIX + stamp[:16])


def prune_versions(parent: str, current: str, keep: int = KEEP_VERSIONS, stale_s: float = _STALE_S) -> list[str]:
    """Remove the version directories in ``parent`` beyond the ``keep`` most recently used (``current``
    counted as the most recent) that have not been used for ``stale_s`` seconds, and the cache files that
    numba wrote into ``parent`` itself before versions had directories; returns the removed paths."""
    now = time.time()
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    # another process may be pruning the same directory: an entry that vanished is left out
    mtimes = {e.path: t for e in entries if (t := _mtime(e)) is not None}
    versions = [e for e in entries if e.path in mtimes and e.path != current and e.is_dir()
                and e.name.startswith(VERSION_PREFIX)]
    versions.sort(key=lambda e: mtimes[e.path], reverse=True)
    flat = [e for e in entries if e.path in mtimes and e.is_file() and e.name.endswith((".nbi", ".nbc"))]
    removed = []
    for entry in versions[keep - 1:] + flat:
        if now - mtimes[entry.path] < stale_s:
            continue
        if entry.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(entry.path)
        removed.append(entry.path)
    return removed


def _mtime(entry: os.DirEntry) -> float | None:
    try:
        return entry.stat().st_mtime
    except OSError:
        return None


@functools.cache
def _use_version_dir(path: str) -> None:
    """Mark ``path`` as used now and prune its siblings, once per directory and process."""
    with contextlib.suppress(OSError):
        os.utime(path)
    prune_versions(os.path.dirname(path), path)


class _KernelSourcesStamp:
    """Locator mixin: claims kernel functions only, stamps them with :func:`kernel_sources_stamp` and caches
    them in the directory of that version of the sources (:func:`version_dir`)."""

    def get_source_stamp(self) -> str:
        return _process_stamp()

    def get_cache_path(self) -> str:
        return version_dir(super().get_cache_path(), _process_stamp())

    def ensure_cache_path(self) -> None:
        super().ensure_cache_path()
        _use_version_dir(self.get_cache_path())

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
