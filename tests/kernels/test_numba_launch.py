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
from neurostep.kernels.numba_launch import CompileNotice, LaunchGuard

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
