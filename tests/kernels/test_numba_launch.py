"""CPU kernels called from several Python threads at once, under every numba threading layer."""

import io
import json
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
from neurostep.kernels.numba_launch import CompileNotice, LaunchGuard, launch_ranges, range_slots, span_of

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


def _doubling_kernel(lo, hi, slot, variant, args):
    x, out, owner = args
    for i in range(lo, hi):
        out[i] = 2.0 * x[i] if variant is None else -2.0 * x[i]
        owner[i] = slot


KINDS = ("f1", "f1", "f1")


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
@pytest.mark.parametrize("variant", [None, np.empty(0, dtype=np.int8)])
def test_launch_ranges_runs_each_item_once_in_its_slot(n_items, variant):
    x = np.arange(n_items, dtype=np.float64)
    out, owner = np.full(n_items, np.nan), np.full(n_items, -1.0)
    n_slots = range_slots(n_items)
    launch_ranges(_doubling_kernel, KINDS, n_slots, n_items, variant, (x, out, owner))
    np.testing.assert_array_equal(out, (2 if variant is None else -2) * x)
    want = np.concatenate([np.full(hi - lo, s) for s in range(n_slots) for lo, hi in [span_of(s, n_slots, n_items)]])
    np.testing.assert_array_equal(owner, want)


def test_a_launch_does_not_call_back_into_python_for_the_kernel(unboxing_calls):
    """The launcher takes the kernel's address: numba would unbox a function argument on every call through
    two Python functions (``_get_wrapper_address``, ``_get_jit_address``), which with cold caches cost a launch
    about 90 us."""
    x = np.arange(8, dtype=np.float64)
    out, owner = np.empty(8), np.empty(8)
    launch_ranges(_doubling_kernel, KINDS, range_slots(8), 8, None, (x, out, owner))
    np.testing.assert_array_equal(out, 2 * x)
    assert unboxing_calls == []


LINK_PROBE = """
import json
import numpy as np
from neurostep.kernels import numba_launch

def doubling_kernel(lo, hi, slot, variant, args):
    x, out = args
    for i in range(lo, hi):
        out[i] = 2.0 * x[i]

kinds = ("f1", "f1")
numba_launch.launch_ranges(doubling_kernel, kinds, 1, 4, None, (np.ones(4), np.empty(4)))
launcher = numba_launch.range_launcher(kinds, "float64", "none")
kernel = numba_launch.range_kernel(doubling_kernel, kinds, "float64", "none")
print(json.dumps({"launcher": "".join(launcher.inspect_llvm().values()),
                  "kernel": "".join(kernel.dispatcher.inspect_llvm().values())}))
"""


def test_a_range_kernel_is_called_through_its_address_not_compiled_into_the_launcher(tmp_path):
    """The launcher's code must not contain the kernel: linking it in would have LLVM optimize the kernel a
    second time, the compile time these launchers exist to avoid. Compiled in a fresh process and cache
    (numba cannot show the code of a function loaded from its cache)."""
    script = tmp_path / "probe.py"
    script.write_text(LINK_PROBE)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    llvm = json.loads(done.stdout.strip().splitlines()[-1])
    assert "_launch" in llvm["launcher"] and "doubling_kernel" not in llvm["launcher"]
    assert "doubling_kernel" in llvm["kernel"]


def _flagged(x, flag):
    return x + 1.0 if flag else x


def test_run_time_constants_compile_a_helper_once_for_every_value():
    helper = numba.njit(_flagged)
    on = numba.njit(lambda x: helper(x, numba_launch.run_time(True)))
    off = numba.njit(lambda x: helper(x, numba_launch.run_time(False)))
    assert (on(1.0), off(1.0)) == (2.0, 1.0)
    assert len(helper.signatures) == 1 and "Literal" not in str(helper.signatures[0])
    literal = numba.njit(_flagged)   # the same calls with plain constants: one compile per value
    numba.njit(lambda x: literal(x, True))(1.0)
    numba.njit(lambda x: literal(x, False))(1.0)
    assert len(literal.signatures) == 2


def test_launch_ranges_refuses_arrays_of_another_type():
    """Explicit signatures: an array of another dtype is an error, never a silent copy whose writes are lost."""
    x = np.ones(4, dtype=np.float32)
    with pytest.raises(TypeError):
        launch_ranges(_doubling_kernel, KINDS, 1, 4, None, (x, np.empty(4), np.empty(4)))


def test_numba_type_names_every_kind_and_refuses_others():
    from numba.core import types

    assert numba_launch.numba_type("f3", "float32") == types.float32[:, :, ::1]
    assert numba_launch.numba_type("f", "float64") == types.float64
    assert numba_launch.numba_type("none", "float32") == types.none
    with pytest.raises(ValueError, match="unknown argument kind"):
        numba_launch.numba_type("q", "float32")


THREADS_SCRIPT = """
import torch
from neurostep.kernels.lif import lif_scan
from neurostep.kernels.numba_launch import set_threads
import numba

torch.set_num_threads(1)
assert torch.get_num_threads() == 1   # torch has set up its threads (any op of torch's would do it)
lif_scan(torch.randn(4, 64), tau_inv=0.5, v_threshold=1.0, backend="cpu")   # the process's first launch
after_launch = torch.get_num_threads(), numba.get_num_threads()
set_threads(1)
print(*after_launch, torch.get_num_threads(), numba.get_num_threads())
"""


def test_the_first_kernel_keeps_torchs_thread_count():
    # numba's OpenMP pool sets the OpenMP thread count of the thread that starts it, which is where torch
    # reads its own count: a process that asked torch for one thread must keep one after the first kernel
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", THREADS_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    torch_after, numba_after, torch_set, numba_set = map(int, done.stdout.split())
    assert (torch_after, numba_after) == (1, 2)   # numba's kernels keep numba's own count
    assert (torch_set, numba_set) == (1, 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["i", "b", "f", "f1", "f2", "f5", "i8", "none"])
def test_a_stand_in_has_the_type_of_its_kind_and_is_shared(kind, dtype):
    value = numba_launch.stand_in(kind, dtype)
    # the type a real argument of the kind has: a call with the stand-in reuses that call's compiled variant
    assert numba.typeof(value) == numba_launch.numba_type(kind, dtype)
    # the same object whichever way the dtype is spelled (a name, a dtype, a scalar type)
    assert numba_launch.stand_in(kind, np.dtype(dtype)) is value
    assert numba_launch.stand_in(kind, np.dtype(dtype).type) is value
    if isinstance(value, np.ndarray):
        assert value.size == 1


def test_a_stand_in_of_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown argument kind"):
        numba_launch.stand_in("q", "float32")
