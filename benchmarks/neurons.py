"""Multi-step LIF forward+backward on CPU: neurostep vs spikingjelly vs snntorch vs a copy roofline.

A LIF with tau=2, threshold 1, hard reset to 0 and the Sigmoid(alpha=4) surrogate over
(T, 65536) fp32 neurons, 2 threads. Every contender is timed in the same run on the same inputs,
round-robin (one call of each in turn) so that a change of machine load hits all of them alike:

* neurostep ``lif_scan(..., backend="cpu")`` (fused numba forward and backward);
* spikingjelly 2.0 ``LIFNode(step_mode="m")`` (on CPU a Python loop over T);
* snntorch 1.0 ``Leaky`` called once per step, as its users do (beta = 1 - 1/tau, reset "zero",
  ``surrogate.sigmoid(slope=4)``);
* roofline: one plain torch copy that moves the bytes the fused op must move: forward reads x and
  writes spikes and the saved membrane H, backward reads the spike gradient and H and writes the
  input gradient (3 reads + 3 writes of T*N floats), i.e. ``dst.copy_(src)`` with 3*T*N floats.

    .venv/bin/python benchmarks/neurons.py           # T = 32 and 256
    .venv/bin/python benchmarks/neurons.py --quick   # fewer repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neurostep.kernels.lif import lif_scan  # noqa: E402

TAU, V_TH, ALPHA = 2.0, 1.0, 4.0


def _load() -> str:
    try:
        return os.popen("uptime").read().strip()
    except OSError:  # pragma: no cover
        return "unknown"


def _contenders(T: int, N: int, x: torch.Tensor, g: torch.Tensor) -> dict:
    cases = {}

    def neurostep():
        xs = x.detach().requires_grad_(True)
        s = lif_scan(xs, tau_inv=1.0 / TAU, v_threshold=V_TH, v_reset=0.0, surrogate="sigmoid", alpha=ALPHA,
                     backend="cpu").spikes
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

    src = torch.randn(3 * T * N)
    dst = torch.empty_like(src)

    def roofline():
        dst.copy_(src)
        return None, None

    cases["roofline (copy of the same bytes)"] = roofline
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
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": statistics.median(ts), "times_s": ts} for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=65536)
    parser.add_argument("--steps", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "neurons.json"))
    args = parser.parse_args()

    import numba

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    repeats, warmup = (5, 1) if args.quick else (15, 2)

    report = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "neurons": args.neurons, "load_before": _load(), "runs": {}}
    for T in args.steps:
        res = run(T, args.neurons, repeats if T <= 64 else max(3, repeats // 3), warmup)
        ours = res["neurostep cpu (numba)"]["median_s"]
        roof = res["roofline (copy of the same bytes)"]["median_s"]
        print(f"\nT={T}, {args.neurons} neurons, fp32, forward+backward, {args.threads} threads")
        print(f"{'':36s} {'median ms':>10s} {'vs neurostep':>13s}")
        for name, r in res.items():
            r["ratio_to_neurostep"] = r["median_s"] / ours
            print(f"{name:36s} {r['median_s'] * 1e3:10.2f} {r['ratio_to_neurostep']:12.1f}x")
        print(f"neurostep / roofline: {ours / roof:.2f}x (target <= 2x at T=32)")
        res["neurostep_over_roofline"] = ours / roof
        report["runs"][str(T)] = res
    report["load_after"] = _load()
    print(f"\nload before: {report['load_before']}\nload after:  {report['load_after']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
