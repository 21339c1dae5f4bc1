"""Fixtures shared by the kernel tests."""

import pytest


@pytest.fixture
def unboxing_calls(monkeypatch):
    """The names of numba's Python call-backs that unbox a first-class function argument
    (``_get_wrapper_address``, ``_get_jit_address``), one entry per call made while the test runs: compiled
    code looks them up in their module on every call, so replacing them there counts them."""
    from numba.experimental import function_type

    calls = []
    for name in ("_get_wrapper_address", "_get_jit_address"):
        original = getattr(function_type, name)
        monkeypatch.setattr(function_type, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    return calls
