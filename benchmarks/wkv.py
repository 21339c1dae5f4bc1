"""WKV (RWKV-4 attention) forward+backward on CPU: neurostep vs a plain torch loop vs transformers.

Default shape: batch 1, 768 channels, length 1024, fp32 (RWKV-169M width at its training context).
All three are measured in the same run on the same inputs; the table prints medians and the
ratio of each peer to neurostep's cpu backend, plus two roofline bounds for the fused kernel:
memory traffic at the copy bandwidth and exponentials at numba's scalar exp rate.

    .venv/bin/python benchmarks/wkv.py            # full run
    .venv/bin/python benchmarks/wkv.py --quick    # a short run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# Every implementation runs under the process's OpenMP wait policy (torch's default, active, unless
# OMP_WAIT_POLICY is set), which is stored with the results. Passive waiting, which the neurostep command
# sets, would slow the torch peers' per-step loops: on the 2-core AMD EPYC (2026-12-04, about 23:00 UTC,
# load 1.5, --quick) the torch time loop took 881 ms under it against 551 ms, transformers' 1004 ms against 663 ms, and
# neurostep's kernel 5.95 ms against 6.71 ms.
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, omp_wait_policy, ratio, summary_row, table, write_result  # noqa: E402

from neurostep.kernels.wkv import init_state, reference, wkv  # noqa: E402

COPY_BANDWIDTH = 29e9   # bytes/s, numpy copy on a 2-core machine (docs/reference.md, measured machine facts)
SCALAR_EXP_RATE = 0.3e9  # exps/s, numba's scalar math.exp on 2 threads (docs/reference.md, same section)


def _time(fn, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds per call (CPU time is less sensitive to other load)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--channels", type=int, default=768)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (and peers timed fewer times)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "wkv.json"))
    args = parser.parse_args()

    B, C, T = args.batch, args.channels, args.length
    repeats, peer_repeats = (5, 1) if args.quick else (20, 5)
    torch.manual_seed(0)
    td = torch.randn(C) * 0.5 - 1.0
    tf = torch.randn(C) * 0.5
    k = torch.randn(B, T, C)
    v = torch.randn(B, T, C)
    gy = torch.randn(B, T, C)

    def leaves():
        return [t.clone().requires_grad_(True) for t in (td, tf, k, v)]

    def run_neurostep():
        a, b, kk, vv = leaves()
        y, _ = wkv(a, b, kk, vv, backend="cpu")
        y.backward(gy)
        return y, (a.grad, b.grad, kk.grad, vv.grad)

    def run_torch_loop():
        a, b, kk, vv = leaves()
        y, *_ = reference.scan(-torch.exp(a), b, kk, vv, *init_state(B, C))
        y.backward(gy)
        return y, (a.grad, b.grad, kk.grad, vv.grad)

    cases = {"neurostep cpu (numba)": run_neurostep, "torch time loop": run_torch_loop}
    try:
        from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

        def run_transformers():
            a, b, kk, vv = leaves()
            y, _ = rwkv_linear_attention_cpu(a, b, kk, vv)
            y.backward(gy)
            return y, (a.grad, b.grad, kk.grad, vv.grad)

        cases["transformers rwkv_linear_attention_cpu"] = run_transformers
    except ImportError:
        print("transformers is not installed: its RWKV CPU path is not measured")

    # Same answer first: a benchmark of wrong code is worthless.
    ref_y, ref_g = run_torch_loop()
    for name, fn in cases.items():
        y, g = fn()
        err = max([(y - ref_y).abs().max().item()] + [((a - b).abs().max() / (b.abs().max() + 1e-12)).item()
                                                      for a, b in zip(g, ref_g)])
        if err > 1e-3:
            raise SystemExit(f"{name} disagrees with the torch loop (max error {err:.2e})")

    load_before = load_average()
    results = {}
    for name, fn in cases.items():
        ours = name.startswith("neurostep")
        wall, cpu = _time(fn, repeats if ours else peer_repeats, warmup=2 if ours else 1)
        results[name] = {"median_s": statistics.median(wall), "times_s": wall,
                         "median_cpu_s": statistics.median(cpu), "cpu_times_s": cpu}
    load_after = load_average()

    ours = results["neurostep cpu (numba)"]["median_s"]
    ours_cpu = results["neurostep cpu (numba)"]["median_cpu_s"]
    n = B * T * C
    # forward reads k, v, writes y and the 3-float history; backward reads k, v, y, gy, history, writes gk, gv
    bytes_moved = 4 * n * (2 + 4 + 7 + 2)
    exps = 4 * n  # 2 forward + 2 backward, one exp per max-shifted pair
    roof_mem = bytes_moved / COPY_BANDWIDTH
    roof_exp = exps / SCALAR_EXP_RATE
    print(f"WKV forward+backward, B={B} C={C} L={T} fp32, torch threads {torch.get_num_threads()}")
    print(f"load average before: {load_before}\nload average after:  {load_after}")
    print(f"{'implementation':42s} {'median ms':>10s} {'x neurostep':>12s} {'CPU ms':>10s} {'x neurostep':>12s}")
    rows = []
    for name, r in results.items():
        r["ratio_to_neurostep"] = r["median_s"] / ours
        r["cpu_ratio_to_neurostep"] = r["median_cpu_s"] / ours_cpu
        print(f"{name:42s} {1e3 * r['median_s']:10.2f} {r['ratio_to_neurostep']:12.1f} "
              f"{1e3 * r['median_cpu_s']:10.2f} {r['cpu_ratio_to_neurostep']:12.1f}")
        rows.append([name, f"{1e3 * r['median_s']:.2f}", f"{r['ratio_to_neurostep']:.1f}x",
                     f"{1e3 * r['median_cpu_s']:.2f}", f"{r['cpu_ratio_to_neurostep']:.1f}x"])
    roofline = (f"roofline: memory {1e3 * roof_mem:.2f} ms ({bytes_moved / 1e6:.0f} MB at {COPY_BANDWIDTH / 1e9:.0f} "
                f"GB/s): neurostep at {ours / roof_mem:.1f}x it; for scale, {exps / 1e6:.1f} M scalar exps at "
                f"{SCALAR_EXP_RATE / 1e9:.1f} G/s would take {1e3 * roof_exp:.2f} ms (the kernel's exp is vectorized)")
    print(roofline)

    policy = omp_wait_policy()
    record = {
        "benchmark": "wkv_forward_backward",
        "shape": {"batch": B, "channels": C, "length": T, "dtype": "float32"},
        "quick": args.quick,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": policy,
        "results": results,
        "roofline": {"memory_s": roof_mem, "exp_s": roof_exp, "bytes": bytes_moved, "exps": exps,
                     "neurostep_over_memory_roofline": ours / roof_mem},
    }
    title = (f"WKV forward+backward, B={B} C={C} L={T} fp32, {torch.get_num_threads()} torch threads, OpenMP wait "
             f"policy {policy}; {roofline}")
    columns = ["implementation", "median ms", "vs neurostep", "CPU ms", "CPU vs neurostep"]
    peers = ", ".join(f"{name.replace(' rwkv_linear_attention_cpu', '')} {ratio(r['ratio_to_neurostep'])}"
                      for name, r in results.items() if not name.startswith("neurostep"))
    summary = [summary_row("WKV (RWKV-4), forward+backward", f"B={B}, C={C}, L={T}, fp32", f"{1e3 * ours:.1f} ms",
                           peers)]
    out = write_result(args.out, record, load_before=load_before, tables=[table(title, columns, rows)],
                       summary=summary)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
