"""What every benchmark script records in its JSON result, besides its own measurements.

A result file ``benchmarks/results/<script>.json`` holds the script's fields plus:

- ``date``: when the measurements finished, ISO 8601 in UTC;
- ``machine``: CPU model, logical cores, platform, the GPU's name where torch sees one, and the Python,
  torch and numba versions;
- ``load``: the 1-, 5- and 15-minute load averages (``os.getloadavg``) before and after;
- ``tables``: the tables the script prints, as ``{"title", "columns", "rows"}`` with cells as text;
- ``summary``: the script's rows for the README's summary table, each
  ``{"benchmark", "workload", "neurostep", "peers"}`` (empty when the script compares no peers).

The documentation's benchmarks page renders ``date``, ``machine``, ``load`` and ``tables`` of
every file (``docs/hooks/benchmarks.py``); ``python docs/hooks/benchmarks.py --update-readme``
copies the ``summary`` rows into the README. The leading underscore keeps this module out of
``neurostep bench``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

from neurostep.machine import cpu_model, cpu_signature


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages, or None where the platform has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def omp_wait_policy() -> str:
    """The process's OpenMP wait policy as the results record it: ``OMP_WAIT_POLICY`` where set, else torch's
    default (active waiting). It is fixed when torch starts, and it changes how fast pure-torch peers run."""
    return os.environ.get("OMP_WAIT_POLICY") or "unset (torch's default: active)"


def machine_info() -> dict[str, Any]:
    """CPU model (and family, model number and instruction set where known), logical cores, platform and library
    versions of this process."""
    import torch

    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_id": cpu_signature() or None, "cores": os.cpu_count(),
                            "platform": platform.platform(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():   # asked when the result is written, never at import
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:  # pragma: no cover - numba is a core dependency
        pass
    return info


def table(title: str, columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    """One printed table as JSON: every cell is kept as the text the script prints."""
    return {"title": title, "columns": [str(c) for c in columns], "rows": [[str(c) for c in row] for row in rows]}


def ratio(value: float) -> str:
    """A ratio with three significant digits: ``5.41x``, ``23.1x``, ``864x``."""
    if value >= 100:
        return f"{value:.0f}x"
    return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def summary_row(benchmark: str, workload: str, neurostep: str, peers: str) -> dict[str, str]:
    """One row of the README's summary table: what was timed, neurostep's result, the peers' ratios."""
    return {"benchmark": benchmark, "workload": workload, "neurostep": neurostep, "peers": peers}


def write_result(path: str | Path, record: dict[str, Any], *, load_before: list[float] | None,
                 tables: list[dict[str, Any]], summary: list[dict[str, str]]) -> Path:
    """Write ``record`` with the date, machine, load, tables and summary rows to ``path`` (JSON)."""
    out = {
        **record,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load": {"before": load_before, "after": load_average()},
        "tables": tables,
        "summary": summary,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return path
