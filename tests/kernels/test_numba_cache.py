"""numba's disk cache of the kernels is keyed on every kernel source file (neurostep.kernels.numba_cache)."""

from __future__ import annotations

import importlib.util
import os
import sys

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


@pytest.mark.parametrize("module,name", [("neurostep.kernels.lif.cpu", "_forward_kernel"),
                                         ("neurostep.kernels.lif.surrogates", "sg_block"),
                                         ("neurostep.kernels.causal_conv1d.cpu", "_backward_kernel")])
def test_kernels_are_stamped_with_every_kernel_source(module, name):
    fn = getattr(importlib.import_module(module), name)
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
