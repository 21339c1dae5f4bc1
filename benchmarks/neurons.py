"""Multi-step LIF forward+backward on CPU: neurostep vs spikingjelly vs snntorch vs a copy roofline.

A LIF with tau=2, threshold 1, hard reset to 0 and the Sigmoid(alpha=4) surrogate over
(T, 65536) fp32 neurons, 2 threads. Every contender is timed in the same run on the same inputs,
round-robin (one call of each in turn) so that a change of machine load hits all of them alike:

* neurostep ``lif_scan(..., backend="cpu")`` (fused numba forward and backward);
* spikingjelly 2.0 ``LIFNode(step_mode="m")`` (on CPU a Python loop over T);
* snntorch 1.0 ``Leaky`` called once per step, as its users do (beta = 1 - 1/tau, reset "zero",
  ``surrogate.sigmoid(slope=4)``);
* roofline: one plain torch copy that moves the bytes the fused op moves. The forward reads x and
  writes the spikes; the backward reads x again (it recomputes the membrane instead of saving it)
  and the spike gradient, and writes the input gradient: 3 reads + 2 writes of T*N floats. A copy
  moves as many bytes as it reads, so the roofline is ``dst.copy_(src)`` of 2.5*T*N floats into a
  preallocated ``dst`` (the target's reference), and the same copy into two freshly allocated
  tensors (what any op returning new tensors pays: first-touch page faults).

The op's ratio to the roofline is given twice: as the ratio of the two medians, and round by round (the median and
quartiles of each round's ratio), which a drift of the machine's speed between rounds moves less.

Every contender runs under the process's OpenMP wait policy, stored with the results: torch's default (active:
threads spin a while after each parallel region) unless ``OMP_WAIT_POLICY`` is set. It moves the roofline ratio,
because neurostep's kernels run on numba's OpenMP pool while the peers and the copy run on torch's, and a pool
that spins takes a core from the other: on the 2-core Intel Xeon of family 6 model 207 (2026-12-06,
11:39-11:42 UTC, load 1.0, ``--steps 32 --quick``, two runs each way alternating) the ratio was 2.44x and 2.54x
under ``OMP_WAIT_POLICY=PASSIVE`` (what the ``neurostep`` command sets) and 2.98x and 3.31x under the default, the
copy taking 2.0-2.2 ms either way.

    .venv/bin/python benchmarks/neurons.py           # T = 32 and 256
    .venv/bin/python benchmarks/neurons.py --quick   # fewer repeats
    .venv/bin/python benchmarks/neurons.py --malloc-tuned   # neurostep.retain_freed_memory() first (all contenders)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, omp_wait_policy, ratio, summary_row, table, write_result  # noqa: E402

from neurostep.kernels.lif import lif_scan  # noqa: E402
from neurostep.memory import retain_freed_memory  # noqa: E402

TAU, V_TH, ALPHA = 2.0, 1.0, 4.0
ROOF = "roofline (copy of the same bytes)"
ROOF_FRESH = "roofline, into fresh tensors"


def _contenders(T: int, N: int, x: torch.Tensor, g: torch.Tensor) -> dict:
    cases = {}

    def neurostep():
        xs = x.detach().requires_grad_(True)
        s, _ = lif_scan(xs, tau_inv=1.0 / TAU, v_threshold=V_TH, v_reset=0.0, surrogate="sigmoid", alpha=ALPHA,
                        backend="cpu")
        s.backward(g)
        return s, xs.grad

    cases["neurostep cpu (numba)"] = neurostep

    try:
        from spikingjelly.activation_based import neuron, surrogate

        node = neuron.LIFNode(tau=TAU, v_threshold=V_TH, v_reset=0.0, surrogate_function=surrogate.Sigmoid(ALPHA),
                              step_mode="m")

        def spikingjelly():
            node.reset()
            xs = x.detach().requires_grad_(True)
            s = node(xs)
            s.backward(g)
            return s, xs.grad

        cases["spikingjelly 2.0 LIFNode (m)"] = spikingjelly
    except ImportError as exc:
        print(f"spikingjelly not measured: {exc}")

    try:
        import snntorch

        leaky = snntorch.Leaky(beta=1.0 - 1.0 / TAU, threshold=V_TH, reset_mechanism="zero",
                               spike_grad=snntorch.surrogate.sigmoid(slope=ALPHA))

        def snn():
            xs = x.detach().requires_grad_(True)
            mem = leaky.init_leaky()
            spikes = []
            for t in range(T):
                spk, mem = leaky(xs[t], mem)
                spikes.append(spk)
            s = torch.stack(spikes)
            s.backward(g)
            return s, xs.grad

        cases["snntorch 1.0 Leaky (loop)"] = snn
    except ImportError as exc:
        print(f"snntorch not measured: {exc}")

    src = torch.randn(5 * T * N // 2)
    dst = torch.empty_like(src)

    def roofline():
        dst.copy_(src)
        return None, None

    cases[ROOF] = roofline

    def roofline_fresh():
        # the same copy into two fresh tensors, as an op that returns new ones must (spikes,
        # grad x): adds the page faults of first touching newly mapped memory. Both stay alive
        # until the call returns, as the spikes do while the backward allocates grad x.
        fresh = [torch.empty_like(part).copy_(part) for part in src.split((T * N, 3 * T * N // 2))]
        return fresh[0], fresh[1]

    cases[ROOF_FRESH] = roofline_fresh
    return cases


def run(T: int, N: int, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(T, N) * 1.5
    g = torch.randn(T, N)
    cases = _contenders(T, N, x, g)

    # Same answer first (spikingjelly has the same model): a benchmark of wrong code is worthless.
    s_ours, g_ours = cases["neurostep cpu (numba)"]()
    if "spikingjelly 2.0 LIFNode (m)" in cases:
        s_sj, g_sj = cases["spikingjelly 2.0 LIFNode (m)"]()
        if not torch.equal(s_ours, s_sj) or not torch.allclose(g_ours, g_sj, rtol=1e-4, atol=1e-5):
            raise SystemExit("neurostep and spikingjelly disagree: not benchmarking")

    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    # CPU time (all threads of this process) is less disturbed by other processes than wall time;
    # with 1 thread it is the wall time of a quiet machine. Both are recorded.
    return {name: {"median_s": statistics.median(ts), "min_s": min(ts), "cpu_median_s": statistics.median(cpu[name]),
                   "times_s": ts} for name, ts in times.items()}


def _paired_ratios(ours: list[float], roof: list[float]) -> dict[str, float]:
    """Median and quartiles of ``ours[i] / roof[i]``: each round's two calls ran back to back, so the ratio of
    a round is little moved by a drift of the machine's speed (the host's memory bandwidth moves the copy by a
    third between runs) that moves the ratio of the two medians."""
    q1, median, q3 = statistics.quantiles([a / b for a, b in zip(ours, roof)], n=4)
    return {"median": median, "q1": q1, "q3": q3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=65536)
    parser.add_argument("--steps", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--malloc-tuned", action="store_true",
                        help="call neurostep.retain_freed_memory() first, so that glibc keeps freed large blocks "
                             "for reuse (for all contenders alike): fresh (T, N) outputs then stop paying "
                             "first-touch page faults")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "neurons.json"))
    args = parser.parse_args()
    malloc_tuned = args.malloc_tuned and retain_freed_memory()

    from neurostep.kernels.numba_launch import set_threads

    set_threads(args.threads)
    repeats, warmup = (5, 1) if args.quick else (15, 2)

    policy = omp_wait_policy()
    report = {"threads": args.threads,
              "malloc_tuned": malloc_tuned,
              "omp_wait_policy": policy,
              "neurons": args.neurons, "runs": {}}
    load_before = load_average()
    tables, summary = [], []
    columns = ["contender", "median ms", "vs neurostep", "min ms", "CPU ms", "CPU vs neurostep"]
    for T in args.steps:
        res = run(T, args.neurons, repeats if T <= 64 else max(3, repeats // 3), warmup)
        ours = res["neurostep cpu (numba)"]["median_s"]
        roof = res[ROOF]["median_s"]
        roof_fresh = res[ROOF_FRESH]["median_s"]
        print(f"\nT={T}, {args.neurons} neurons, fp32, forward+backward, {args.threads} threads")
        ours_cpu = res["neurostep cpu (numba)"]["cpu_median_s"]
        print(f"{'':36s} {'median ms':>10s} {'vs neurostep':>13s} {'min ms':>9s} {'CPU ms':>9s} {'vs neurostep':>13s}")
        rows = []
        for name, r in res.items():
            r["ratio_to_neurostep"] = r["median_s"] / ours
            r["cpu_ratio_to_neurostep"] = r["cpu_median_s"] / ours_cpu
            print(f"{name:36s} {r['median_s'] * 1e3:10.2f} {r['ratio_to_neurostep']:12.1f}x {r['min_s'] * 1e3:9.2f} "
                  f"{r['cpu_median_s'] * 1e3:9.2f} {r['cpu_ratio_to_neurostep']:12.1f}x")
            rows.append([name, f"{r['median_s'] * 1e3:.2f}", f"{r['ratio_to_neurostep']:.1f}x",
                         f"{r['min_s'] * 1e3:.2f}", f"{r['cpu_median_s'] * 1e3:.2f}",
                         f"{r['cpu_ratio_to_neurostep']:.1f}x"])
        paired = _paired_ratios(res["neurostep cpu (numba)"]["times_s"], res[ROOF]["times_s"])
        print(f"neurostep / roofline: {ours / roof:.2f}x by median wall time (target <= 2x at T=32); "
              f"/ roofline into fresh tensors: {ours / roof_fresh:.2f}x")
        print(f"the same ratio round by round: median {paired['median']:.2f}x, quartiles "
              f"{paired['q1']:.2f}-{paired['q3']:.2f}x")
        tables.append(table(f"T={T}, {args.neurons:,} neurons, fp32, forward+backward, {args.threads} threads, "
                            f"OpenMP wait policy {policy}; "
                            f"neurostep / roofline {ours / roof:.2f}x ({ours / roof_fresh:.2f}x into fresh tensors; "
                            f"round by round {paired['median']:.2f}x, "
                            f"quartiles {paired['q1']:.2f}-{paired['q3']:.2f}x)", columns, rows))
        peers = [f"{name.split(' (')[0].replace(' LIFNode', '').replace(' Leaky', '')} {ratio(r['ratio_to_neurostep'])}"
                 for name, r in res.items() if name not in ("neurostep cpu (numba)", ROOF, ROOF_FRESH)]
        summary.append(summary_row("LIF neuron, forward+backward", f"T={T}, {args.neurons:,} neurons, fp32",
                                   f"{ours * 1e3:.2f} ms", ", ".join(peers) or "no peer installed"))
        res["neurostep_over_roofline"] = ours / roof
        res["neurostep_over_roofline_fresh"] = ours / roof_fresh
        res["neurostep_over_roofline_paired"] = paired
        report["runs"][str(T)] = res
    print(f"\nload average before: {load_before}\nload average after:  {load_average()}")
    out = write_result(args.out, report, load_before=load_before, tables=tables, summary=summary[:1])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
