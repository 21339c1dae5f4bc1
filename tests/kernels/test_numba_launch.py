"""CPU kernels called from several Python threads at once, under every numba threading layer."""

import io
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numba
import numpy as np
import pytest
from numba.core import event as numba_event

from neurostep.kernels import numba_launch
from neurostep.kernels.numba_launch import (
    CompileNotice,
    LaunchGuard,
    range_kernel,
    range_launcher,
    range_slots,
    span_of,
)

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import threading
import numba
import torch
from neurostep.kernels.lif import lif_scan
from neurostep.kernels.linear_scan import linear_scan

x = torch.randn(8, 2048)
a, b = torch.rand(2, 8, 512), torch.randn(2, 8, 512)
errors = []

def work():
    try:
        for _ in range(20):
            lif_scan(x, tau_inv=0.5, v_threshold=1.0, backend="cpu")
            linear_scan(a, b, backend="cpu")
    except Exception as exc:  # noqa: BLE001 - reported below
        errors.append(exc)

threads = [threading.Thread(target=work) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not errors, errors
print("layer", numba.threading_layer())
"""


@pytest.mark.parametrize("layer", ["workqueue", "default"])
def test_kernels_from_several_threads_do_not_abort(layer):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if layer != "default":
        env["NUMBA_THREADING_LAYER"] = layer
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    if layer != "default":
        assert f"layer {layer}" in done.stdout


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fresh_kernels():
    """Two new numba functions (compiled on their first call in this test): ``outer`` calls ``inner``."""
    @numba.njit
    def inner(x):
        return x * 2.0

    @numba.njit
    def outer(x):
        return inner(x).sum()

    return inner, outer


def test_compile_notice_reports_the_outermost_compile_on_a_terminal():
    inner, outer = _fresh_kernels()
    out = _Terminal()
    with numba_event.install_listener("numba:compile", CompileNotice(prefix=outer.py_func.__module__, stream=out)):
        outer(np.ones(4, dtype=np.float32))
        outer(np.ones(4, dtype=np.float32))          # cached in the process: no compile, no line
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines                     # inner compiled inside outer's compile: not reported
    assert "compiling" in lines[0] and "outer" in lines[0] and "(float32)" in lines[0]
    assert "compiled" in lines[1] and "outer" in lines[1] and lines[1].endswith(" s")


def test_compile_notice_logs_instead_when_not_on_a_terminal(caplog):
    _, outer = _fresh_kernels()
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="neurostep.kernels"):
        with numba_event.install_listener("numba:compile",
                                          CompileNotice(prefix=outer.py_func.__module__, stream=out)):
            outer(np.ones(3))
    assert out.getvalue() == ""
    messages = [r.getMessage() for r in caplog.records if r.name == "neurostep.kernels"]
    assert len(messages) == 2 and "compiling" in messages[0] and "(float64)" in messages[0]


def test_compile_notice_ignores_other_modules():
    _, outer = _fresh_kernels()
    out = _Terminal()
    with numba_event.install_listener("numba:compile", CompileNotice(prefix="neurostep.", stream=out)):
        outer(np.ones(3))
    assert out.getvalue() == ""


def test_the_first_launch_registers_the_compile_notice():
    guard = LaunchGuard()
    launch = guard(lambda: 1)
    assert guard._notice is None                      # nothing registered at construction (import)
    try:
        assert launch() == 1
        assert isinstance(guard._notice, CompileNotice)
        notice = guard._notice
        launch()
        assert guard._notice is notice                # registered once
    finally:
        if guard._notice is not None:
            numba_event.unregister("numba:compile", guard._notice)


def test_threads_launching_first_register_one_notice(monkeypatch):
    registered = []

    class SlowNotice(CompileNotice):     # a wide window between the check and the registration
        def __init__(self) -> None:
            time.sleep(0.05)
            super().__init__()

    monkeypatch.setattr(numba_launch, "CompileNotice", SlowNotice)
    monkeypatch.setattr(numba_event, "register", lambda kind, listener: registered.append((kind, listener)))
    guard = LaunchGuard()
    start = threading.Barrier(4)

    def first_launch():
        start.wait()
        guard(lambda: None)()

    threads = [threading.Thread(target=first_launch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registered == [("numba:compile", guard._notice)]


def _doubling_kernel(lo, hi, slot, x, out, owner):
    for i in range(lo, hi):
        out[i] = 2.0 * x[i]
        owner[i] = slot


def _doubling_launch(kernel, n_slots, n_items, x, out, owner):
    for slot in numba.prange(n_slots):
        s = np.int64(slot)
        lo, hi = span_of(s, n_slots, n_items)
        kernel(lo, hi, s, x, out, owner)


@pytest.mark.parametrize("n_slots", [1, 2, 3, 5])
def test_span_of_cuts_items_into_contiguous_ranges_of_near_equal_size(n_slots):
    for n_items in range(0, 23):
        spans = [span_of(s, n_slots, n_items) for s in range(n_slots)]
        assert spans[0][0] == 0 and spans[-1][1] == n_items
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        sizes = [hi - lo for lo, hi in spans]
        assert max(sizes) - min(sizes) <= 1


def test_range_slots_follow_numba_threads_and_the_number_of_items():
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert range_slots(100) == 1
        numba.set_num_threads(before)
        assert range_slots(100) == before
        assert range_slots(1) == 1 and range_slots(0) == 1
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("n_items", [0, 1, 7, 64])
def test_range_launcher_runs_each_item_once_in_its_slot(n_items):
    kinds = ("f1", "f1", "f1")
    kernel = range_kernel(_doubling_kernel, kinds, "float64")
    launch = range_launcher(_doubling_launch, kinds, "float64")
    x = np.arange(n_items, dtype=np.float64)
    out, owner = np.full(n_items, np.nan), np.full(n_items, -1.0)
    n_slots = range_slots(n_items)
    launch(kernel, n_slots, n_items, x, out, owner)
    np.testing.assert_array_equal(out, 2 * x)
    want = np.concatenate([np.full(hi - lo, s) for s in range(n_slots) for lo, hi in [span_of(s, n_slots, n_items)]])
    np.testing.assert_array_equal(owner, want)


def test_range_kernel_is_called_through_its_address_not_compiled_into_the_launcher():
    """The launcher's code must not contain the kernel: linking it in would have LLVM optimize the kernel a
    second time, which is the compile time these launchers exist to avoid."""
    kinds = ("f1", "f1", "f1")
    launch = range_launcher(_doubling_launch, kinds, "float64")
    kernel = range_kernel(_doubling_kernel, kinds, "float64")
    llvm = "".join(launch.inspect_llvm().values())
    assert "_doubling_launch" in llvm and "_doubling_kernel" not in llvm
    assert "_doubling_kernel" in "".join(kernel.inspect_llvm().values())


def test_range_launcher_refuses_arrays_of_another_type():
    """Explicit signatures: an array of another dtype is an error, never a silent copy whose writes are lost."""
    kinds = ("f1", "f1", "f1")
    kernel = range_kernel(_doubling_kernel, kinds, "float64")
    launch = range_launcher(_doubling_launch, kinds, "float64")
    x = np.ones(4, dtype=np.float32)
    with pytest.raises(TypeError):
        launch(kernel, 1, 4, x, np.empty(4), np.empty(4))


def test_numba_type_names_every_kind_and_refuses_others():
    from numba.core import types

    assert numba_launch.numba_type("f3", "float32") == types.float32[:, :, ::1]
    assert numba_launch.numba_type("f", "float64") == types.float64
    assert numba_launch.numba_type("none", "float32") == types.none
    with pytest.raises(ValueError, match="unknown argument kind"):
        numba_launch.numba_type("q", "float32")
