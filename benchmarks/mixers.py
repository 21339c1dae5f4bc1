"""Token-mixer benchmark: every registered mixer against softmax attention.

For each mixer in ``neurostep.models.list_mixers()`` (other families' mixers included) at
``N`` = 196 (14x14) and 4096 (64x64) tokens, ``C`` = 384, batch 1, fp32 on CPU:

- latency of the forward pass and of forward + backward (median over repeats);
- peak memory of one forward + backward: the high-water mark of live tensor storage created
  during the step (activations, tensors saved for backward, gradients), tracked exactly by a
  ``TorchDispatchMode`` that sees every op's outputs and a finalizer on each new storage.
  Parameters and the input are excluded, and so is scratch memory private to a kernel (a
  numba kernel's own numpy buffers, SDPA's internal blocks): it is the tensor footprint;
- MACs of the forward and of forward + backward from ``torch.utils.flop_counter.FlopCounterMode``
  (FLOPs / 2). It sees matmuls, convolutions and SDPA only: elementwise work and custom kernels
  without a registered flop formula (e.g. scans) are not counted, so for scan-based mixers the
  number is a lower bound. torch's formula for a grouped conv's backward ignores ``groups``
  (385x too high for a depthwise conv at C=384), and it has no formula for the CPU flash
  attention kernel that SDPA uses on CPU (the N^2 part of attention would count 0); both
  are supplied here. Causal attention is counted as full (as torch does);
- ratios of latency, memory and MACs to softmax attention at the same N.

Usage: ``python benchmarks/mixers.py [--quick] [--mixers a,b] [--tokens 196,4096]``.
A JSON of the results goes to ``benchmarks/results/mixers.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, table, write_result  # noqa: E402

DIM = 384
HEADS = 6
BASELINE = "softmax_attention"


def _grid(n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side == n:
        return side, side
    for h in range(side, 0, -1):
        if n % h == 0:
            return h, n // h
    return 1, n


def _build(name: str, n: int) -> torch.nn.Module:
    from neurostep.models import create_mixer

    return create_mixer(name, DIM, num_heads=HEADS, seq_len=n, grid_size=_grid(n))


def _run(mixer: torch.nn.Module, x: torch.Tensor, grid: tuple[int, int], backward: bool) -> None:
    if backward:
        y = mixer(x, grid_size=grid)
        y.backward(torch.ones_like(y))
        x.grad = None
        for p in mixer.parameters():
            p.grad = None
    else:
        with torch.no_grad():
            mixer(x, grid_size=grid)


def _median_ms(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Corrected formula: each of grad_input and grad_weight costs exactly the forward conv's FLOPs.

    torch's own formula computes grad_weight as a dense conv over the channels and ignores
    ``groups``, over-counting a depthwise conv's backward by a factor of C (seen: 385x at C=384).
    """
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """CPU flash attention forward: torch registers formulas for the CUDA kernels only."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _counter() -> FlopCounterMode:
    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        aten.convolution_backward: _conv_backward_flops,
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    })


def _macs(mixer: torch.nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> tuple[int, int]:
    with _counter() as fwd_counter:
        with torch.no_grad():
            # detached: the counter's module tracker cannot hook a no-grad view of a leaf needing grad
            mixer(x.detach(), grid_size=grid)
    with _counter() as all_counter:
        y = mixer(x, grid_size=grid)
        y.backward(torch.ones_like(y))
    x.grad = None
    for p in mixer.parameters():
        p.grad = None
    return fwd_counter.get_total_flops() // 2, all_counter.get_total_flops() // 2


class _LiveTensorMemory(TorchDispatchMode):
    """Tracks bytes of tensor storage created under the mode and still alive; ``peak`` is the high-water mark."""

    def __init__(self) -> None:
        super().__init__()
        self.current = self.peak = 0
        self._seen: set[int] = set()

    def ignore(self, tensors: list[torch.Tensor]) -> None:
        """Storages that existed before the step: outputs aliasing them are not new memory."""
        self._seen.update(t.untyped_storage().data_ptr() for t in tensors)

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._seen:  # views and in-place results reuse a known storage
                    self._seen.add(key)
                    nbytes = storage.nbytes()
                    self.current += nbytes
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._release, key, nbytes)
        return out


def _peak_mib(mixer: torch.nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> float:
    mem = _LiveTensorMemory()
    # views of the input and the weights (x.transpose, weight.t()) alias memory that existed before
    mem.ignore([x, *mixer.parameters(), *mixer.buffers()])
    with mem:
        _run(mixer, x, grid, backward=True)
    return mem.peak / 2 ** 20


def _measure(name: str, n: int, repeats: int, warmup: int, threads: int, row: dict) -> None:
    grid = _grid(n)
    if threads:
        # re-applied per mixer: numba's OpenMP layer resets the shared OpenMP thread count when it starts
        torch.set_num_threads(threads)
    mixer = _build(name, n)
    x = torch.randn(1, n, DIM, requires_grad=True)
    row["params"] = sum(p.numel() for p in mixer.parameters())
    row["fwd_ms"] = _median_ms(lambda: _run(mixer, x, grid, False), repeats, warmup)
    row["fwd_bwd_ms"] = _median_ms(lambda: _run(mixer, x, grid, True), repeats, warmup)
    row["fwd_macs"], row["fwd_bwd_macs"] = _macs(mixer, x, grid)
    row["peak_mib"] = _peak_mib(mixer, x, grid)


def bench(names: list[str], tokens: list[int], repeats: int, warmup: int, threads: int = 0) -> list[dict]:
    rows = []
    for n in tokens:
        for name in names:
            torch.manual_seed(0)
            row: dict = {"mixer": name, "tokens": n, "dim": DIM, "batch": 1}
            try:
                _measure(name, n, repeats, warmup, threads, row)
                row["threads"] = torch.get_num_threads()
            except Exception as exc:  # one broken mixer must not hide the others' numbers
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            print(f"  measured {name:>20s} N={n}", file=sys.stderr)
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict]) -> None:
    base = {r["tokens"]: r for r in rows if r["mixer"] == BASELINE and "error" not in r}
    for r in rows:
        b = base.get(r["tokens"])
        if b is None or "error" in r:
            continue
        for key in ("fwd_ms", "fwd_bwd_ms", "fwd_macs", "peak_mib"):
            if r.get(key) is not None and b.get(key):
                r[f"{key}_ratio"] = r[key] / b[key]


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


TABLE_COLUMNS = ["mixer", "N", "params", "fwd ms", "x attn", "f+b ms", "x attn", "peak MiB", "x attn", "fwd GMAC",
                 "x attn", "f+b GMAC"]


def table_rows(rows: list[dict]) -> list[list[str]]:
    """The printed table's cells (a measurement that failed shows its error)."""
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["mixer"], str(r["tokens"]), f"error: {r['error'][:80]}"] + [""] * 9)
            continue
        out.append([r["mixer"], str(r["tokens"]), f"{r['params'] / 1e3:.0f}k",
                    f"{r['fwd_ms']:.2f}", _fmt(r.get("fwd_ms_ratio"), ".2f"),
                    f"{r['fwd_bwd_ms']:.2f}", _fmt(r.get("fwd_bwd_ms_ratio"), ".2f"),
                    _fmt(r.get("peak_mib"), ".1f"), _fmt(r.get("peak_mib_ratio"), ".2f"),
                    f"{r['fwd_macs'] / 1e9:.3f}", _fmt(r.get("fwd_macs_ratio"), ".2f"),
                    f"{r['fwd_bwd_macs'] / 1e9:.3f}"])
    return out


def print_table(rows: list[dict]) -> None:
    head = (f"{'mixer':>20s} {'N':>5s} {'params':>8s} {'fwd ms':>9s} {'x attn':>7s} {'f+b ms':>9s} {'x attn':>7s} "
            f"{'peak MiB':>9s} {'x attn':>7s} {'fwd GMAC':>9s} {'x attn':>7s} {'f+b GMAC':>9s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['mixer']:>20s} {r['tokens']:>5d}  error: {r['error'][:80]}")
            continue
        print(f"{r['mixer']:>20s} {r['tokens']:>5d} {r['params'] / 1e3:>7.0f}k {r['fwd_ms']:>9.2f} "
              f"{_fmt(r.get('fwd_ms_ratio'), '.2f'):>7s} {r['fwd_bwd_ms']:>9.2f} "
              f"{_fmt(r.get('fwd_bwd_ms_ratio'), '.2f'):>7s} {_fmt(r.get('peak_mib'), '.1f'):>9s} "
              f"{_fmt(r.get('peak_mib_ratio'), '.2f'):>7s} {r['fwd_macs'] / 1e9:>9.3f} "
              f"{_fmt(r.get('fwd_macs_ratio'), '.2f'):>7s} {r['fwd_bwd_macs'] / 1e9:>9.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (3 instead of 10)")
    parser.add_argument("--mixers", default="", help="comma-separated names (default: every registered mixer)")
    parser.add_argument("--tokens", default="196,4096", help="comma-separated token counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "mixers.json"))
    args = parser.parse_args(argv)
    from neurostep.models import list_mixers

    names = [m for m in args.mixers.split(",") if m] or list_mixers()
    if BASELINE in names:  # baseline first so the table reads top-down
        names = [BASELINE] + [m for m in names if m != BASELINE]
    tokens = [int(t) for t in args.tokens.split(",")]
    repeats, warmup = (3, 1) if args.quick else (10, 2)
    load_before = load_average()
    rows = bench(names, tokens, repeats, warmup, args.threads)
    threads = args.threads or torch.get_num_threads()
    print(f"\nmixers at C={DIM}, batch 1, fp32, {threads} torch threads, torch {torch.__version__}; "
          f"median of {repeats}; 'x attn' = ratio to {BASELINE} at the same N")
    print_table(rows)
    print(f"load average before: {load_before}\nload average after:  {load_average()}")
    meta = {"threads": threads, "quick": args.quick, "repeats": repeats}
    title = (f"C={DIM}, batch 1, fp32, {threads} torch threads, median of {repeats}; 'x attn' = ratio to {BASELINE} at "
             "the same N")
    out = write_result(args.out, {"meta": meta, "rows": rows}, load_before=load_before,
                       tables=[table(title, TABLE_COLUMNS, table_rows(rows))], summary=[])
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
