"""Benchmark tables from ``benchmarks/results/*.json``, for the docs and the README.

As an MkDocs hook (``hooks:`` in ``mkdocs.yml``) it replaces the marker
``<!-- benchmark-results -->`` on a page with one section per result file: its date, machine,
load average and the tables the script recorded (``benchmarks/_results.py`` describes the
fields). Without result files the section says that none are stored yet.

As a script it keeps the README's summary table in step with the result files::

    python docs/hooks/benchmarks.py --update-readme   # rewrite rows of scripts that have a result
    python docs/hooks/benchmarks.py --check-readme    # exit 1 when the README disagrees

Rows of scripts without a result file are left as they are.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
PAGE_MARKER = "<!-- benchmark-results -->"
SUMMARY_BEGIN = "<!-- benchmark-summary:begin -->"
SUMMARY_END = "<!-- benchmark-summary:end -->"
SUMMARY_HEADER = [
    "| benchmark | workload | neurostep | peers (their time / neurostep's) | run |",
    "|---|---|---:|---|---|",
]
# Scripts in the order their sections and summary rows appear; others follow by name.
ORDER = ("neurons", "ssm", "ssm_lm", "wkv", "energy", "mixers", "spikformer_energy")

log = logging.getLogger("mkdocs.hooks.benchmarks")


def result_files(results_dir: Path = RESULTS_DIR) -> list[Path]:
    """The result files, known scripts first in :data:`ORDER`, then the rest by name."""
    files = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(files, key=lambda f: (rank.get(f.stem, len(ORDER)), f.stem))


def load(path: Path) -> dict[str, Any]:
    """One result file; ``ValueError`` naming the file when it is not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON result ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a result file must hold a JSON object")
    return data


def short_cpu(name: str) -> str:
    """``"Intel(R) Xeon(R) CPU @ 2.20GHz"`` -> ``"Intel Xeon"``: the model without marks and clock."""
    name = re.sub(r"\((R|TM|tm)\)", "", name)
    name = re.sub(r"@.*$", "", name)
    name = re.sub(r"\b(CPU|Processor)\b", "", name)
    return " ".join(name.split()) or "unknown CPU"


def run_date(data: dict[str, Any]) -> str:
    """The date part of the result's ISO timestamp, or ``"undated"``."""
    date = str(data.get("date") or "")
    return date[:10] if re.match(r"\d{4}-\d\d-\d\d", date) else "undated"


def machine_short(data: dict[str, Any]) -> str:
    """``"Intel Xeon, 2 cores"`` from the result's ``machine`` record, with the CPU's family, model and
    instruction set where the record has them (``"AMD EPYC (family 25 model 1, AVX2), 2 cores"``)."""
    machine = data.get("machine")
    if not isinstance(machine, dict):
        return "machine not recorded"
    cores = machine.get("cores")
    gpu = f"{machine['gpu']}, " if machine.get("gpu") else ""
    cpu_id = f" ({machine['cpu_id']})" if machine.get("cpu_id") else ""
    return gpu + short_cpu(str(machine.get("cpu", ""))) + cpu_id + (f", {cores} cores" if cores else "")


def _loads(values: Any) -> str:
    if not isinstance(values, list) or not values:
        return "not recorded"
    return " / ".join(f"{float(v):.2f}" for v in values)


def _load_record(data: dict[str, Any]) -> dict[str, Any]:
    """The result's ``load`` record (``before`` and ``after`` load averages), or {} if it has none."""
    return data.get("load") if isinstance(data.get("load"), dict) else {}


def describe_run(data: dict[str, Any]) -> str:
    """One line: when, on what, with which versions, under what load."""
    date = str(data.get("date") or "")
    when = f"{date[:10]} {date[11:16]} UTC" if re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d", date) else "date not recorded"
    machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    versions = ", ".join(f"{k} {machine[k]}" for k in ("python", "torch", "numba") if machine.get(k))
    load = _load_record(data)
    parts = [f"**{when}**", machine_short(data)]
    if machine.get("platform"):
        parts.append(f"`{machine['platform']}`")
    if versions:
        parts.append(versions)
    parts.append(f"load average (1, 5, 15 min) {_loads(load.get('before'))} before, {_loads(load.get('after'))} after")
    return "; ".join(parts) + "."


def load_short(data: dict[str, Any]) -> str:
    """``"load 0.50"``: the 1-minute load average before the run (a loaded machine slows some contenders
    more than others, so a ratio is read with it)."""
    before = _load_record(data).get("before")
    return f"load {float(before[0]):.2f}" if isinstance(before, list) and before else "load not recorded"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; cells are escaped so that a ``|`` in a name cannot split a column."""
    width = len(columns)
    lines = ["| " + " | ".join(_cell(c) or " " for c in columns) + " |", "|" + "---|" * width]
    for row in rows:
        cells = [_cell(c) for c in list(row)[:width]] + [""] * (width - len(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_file(path: Path, data: dict[str, Any]) -> str:
    """The section of one result file: heading, run line and its tables."""
    lines = [f"### `{path.stem}.py`", "", describe_run(data), ""]
    tables = data.get("tables")
    if not isinstance(tables, list) or not tables:
        lines += ["*This file records no tables (written by an older version of the script).*", ""]
        return "\n".join(lines)
    for t in tables:
        if t.get("title"):
            lines += [_cell(t["title"]), ""]
        lines += [markdown_table(t.get("columns", []), t.get("rows", [])), ""]
    return "\n".join(lines)


def render_results(results_dir: Path = RESULTS_DIR) -> str:
    """Every result file's section, or a note that no results are stored yet."""
    files = result_files(results_dir)
    if not files:
        return ("*No benchmark results are stored yet.* Run a script (for example "
                "`python benchmarks/neurons.py`); it writes `benchmarks/results/<script>.json`, and the next build "
                "of these pages shows it.\n")
    return "\n".join(render_file(f, load(f)) for f in files)


def summary_rows(results_dir: Path = RESULTS_DIR) -> dict[str, list[str]]:
    """README rows per script stem, from the ``summary`` field of each result file."""
    out: dict[str, list[str]] = {}
    for f in result_files(results_dir):
        data = load(f)
        rows = data.get("summary") or []
        run = f"{run_date(data)}, {machine_short(data)}, {load_short(data)}"
        link = f"[`{f.stem}.py`](benchmarks/{f.stem}.py)"
        out[f.stem] = [
            "| " + " | ".join([f"{_cell(r['benchmark'])} ({link})", _cell(r["workload"]), _cell(r["neurostep"]),
                               _cell(r["peers"]), run]) + " |"
            for r in rows
        ]
    return out


def _summary_block(text: str) -> tuple[int, int]:
    begin, end = text.find(SUMMARY_BEGIN), text.find(SUMMARY_END)
    if begin < 0 or end < begin:
        raise ValueError(f"the README has no {SUMMARY_BEGIN} ... {SUMMARY_END} block")
    return begin + len(SUMMARY_BEGIN), end


def _row_script(row: str) -> str | None:
    match = re.search(r"\(benchmarks/([A-Za-z0-9_]+)\.py\)", row)
    return match.group(1) if match else None


def updated_readme(text: str, results_dir: Path = RESULTS_DIR) -> str:
    """``text`` with the summary rows of every script that has a result file regenerated."""
    start, stop = _summary_block(text)
    current = [line for line in text[start:stop].strip().splitlines() if line.startswith("|")][2:]
    generated = summary_rows(results_dir)
    kept: dict[str, list[str]] = {}
    for row in current:
        kept.setdefault(_row_script(row) or "", []).append(row)
    scripts = [s for s in ORDER if s in kept or s in generated]
    scripts += sorted((set(kept) | set(generated)) - set(scripts))
    rows = [row for s in scripts for row in (generated[s] if s in generated else kept.get(s, []))]
    return text[:start] + "\n" + "\n".join(SUMMARY_HEADER + rows) + "\n" + text[stop:]


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    """MkDocs hook: fill the benchmarks page's marker with the stored results."""
    if PAGE_MARKER not in markdown:
        return markdown
    try:
        body = render_results()
    except ValueError as exc:
        log.warning(str(exc))   # a warning fails `mkdocs build --strict`
        body = f"*Could not read the stored results: {exc}*\n"
    return markdown.replace(PAGE_MARKER, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Keep the README's benchmark summary in step with the results.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--update-readme", action="store_true", help="rewrite the rows of scripts with a result file")
    group.add_argument("--check-readme", action="store_true", help="exit 1 when the README's rows are out of date")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="results directory (default: benchmarks/results)")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    new = updated_readme(text, Path(args.results))
    if args.update_readme:
        if new != text:
            README.write_text(new, encoding="utf-8")
        print("README summary table " + ("updated" if new != text else "already up to date"))
        return 0
    if new != text:
        print("the README's benchmark summary differs from benchmarks/results; run "
              "`python docs/hooks/benchmarks.py --update-readme`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
