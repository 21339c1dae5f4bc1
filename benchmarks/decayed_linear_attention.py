"""Decayed linear attention (Mamba-2's SSD) forward+backward on CPU: neurostep vs transformers' Mamba-2 torch path.

Default shape: batch 1, 24 heads, K = 128 (Mamba-2's state size N), V = 64 (its head dim P), L = 2048,
fp32: the SSD of one Mamba-2 layer at d_model 768 (1536 inner channels in 24 heads of 64). Every
contender computes the same function of the same leaves ``x (B, L, H, P)``, ``dt (B, L, H)``,
``A (H,)``, ``B, C (B, L, G, N)`` and is timed forward+backward with gradients of all five. ``G = H``
(one B and C per head: transformers' ``n_groups = H``) unless the scenario says one group (``G = 1``,
the released Mamba-2 models' ``ngroups``; transformers repeats B and C per head, neurostep forms
``C B^T`` once per group):

- neurostep: ``decayed_linear_attention(q=C, k=B, v=x, log_decay=dt * A, v_scale=dt, scale=1.0)``, the cpu
  backend at its default chunk size (the one ``python -m neurostep tune`` recorded for this machine and
  workload, else 64; the result file says which), and with the other two of 32, 64 and 128;
- transformers: ``mamba2_chunk_scan`` of ``transformers.models.mamba2.modeling_mamba2``, the SSD part
  of ``Mamba2Mixer``'s forward, on its pure-torch path (what runs without mamba-ssm, i.e. on CPU),
  at ``Mamba2Config``'s default chunk size 256 and, for comparison, at 64;
- the step-by-step reference (``backend="reference"``, autograd through the token loop), timed once.

Two input distributions are timed with ``G = H``: Mamba-2's initialisation (dt log-uniform in [0.001, 0.1], A in
[-16, -1]) and larger steps (dt uniform in the same range). transformers' path builds ``exp`` of
segment sums over whole chunks, whose far entries fall into fp32's denormal range as the decays grow,
which slows its CPU arithmetic; the chunked op's exponents are clamped before any exp.

Contenders are called round-robin, so a change of load hits all of them alike; medians of wall-clock
and of process CPU time are reported with the load average. The roofline is the chunked form's
multiply-adds (forward, and backward from the forward's saved chunk states and scores) at the rate
torch's batched matrix product reaches on the same blocks.

    .venv/bin/python benchmarks/decayed_linear_attention.py            # full run
    .venv/bin/python benchmarks/decayed_linear_attention.py --quick    # a short run
    .venv/bin/python benchmarks/decayed_linear_attention.py --malloc-tuned \
        --out benchmarks/results/decayed_linear_attention_malloc_tuned.json   # neurostep.retain_freed_memory() first
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

# torch's and numba's OpenMP threads busy-wait after each parallel region by default and starve each
# other on a small machine (docs/design.md, Threads); passive waiting is set before importing torch. It
# does not favour neurostep here: with active waiting transformers' chunk scan was not faster (3.5-4.2x
# neurostep's time either way) and neurostep's op was slower (141 ms against 108; 2-core AMD EPYC,
# 2026-12-04 22:59 UTC).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, ratio, summary_row, table, write_result  # noqa: E402

from neurostep.kernels.decayed_linear_attention import cpu as dla_cpu  # noqa: E402
from neurostep.kernels.decayed_linear_attention import decayed_linear_attention  # noqa: E402
from neurostep.kernels.decayed_linear_attention.tuning import tuned_chunk_size  # noqa: E402
from neurostep.memory import retain_freed_memory  # noqa: E402

SCENARIOS = {
    "init": "Mamba-2's initialisation: dt log-uniform in [0.001, 0.1] (mean 0.021), A uniform in [-16, -1]",
    "larger steps": "larger steps: dt uniform in [0.001, 0.1] (mean 0.05), A uniform in [-16, -1]",
    "one group": "one B and C shared by all heads (n_groups = 1, as in the released Mamba-2 models), "
                 "Mamba-2's initialisation",
}


def _inputs(batch: int, length: int, heads: int, n: int, p: int, scenario: str = "init",
            seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    groups = 1 if scenario == "one group" else heads
    if scenario != "larger steps":   # Mamba-2's dt_min, dt_max and A_log = log U(1, 16)
        dt = torch.exp(torch.empty(batch, length, heads).uniform_(math.log(0.001), math.log(0.1), generator=g))
    else:
        dt = torch.empty(batch, length, heads).uniform_(0.001, 0.1, generator=g)
    return {
        "x": torch.randn(batch, length, heads, p, generator=g),
        "dt": dt,
        "A": -torch.empty(heads).uniform_(1, 16, generator=g),
        "B": torch.randn(batch, length, groups, n, generator=g),
        "C": torch.randn(batch, length, groups, n, generator=g),
        "grad": torch.randn(batch, length, heads, p, generator=g),
    }


def _leaves(inputs):
    return [inputs[name].clone().requires_grad_() for name in ("x", "dt", "A", "B", "C")]


def run_neurostep(inputs, backend="cpu", chunk_size=None):
    leaves = _leaves(inputs)

    def fn():
        x, dt, A, B, C = leaves
        y, _ = decayed_linear_attention(C, B, x, dt * A, v_scale=dt, scale=1.0, chunk_size=chunk_size,
                                        backend=backend)
        return y, torch.autograd.grad(y, leaves, inputs["grad"])
    return fn


def run_transformers(inputs, chunk_size):
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

    leaves = _leaves(inputs)

    def fn():
        y = mamba2_chunk_scan(*leaves, chunk_size=chunk_size)
        return y, torch.autograd.grad(y, leaves, inputs["grad"])
    return fn


def chunked_macs(batch: int, length: int, heads: int, k: int, v: int, chunk: int) -> dict[str, float]:
    """Multiply-adds of the cpu backend's products: forward ``C^2 (K + V) + 2 C K V`` per chunk and head;
    backward ``C^2 (2K + 2V) + 4 C K V`` (the chunk states and the masked scores come from the forward:
    the state gradients, the scores' gradient, and dq, dk, dv each from a chunk product and a state
    product)."""
    chunks = batch * heads * -(-length // chunk)
    fwd = chunks * (chunk * chunk * (k + v) + 2 * chunk * k * v)
    bwd = chunks * (chunk * chunk * (2 * k + 2 * v) + 4 * chunk * k * v)
    return {"forward": float(fwd), "backward": float(bwd)}


def measure_bmm_rate(rows: int, chunk: int, k: int, v: int) -> float:
    """Multiply-adds per second of torch.bmm on the backend's blocks ((rows, C, K) @ (rows, K, V)), the best
    of 10 calls (the rate the machine reaches, not one slowed by other load)."""
    a, b = torch.randn(rows, chunk, k), torch.randn(rows, k, v)
    out = torch.empty(rows, chunk, v)
    torch.bmm(a, b, out=out)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        torch.bmm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return rows * chunk * k * v / min(times)


def _close(a, b, rtol):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / (b.abs().max() + 1e-30)) < rtol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--state", type=int, default=128, help="K, Mamba-2's d_state N")
    parser.add_argument("--head-dim", type=int, default=64, help="V, Mamba-2's head dim P")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true", help="skip the step-by-step reference")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--malloc-tuned", action="store_true",
                        help="call neurostep.retain_freed_memory() first, so that glibc keeps freed blocks of up to "
                             "32 MB for reuse (for all contenders alike): fresh outputs and intermediates then stop "
                             "paying first-touch page faults")
    parser.add_argument("--no-summary", action="store_true",
                        help="record no row for the README's summary table (the README is left as it is)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" /
                                             "decayed_linear_attention.json"))
    args = parser.parse_args()
    malloc_tuned = args.malloc_tuned and retain_freed_memory()

    torch.set_num_threads(args.threads)
    batch, heads, n, p, length = args.batch, args.heads, args.state, args.head_dim, args.length
    rounds = 3 if args.quick else 7
    # the chunk size the default call runs with: measured on this machine (neurostep tune), else the backend's
    tuned = tuned_chunk_size(n, p, torch.float32)
    chunk = tuned if tuned is not None else dla_cpu.CHUNK_SIZE
    chunk_note = (f"chunk size {chunk}, " + ("recorded by neurostep tune on this machine" if tuned is not None
                                             else "the backend's default (nothing tuned on this machine)"))
    rate = measure_bmm_rate(batch * heads * -(-length // chunk), chunk, n, p)
    macs = chunked_macs(batch, length, heads, n, p, chunk)
    load_before = load_average()
    record: dict = {
        "benchmark": "decayed_linear_attention_fwd_bwd",
        "shape": {"batch": batch, "heads": heads, "k": n, "v": p, "length": length, "dtype": "float32"},
        "threads": args.threads,
        "malloc_tuned": malloc_tuned,
        "rounds": rounds,
        "quick": args.quick,
        "chunk_size": chunk,
        "chunk_size_tuned": tuned is not None,
        "scenarios": {},
    }
    tables, summary = [], []
    for scenario, description in SCENARIOS.items():
        inputs = _inputs(batch, length, heads, n, p, scenario)
        cases = {
            "neurostep cpu": run_neurostep(inputs),
            "transformers mamba2_chunk_scan, chunk 256": run_transformers(inputs, 256),
            "transformers mamba2_chunk_scan, chunk 64": run_transformers(inputs, 64),
        }
        if scenario == "init":
            # the cpu backend's other chunk sizes, for comparison with its default
            for other in (32, 64, 128):
                if other != chunk:
                    cases[f"neurostep cpu, chunk {other}"] = run_neurostep(inputs, chunk_size=other)

        # Same answer first: outputs and every gradient within 1e-4 of transformers' (relative to the largest).
        y_ref, g_ref = cases["transformers mamba2_chunk_scan, chunk 256"]()
        for name, fn in cases.items():
            y, grads = fn()
            if not (_close(y, y_ref, 1e-4) and all(_close(a, b, 1e-4) for a, b in zip(grads, g_ref))):
                raise SystemExit(f"{name} disagrees with transformers' mamba2_chunk_scan ({scenario})")

        wall: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, fn in cases.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        if scenario == "init" and not args.no_reference:
            name = "reference (token loop, autograd)"
            fn = run_neurostep(inputs, backend="reference")
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name], cpu[name] = [time.perf_counter() - t0], [time.process_time() - c0]

        results = {name: {"median_s": statistics.median(w), "times_s": w,
                          "median_cpu_s": statistics.median(cpu[name]), "cpu_times_s": cpu[name]}
                   for name, w in wall.items()}
        ours, ours_cpu = results["neurostep cpu"]["median_s"], results["neurostep cpu"]["median_cpu_s"]
        print(f"{description}\n{'contender':46s}{'median ms':>11s}{'x neurostep':>13s}{'CPU ms':>10s}"
              f"{'x neurostep':>13s}")
        rows = []
        for name, r in results.items():
            r["ratio_to_neurostep"] = r["median_s"] / ours
            r["cpu_ratio_to_neurostep"] = r["median_cpu_s"] / ours_cpu
            note = " (timed once)" if len(r["times_s"]) == 1 else ""
            print(f"{name + note:46s}{1e3 * r['median_s']:11.1f}{r['ratio_to_neurostep']:13.1f}"
                  f"{1e3 * r['median_cpu_s']:10.1f}{r['cpu_ratio_to_neurostep']:13.1f}")
            rows.append([name + note, f"{1e3 * r['median_s']:.1f}", ratio(r["ratio_to_neurostep"]),
                         f"{1e3 * r['median_cpu_s']:.1f}", ratio(r["cpu_ratio_to_neurostep"])])
        record["scenarios"][scenario] = {"description": description, "results": results}
        title = (f"decayed linear attention (Mamba-2 SSD) forward+backward, B={batch}, H={heads}, K={n}, V={p}, "
                 f"L={length}, fp32, {args.threads} threads{', freed memory retained' if malloc_tuned else ''}; "
                 f"neurostep cpu at {chunk_note}; {description}")
        tables.append(table(title, ["contender", "median ms", "vs neurostep", "CPU ms", "CPU vs neurostep"], rows))
        if scenario in ("init", "one group"):
            peers = ", ".join(f"{name.replace('mamba2_chunk_scan, ', '')} {ratio(r['ratio_to_neurostep'])}"
                              for name, r in results.items() if name.startswith("transformers"))
            groups = "one B and C per head" if scenario == "init" else "one B and C for all heads"
            summary.append(summary_row("Decayed linear attention (Mamba-2 SSD), forward+backward",
                                       f"B={batch}, H={heads}, K={n}, V={p}, L={length}, {groups}, fp32",
                                       f"{1e3 * ours:.0f} ms", peers))
    load_after = load_average()

    rate = max(rate, measure_bmm_rate(batch * heads * -(-length // chunk), chunk, n, p))
    bound = (macs["forward"] + macs["backward"]) / rate
    init = record["scenarios"]["init"]["results"]["neurostep cpu"]
    roofline = (f"roofline: {(macs['forward'] + macs['backward']) / 1e9:.2f} G multiply-adds of the chunked form "
                f"(chunks of {chunk}) at torch.bmm's best {rate / 1e9:.1f} G/s on the same blocks "
                f"({args.threads} threads) "
                f"= {1e3 * bound:.0f} ms, or {1e3 * bound * args.threads:.0f} ms of CPU time; neurostep (init) at "
                f"{init['median_s'] / bound:.1f}x it in wall-clock time, "
                f"{init['median_cpu_s'] / (bound * args.threads):.1f}x in CPU time")
    print(f"load average before: {load_before}\nload average after:  {load_after}\n{roofline}")
    record["roofline"] = {"macs": macs, "bmm_macs_per_s": rate, "bound_s": bound,
                          "measured_over_bound": init["median_s"] / bound,
                          "cpu_measured_over_bound": init["median_cpu_s"] / (bound * args.threads)}
    tables[0]["title"] += f"; {roofline}"
    if args.no_summary:
        summary = []
    out = write_result(args.out, record, load_before=load_before, tables=tables, summary=summary)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
