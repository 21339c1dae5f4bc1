"""The documentation builds strictly, and every Python snippet in it runs.

- ``mkdocs build --strict`` must pass: no broken link or anchor, no page outside the navigation,
  no unresolved API reference, no unreadable benchmark result.
- Every fenced ``python`` block of ``README.md`` and ``docs/**/*.md`` runs in a fresh interpreter
  with the repository root as working directory. A block that cannot run here (it needs a GPU or the
  network) is marked on the line right above its fence with ``<!-- not-tested: <reason> -->``; it is
  still compiled, and the reason must be given.
- The README stays short and its benchmark summary agrees with ``benchmarks/results/``.

The snippets run two at a time, each with one thread, so the file stays well under two minutes on
two cores once numba's on-disk cache is warm (a cold cache adds the kernels' first compilation).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*not-tested:(.*?)-->\s*$")
SNIPPET_TIMEOUT_S = 300   # a cold numba cache compiles a kernel variant for up to about a minute
BUILD_TIMEOUT_S = 300
WORKERS = max(1, min(2, os.cpu_count() or 1))
README_MAX_LINES = 250


@dataclass(frozen=True)
class Snippet:
    """One fenced Python block: where it is, its code, and why it is not run (None: it is run)."""

    path: Path
    line: int            # 1-based line of the opening fence
    code: str
    not_tested: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def extract_snippets(path: Path) -> list[Snippet]:
    """Every ```python block of a Markdown file, with the not-tested reason of the line above it.

    ``ValueError`` for an unclosed fence and for a not-tested marker that is not right above a
    Python block, so a marker can never silently exempt anything else.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    snippets: list[Snippet] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        if i == len(lines):
            raise ValueError(f"{path.relative_to(ROOT)}:{start + 1}: code fence is never closed")
        i += 1
        if lang.lower() not in ("python", "py", "python3"):
            continue
        above = lines[start - 1] if start > 0 else ""
        marker = MARKER.match(above)
        snippets.append(Snippet(path, start + 1, "\n".join(body) + "\n", marker.group(1).strip() if marker else None))
    for n, text in enumerate(lines):
        if MARKER.match(text) and not any(s.line == n + 2 for s in snippets):
            raise ValueError(f"{path.relative_to(ROOT)}:{n + 1}: a not-tested marker must be the line right "
                             "above a ```python fence")
    return snippets


SNIPPETS = [s for path in DOC_FILES for s in extract_snippets(path)]
RUNNABLE = [s for s in SNIPPETS if s.not_tested is None]


def run_snippet(snippet: Snippet, tmp_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run one block in a fresh interpreter from the repository root, one thread, no Triton interpreter."""
    script = tmp_dir / (re.sub(r"[^\w.-]", "_", snippet.name) + ".py")
    script.write_text(snippet.code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MPLBACKEND="Agg",
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    try:
        return subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=SNIPPET_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(exc.cmd, -1, "", f"timed out after {SNIPPET_TIMEOUT_S} s")


def failure_message(snippet: Snippet, result: subprocess.CompletedProcess[str]) -> str:
    """Where the block is, the Markdown line of the failing statement when the traceback names one, and the output."""
    where = f"{snippet.name} (block starting at line {snippet.line})"
    hits = re.findall(r'File "[^"]*' + re.escape(re.sub(r"[^\w.-]", "_", snippet.name)) + r'\.py", line (\d+)',
                      result.stderr)
    if hits:
        where += f", failing at line {snippet.line + int(hits[-1])} of {snippet.path.relative_to(ROOT)}"
    tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
    return f"{where} exited with {result.returncode}:\n{tail}"


@pytest.fixture(scope="module")
def snippet_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """All runnable snippets, run ``WORKERS`` at a time; results keyed by snippet name."""
    tmp_dir = tmp_path_factory.mktemp("snippets")
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = list(pool.map(lambda s: run_snippet(s, tmp_dir), RUNNABLE))
    return {s.name: r for s, r in zip(RUNNABLE, results)}


@pytest.mark.parametrize("snippet", RUNNABLE, ids=lambda s: s.name)
def test_snippet_runs(snippet: Snippet, snippet_results: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = snippet_results[snippet.name]
    assert result.returncode == 0, failure_message(snippet, result)


def test_not_tested_snippets_give_a_reason_and_compile() -> None:
    for snippet in SNIPPETS:
        if snippet.not_tested is not None:
            assert snippet.not_tested, f"{snippet.name}: <!-- not-tested: ... --> needs a reason"
            compile(snippet.code, snippet.name, "exec")


def test_every_page_has_been_scanned() -> None:
    assert len(RUNNABLE) >= 10, [s.name for s in SNIPPETS]
    assert any(s.path.name == "README.md" for s in RUNNABLE)


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()


# ----------------------------------------------------------------------------- README and benchmark results
def _hook() -> ModuleType:
    return load_script("docs/hooks/benchmarks.py", "docs_benchmarks_hook")


def test_readme_is_short_and_points_inside_the_repository() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README links to {target}, which is not in the repository"


def test_readme_summary_matches_stored_results() -> None:
    hook = _hook()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert hook.updated_readme(text) == text, (
        "the README's benchmark summary differs from benchmarks/results/: run "
        "`python docs/hooks/benchmarks.py --update-readme`")


def test_benchmark_page_without_results(tmp_path: Path) -> None:
    assert "No benchmark results are stored yet" in _hook().render_results(tmp_path)


def test_benchmark_page_and_readme_rows_from_a_result(tmp_path: Path) -> None:
    hook = _hook()
    result = {
        "date": "2026-12-01T10:17:00+00:00",
        "machine": {"cpu": "Intel(R) Xeon(R) Processor", "cores": 2, "platform": "Linux", "torch": "2.14.1"},
        "load": {"before": [0.5, 0.6, 0.7], "after": [0.9, 0.8, 0.7]},
        "tables": [{"title": "T=32", "columns": ["contender", "median ms"], "rows": [["a|b", "1.00"]]}],
        "summary": [{"benchmark": "LIF neuron, forward+backward", "workload": "T=32", "neurostep": "1.00 ms",
                     "peers": "spikingjelly 2.0 5.00x"}],
    }
    (tmp_path / "neurons.json").write_text(json.dumps(result))
    page = hook.render_results(tmp_path)
    assert "2026-12-01 10:17 UTC" in page and "Intel Xeon, 2 cores" in page and "0.50 / 0.60 / 0.70" in page
    assert "| a\\|b | 1.00 |" in page
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    updated = hook.updated_readme(readme, tmp_path)
    row = ("| LIF neuron, forward+backward ([`neurons.py`](benchmarks/neurons.py)) | T=32 | 1.00 ms | "
           "spikingjelly 2.0 5.00x | 2026-12-01, Intel Xeon, 2 cores, load 0.50 |")
    assert row in updated
    assert updated.count("(benchmarks/neurons.py)") == 1          # the stored result replaced the old row
    assert updated.count("(benchmarks/ssm.py)") == readme.count("(benchmarks/ssm.py)")   # others kept
