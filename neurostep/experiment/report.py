"""Markdown report and PNG plots (matplotlib Agg) from a run directory's ``results.jsonl``.

Mixer experiments: one table per task (metric mean and 95% CI over seeds, parameters, MACs,
ACs, energy, spike rate, latency, throughput), plots of metric vs energy (Pareto front
marked), metric vs latency and spike rates per layer. Concept-shift experiments: accuracy per
learner and shift rate, the homeostatic learner's paired advantage per shift rate, accuracy
over time and learning-rate trajectories.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from neurostep.experiment.results import ResultStore
from neurostep.files import atomic_write_text


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


def _save(fig: Any, out_dir: Path, file: str) -> str:
    """Lay out, write ``out_dir/file`` as PNG and close ``fig``; returns ``file`` for the Markdown link."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out_dir / file, dpi=110)
    plt.close(fig)
    return file


def _plt():  # noqa: ANN202 - matplotlib.pyplot
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    return plt


def dedupe(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Records grouped by (task, block, config hash), one per distinct seed (the latest wins).

    A seed run twice (two runners, or a rerun) counts once, and runs of different
    configurations never share a group, so an interval is never narrowed by duplicates.
    """
    groups: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        groups[(str(r["task"]), str(r["block"]), str(r.get("config_hash", "")))][int(r["seed"])] = r
    return {key: [by_seed[s] for s in sorted(by_seed)] for key, by_seed in groups.items()}


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the Markdown report and its PNG plots; returns the report's path.

    ``out`` is the report file (default ``<run_dir>/report.md``); plots go beside it.
    """
    run_dir = Path(run_dir)
    records = ResultStore(run_dir).load()
    if not records:
        raise FileNotFoundError(f"no results in {run_dir / 'results.jsonl'}; run the experiment first")
    path = Path(out) if out is not None else run_dir / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    if all(r.get("metric_name") == "mean_test_accuracy" for r in records):
        lines = _concept_shift_report(path.parent, _current_records(run_dir, records))
    else:
        lines = _mixer_report(run_dir, path.parent, records)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- mixers
def _row(task: str, block: str, config: str, recs: list[dict[str, Any]], label: str) -> dict[str, Any]:
    m, h = mean_ci([r.get("metric") for r in recs])
    trained = [bool(r.get("trained", True)) for r in recs]
    return {
        "task": task, "block": block, "config": config, "label": label, "metric_name": recs[0].get("metric_name",
                                                                                                   "accuracy"),
        "metric": m, "ci": h, "seeds": len(recs),
        "trained": sum(trained) * 2 > len(trained), "untrained_seeds": trained.count(False),
        "params": _mean(recs, "params"), "macs": _mean(recs, "macs"), "acs": _mean(recs, "acs"),
        "energy": _mean(recs, "energy_uj"), "train_energy": _mean(recs, "train_energy_uj"),
        "spike": _mean(recs, "spike_rate"), "spike0": _mean(recs, "initial_spike_rate"),
        "latency": _mean(recs, "latency_ms"), "throughput": _mean(recs, "throughput_sps"),
        "train": _mean(recs, "train_time_s"), "compile": _max(recs, "compile_time_s"), "steps": _mean(recs, "steps"),
        "stopped": sorted({str(r.get("stopped", "budget")) for r in recs}),
        "chance": _mean(recs, "chance"), "chance_loss": _mean(recs, "chance_loss"),
        "rates": _layer_rates(recs), "curves": [r.get("curve") or [] for r in recs],
        "train_energy_per_sample": _mean(recs, "train_energy_uj"),
        "positions": _mean_positions(recs),
    }


def _mean_positions(records: list[dict[str, Any]]) -> list[float] | None:
    """Per answer position, the accuracy averaged over seeds; None unless every record has as many."""
    per = [r.get("position_accuracy") for r in records]
    if not per or any(not p or len(p) != len(per[0]) for p in per):
        return None
    return [float(np.mean(col)) for col in zip(*per, strict=True)]


def _max(records: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in records if isinstance(r.get(key), int | float)]
    return float(max(vals)) if vals else None


def mixer_rows(records: list[dict[str, Any]], current: set[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Report rows per task: one per (block, configuration), metric mean and 95% CI over distinct seeds.

    ``current`` holds the config hashes of the experiment file as it is now; rows of other
    configurations (earlier versions of the file) are kept but labelled with their hash.
    """
    groups = dedupe(records)
    configs_of: dict[tuple[str, str], list[str]] = defaultdict(list)
    for task, block, config in groups:
        configs_of[(task, block)].append(config)
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (task, block, config), recs in groups.items():
        label = block
        if len(configs_of[(task, block)]) > 1:
            tag = "current" if current and config in current else "other"
            label = f"{block} [config {config[:6]}, {tag}]"
        row = _row(task, block, config, recs, label)
        row["current"] = current is None or config in current or len(configs_of[(task, block)]) == 1
        by_task[task].append(row)
    return by_task


def summary_table(rows: dict[str, list[dict[str, Any]]], task_bases: dict[str, str]) -> dict:
    """(mean, half-width, seeds) per base task and block, from each base task's own label and the
    current configuration (what the known-results table judges)."""
    table: dict[str, dict[str, tuple[float, float, int]]] = defaultdict(dict)
    for label, task_rows in rows.items():
        base = task_bases.get(label, label)
        if label != base:
            continue  # variants (a sweep's other lengths or sizes) are for the scaling plot
        for row in task_rows:
            if row["current"] and math.isfinite(row["metric"]):
                table[base][row["block"]] = (row["metric"], row["ci"], row["seeds"])
    return table


def _task_bases(plan: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, str]:
    """Task label -> base task name, from the plan or the records' resolved configurations."""
    bases = {label: info.get("task", label) for label, info in plan.get("tasks", {}).items()}
    for r in records:
        bases.setdefault(r["task"], (r.get("config") or {}).get("task_options", {}).get("task", r["task"]))
    return bases


def known_results(run_dir: str | Path, records: list[dict[str, Any]] | None = None) -> list[Any]:
    """The verdicts of the known-results table for the results in ``run_dir`` (what the report shows);
    ``records`` saves reading ``results.jsonl`` again when the caller has them."""
    from neurostep.experiment.findings import FINDINGS, judge
    from neurostep.experiment.runner import read_plan

    run_dir = Path(run_dir)
    records = ResultStore(run_dir).load() if records is None else records
    plan = read_plan(run_dir)
    rows = mixer_rows(records, set(plan.get("config_hashes", [])) or None)
    return judge(FINDINGS, _in_plan_order(summary_table(rows, _task_bases(plan, records)), plan))


def _in_plan_order(table: dict, plan: dict[str, Any]) -> dict:
    """Each task's blocks in the order the experiment lists them (blocks it does not list after them,
    by name): the records come in the order parallel runs happened to finish, which differs from run
    to run, and a table that reorders its rows between two identical runs reads as a change."""
    listed = {info.get("task", label): list(info.get("blocks", []))
              for label, info in plan.get("tasks", {}).items() if info.get("task", label) == label}
    out = {}
    for task, blocks in table.items():
        rank = {b: i for i, b in enumerate(listed.get(task, []))}
        out[task] = dict(sorted(blocks.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
    return out


def _mixer_report(run_dir: Path, out_dir: Path, records: list[dict[str, Any]]) -> list[str]:
    from neurostep.experiment.runner import read_plan

    plan = read_plan(run_dir)
    name = plan.get("experiment") or records[0].get("experiment", run_dir.name)
    current = set(plan.get("config_hashes", [])) or None
    task_bases = _task_bases(plan, records)
    rows = mixer_rows(records, current)
    seeds = sorted({int(r["seed"]) for r in records})
    source = plan.get("source")
    origin = f"Experiment file `{source}`; " if source else ""
    lines = [f"# {name}", "",
             f"{origin}{len(records)} records in `{run_dir / 'results.jsonl'}`, seeds {seeds}. Each row is one "
             "block in one configuration; its metric is the mean over distinct seeds with a 95% Student-t interval "
             "(a seed run twice counts once). Energy, MACs and ACs are per sample (inference); training energy is "
             "per training sample (forward plus a dense backward of twice the operations); latency is one sample "
             "and throughput a batch, on the machine in the records.", ""]
    session = plan.get("session") or {}
    if session.get("wall_s") is not None:
        lines += [f"The last `neurostep run` trained {session['trained_runs']} runs with {session['workers']} "
                  f"worker(s) in {session['wall_s'] / 60:.1f} min ({session['started_at']} to "
                  f"{session['finished_at']}).", ""]
    lines += _devices_note(records)
    lines += _known_results(known_results(run_dir, records))
    if plan.get("skipped"):
        lines += ["## Skipped", ""]
        lines += [f"- **{s['block']}** on {s['task']}: {s['reason']}." for s in plan["skipped"]]
        lines.append("")
    lines += _compile_table(rows, session.get("warm_ups") or [])
    for task, task_rows in rows.items():
        lines += _task_section(out_dir, task, task_rows)
    lines += _scaling_section(out_dir, rows, task_bases, records, current)
    return lines


def _devices_note(records: list[dict[str, Any]]) -> list[str]:
    """Where the records trained, when any trained elsewhere than on the CPU (records older than the
    ``device`` key trained on the CPU). The device is not part of a run's configuration hash, so a row can pool
    seeds from several devices, and the reader should know."""
    counts = Counter(f"{r['device']} ({r['gpu']})" if r.get("gpu") else r.get("device") or "cpu" for r in records)
    if set(counts) == {"cpu"}:
        return []
    parts = ", ".join(f"{n} on {where}" for where, n in counts.most_common())
    return [f"Records by device: {parts}. A row pools the distinct seeds of one configuration wherever they "
            "trained; devices round the same training differently, as CPU models do.", ""]


def known_results_table(verdicts: list[Any], compact: bool = False) -> list[str]:
    """The known-results table as Markdown lines.

    ``compact`` (for a README): finding, block, ours and verdict only, and a finding about every
    block collapsed into one row that names its weakest block.
    """
    if not compact:
        lines = ["| finding | source | paper | block | condition | ours | seeds | verdict |",
                 "|---|---|---|---|---|---|---|---|"]
        for v in verdicts:
            f = v.finding
            lines.append(f"| {f.claim} | {f.source} | {f.paper} | {v.block} | {f.condition()} | "
                         f"{_pm(v.mean, v.half, '.3f')} | {v.seeds} | {v.label()} |")
        return lines
    lines = ["| finding (paper) | block | ours (mean ± 95% CI) | verdict |", "|---|---|---|---|"]

    def short(source: str) -> str:  # "Mamba (Gu & Dao 2023), Table 1" -> "Mamba"
        return source.split(" (")[0].split(",")[0]

    done: set[int] = set()
    for v in verdicts:
        f = v.finding
        if id(f) in done:
            continue
        if f.block != "*":
            block = v.block if f.reference is None else f"{v.block} minus {f.reference}"
            lines.append(f"| {f.claim} ({short(f.source)}) | {block} | {_pm(v.mean, v.half, '.3f')} "
                         f"| {v.label()} |")
            continue
        done.add(id(f))
        group = [w for w in verdicts if w.finding is f]
        worst = min(group, key=lambda w: w.mean if f.op == ">=" else -w.mean)
        held, robust = sum(w.reproduced for w in group), sum(w.robust for w in group)
        lines.append(f"| {f.claim} ({short(f.source)}) | all {len(group)}; lowest: {worst.block} "
                     f"| {_pm(worst.mean, worst.half, '.3f')} | {held} of {len(group)} reproduced "
                     f"({robust} with the whole interval) |")
    return lines


def _known_results(verdicts: list[Any]) -> list[str]:
    if not verdicts:
        return ["## Known results", "", "*None of the papers' findings is covered by the tasks and blocks of "
                "this experiment.*", ""]
    lines = ["## Known results", "",
             "What the papers found, and what this run measured (mean over seeds, 95% interval). A finding "
             "with a reference block is judged on the difference of the two means.", ""]
    lines += known_results_table(verdicts)
    n_ok = sum(v.reproduced for v in verdicts)
    n_robust = sum(v.robust for v in verdicts)
    lines += ["", f"{n_ok} of {len(verdicts)} reproduced in the mean; {n_robust} of them with the whole 95% "
              "interval on the finding's side of the threshold.", ""]
    return lines


def _compile_table(rows: dict[str, list[dict[str, Any]]], warm_ups: list[dict[str, Any]]) -> list[str]:
    """The kernel compile times: the parallel workers' warm-ups of the last session (where a cold cache
    compiles), then each block's first pass in its runs; both kept out of the training time."""
    per_block: dict[str, float] = {}
    for task_rows in rows.values():
        for row in task_rows:
            if row["compile"] is not None:
                per_block[row["block"]] = max(per_block.get(row["block"], 0.0), row["compile"])
    if not per_block and not warm_ups:
        return []
    lines = ["## Kernel compile time", "",
             "A fused kernel compiles on its first call in a process, or loads from numba's disk cache once "
             "compiled; none of it counts as training time.", ""]
    if warm_ups:
        total = sum(w["seconds"] for w in warm_ups)
        lines += [f"Warm-ups of the last session: before any run that calls a fused op, one worker made one "
                  f"forward and backward pass of the first model that calls it; {total:.1f} s of worker time "
                  "in all.", "", "| fused ops | model (block / task) | seconds |", "|---|---|---|"]
        lines += [f"| {', '.join(w['ops'])} | {w['block']} / {w['task']} | {w['seconds']:.1f} |" for w in warm_ups]
        lines.append("")
    if per_block:
        lines += ["First forward and backward pass of each run, the largest over a block's runs (after a warm-up "
                  "the worker already holds the kernels):", "", "| block | first pass (s) |", "|---|---|"]
        lines += [f"| {b} | {t:.1f} |" for b, t in sorted(per_block.items(), key=lambda kv: -kv[1])]
        lines.append("")
    return lines


def _seeds_cell(row: dict[str, Any]) -> str:
    """The number of seeds, and how many of them did not train: a row's mean and interval include those
    seeds, and a reader of a wide interval should see why."""
    untrained = row["untrained_seeds"]
    return f"{row['seeds']} ({untrained} not trained)" if untrained else str(row["seeds"])


def _task_section(out_dir: Path, task: str, task_rows: list[dict[str, Any]]) -> list[str]:
    metric = task_rows[0]["metric_name"]
    higher = metric != "bpc"
    ranked = sorted((r for r in task_rows if r["trained"]), key=lambda r: -r["metric"] if higher else r["metric"])
    untrained = [r for r in task_rows if not r["trained"]]
    chance = task_rows[0]["chance"]
    chance_loss = task_rows[0]["chance_loss"]
    lines = [f"## {task}", ""]
    if chance is not None:
        lines += [f"Chance: accuracy {chance:.3f}, loss {chance_loss:.3f} nats. A run whose final training loss "
                  "is within 5% of the chance loss is *not trained* and not ranked.", ""]
    lines += [f"| rank | block | {metric} | seeds | steps (stop) | params | MACs | ACs | energy (µJ) "
              "| train energy (µJ/sample) | spike rate (init → trained) | latency (ms) | train time (s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, row in enumerate(ranked + untrained, 1):
        rank = str(i) if row["trained"] else "not trained"
        spikes = "-" if row["spike"] is None else f"{_fmt(row['spike0'], '.3f')} → {row['spike']:.3f}"
        lines.append(
            f"| {rank} | {row['label']} | {_pm(row['metric'], row['ci'])} | {_seeds_cell(row)} "
            f"| {_fmt(row['steps'], '.0f')} ({'/'.join(row['stopped'])}) | {_fmt(row['params'], ',.0f')} "
            f"| {_fmt(row['macs'])} | {_fmt(row['acs'])} | {_fmt(row['energy'])} | {_fmt(row['train_energy'])} "
            f"| {spikes} | {_fmt(row['latency'], '.2f')} | {_fmt(row['train'], '.1f')} |")
    lines.append("")
    lines += _position_table(ranked + untrained)
    lines += _curve_plot(out_dir, task, metric, task_rows)
    lines += _mixer_plots(out_dir, task, metric, higher, ranked)
    return lines


def _position_table(rows: list[dict[str, Any]]) -> list[str]:
    """Accuracy at each answer position (selective copying: each copied token, in order)."""
    rows = [r for r in rows if r["positions"]]
    if not rows:
        return []
    width = max(len(r["positions"]) for r in rows)
    lines = ["Accuracy at each answer position (the copied tokens in order; mean over seeds):", "",
             "| block | " + " | ".join(str(i) for i in range(1, width + 1)) + " |",
             "|---|" + "---|" * width]
    for r in rows:
        cells = [f"{v:.2f}" for v in r["positions"]] + [""] * (width - len(r["positions"]))
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _curve_plot(out_dir: Path, task: str, metric: str, task_rows: list[dict[str, Any]]) -> list[str]:
    if not any(any(c) for row in task_rows for c in row["curves"]):
        return []
    # accuracy against training energy only where the runs measured energy ([measure] energy = true)
    with_energy = any(curve and all(p.get("train_energy_uj") is not None for p in curve)
                      for row in task_rows for curve in row["curves"])
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if with_energy else 1, figsize=(11.0 if with_energy else 6.0, 4.0),
                             squeeze=False)
    axes = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, row in enumerate(task_rows):
        color = colors[k % len(colors)]
        for j, curve in enumerate(row["curves"]):
            if not curve:
                continue
            steps = [p["step"] for p in curve]
            values = [p["val_metric"] for p in curve]
            label = row["label"] if j == 0 else None
            axes[0].plot(steps, values, color=color, lw=1.0, alpha=0.8, label=label)
            energy = [p.get("train_energy_uj") for p in curve]
            if with_energy and all(e is not None for e in energy):
                axes[1].plot([e * 1e-3 for e in energy], values, color=color, lw=1.0, alpha=0.8)
    axes[0].set_xlabel("training step")
    if with_energy:
        axes[1].set_xlabel("training energy (mJ, estimated)")
        axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel(f"validation {metric}")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{task}: learning curves (one line per seed)")
    file = _save(fig, out_dir, f"{_safe(task)}_learning_curves.png")
    return [f"![{task} learning curves]({file})", ""]


def _scaling_section(out_dir: Path, rows: dict[str, list[dict[str, Any]]], task_bases: dict[str, str],
                     records: list[dict[str, Any]], current: set[str] | None = None) -> list[str]:
    """One plot per base task run at several values of one option (a sweep): metric against it.

    Only tasks trained alike form a sweep: a task that also overrides the training or the backbone
    (a longer schedule at one of the lengths) is a point of another comparison.
    Settings are read from the records of the current configurations (``current``: their hashes),
    or of any configuration for a task that has no current one.
    """
    options_of: dict[str, dict[str, Any]] = {}
    settings_of: dict[str, dict[str, Any]] = {}
    chosen = [r for r in records if current is None or r.get("config_hash") in current]
    with_current = {r["task"] for r in chosen}
    chosen += [r for r in records if r["task"] not in with_current]
    for r in chosen:
        config = r.get("config") or {}
        options_of.setdefault(r["task"], config.get("task_options", {}))
        settings_of.setdefault(r["task"], {"train": config.get("train"), "backbone": config.get("backbone")})
    lines: list[str] = []
    plots_of: dict[str, int] = defaultdict(int)   # plots per (base, option): a second sweep gets its own file
    by_base: dict[tuple[str, str], list[str]] = defaultdict(list)
    for label in rows:
        settings = json.dumps(settings_of.get(label, {}), sort_keys=True, default=str)
        by_base[(task_bases.get(label, label), settings)].append(label)
    for (base, _), labels in by_base.items():
        if len(labels) < 2:
            continue
        varying = [k for k in options_of[labels[0]] if k not in ("data_seed",)
                   and len({json.dumps(options_of[lab].get(k)) for lab in labels}) > 1]
        if len(varying) != 1:
            continue
        key = varying[0]
        x_of = {lab: options_of[lab][key] for lab in labels}
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x_of.values())
        if not numeric:   # its JSON text on a categorical axis: a list is no coordinate
            x_of = {lab: json.dumps(v) for lab, v in x_of.items()}
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6.0, 4.0))
        blocks = sorted({row["block"] for lab in labels for row in rows[lab] if row["current"]})
        for block in blocks:
            pts = sorted((x_of[lab], row["metric"], row["ci"]) for lab in labels for row in rows[lab]
                         if row["block"] == block and row["current"] and math.isfinite(row["metric"]))
            if len(pts) < 2:
                continue
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                        yerr=[0 if not math.isfinite(p[2]) else p[2] for p in pts], fmt="o-", capsize=3, label=block)
        if numeric:
            ax.set_xticks(sorted(set(x_of.values())))   # the swept values: 2 and 4 pairs, no tick at 2.25
        ax.set_xlabel(key)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0.0, 1.05)   # the whole scale, so that a small wobble does not read as a break
        ax.set_title(f"{base}: accuracy against {key}")
        ax.legend(fontsize=7)
        name = f"{_safe(base)}_scaling_{_safe(key)}"
        plots_of[name] += 1
        file = _save(fig, out_dir, f"{name}.png" if plots_of[name] == 1 else f"{name}_{plots_of[name]}.png")
        lines += [f"## Scaling: {base} against {key}", "",
                  f"Tasks {', '.join(sorted(labels))}; where a block's accuracy falls, it breaks.", "",
                  f"![{base} accuracy against {key}]({file})", ""]
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
        file = _save(fig, run_dir, f"{_safe(task)}_{metric}_vs_{fname}.png")
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
        file = _save(fig, run_dir, f"{_safe(task)}_spike_rates.png")
        lines += [f"![{task} spike rates per layer]({file})", ""]
    else:
        lines += [f"*No spiking layers among the blocks of {task}: no spike-rate plot.*", ""]
    return lines


# ----------------------------------------------------------------------------- concept shift
def _current_records(run_dir: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the experiment file's current configurations (all of them when no plan says)."""
    from neurostep.experiment.runner import read_plan

    current = set(read_plan(run_dir).get("config_hashes", []))
    kept = [r for r in records if not current or r.get("config_hash") in current]
    return kept or records
def _concept_shift_report(run_dir: Path, records: list[dict[str, Any]]) -> list[str]:
    plt = _plt()
    name = records[0].get("experiment", run_dir.name)
    rates = sorted({int(r["swaps_per_epoch"]) for r in records})
    learners = list(dict.fromkeys(r["block"] for r in records))
    cell: dict[tuple[str, int], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        cell[(r["block"], int(r["swaps_per_epoch"]))][int(r["seed"])] = r
    lines = [f"# {name}", "", "Learning-rate homeostasis under concept shift (label swaps of two random classes, "
             "`swaps_per_epoch` times per epoch). The swaps split each epoch into segments; at the end of every "
             "segment the held-out digits are scored under the label mapping that segment trained on. *mean test "
             "acc* averages those segment scores, *final test acc* is the last one; 95% Student-t CIs over seeds.",
             "", "| swaps/epoch | learner | seeds | mean test acc | final test acc | online train acc | final eta |",
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
    _save(fig, run_dir, "accuracy_over_time.png")
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
    _save(fig, run_dir, "learning_rates.png")
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
        _save(fig, run_dir, "advantage_vs_shift_rate.png")
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
