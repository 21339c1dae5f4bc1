"""Overhead of counting: ``neurostep.energy.count`` vs the plain forward, beside the peers' counters.

For each model the plain forward (under ``no_grad``) and each counter wrapping one forward are
timed, interleaved round by round so that load on the machine hits all of them alike; the table
prints medians and the ratio to the plain forward. Target for neurostep's counter: at most 3x.

Models: a small spiking MLP (neurostep ``LIF`` neurons and ``Linear`` layers, T=8), the tiny
Spikformer from the model registry (if registered) and a Mamba block (``neurostep.ssm.Mamba``,
if present). Peers measured in the same run: torch's ``FlopCounterMode`` (dense FLOPs only, no
spikes, no elementwise ops) and spikingjelly 2.0's ``DispatchCounterMode`` with its MAC, AC and
SynOp counters (which detect binary operands with a device sync per op). A roofline ratio does
not apply: this measures bookkeeping overhead, not a kernel.

    .venv/bin/python benchmarks/energy.py            # full run
    .venv/bin/python benchmarks/energy.py --quick    # a short run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, summary_row, table, write_result  # noqa: E402

from neurostep.energy import count  # noqa: E402

TARGET_RATIO = 3.0


class SpikingMLP(nn.Module):
    """``(T, B, d_in) -> (T, B, classes)``: Linear + LIF layers and a linear readout."""

    def __init__(self, d_in: int = 256, hidden: int = 512, depth: int = 3, classes: int = 10) -> None:
        super().__init__()
        from neurostep.neuro import LIF

        dims = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList()
        for a, b in zip(dims[:-1], dims[1:]):
            self.layers.append(nn.Linear(a, b))
            self.layers.append(LIF(tau=2.0, v_threshold=0.5))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def _models(quick: bool) -> list[tuple[str, nn.Module, tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    out: list[tuple[str, nn.Module, tuple[torch.Tensor, ...]]] = []
    T, B = (4, 16) if quick else (8, 32)
    out.append((f"spiking MLP 256-512x3 T={T} B={B}", SpikingMLP().eval(), (torch.randn(T, B, 256) * 2,)))
    try:
        from neurostep.models import REGISTRY, create_model, list_models

        if "spikformer_tiny" in list_models():
            entry = REGISTRY.model_entry("spikformer_tiny")
            model = create_model("spikformer_tiny").eval()
            out.append(("spikformer_tiny", model, (entry.example_input(model, 2 if quick else 4),)))
    except ImportError as exc:  # the registry family failed to import: report and go on
        print(f"spikformer_tiny skipped: {exc}")
    try:
        from neurostep.ssm import Mamba
    except ImportError:
        try:
            from neurostep.ssm.mamba import Mamba
        except ImportError:
            Mamba = None
    if Mamba is not None:
        L = 128 if quick else 256
        out.append((f"Mamba d=128 L={L} B=2", Mamba(128).eval(), (torch.randn(2, L, 128),)))
    else:
        print("Mamba skipped: neurostep.ssm.Mamba is not importable")
    return out


def _contenders(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, Callable[[], object]]:
    def plain() -> object:
        with torch.no_grad():
            return model(*inputs)

    def neurostep_count() -> object:
        return count(model, *inputs)

    fns: dict[str, Callable[[], object]] = {"plain forward": plain, "neurostep count": neurostep_count}
    from torch.utils.flop_counter import FlopCounterMode

    def torch_flops() -> object:
        with torch.no_grad(), FlopCounterMode(display=False):
            return model(*inputs)

    fns["torch FlopCounterMode"] = torch_flops
    try:
        from spikingjelly.activation_based.op_counter import ACCounter, DispatchCounterMode, MACCounter, SynOpCounter

        def sj_count() -> object:
            with torch.no_grad(), DispatchCounterMode([MACCounter(), ACCounter(), SynOpCounter()]):
                return model(*inputs)

        fns["spikingjelly op_counter"] = sj_count
    except ImportError:
        print("spikingjelly not installed: its op_counter is not measured")
    return fns


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer rounds")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.quick else 15)
    load_before = load_average()
    results = []
    rows = []
    header = f"{'model':34s} {'contender':26s} {'median ms':>10s} {'x plain':>8s}"
    lines = [header, "-" * len(header)]
    for name, model, inputs in _models(args.quick):
        fns = _contenders(model, inputs)
        for fn in fns.values():   # warm-up: numba compilation, torch._dynamo import by dispatch modes
            fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for key, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        base = statistics.median(times["plain forward"])
        report = count(model, *inputs)
        for key, ts in times.items():
            med = statistics.median(ts)
            lines.append(f"{name:34s} {key:26s} {med * 1e3:10.2f} {med / base:8.2f}")
            rows.append([name, key, f"{med * 1e3:.2f}", f"{med / base:.2f}x"])
            results.append({"model": name, "contender": key, "median_s": med, "ratio_to_plain": med / base,
                            "times_s": ts})
        ratio = statistics.median(times["neurostep count"]) / base
        verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
        lines.append(f"{'':34s} -> neurostep overhead {ratio:.2f}x ({verdict} the {TARGET_RATIO:.0f}x target); "
                     f"MACs {report.total.macs:.3g}, ACs {report.total.acs:.3g}, "
                     f"energy {report.energy_pj / 1e6:.3f} uJ")
    print("\n".join(lines))
    print(f"load average before: {load_before}\nload average after:  {load_average()}")
    path = Path(__file__).resolve().parent / "results" / "energy.json"
    record = {"benchmark": "energy counter overhead", "quick": args.quick, "rounds": rounds,
              "threads": torch.get_num_threads(), "results": results}
    title = f"time of one counted forward pass over the plain forward, median of {rounds} interleaved rounds"
    write_result(path, record, load_before=load_before,
                 tables=[table(title, ["model", "contender", "median ms", "vs plain forward"], rows)],
                 summary=_summary(results, args.quick))
    print(f"wrote {path}")
    return 0


def _summary(results: list[dict], quick: bool) -> list[dict[str, str]]:
    """One README row: the range over models of each counter's time relative to the plain forward."""
    spans: dict[str, list[float]] = {}
    for r in results:
        if r["contender"] != "plain forward":
            spans.setdefault(r["contender"], []).append(r["ratio_to_plain"])
    if "neurostep count" not in spans:
        return []

    def span(values: list[float]) -> str:
        lo, hi = min(values), max(values)
        return f"{lo:.2f}x" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}x"

    ours = spans.pop("neurostep count")
    peers = ", ".join(f"{name} {span(v)}" for name, v in spans.items())
    models = len({r["model"] for r in results})
    workload = f"{models} models, one forward each" + (" (--quick)" if quick else "")
    return [summary_row("Energy counter overhead", workload,
                        span(ours), peers or "no peer installed")]


if __name__ == "__main__":
    sys.exit(main())
