"""The chunked backends' chunk size, measured on the machine that runs them.

The chunked form trades smaller matrix products (shorter chunks run their products at a lower rate)
against fewer multiply-adds in the masked products and less memory (``C (K + V)`` per token, a
``C x C`` score block per chunk). Which side wins depends on the machine: on a 2-core Xeon (AVX-512) at
Mamba-2's sizes (B=1, H=24, K=128, V=64, L=2048, fp32, 2 threads) chunks of 64 were fastest and 32 took
25% longer (2026-12-02); on a 2-core AMD EPYC 32 and 64 are level within the host's noise and trade
places from run to run (2026-12-04: 149 against 157 ms, then 193 against 179 ms half an hour later). So
the default is measured, not assumed:

- :func:`tune_chunk_size` times the backend's forward+backward with each candidate chunk size on a
  workload (round-robin, so that a change of load hits every candidate alike; the median of the rounds)
  and records the fastest in a small JSON file under the user's cache directory
  (``$XDG_CACHE_HOME/neurostep`` or ``~/.cache/neurostep``), keyed by the machine (CPU model, with its
  family, model number and instruction set where known, and core count) and by the workload's dtype,
  ``K``, ``V``, thread count and mode: training (forward and backward) or inference (forward only). The
  two differ: on the AMD EPYC a Mamba-2-130m prefill's op (one group, L=512, forward only) ran 10% faster
  with chunks of 64 than 32, where the training workload above found the two level. ``python -m neurostep
  tune`` runs it for both modes from the command line.
- :func:`tuned_chunk_size` reads that choice back; ``decayed_linear_attention(chunk_size=None)`` uses it,
  and the backend's ``CHUNK_SIZE`` where nothing was measured for the machine and workload. An explicit
  ``chunk_size=`` always wins. The result depends on the chunk size only through rounding.
- The ``triton`` backend is tuned the same way (``backend="triton"``: powers of two from 16, on the GPU
  the call runs on, or on the CPU under Triton's interpreter), keyed by the GPU's name and compute
  capability instead of the CPU and by the workload without a thread count: the same trade-off (longer
  chunks, larger block products, fewer chunk states) depends on the GPU as it does on the CPU.
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from neurostep.files import atomic_write_text
from neurostep.machine import cpu_model, cpu_signature

CANDIDATES = (32, 64, 128)
"""Chunk sizes :func:`tune_chunk_size` tries by default on the cpu backend."""
TRITON_CANDIDATES = (16, 32, 64, 128)
"""Chunk sizes tried by default on the triton backend (it takes powers of two from 16)."""
BACKENDS = ("cpu", "triton")
FILE_NAME = "decayed_linear_attention.json"


def tuning_file() -> Path:
    """Where tuned chunk sizes live: ``$XDG_CACHE_HOME/neurostep/decayed_linear_attention.json``, with
    ``~/.cache`` where ``XDG_CACHE_HOME`` is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neurostep" / FILE_NAME


@functools.lru_cache(maxsize=1)
def _cpu_key() -> str:
    signature = cpu_signature()
    return f"{cpu_model()}{f' ({signature})' if signature else ''} x{os.cpu_count()}"


@functools.lru_cache(maxsize=16)
def _triton_key(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        return f"triton on {torch.cuda.get_device_name(dev)} (compute capability {major}.{minor})"
    return f"triton interpreter on {_cpu_key()}"


def machine_key(backend: str = "cpu", device: str | torch.device = "cpu") -> str:
    """Where a choice was measured, so that it is not applied elsewhere: for the cpu backend the CPU model
    (with its family, model number and instruction set where known) and the logical core count; for the
    triton backend the GPU's name and compute capability (``device`` a CUDA device), or the CPU under
    Triton's interpreter. Read once per process and device (every op call with ``chunk_size=None`` asks)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return _cpu_key() if backend == "cpu" else _triton_key(str(device))


def workload_threads(backend: str, threads: int | None = None) -> int | None:
    """The thread count in a workload's key: ``threads`` (default: torch's current count) for the cpu backend,
    None for triton, whose speed on a GPU does not depend on it."""
    if backend != "cpu":
        return None
    return torch.get_num_threads() if threads is None else threads


def workload_key(k: int, v: int, dtype: torch.dtype, threads: int | None, backward: bool = True) -> str:
    """The key of a workload in the tuning file: dtype, ``K``, ``V``, torch's thread count (None for a GPU
    backend, whose speed does not depend on it) and whether the call is followed by a backward (training)
    or not (inference)."""
    mode = "forward+backward" if backward else "forward"
    count = "" if threads is None else f" threads={threads}"
    return f"{str(dtype).removeprefix('torch.')} K={k} V={v}{count} {mode}"


@functools.lru_cache(maxsize=8)
def _read(path: str, mtime_ns: int, size: int) -> dict:
    """The parsed file; cached per path and modification, so a re-tune is seen at once and a call costs a stat."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _load(path: Path) -> dict:
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return _read(str(path), st.st_mtime_ns, st.st_size)


def tuned_chunk_size(k: int, v: int, dtype: torch.dtype, threads: int | None = None, backward: bool = True,
                     path: str | os.PathLike | None = None, *, backend: str = "cpu",
                     device: str | torch.device = "cpu") -> int | None:
    """The chunk size measured fastest on this machine (``backend`` ``"cpu"``; ``"triton"`` on ``device``) for a
    workload of this dtype, ``K`` and ``V`` at ``threads`` torch threads (default: the current count; not
    part of a triton workload), with a backward or forward only, or None if none was measured."""
    entry = _load(Path(path) if path is not None else tuning_file()).get(machine_key(backend, device), {})
    key = workload_key(k, v, dtype, workload_threads(backend, threads), backward)
    chunk = entry.get(key, {}).get("chunk_size") if isinstance(entry, dict) else None
    return chunk if isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1 else None


def _workload(batch: int, length: int, heads: int, k: int, v: int, dtype: torch.dtype, seed: int,
              device: torch.device):
    """Mamba-2's SSD at its initialisation, as Mamba-2 calls the op: ``q = C``, ``k = B`` of one group per head,
    ``v = x`` with ``v_scale = dt``, ``g = dt A``, dt log-uniform in [0.001, 0.1] and A uniform in [-16, -1]."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.empty(batch, length, heads).uniform_(math.log(0.001), math.log(0.1), generator=gen))
    A = -torch.empty(heads).uniform_(1, 16, generator=gen)
    q = torch.randn(batch, length, heads, k, generator=gen, dtype=dtype)
    kk = torch.randn(batch, length, heads, k, generator=gen, dtype=dtype)
    x = torch.randn(batch, length, heads, v, generator=gen, dtype=dtype)
    grad = torch.randn(batch, length, heads, v, generator=gen, dtype=dtype)
    g = (dt * A).to(device)
    leaves = [t.to(device).clone().requires_grad_() for t in (q, kk, x, dt.to(dtype))]
    return leaves, g, grad.to(device)


def default_device(backend: str) -> torch.device:
    """The cpu backend's device, or for triton the current CUDA device (the CPU where there is none: Triton's
    interpreter, when ``TRITON_INTERPRET=1``)."""
    if backend == "triton" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _check_candidates(candidates: Sequence[int], backend: str) -> None:
    if not candidates or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in candidates):
        raise ValueError(f"candidates must be positive ints, got {candidates!r}")
    if backend == "triton" and any(c < 16 or c & (c - 1) for c in candidates):
        raise ValueError(f"the triton backend takes chunk sizes that are powers of two >= 16, got {candidates!r}")


def measure_chunk_sizes(*, batch: int = 1, length: int = 2048, heads: int = 24, k: int = 128, v: int = 64,
                        dtype: torch.dtype = torch.float32, backward: bool = True,
                        candidates: Sequence[int] | None = None, rounds: int = 5, seed: int = 0,
                        on_round: Callable[[int, int], None] | None = None, backend: str = "cpu",
                        device: str | torch.device | None = None) -> dict[int, float]:
    """Median wall time in seconds of the backend's forward+backward (``backward``; else its forward under
    ``torch.inference_mode``) with each chunk size (default :data:`CANDIDATES`, for triton
    :data:`TRITON_CANDIDATES`).

    The workload is Mamba-2's SSD at its initialisation on ``q, k (batch, length, heads, k)`` and
    ``v (batch, length, heads, v)``, on ``device`` (default: the CPU, or for triton the current CUDA device).
    Each round calls every candidate once, in turn, after one untimed warm-up call each (a GPU is
    synchronised around every timed call); ``on_round(done, rounds)`` is called after each round (a
    progress bar's hook).
    """
    from neurostep.kernels.decayed_linear_attention import decayed_linear_attention

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, value in (("batch", batch), ("length", length), ("heads", heads), ("k", k), ("v", v),
                        ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    candidates = tuple(candidates) if candidates is not None else (CANDIDATES if backend == "cpu"
                                                                   else TRITON_CANDIDATES)
    _check_candidates(candidates, backend)
    device = torch.device(device) if device is not None else default_device(backend)
    (q, kk, x, dt), g, grad = _workload(batch, length, heads, k, v, dtype, seed, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call(chunk: int) -> float:
        sync()
        t0 = time.perf_counter()
        if backward:
            o, _ = decayed_linear_attention(q, kk, x, g, v_scale=dt, scale=1.0, chunk_size=chunk, backend=backend)
            torch.autograd.grad(o, (q, kk, x, dt), grad)
        else:
            with torch.inference_mode():
                decayed_linear_attention(q, kk, x, g, v_scale=dt, scale=1.0, chunk_size=chunk, backend=backend)
        sync()
        return time.perf_counter() - t0

    times: dict[int, list[float]] = {c: [] for c in candidates}
    for chunk in candidates:
        call(chunk)
    for r in range(rounds):
        for chunk in candidates:
            times[chunk].append(call(chunk))
        if on_round is not None:
            on_round(r + 1, rounds)
    return {chunk: statistics.median(ts) for chunk, ts in times.items()}


def tune_chunk_size(*, batch: int = 1, length: int = 2048, heads: int = 24, k: int = 128, v: int = 64,
                    dtype: torch.dtype = torch.float32, backward: bool = True,
                    candidates: Sequence[int] | None = None, rounds: int = 5,
                    path: str | os.PathLike | None = None, save: bool = True,
                    on_round: Callable[[int, int], None] | None = None, backend: str = "cpu",
                    device: str | torch.device | None = None) -> tuple[int, dict[int, float]]:
    """Measure the candidates (:func:`measure_chunk_sizes`) and return ``(fastest, medians)``; with
    ``save`` record the fastest in the tuning file (default :func:`tuning_file`) for this machine (the GPU for
    triton), dtype, ``K``, ``V``, the current thread count (cpu only) and the mode, with the medians, the
    workload and the date."""
    device = torch.device(device) if device is not None else default_device(backend)
    medians = measure_chunk_sizes(batch=batch, length=length, heads=heads, k=k, v=v, dtype=dtype,
                                  backward=backward, candidates=candidates, rounds=rounds, on_round=on_round,
                                  backend=backend, device=device)
    best = min(medians, key=medians.get)
    if save:
        target = Path(path) if path is not None else tuning_file()
        data = dict(_load(target))
        where = machine_key(backend, device)
        machine = dict(data.get(where, {}))
        machine[workload_key(k, v, dtype, workload_threads(backend), backward)] = {
            "chunk_size": best,
            "median_s": {str(c): t for c, t in medians.items()},
            "workload": {"batch": batch, "length": length, "heads": heads, "rounds": rounds},
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        }
        data[where] = machine
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return best, medians


__all__ = ["BACKENDS", "CANDIDATES", "TRITON_CANDIDATES", "default_device", "machine_key", "measure_chunk_sizes",
           "tune_chunk_size", "tuned_chunk_size", "tuning_file", "workload_key", "workload_threads"]
