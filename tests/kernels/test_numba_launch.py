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
from neurostep.kernels.numba_launch import CompileNotice, KernelThreads, LaunchGuard, spans

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


@pytest.mark.parametrize(("n_items", "parts"), [(10, 3), (3, 8), (1, 2), (16, 2), (0, 2)])
def test_spans_cover_the_items_once_in_balanced_ranges(n_items, parts):
    ranges = spans(n_items, parts)
    assert len(ranges) == max(1, min(parts, n_items))
    covered = [i for lo, hi in ranges for i in range(lo, hi)]
    assert covered == list(range(n_items))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_kernel_threads_run_every_range_with_its_slot_on_several_threads():
    pool = KernelThreads(workers=2)
    seen, start = [], threading.Barrier(3, timeout=10)   # every range waits for the others: proof they overlap

    def kernel(lo, hi, slot, out):
        start.wait()
        seen.append((slot, lo, hi, threading.get_ident()))
        out[lo:hi] = slot

    out = np.full(9, -1)
    pool.run(kernel, spans(9, 3), out)
    assert sorted(s[:3] for s in seen) == [(0, 0, 3), (1, 3, 6), (2, 6, 9)]
    assert out.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert len({s[3] for s in seen}) == 3
    assert [s[3] for s in seen if s[0] == 0] == [threading.get_ident()]   # the caller runs range 0


def test_kernel_threads_raise_a_range_error_after_every_range_ended():
    pool = KernelThreads(workers=1)   # range 2 waits for range 1's thread: still run, still awaited
    finished = []

    def kernel(lo, hi, slot):
        if slot == 1:
            raise ValueError("range 1 failed")
        time.sleep(0.2)
        finished.append(slot)

    with pytest.raises(ValueError, match="range 1 failed"):
        pool.run(kernel, spans(3, 3))
    assert sorted(finished) == [0, 2]


def test_kernel_threads_work_in_a_forked_child():
    # the parent's pool threads do not exist in a child made by fork: the child must make its own pool
    # instead of queueing work that nothing runs (a hang, bounded here by the timeout)
    script = """
import os, sys
import numpy as np
from neurostep.kernels.numba_launch import KernelThreads, spans
pool = KernelThreads()
def kernel(lo, hi, slot, out):
    out[lo:hi] = slot + 1
out = np.zeros(4)
pool.run(kernel, spans(4, 2), out)
pid = os.fork()
if pid == 0:
    child = np.zeros(4)
    pool.run(kernel, spans(4, 2), child)
    os._exit(0 if child.tolist() == [1, 1, 2, 2] else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
