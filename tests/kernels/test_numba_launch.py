"""CPU kernels called from several Python threads at once, under every numba threading layer."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
