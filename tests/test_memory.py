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


_LARGE_SCRIPT = """
import resource, sys
import torch
from neurostep import retain_freed_memory

def step():
    # a block above glibc's 32 MB ceiling: a language model's weight gradient, say
    torch.empty(16 << 20).fill_(1.0)

def faults_of_steps():
    # torch's 64-byte aligned allocation needs a free block a little larger than the one it freed, so
    # the heap grows for the first few steps until freed neighbours have merged into one that fits
    for _ in range(8):
        step()
    counts = []
    for _ in range(10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return ",".join(map(str, counts))

default = faults_of_steps()
small = retain_freed_memory()
up_to_32mb = faults_of_steps()
large = retain_freed_memory(large_blocks=True)
print(default, up_to_32mb, faults_of_steps(), small, large)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_blocks_are_retained_only_when_asked():
    out = subprocess.run([sys.executable, "-c", _LARGE_SCRIPT], capture_output=True, text=True, check=True)
    default, up_to_32mb, retained, small, large = out.stdout.split()
    assert small == large == "True"
    faults = {name: [int(c) for c in counts.split(",")] for name, counts in
              (("default", default), ("up_to_32mb", up_to_32mb), ("retained", retained))}
    # a 64 MB block is 16,384 pages: an mmap of its own, faulted in on every step, even with the
    # default retention (32 MB at most); with large blocks retained the freed block is reused, once
    # the heap has settled (on the development machine one step in about fifty still faulted)
    assert min(faults["default"]) > 8000 and min(faults["up_to_32mb"]) > 8000
    assert sum(c < 100 for c in faults["retained"]) >= 8
