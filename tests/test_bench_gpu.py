"""benchmarks/gpu.py: its checks fail on a wrong kernel, its tables and README rows, and the script end to end
on CPU under Triton's interpreter (one workload)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
bench = load_script("benchmarks/gpu.py", "bench_gpu")


def test_relative_error():
    ref = torch.tensor([3.0, 4.0])
    assert bench.rel_err(ref, ref) == 0.0
    assert bench.rel_err(ref + torch.tensor([0.0, 0.5]), ref) == pytest.approx(0.1)
    assert bench.rel_err(torch.tensor([math.nan, 4.0]), ref) == math.inf
    assert bench.rel_err(None, ref) == math.inf
    assert bench.rel_err(None, None) == 0.0


@pytest.mark.parametrize("error,ok", [(0.0, True), (1e-3, False)])
def test_float64_check_flags_a_wrong_backend(error, ok):
    """A 'triton' backend off by ``error`` (relative) in its output and gradient must fail the float32 check."""
    def op(x, w, backend):
        y = x * w
        return y * (1 + error) if backend == "triton" else y

    rows = bench._check_float64("scaled", lambda: [torch.randn(50), torch.randn(50)], op, ["x", "w"],
                                lambda y: ([y], [torch.ones_like(y)]), "cpu", dtypes=(torch.float32,))
    assert [r["ok"] for r in rows] == [ok]
    assert set(rows[0]["errors"]) == {"out0", "dx", "dw"}


def test_tables_and_readme_rows():
    timings = [
        {"name": "lif", "workload": "T=32, fp32", "note": "",
         "cases": {"neurostep triton": {"ms": 2.0}, "peer": {"ms": 1.0}, "roofline (copies)": {"ms": 0.5},
                   "broken peer": {"error": "RuntimeError: no"}}},
        {"name": "lif", "workload": "T=32, bfloat16", "note": "", "cases": {"neurostep triton": {"ms": 1.0}}},
    ]
    tables = bench.result_tables([], timings)
    assert tables[1]["rows"] == [["neurostep triton", "2.000 ms", ""], ["peer", "1.000 ms", "0.50x"],
                                 ["roofline (copies)", "0.500 ms", "0.25x"],
                                 ["broken peer", "not measured", "RuntimeError: no"]]
    rows = bench.summary_rows(timings, "GPU X")
    assert rows == [{"benchmark": "lif on GPU X", "workload": "T=32, fp32", "neurostep": "2.00 ms",
                     "peers": "peer 0.50x"}]


@pytest.mark.slow
@pytest.mark.parametrize("only,cases", [
    ("wkv", {"neurostep triton", "reference (torch loop)"}),
    ("LIF Triton", {"neurostep forward kernel, BLOCK 256, 4 warps", "neurostep backward kernel, BLOCK 256, 4 warps",
                    "neurostep forward kernel, BLOCK 1024, 4 warps", "neurostep backward kernel, BLOCK 1024, 4 warps",
                    "roofline (one copy of (T, N))"}),
])
def test_script_runs_under_the_interpreter(tmp_path, only, cases):
    pytest.importorskip("triton")
    out = tmp_path / "gpu.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--quick",
                    "--skip-checks", "--only", only, "--out", str(out)], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=600)
    record = json.loads(out.read_text())
    assert record["complete"] is True
    assert len(record["timings"]) == 1 and record["timings"][0]["name"].startswith(only)
    assert set(record["timings"][0]["cases"]) == cases
    assert all("ms" in v for v in record["timings"][0]["cases"].values())
    if only == "LIF Triton":   # every block size computes the same bits
        assert "bit for bit" in record["timings"][0]["note"]


def test_docs_name_the_gpu_of_a_gpu_result():
    hook = load_script("docs/hooks/benchmarks.py", "docs_benchmarks_hook_gpu")
    assert hook.machine_short({"machine": {"gpu": "NVIDIA H200", "cpu": "AMD EPYC 9B14", "cores": 16}}) == \
        "NVIDIA H200, AMD EPYC 9B14, 16 cores"
    assert hook.machine_short({"machine": {"cpu": "AMD EPYC 9B14", "cores": 2}}) == "AMD EPYC 9B14, 2 cores"
    assert hook.machine_short({"machine": {"cpu": "AMD EPYC", "cpu_id": "family 25 model 1, AVX2", "cores": 2}}) == \
        "AMD EPYC (family 25 model 1, AVX2), 2 cores"
