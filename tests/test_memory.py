"""neurostep.retain_freed_memory: glibc keeps freed blocks for reuse, so repeated steps stop faulting."""

import os
import subprocess
import sys

import pytest

_FAULTS_SCRIPT = """
import resource, sys
import torch
from neurostep import retain_freed_memory

def step():
    # a training step's activations: a few 4 MB blocks alive together, all freed at its end
    [torch.empty(1 << 20).fill_(1.0) for _ in range(4)]

def faults_per_step():
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20

default = faults_per_step()
applied = retain_freed_memory()
print(default, faults_per_step(), applied)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_retained_freed_memory_is_reused_instead_of_faulting_fresh_pages():
    # glibc's static defaults (its adaptive threshold depends on the process's history): 4 MB blocks are
    # mmapped, so every step faults them in afresh
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, check=True, env=env)
    default, retained, applied = out.stdout.split()
    assert applied == "True"
    # 16 MB is 4,096 pages
    assert float(default) > 2000
    # at most a tenth of them with the blocks retained: usually none, but about one run in four on the
    # development machine saw ~150 per step (cause not identified)
    assert float(retained) < float(default) / 10
