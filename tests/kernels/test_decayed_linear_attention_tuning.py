"""The chunked backends' chunk size measured per machine: the tuner, its file, and the op's default (the triton
backend under Triton's interpreter, which tests/conftest.py turns on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neurostep.cli import main as cli_main
from neurostep.kernels.decayed_linear_attention import cpu, tuning
from neurostep.kernels.decayed_linear_attention import decayed_linear_attention as dla


def chunk_used(q, k, v, log_decay, **kwargs) -> int:
    """The chunk length the cpu backend ran with, read off the shape of its saved chunked copy of q."""
    saved = []
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        dla(*leaves, log_decay, backend="cpu", **kwargs)
    K = q.shape[-1]
    blocks = [t for t in saved if t.dim() == 3 and t.shape[-1] == K and t.shape[0] % (q.shape[0] * v.shape[2]) == 0]
    return blocks[0].shape[1]


def chunk_of_forward_only_call(monkeypatch, q, k, v, log_decay) -> int:
    """The chunk length a forward-only call (under ``torch.no_grad``) passes to the cpu backend's forward."""
    seen = []
    forward = cpu.forward

    def spy(q, k, v, g, h0, scale, chunk_size, *rest):
        seen.append(chunk_size)
        args = (q, k, v, g, h0, scale, chunk_size, *rest)
        return forward(*args)

    monkeypatch.setattr(cpu, "forward", spy)
    with torch.no_grad():
        dla(q, k, v, log_decay, backend="cpu")
    monkeypatch.setattr(cpu, "forward", forward)
    return seen[0]


def inputs(L=40, H=2, K=8, V=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, L, H, K, generator=g, dtype=dtype), torch.randn(1, L, H, K, generator=g, dtype=dtype),
            torch.randn(1, L, H, V, generator=g, dtype=dtype), -torch.rand(1, L, H, generator=g, dtype=dtype))


def test_tuning_file_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tuning.tuning_file() == tmp_path / "neurostep" / "decayed_linear_attention.json"
    assert tuning.tuned_chunk_size(8, 4, torch.float32) is None   # nothing measured yet


def test_tune_records_the_fastest_and_the_op_uses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    q, k, v, g = inputs()
    assert chunk_used(q, k, v, g) == min(cpu.CHUNK_SIZE, 40)          # no file: the backend's default
    best, medians = tuning.tune_chunk_size(length=40, heads=2, k=8, v=4, candidates=(8, 16), rounds=1)
    assert set(medians) == {8, 16} and best == min(medians, key=medians.get)
    data = json.loads(tuning.tuning_file().read_text())
    entry = data[tuning.machine_key()][tuning.workload_key(8, 4, torch.float32, torch.get_num_threads(), True)]
    assert entry["chunk_size"] == best and set(entry["median_s"]) == {"8", "16"}
    assert tuning.tuned_chunk_size(8, 4, torch.float32) == best
    assert chunk_used(q, k, v, g) == best
    # an explicit chunk size wins; other dtypes, widths and thread counts keep the default
    assert chunk_used(q, k, v, g, chunk_size=32) == 32
    assert tuning.tuned_chunk_size(8, 4, torch.float64) is None
    assert tuning.tuned_chunk_size(16, 4, torch.float32) is None
    assert tuning.tuned_chunk_size(8, 4, torch.float32, threads=torch.get_num_threads() + 1) is None
    assert chunk_used(*inputs(dtype=torch.float64)) == min(cpu.CHUNK_SIZE, 40)


def test_training_and_inference_calls_are_tuned_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    q, k, v, g = inputs()
    threads = torch.get_num_threads()
    tuning.tuning_file().parent.mkdir(parents=True)
    tuning.tuning_file().write_text(json.dumps({tuning.machine_key(): {
        tuning.workload_key(8, 4, torch.float32, threads, True): {"chunk_size": 8},
        tuning.workload_key(8, 4, torch.float32, threads, False): {"chunk_size": 16}}}))
    assert chunk_used(q, k, v, g) == 8                                   # gradients wanted: training's choice
    assert chunk_of_forward_only_call(monkeypatch, q, k, v, g) == 16     # no gradients: inference's
    _, medians = tuning.tune_chunk_size(length=40, heads=2, k=8, v=4, candidates=(8, 24), rounds=1, backward=False)
    assert tuning.tuned_chunk_size(8, 4, torch.float32, backward=False) == min(medians, key=medians.get)
    assert tuning.tuned_chunk_size(8, 4, torch.float32, backward=True) == 8


def test_a_recorded_choice_is_read_back_after_a_retune(tmp_path):
    path = tmp_path / "t.json"
    key = tuning.workload_key(8, 4, torch.float32, torch.get_num_threads(), True)
    for chunk in (8, 24):
        path.write_text(json.dumps({tuning.machine_key(): {key: {"chunk_size": chunk}}}))
        assert tuning.tuned_chunk_size(8, 4, torch.float32, path=path) == chunk
    # another machine's choice, a malformed entry or an unreadable file is ignored
    path.write_text(json.dumps({"some other CPU x64": {key: {"chunk_size": 8}}}))
    assert tuning.tuned_chunk_size(8, 4, torch.float32, path=path) is None
    path.write_text(json.dumps({tuning.machine_key(): {key: {"chunk_size": "big"}}}))
    assert tuning.tuned_chunk_size(8, 4, torch.float32, path=path) is None
    path.write_text("{not json")
    assert tuning.tuned_chunk_size(8, 4, torch.float32, path=path) is None


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="length"):
        tuning.measure_chunk_sizes(length=0)
    with pytest.raises(ValueError, match="candidates"):
        tuning.measure_chunk_sizes(length=8, heads=1, k=2, v=2, candidates=(16, 0))
    with pytest.raises(ValueError, match="powers of two >= 16"):
        tuning.measure_chunk_sizes(length=8, heads=1, k=2, v=2, candidates=(16, 24), backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        tuning.measure_chunk_sizes(length=8, heads=1, k=2, v=2, backend="cuda")


def _triton_chunk_of_call(monkeypatch, q, k, v, log_decay) -> int:
    """The chunk length a triton call with ``chunk_size=None`` passes to the backend's forward."""
    from neurostep.kernels.decayed_linear_attention import triton as triton_backend

    seen = []
    forward = triton_backend.forward

    def spy(q, k, v, g, h0, scale, chunk_size, *rest):
        seen.append(chunk_size)
        return forward(q, k, v, g, h0, scale, chunk_size, *rest)

    monkeypatch.setattr(triton_backend, "forward", spy)
    dla(q, k, v, log_decay, backend="triton")
    monkeypatch.setattr(triton_backend, "forward", forward)
    return seen[0]


def test_triton_backend_is_tuned_apart_from_the_cpu_one(tmp_path, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    q, k, v, g = inputs()
    assert _triton_chunk_of_call(monkeypatch, q, k, v, g) == 64                  # nothing measured: the default
    best, medians = tuning.tune_chunk_size(length=40, heads=2, k=8, v=4, candidates=(16, 32), rounds=1,
                                           backend="triton")
    assert set(medians) == {16, 32} and best == min(medians, key=medians.get)
    data = json.loads(tuning.tuning_file().read_text())
    where = tuning.machine_key("triton", "cpu")
    assert where.startswith("triton interpreter on ") and where != tuning.machine_key()
    # a GPU's choice does not depend on the host's thread count: no thread count in its key
    assert data[where][tuning.workload_key(8, 4, torch.float32, None, True)]["chunk_size"] == best
    assert tuning.machine_key() not in data                                       # the cpu choice untouched
    assert tuning.tuned_chunk_size(8, 4, torch.float32, backend="triton") == best
    assert tuning.tuned_chunk_size(8, 4, torch.float32, backend="triton", threads=99) == best
    assert tuning.tuned_chunk_size(8, 4, torch.float32) is None
    assert _triton_chunk_of_call(monkeypatch, *(t.requires_grad_() for t in (q, k, v)), g) == best
    assert chunk_used(q, k, v, g) == min(cpu.CHUNK_SIZE, 40)                       # cpu: still its default


def test_cli_tune_prints_and_records(tmp_path, capsys):
    path = tmp_path / "t.json"
    assert cli_main(["tune", "--length", "32", "--heads", "1", "--state", "4", "--head-dim", "2",
                     "--candidates", "8", "16", "--rounds", "1", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "chunk    8" in out and "chunk   16" in out and "<- fastest" in out and str(path) in out
    assert "forward+backward" in out and "forward only" in out                 # both modes by default
    for backward in (True, False):
        assert tuning.tuned_chunk_size(4, 2, torch.float32, backward=backward, path=path) in (8, 16)
    assert cli_main(["tune", "--length", "32", "--heads", "1", "--state", "4", "--head-dim", "2",
                     "--rounds", "1", "--file", str(tmp_path / "dry.json"), "--dry-run"]) == 0
    assert not (tmp_path / "dry.json").exists()


def test_cli_tune_the_triton_backend(tmp_path, capsys):
    pytest.importorskip("triton")
    path = tmp_path / "t.json"
    assert cli_main(["tune", "--backend", "triton", "--length", "32", "--heads", "1", "--state", "4",
                     "--head-dim", "2", "--candidates", "16", "32", "--rounds", "1", "--mode", "train",
                     "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "triton backend" in out and "chunk   16" in out and "chunk   32" in out and "triton interpreter" in out
    assert tuning.tuned_chunk_size(4, 2, torch.float32, path=path, backend="triton") in (16, 32)
    assert tuning.tuned_chunk_size(4, 2, torch.float32, path=path) is None


_TUNE_THREADS_SCRIPT = """
import sys
import numba, torch
from neurostep.cli import main
main(["tune", "--length", "32", "--heads", "1", "--state", "4", "--head-dim", "2", "--candidates", "8",
      "--rounds", "1", "--threads", "1", "--file", sys.argv[1]])
print(torch.get_num_threads(), numba.get_num_threads())
"""


def test_cli_tune_threads_sets_torch_and_numba(tmp_path):
    # the op's products run on torch's threads and its masks and state passes on numba's: both take --threads
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), NUMBA_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", _TUNE_THREADS_SCRIPT, str(tmp_path / "t.json")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split()[-2:] == ["1", "1"]
