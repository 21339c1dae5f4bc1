"""Markdown report and PNG plots (matplotlib Agg) from a run directory's ``results.jsonl``.

Mixer experiments: one table per task (metric mean and 95% CI over seeds, parameters, MACs,
ACs, energy, spike rate, latency, throughput), plots of metric vs energy (Pareto front
marked), metric vs latency and spike rates per layer. Concept-shift experiments: accuracy per
learner and shift rate, the homeostatic learner's paired advantage per shift rate, accuracy
over time and learning-rate trajectories.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from neurostep.experiment.results import ResultStore, atomic_write_text


def mean_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval (``nan`` half-width for n < 2)."""
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if vals.size == 0:
        return math.nan, math.nan
    if vals.size < 2:
        return float(vals.mean()), math.nan
    from scipy.stats import t

    half = t.ppf(0.5 + confidence / 2, vals.size - 1) * vals.std(ddof=1) / math.sqrt(vals.size)
    return float(vals.mean()), float(half)


def pareto_front(costs: list[float], scores: list[float], higher_is_better: bool = True) -> list[int]:
    """Indices of points not dominated by another (lower or equal cost and better or equal score)."""
    front = []
    for i, (c, s) in enumerate(zip(costs, scores)):
        dominated = False
        for j, (c2, s2) in enumerate(zip(costs, scores)):
            if j == i:
                continue
            better = s2 >= s if higher_is_better else s2 <= s
            strictly = (c2 < c) or (s2 > s if higher_is_better else s2 < s)
            if c2 <= c and better and strictly:
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda k: costs[k])


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _pm(mean: float, half: float, spec: str = ".4f") -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:{spec}}" + (f" ± {half:{spec.lstrip('+')}}" if math.isfinite(half) else "")


def _mean(records: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in records if isinstance(r.get(key), int | float)]
    return float(np.mean(vals)) if vals else None


def _plt():  # noqa: ANN202 - matplotlib.pyplot
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    return plt


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and its PNG plots into ``run_dir``; returns the report's path."""
    run_dir = Path(run_dir)
    records = ResultStore(run_dir).load()
    if not records:
        raise FileNotFoundError(f"no results in {run_dir / 'results.jsonl'}; run the experiment first")
    if all(r.get("metric_name") == "mean_test_accuracy" for r in records):
        lines = _concept_shift_report(run_dir, records)
    else:
        lines = _mixer_report(run_dir, records)
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- mixers
def _mixer_report(run_dir: Path, records: list[dict[str, Any]]) -> list[str]:
    name = records[0].get("experiment", run_dir.name)
    lines = [f"# {name}", "", f"{len(records)} runs from `{run_dir / 'results.jsonl'}`. Metrics are means over "
             "seeds with 95% Student-t confidence intervals; energy, MACs and ACs are per sample "
             "(profile in the records); latency is one sample, throughput a batch, on this machine.", ""]
    by_task: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_task[r["task"]][r["block"]].append(r)
    for task, blocks in by_task.items():
        metric = next(iter(blocks.values()))[0].get("metric_name", "accuracy")
        higher = metric != "bpc"
        rows = []
        for block, recs in blocks.items():
            m, h = mean_ci([r.get("metric") for r in recs])
            rows.append({
                "block": block, "metric": m, "ci": h, "seeds": len(recs), "params": _mean(recs, "params"),
                "macs": _mean(recs, "macs"), "acs": _mean(recs, "acs"), "energy": _mean(recs, "energy_uj"),
                "spike": _mean(recs, "spike_rate"), "latency": _mean(recs, "latency_ms"),
                "throughput": _mean(recs, "throughput_sps"), "train": _mean(recs, "train_time_s"),
                "rates": _layer_rates(recs),
            })
        rows.sort(key=lambda row: -row["metric"] if higher else row["metric"])
        lines += [f"## {task}", "", f"{metric} ({'higher' if higher else 'lower'} is better)", "",
                  f"| block | {metric} | seeds | params | MACs | ACs | energy (µJ) | spike rate | latency (ms) "
                  "| throughput (samples/s) | train time (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            lines.append(
                f"| {row['block']} | {_pm(row['metric'], row['ci'])} | {row['seeds']} | {_fmt(row['params'], ',.0f')} "
                f"| {_fmt(row['macs'])} | {_fmt(row['acs'])} | {_fmt(row['energy'])} | {_fmt(row['spike'], '.3f')} "
                f"| {_fmt(row['latency'], '.2f')} | {_fmt(row['throughput'], ',.0f')} | {_fmt(row['train'], '.1f')} |")
        lines.append("")
        lines += _mixer_plots(run_dir, task, metric, higher, rows)
    return lines


def _layer_rates(recs: list[dict[str, Any]]) -> dict[str, float]:
    acc: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        for layer, rate in (r.get("spike_rates") or {}).items():
            acc[layer].append(rate)
    return {layer: float(np.mean(v)) for layer, v in acc.items()}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _mixer_plots(run_dir: Path, task: str, metric: str, higher: bool, rows: list[dict[str, Any]]) -> list[str]:
    plt = _plt()
    lines = []
    for cost_key, label, fname, log in (("energy", "energy per sample (µJ)", "energy", True),
                                         ("latency", "latency, batch 1 (ms)", "latency", True)):
        pts = [row for row in rows if row[cost_key] is not None and math.isfinite(row["metric"])]
        if not pts:
            lines += [f"*No {cost_key} measurements for {task}: {metric} vs {cost_key} not plotted.*", ""]
            continue
        costs = [row[cost_key] for row in pts]
        scores = [row["metric"] for row in pts]
        front = pareto_front(costs, scores, higher)
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        ax.errorbar(costs, scores, yerr=[0 if not math.isfinite(row["ci"]) else row["ci"] for row in pts],
                    fmt="o", capsize=3)
        for row in pts:
            ax.annotate(row["block"], (row[cost_key], row["metric"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.plot([costs[i] for i in front], [scores[i] for i in front], "r--", lw=1, label="Pareto front")
        if log and min(costs) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.set_title(f"{task}: {metric} vs {cost_key}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        file = f"{_safe(task)}_{metric}_vs_{fname}.png"
        fig.savefig(run_dir / file, dpi=110)
        plt.close(fig)
        lines += [f"![{task} {metric} vs {cost_key}]({file})", "",
                  f"Pareto front ({cost_key}): " + ", ".join(pts[i]["block"] for i in front), ""]
    spiking = [row for row in rows if row["rates"]]
    if spiking:
        fig, axes = plt.subplots(len(spiking), 1, figsize=(7.0, 1.0 + 1.8 * len(spiking)), squeeze=False)
        for ax, row in zip(axes[:, 0], spiking):
            layers = list(row["rates"])
            ax.bar(range(len(layers)), [row["rates"][k] for k in layers])
            ax.set_xticks(range(len(layers)))
            ax.set_xticklabels([k.replace("blocks.", "b").replace(".mixer", "") for k in layers], rotation=60,
                               fontsize=6, ha="right")
            ax.set_ylabel("rate")
            ax.set_title(f"{row['block']}: spike rate per neuron layer", fontsize=9)
        fig.tight_layout()
        file = f"{_safe(task)}_spike_rates.png"
        fig.savefig(run_dir / file, dpi=110)
        plt.close(fig)
        lines += [f"![{task} spike rates per layer]({file})", ""]
    else:
        lines += [f"*No spiking layers among the blocks of {task}: no spike-rate plot.*", ""]
    return lines


# ----------------------------------------------------------------------------- concept shift
def _concept_shift_report(run_dir: Path, records: list[dict[str, Any]]) -> list[str]:
    plt = _plt()
    name = records[0].get("experiment", run_dir.name)
    rates = sorted({int(r["swaps_per_epoch"]) for r in records})
    learners = list(dict.fromkeys(r["block"] for r in records))
    cell: dict[tuple[str, int], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        cell[(r["block"], int(r["swaps_per_epoch"]))][int(r["seed"])] = r
    lines = [f"# {name}", "", "Learning-rate homeostasis under concept shift (label swaps of two random classes, "
             "`swaps_per_epoch` times per epoch). Accuracy is on the held-out digits under the current label "
             "mapping, averaged over epochs (mean) or at the last epoch (final); 95% Student-t CIs over seeds.", "",
             "| swaps/epoch | learner | seeds | mean test acc | final test acc | online train acc | final eta |",
             "|---|---|---|---|---|---|---|"]
    for rate in rates:
        for learner in learners:
            recs = list(cell[(learner, rate)].values())
            if not recs:
                continue
            lines.append(
                f"| {rate} | {learner} | {len(recs)} | {_pm(*mean_ci([r['mean_test_accuracy'] for r in recs]))} "
                f"| {_pm(*mean_ci([r['final_test_accuracy'] for r in recs]))} "
                f"| {_pm(*mean_ci([r['mean_online_accuracy'] for r in recs]))} "
                f"| {_fmt(_mean(recs, 'final_eta'), '.2e')} |")
    lines.append("")
    # Paired advantage of the homeostatic learner per shift rate.
    advantages: dict[str, list[tuple[int, float, float]]] = {}
    if "homeostatic" in learners:
        lines += ["## Homeostatic advantage (paired by seed, mean test accuracy)", "",
                  "| swaps/epoch | " + " | ".join(f"vs {b}" for b in learners if b != "homeostatic") + " |",
                  "|---|" + "---|" * (len(learners) - 1)]
        for base in learners:
            if base == "homeostatic":
                continue
            advantages[base] = []
            for rate in rates:
                h, b = cell[("homeostatic", rate)], cell[(base, rate)]
                diffs = [h[s]["mean_test_accuracy"] - b[s]["mean_test_accuracy"] for s in sorted(set(h) & set(b))]
                if diffs:
                    advantages[base].append((rate, *mean_ci(diffs)))
        for rate in rates:
            cells = []
            for base in advantages:
                match = [a for a in advantages[base] if a[0] == rate]
                cells.append(_pm(match[0][1], match[0][2], "+.4f") if match else "-")
            lines.append(f"| {rate} | " + " | ".join(cells) + " |")
        lines += ["", "### Does the advantage grow with the shift rate?", ""]
        for base, adv in advantages.items():
            lines.append("- " + _trend_sentence(base, adv))
        lines.append("")
    # Plots: accuracy over epochs per shift rate; eta trajectories; advantage vs rate.
    fig, axes = plt.subplots(1, len(rates), figsize=(3.2 * len(rates), 3.2), squeeze=False, sharey=True)
    for ax, rate in zip(axes[0], rates):
        for learner in learners:
            curves = [r["test_curve"] for r in cell[(learner, rate)].values()]
            if not curves:
                continue
            arr = np.asarray(curves, dtype=float)
            mu = arr.mean(0)
            half = np.asarray([mean_ci(list(arr[:, k]))[1] for k in range(arr.shape[1])])
            epochs = np.arange(1, arr.shape[1] + 1)
            ax.plot(epochs, mu, label=learner)
            if arr.shape[0] > 1:
                ax.fill_between(epochs, mu - half, mu + half, alpha=0.2)
        ax.set_title(f"{rate} swaps/epoch", fontsize=9)
        ax.set_xlabel("epoch")
    axes[0, 0].set_ylabel("test accuracy")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "accuracy_over_time.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(rates), figsize=(3.2 * len(rates), 3.2), squeeze=False, sharey=True)
    for ax, rate in zip(axes[0], rates):
        for learner in learners:
            curves = [r["eta_curve"] for r in cell[(learner, rate)].values()]
            if curves:
                ax.plot(np.linspace(0, 1, len(curves[0])), np.mean(curves, axis=0), label=learner)
        ax.set_title(f"{rate} swaps/epoch", fontsize=9)
        ax.set_xlabel("fraction of training")
    axes[0, 0].set_ylabel("learning rate (mean over seeds)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "learning_rates.png", dpi=110)
    plt.close(fig)
    lines += ["![test accuracy over epochs](accuracy_over_time.png)", "",
              "![learning-rate trajectories](learning_rates.png)", ""]
    if advantages:
        fig, ax = plt.subplots(figsize=(5.0, 3.4))
        for base, adv in advantages.items():
            ax.errorbar([a[0] for a in adv], [a[1] for a in adv],
                        yerr=[0 if not math.isfinite(a[2]) else a[2] for a in adv], fmt="o-", capsize=3,
                        label=f"homeostatic - {base}")
        ax.axhline(0, color="k", lw=0.7)
        ax.set_xlabel("swaps per epoch")
        ax.set_ylabel("accuracy advantage")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(run_dir / "advantage_vs_shift_rate.png", dpi=110)
        plt.close(fig)
        lines += ["![advantage vs shift rate](advantage_vs_shift_rate.png)", ""]
    return lines


def _trend_sentence(base: str, adv: list[tuple[int, float, float]]) -> str:
    """A plain statement of what was measured: slope of advantage vs shift rate and low/high comparison."""
    if len(adv) < 2:
        return f"vs {base}: only one shift rate measured, no trend."
    rates = np.asarray([a[0] for a in adv], dtype=float)
    means = np.asarray([a[1] for a in adv], dtype=float)
    slope = float(np.polyfit(rates, means, 1)[0])
    lo, hi = adv[0], adv[-1]
    sig_hi = math.isfinite(hi[2]) and hi[1] - hi[2] > 0
    grows = hi[1] > lo[1] and slope > 0
    verdict = "grows" if grows else "does not grow"
    return (f"vs {base}: advantage {lo[1]:+.4f} at {lo[0]} swaps/epoch and {hi[1]:+.4f} at {hi[0]} "
            f"(slope {slope:+.2e} per swap/epoch): it {verdict} with the shift rate in this measurement; "
            f"at the highest rate the advantage is {'above zero at 95%' if sig_hi else 'not above zero at 95%'}.")
