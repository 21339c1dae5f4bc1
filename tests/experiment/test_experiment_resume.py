"""A killed `neurostep run` loses at most the run in flight; rerunning resumes without duplicates."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from neurostep.experiment.results import ResultStore, run_key

ROOT = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def test_kill_after_first_run_then_resume(make_toml):
    toml = make_toml(name="resume", seeds="[0, 1, 2]", steps=12)
    store = ResultStore(toml.parent / "runs" / "resume")
    cmd = [sys.executable, "-m", "neurostep", "run", str(toml), "--no-progress", "--no-report"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if store.jsonl.exists() and store.jsonl.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    first = store.load()
    assert 1 <= len(first) < 3, "the process had to be killed while runs were still left"
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("done before, skipped") == len(first)
    records = store.load()
    keys = [run_key(r) for r in records]
    assert len(keys) == len(set(keys)) == 3
    assert sorted(k[2] for k in keys) == [0, 1, 2]
    assert records[:len(first)] == first          # finished runs are kept, not redone
    assert store.csv.read_text().count("\n") == 4  # header + 3 runs
