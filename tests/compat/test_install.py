"""neurostep.compat.install(): upstream import paths resolve to the stand-ins, only while installed."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest

import neurostep.compat as compat

REAL_MAMBA = importlib.util.find_spec("mamba_ssm") is not None if "mamba_ssm" not in sys.modules else True
REAL_CONV = importlib.util.find_spec("causal_conv1d") is not None if "causal_conv1d" not in sys.modules else True

SUBMODULES = [
    "mamba_ssm.ops.selective_scan_interface",
    "mamba_ssm.ops.triton.selective_state_update",
    "mamba_ssm.ops.triton.layer_norm",
    "mamba_ssm.ops.triton.layernorm_gated",
    "mamba_ssm.ops.triton.ssd_combined",
    "mamba_ssm.modules.mamba_simple",
    "mamba_ssm.modules.mamba2",
    "mamba_ssm.modules.block",
    "mamba_ssm.modules.mlp",
    "mamba_ssm.models.mixer_seq_simple",
    "mamba_ssm.models.config_mamba",
    "mamba_ssm.utils.generation",
    "mamba_ssm.utils.hf",
    "causal_conv1d.causal_conv1d_interface",
    "causal_conv1d.causal_conv1d_varlen",
    "causal_conv1d.cpp_functions",
]


@pytest.fixture
def installed():
    compat.install()
    try:
        yield
    finally:
        compat.uninstall()


def test_nothing_changes_before_install():
    assert compat.installed() == ()
    if not REAL_MAMBA:
        assert importlib.util.find_spec("mamba_ssm") is None
        with pytest.raises(ImportError):
            import mamba_ssm  # noqa: F401


@pytest.mark.parametrize("name", SUBMODULES)
def test_every_submodule_is_the_stand_in(installed, name):
    module = importlib.import_module(name)
    assert module is importlib.import_module("neurostep.compat." + name)
    assert sys.modules[name] is module
    assert module.__name__ == "neurostep.compat." + name  # the neurostep module itself, not a copy


def test_upstream_import_statements(installed):
    import causal_conv1d
    import mamba_ssm
    from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
    from mamba_ssm import Mamba, Mamba2, MambaLMHeadModel, mamba_inner_fn, selective_scan_fn
    from mamba_ssm.modules.mamba_simple import Mamba as Mamba_
    from mamba_ssm.ops.triton.layer_norm import RMSNorm, layer_norm_fn, rms_norm_fn

    assert mamba_ssm is sys.modules["neurostep.compat.mamba_ssm"]
    assert causal_conv1d is sys.modules["neurostep.compat.causal_conv1d"]
    assert Mamba is Mamba_ and mamba_ssm.ops.selective_scan_interface.selective_scan_fn is selective_scan_fn
    assert all(callable(f) for f in (causal_conv1d_fn, causal_conv1d_update, mamba_inner_fn, layer_norm_fn,
                                     rms_norm_fn, Mamba2, MambaLMHeadModel, RMSNorm))
    assert importlib.util.find_spec("mamba_ssm") is not None
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mamba_ssm.no_such_module")


def test_uninstall_removes_the_aliases():
    compat.install()
    import mamba_ssm.ops.selective_scan_interface  # noqa: F401

    compat.uninstall()
    assert compat.installed() == ()
    assert not any(name == "mamba_ssm" or name.startswith("mamba_ssm.") for name in sys.modules)
    assert "neurostep.compat.mamba_ssm.ops.selective_scan_interface" in sys.modules  # neurostep's modules stay
    if not REAL_MAMBA:
        with pytest.raises(ImportError):
            importlib.import_module("mamba_ssm")
    compat.uninstall()  # a second call is a no-op


def test_install_is_idempotent_and_adds_packages():
    try:
        compat.install(["causal_conv1d"])
        assert compat.installed() == ("causal_conv1d",)
        compat.install()
        compat.install()
        assert compat.installed() == ("causal_conv1d", "mamba_ssm")
        assert sum(isinstance(f, compat._AliasFinder) for f in sys.meta_path) == 1
        assert isinstance(sys.meta_path[0], compat._AliasFinder)
    finally:
        compat.uninstall()
    assert not any(isinstance(f, compat._AliasFinder) for f in sys.meta_path)


def test_only_the_named_package_is_stood_in():
    try:
        compat.install(["causal_conv1d"])
        import causal_conv1d  # noqa: F401
        if not REAL_MAMBA:
            with pytest.raises(ImportError):
                importlib.import_module("mamba_ssm")
    finally:
        compat.uninstall()


def test_refuses_when_the_real_package_is_already_imported(monkeypatch):
    fake = types.ModuleType("mamba_ssm")
    fake.__file__ = "/site-packages/mamba_ssm/__init__.py"
    monkeypatch.setitem(sys.modules, "mamba_ssm", fake)
    with pytest.raises(RuntimeError, match="already imported.*install\\(\\) must run before"):
        compat.install()
    assert compat.installed() == ()
    compat.install(["causal_conv1d"])  # the other package is still fine
    try:
        assert compat.installed() == ("causal_conv1d",)
    finally:
        compat.uninstall()
    assert sys.modules["mamba_ssm"] is fake  # uninstall leaves a foreign module alone


def test_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown package"):
        compat.install(["flash_attn"])
    assert compat.installed() == ()
