"""Results store: one JSONL line per finished run, plus a CSV view, both crash-safe.

A run is keyed by (block, task, seed, config hash). ``results.jsonl`` is appended with one
``write`` + ``flush`` + ``fsync`` per run, so a killed process loses at most the run in
flight; a torn last line (the process died inside the write) is cut off on the next open.
``results.csv`` is rewritten from the JSONL through a temporary file and ``os.replace``,
so readers never see a half-written CSV.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from neurostep.files import atomic_write_text

KEY_FIELDS = ("block", "task", "seed", "config_hash")


def run_key(record: dict[str, Any]) -> tuple[str, str, int, str]:
    try:
        return (str(record["block"]), str(record["task"]), int(record["seed"]), str(record["config_hash"]))
    except KeyError as exc:
        raise ValueError(f"result record lacks key field {exc.args[0]!r}; key fields are {KEY_FIELDS}") from None


def _jsonable(value: Any) -> Any:
    """Make NaN/inf JSON-safe (null) and tuples lists; JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class ResultStore:
    """Append-only run results under ``run_dir`` (``results.jsonl`` and ``results.csv``)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.jsonl = self.run_dir / "results.jsonl"
        self.csv = self.run_dir / "results.csv"

    def _repair(self) -> None:
        """Cut a torn trailing line left by a process killed in the middle of a write."""
        if not self.jsonl.exists():
            return
        data = self.jsonl.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.jsonl.open("r+b") as fh:
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())

    def load(self) -> list[dict[str, Any]]:
        """All complete records, in the order they were written (a torn last line is ignored)."""
        if not self.jsonl.exists():
            return []
        records = []
        lines = self.jsonl.read_text(encoding="utf-8").split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:   # torn final line: the run in flight when killed
                    continue
                raise ValueError(f"{self.jsonl}: line {i + 1} is not valid JSON") from None
        return records

    def done_keys(self) -> set[tuple[str, str, int, str]]:
        return {run_key(r) for r in self.load()}

    def append(self, record: dict[str, Any]) -> None:
        """Append one finished run durably, then refresh the CSV view."""
        run_key(record)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._repair()
        line = json.dumps(_jsonable(record), sort_keys=False, allow_nan=False) + "\n"
        with self.jsonl.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.write_csv()

    def write_csv(self) -> None:
        records = self.load()
        if not records:
            return
        columns: list[str] = []
        for r in records:
            for k in r:
                if k not in columns:
                    columns.append(k)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in r.items()})
        atomic_write_text(self.csv, buf.getvalue())
