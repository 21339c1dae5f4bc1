"""numba's disk cache of the kernels is keyed on every kernel source file (neurostep.kernels.numba_cache)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time

import numba
import pytest

from neurostep.kernels import numba_cache
from neurostep.kernels.numba_cache import kernel_sources_stamp


def test_stamp_follows_the_contents_of_every_source_file(tmp_path):
    (tmp_path / "op").mkdir()
    kernel, helper = tmp_path / "op" / "cpu.py", tmp_path / "helper.py"
    kernel.write_text("def kernel(): pass\n")
    helper.write_text("A = 1\n")
    before = kernel_sources_stamp(tmp_path)
    helper.write_text("A = 2\n")  # an edit to a helper alone, same size
    os.utime(helper, ns=(1, 1))
    edited = kernel_sources_stamp(tmp_path)
    assert edited != before
    helper.write_text("A = 1\n")  # reverted: the same contents give the same stamp, whatever the file times
    assert kernel_sources_stamp(tmp_path) == before
    (tmp_path / "new.py").write_text("")
    assert kernel_sources_stamp(tmp_path) != before
    (tmp_path / "op" / "__pycache__").mkdir()
    (tmp_path / "op" / "__pycache__" / "x.py").write_text("ignored")
    (tmp_path / "new.py").unlink()
    assert kernel_sources_stamp(tmp_path) == before


def _surrogate_function():
    # a closure compiled per surrogate: numba locates its cache by the file that defines it, as for any kernel
    from neurostep.kernels.lif.surrogates import sg_block_function
    return sg_block_function(0, "float32").dispatcher


@pytest.mark.parametrize("module,name", [("neurostep.kernels.lif.cpu", "_forward_kernel"),
                                         ("neurostep.kernels.lif.surrogates", _surrogate_function),
                                         ("neurostep.kernels.causal_conv1d.cpu", "_backward_kernel")])
def test_kernels_are_stamped_with_every_kernel_source(module, name):
    fn = name() if callable(name) else getattr(importlib.import_module(module), name)
    locator = fn._cache._impl.locator
    assert isinstance(locator, numba_cache.LOCATORS)
    assert locator.get_source_stamp() == kernel_sources_stamp()


def test_functions_elsewhere_keep_numbas_own_locators(tmp_path, monkeypatch):
    source = tmp_path / "user_module.py"
    source.write_text("import numba\n\n@numba.njit(cache=True)\ndef twice(x):\n    return 2 * x\n")
    spec = importlib.util.spec_from_file_location("user_module", source)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "user_module", module)
    spec.loader.exec_module(module)
    assert module.twice(3) == 6
    locator = module.twice._cache._impl.locator
    assert not isinstance(locator, numba_cache.LOCATORS)
    assert isinstance(locator, (numba.core.caching.InTreeCacheLocator, numba.core.caching.UserProvidedCacheLocator))


def test_installing_twice_adds_nothing():
    numba_cache.install_kernel_cache_locators()
    classes = numba.core.caching.CacheImpl._locator_classes
    assert all(classes.count(cls) == 1 for cls in numba_cache.LOCATORS)
    assert classes[:len(numba_cache.LOCATORS)] == list(numba_cache.LOCATORS)


def test_kernels_cache_in_the_directory_of_their_source_version():
    from neurostep.kernels.lif import cpu

    locator = cpu._forward_kernel._cache._impl.locator
    path = locator.get_cache_path()
    assert path == numba_cache.version_dir(os.path.dirname(path), kernel_sources_stamp())
    assert os.path.isdir(path) and os.path.basename(path).startswith(numba_cache.VERSION_PREFIX)


def _load_kernel_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_going_back_to_earlier_sources_loads_their_cached_code(tmp_path, monkeypatch):
    # a kernel file under a stand-in kernels directory, compiled under sources "a", then "b", then "a" again
    source = tmp_path / "kernel.py"
    source.write_text("import numba\n\n@numba.njit(cache=True)\ndef plus_one(x):\n    return x + 1\n")
    monkeypatch.setattr(numba_cache, "KERNELS_DIR", tmp_path)
    stats = []
    for i, stamp in enumerate(("a" * 64, "b" * 64, "a" * 64)):
        monkeypatch.setattr(numba_cache, "_process_stamp", lambda stamp=stamp: stamp)
        module = _load_kernel_module(source, f"stand_in_kernel_{i}")
        assert isinstance(module.plus_one._cache._impl.locator, numba_cache.LOCATORS)
        assert module.plus_one(1) == 2
        stats.append((module.plus_one.stats.cache_hits, module.plus_one.stats.cache_misses))
    # the first two versions compile; back at "a", its code is still there (one directory holding one
    # stamp per function would have dropped it when "b" was saved)
    assert [sum(hits.values()) for hits, _ in stats] == [0, 0, 1]
    versions = sorted(p.name for p in (tmp_path / "__pycache__").iterdir() if p.is_dir())
    assert versions == [numba_cache.VERSION_PREFIX + "a" * 16, numba_cache.VERSION_PREFIX + "b" * 16]


def test_old_versions_are_pruned_once_unused(tmp_path):
    now = time.time()
    parent = tmp_path / "__pycache__"
    parent.mkdir()
    ages = {"v0": 10, "v1": 7200, "v2": 8000, "v3": 9000, "v4": 100}  # seconds since last use
    for name, age in ages.items():
        d = parent / f"{numba_cache.VERSION_PREFIX}{name}"
        d.mkdir()
        (d / "f.nbi").write_text("")
        os.utime(d, (now - age, now - age))
    flat_old, flat_new, pyc = parent / "old.nbi", parent / "new.nbc", parent / "m.cpython-311.pyc"
    for f, age in ((flat_old, 7200), (flat_new, 10), (pyc, 7200)):
        f.write_text("")
        os.utime(f, (now - age, now - age))
    current = str(parent / f"{numba_cache.VERSION_PREFIX}v0")
    removed = numba_cache.prune_versions(str(parent), current, keep=3)
    left = sorted(p.name for p in parent.iterdir())
    # kept: the current version, the two most recently used others (v4, v1), and anything used within the
    # hour; removed: the older versions (v2, v3) and numba's files from before versions had directories
    prefix = numba_cache.VERSION_PREFIX
    assert left == sorted([f"{prefix}v0", f"{prefix}v1", f"{prefix}v4", "new.nbc", "m.cpython-311.pyc"])
    assert sorted(os.path.basename(p) for p in removed) == sorted([f"{prefix}v2", f"{prefix}v3", "old.nbi"])


def test_a_process_whose_version_was_pruned_still_saves_new_variants(tmp_path, monkeypatch):
    source = tmp_path / "kernel.py"
    source.write_text("import numba\n\n@numba.njit(cache=True)\ndef plus_one(x):\n    return x + 1\n")
    monkeypatch.setattr(numba_cache, "KERNELS_DIR", tmp_path)
    monkeypatch.setattr(numba_cache, "_process_stamp", lambda: "c" * 64)
    module = _load_kernel_module(source, "stand_in_kernel_pruned")
    assert module.plus_one(1) == 2
    version = tmp_path / "__pycache__" / (numba_cache.VERSION_PREFIX + "c" * 16)
    shutil.rmtree(version)  # pruned by another process while this one runs
    assert module.plus_one(1.5) == 2.5  # a new variant compiles and is saved: its directory is made again
    assert any(p.suffix == ".nbc" for p in version.iterdir())
