"""``python -m neurostep.kernels.precompile`` fills numba's cache so that a later process's first call loads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neurostep.kernels import precompile

KERNELS = Path(precompile.__file__).parent

# A fresh process runs one variant and reports its kernels' cache hits and misses (numba's dispatcher stats).
PROBE = """
import json, sys
from neurostep.kernels.linear_scan import cpu
from neurostep.kernels.precompile import compile_variant
compile_variant(sys.argv[1])
stats = [k.stats for k in (cpu._forward_kernel, cpu._backward_kernel)]
print(json.dumps({"hits": sum(sum(s.cache_hits.values()) for s in stats),
                  "misses": sum(sum(s.cache_misses.values()) for s in stats)}))
"""


def _run(args: list[str], cache_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)


def _probe(cache_dir: Path, variant: str) -> dict:
    done = _run(["-c", PROBE, variant], cache_dir)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_op_with_a_cpu_kernel_has_variants():
    ops = {path.parent.name for path in KERNELS.glob("*/cpu.py")}
    assert ops, "no cpu kernels found"
    names = precompile.variants()
    for op in ops:
        for dtype in ("float32", "float64"):
            assert any(n.startswith(op) and n.endswith(dtype) for n in names), (op, dtype)


def test_precompiled_kernels_load_from_the_cache(tmp_path):
    variant = "linear_scan float32"
    cold = _probe(tmp_path / "cold", variant)
    assert cold["misses"] > 0 and cold["hits"] == 0        # without the step: compiled on first call

    warm_dir = tmp_path / "warm"
    done = _run(["-m", "neurostep.kernels.precompile", "--only", variant, "--jobs", "1"], warm_dir)
    assert done.returncode == 0, done.stderr
    assert variant in done.stdout
    warm = _probe(warm_dir, variant)
    assert warm["hits"] == 2 and warm["misses"] == 0        # forward and backward loaded


SURROGATE_PROBE = """
import json
from neurostep.kernels.lif.cpu import recompute_backward_function
from neurostep.kernels.lif.surrogates import SURROGATES
stats = [recompute_backward_function(s.sid, "float32").dispatcher.stats for s in SURROGATES.values()]
print(json.dumps({"hits": sum(sum(s.cache_hits.values()) for s in stats),
                  "misses": sum(sum(s.cache_misses.values()) for s in stats)}))
"""


def test_precompiling_the_lif_compiles_every_surrogate(tmp_path):
    done = _run(["-m", "neurostep.kernels.precompile", "--only", "lif float32", "--jobs", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    probe = _run(["-c", SURROGATE_PROBE], tmp_path)
    assert probe.returncode == 0, probe.stderr
    counts = json.loads(probe.stdout.strip().splitlines()[-1])
    assert counts == {"hits": 8, "misses": 0}


def test_bad_arguments():
    with pytest.raises(SystemExit):
        precompile.main(["--only", "no such kernel"])
    with pytest.raises(ValueError, match="jobs"):
        precompile.precompile(["linear_scan float32"], jobs=0)


def test_list_prints_the_variants(capsys):
    assert precompile.main(["--list", "--only", "lif"]) == 0
    out = capsys.readouterr().out.split("\n")
    assert "lif float32" in out and "lif snntorch float64" in out and "wkv float32" not in out
