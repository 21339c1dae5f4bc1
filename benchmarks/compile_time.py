"""First-call time of every CPU kernel: cold (empty numba cache) and warm (cache filled by the cold run).

Each case runs in its own Python process with ``NUMBA_CACHE_DIR`` pointed at a fresh directory, so
"cold" is what a user sees on a fresh clone and "warm" is every later process. The forward and the
backward are timed separately (they are separate kernels, compiled on first use). Import time of
neurostep and torch is excluded; the time is that of the first call only, minus the time of a
second identical call (what is left is compiling or loading the kernel).

Both wall time and CPU time are recorded. The machine this runs on is often shared, and compiling
is mostly single-threaded, so the CPU time of the process (``time.process_time`` in the child, all
its threads) is the measure that does not depend on how loaded the machine is; the wall time is
what the user waits. The whole child's CPU time (``RUSAGE_CHILDREN`` delta in the parent, so
including the import of torch and neurostep) is recorded as ``process_cpu``.

    .venv/bin/python benchmarks/compile_time.py                 # every case
    .venv/bin/python benchmarks/compile_time.py --quick         # LIF, linear scan, causal conv1d (float32)
    .venv/bin/python benchmarks/compile_time.py --only lif      # cases whose name starts with "lif"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, summary_row, table, write_result  # noqa: E402

from neurostep.kernels.precompile import variants  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

QUICK = ("lif", "linear_scan", "causal_conv1d")
"""Kernels ``--quick`` measures (float32): the quickest to compile."""

# One case per kernel variant that compiles on its own: the variants of
# ``neurostep.kernels.precompile.variants`` (each op in float32 and float64, and the layouts with a
# compilation of their own). The child runs the variant's function, whose inputs are small: only the
# compile is timed. It prints one JSON line: forward and backward first-call seconds (wall and CPU),
# less a repeat call.
CHILD = """
import json, time, torch
from neurostep.kernels.precompile import variants
torch.manual_seed(0)
run = variants()[{name!r}]
def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time(); fn()
    return time.perf_counter() - t0, time.process_time() - c0
out = {{}}
first_fwd = timed(run)
again_fwd = timed(run)
y = run()
first_bwd = timed(lambda: y.sum().backward())
y = run()
again_bwd = timed(lambda: y.sum().backward())
out["forward"] = first_fwd[0] - again_fwd[0]
out["backward"] = first_bwd[0] - again_bwd[0]
out["forward_cpu"] = first_fwd[1] - again_fwd[1]
out["backward_cpu"] = first_bwd[1] - again_bwd[1]
print(json.dumps(out))
"""


def run_case(name: str, cache_dir: str) -> dict[str, float]:
    """First-call forward and backward seconds (wall and CPU) of variant ``name`` in a fresh process using
    ``cache_dir``, plus the CPU seconds of the whole process (``process_cpu``)."""
    code = CHILD.format(name=name)
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir, "OMP_WAIT_POLICY": "PASSIVE"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"case failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out


def summary(cases: dict[str, dict[str, dict[str, float]]]) -> dict[str, str]:
    """The README row: the longest cold first call (wall seconds) over every case and pass, and the longest
    warm one."""
    cold = max(((c["cold"][p], f"{name} {p}") for name, c in cases.items() for p in ("forward", "backward")))
    warm = max(c["warm"][p] for c in cases.values() for p in ("forward", "backward"))
    return summary_row(
        "First call of every CPU kernel, cold numba cache",
        f"{len(cases)} variants (kernel, dtype, layout), forward and backward, each in a fresh process",
        f"at most {cold[0]:.1f} s ({cold[1]})",
        f"with the cache warm: at most {warm:.2f} s (no peer compiles)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name starts with this")
    parser.add_argument("--quick", action="store_true",
                        help="the float32 cases of the quicker kernels only (LIF, linear scan, causal conv1d)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compile_time.json"))
    args = parser.parse_args()
    load_before = load_average()
    rows, cases = [], {}
    for name in variants():
        if not name.startswith(args.only):
            continue
        if args.quick and (not name.endswith("float32") or name.split()[0] not in QUICK):
            continue
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache_dir:
            cold = run_case(name, cache_dir)
            warm = run_case(name, cache_dir)
        cases[name] = {"cold": cold, "warm": warm}
        row = [name, f"{cold['forward']:.1f} / {cold['forward_cpu']:.1f}",
               f"{cold['backward']:.1f} / {cold['backward_cpu']:.1f}", f"{cold['process_cpu']:.1f}",
               f"{warm['forward']:.2f} / {warm['forward_cpu']:.2f}",
               f"{warm['backward']:.2f} / {warm['backward_cpu']:.2f}", f"{warm['process_cpu']:.1f}"]
        rows.append(row)
        print("  ".join(row), flush=True)
    columns = ["kernel", "cold forward s (wall / CPU)", "cold backward s (wall / CPU)", "cold process CPU s",
               "warm forward s (wall / CPU)", "warm backward s (wall / CPU)", "warm process CPU s"]
    tables = [table("First call of each CPU kernel, cold and warm numba cache (seconds, wall / CPU)",
                    columns, rows)]
    if args.only or args.quick:
        return  # a partial run is for looking, not for the stored result
    write_result(args.out, {"cases": cases}, load_before=load_before, tables=tables, summary=[summary(cases)])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
