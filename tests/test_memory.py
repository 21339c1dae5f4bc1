"""neurostep.memory: glibc keeps freed blocks for reuse (retain_freed_memory), kernel outputs come from a pool of
2 MB-aligned blocks (BlockPool), so repeated steps stop faulting."""

import os
import subprocess
import sys
import threading
import weakref

import numpy as np
import pytest
import torch

from neurostep.memory import BlockPool, empty, empty_like, empty_with_array, output_pool

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
    # the heap has settled: up to three of the first steps faulted on the development machines, and
    # one step in about fifty after that
    assert min(faults["default"]) > 8000 and min(faults["up_to_32mb"]) > 8000
    assert sum(c < 100 for c in faults["retained"][5:]) >= 4


def _thp_enabled() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.bool, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5), (256, 4096), (2, 0, 7)])
def test_empty_gives_a_writable_contiguous_tensor_of_the_shape_and_dtype(shape, dtype):
    t = empty(shape, dtype)
    assert t.shape == shape and t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous()
    t.fill_(1)
    assert int(t.sum()) == t.numel()
    like = empty_like(torch.zeros(shape, dtype=dtype).transpose(0, -1))
    assert like.shape == shape[::-1]
    assert like.is_contiguous()


def test_only_large_blocks_of_numpy_dtypes_come_from_numpy():
    # numpy's allocation is what marks a block for huge pages (its storage is numpy's: not resizable);
    # small ones and bfloat16 stay with torch
    assert not empty((1 << 20,), torch.float32).untyped_storage().resizable()
    assert empty((16,), torch.float32).untyped_storage().resizable()
    big_bf16 = empty((1 << 22,), torch.bfloat16)
    assert big_bf16.dtype == torch.bfloat16 and big_bf16.untyped_storage().resizable()


@pytest.mark.parametrize("shape", [(3, 5), (32, 65536)])   # torch's block, then a pooled one
def test_empty_with_array_gives_the_tensor_and_the_array_on_its_memory(shape):
    t, array = empty_with_array(shape, torch.float32)
    assert t.shape == shape and t.dtype == torch.float32 and t.is_contiguous()
    assert array.shape == shape and array.dtype == np.float32
    assert array.ctypes.data == t.data_ptr()
    array[...] = 3.0   # the kernel writes the array; the caller returns the tensor
    assert bool((t == 3.0).all())
    with pytest.raises(TypeError, match="NumPy"):
        empty_with_array((4,), torch.bfloat16)


_HUGE_SCRIPT = """
import resource, sys
import torch
from neurostep.memory import empty

def faults(make):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    make((16 << 20,), torch.float32).fill_(1.0)  # 64 MB, above glibc's mmap ceiling: fresh pages every time
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def torch_empty(shape, dtype):
    return torch.empty(shape, dtype=dtype)

print(min(faults(empty) for _ in range(3)), min(faults(torch_empty) for _ in range(3)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _thp_enabled(), reason="transparent huge pages")
def test_a_large_empty_tensor_faults_in_2mb_pages():
    out = subprocess.run([sys.executable, "-c", _HUGE_SCRIPT], capture_output=True, text=True, check=True)
    ours, torchs = map(int, out.stdout.split())
    # 64 MB is 16,384 pages of 4 KB and 32 of 2 MB (plus the unaligned ends in 4 KB pages)
    assert torchs > 8000
    assert ours < 2000


_LIF_SCRIPT = """
import resource
import torch
from neurostep.kernels.lif import lif_scan

x = torch.randn(256, 65536)
g = torch.ones(256, 65536)
def call():
    xs = x.clone().requires_grad_(True)  # 64 MB: each output is a fresh mmap of its own
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    s, _ = lif_scan(xs, tau_inv=0.5, v_threshold=1.0, v_reset=0.0, backend="cpu")
    s.backward(g)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
call()
print(min(call() for _ in range(3)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _thp_enabled(), reason="transparent huge pages")
def test_the_cpu_lif_kernels_outputs_fault_in_2mb_pages():
    # the spikes and the input gradient, 64 MB each, without huge pages 16,384 faults apiece
    out = subprocess.run([sys.executable, "-c", _LIF_SCRIPT], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 6000


_MB = 1 << 20


def test_a_freed_block_is_reused_by_the_next_array_of_its_rounded_size():
    pool = BlockPool()
    a = pool.empty((_MB,), np.float32)  # 4 MB
    address = a.ctypes.data
    assert address % (2 * _MB) == 0  # every page of it can be a huge page
    del a
    assert pool.cached_bytes == 4 * _MB
    # another dtype and shape of the same size (rounded up to whole 2 MB) gets the same memory
    b = pool.empty((3, 170_000), np.float64)
    assert b.ctypes.data == address and b.shape == (3, 170_000) and b.dtype == np.float64
    assert pool.cached_bytes == 0
    c = pool.empty((_MB,), np.float32)  # none waiting: a new block
    assert c.ctypes.data != address
    assert pool.stats()["hits"] == 1 and pool.stats()["misses"] == 2


def test_a_block_stays_out_of_the_pool_while_a_view_of_its_tensor_lives():
    pool = BlockPool()
    t = torch.from_numpy(pool.empty((2 * _MB,), np.float32))
    view, as_numpy = t[1:], t.numpy()
    del t
    assert pool.cached_bytes == 0
    fresh = pool.empty((2 * _MB,), np.float32)
    assert fresh.ctypes.data != view.data_ptr() - 4
    fresh[:] = 1.0
    view.fill_(2.0)
    assert (fresh == 1.0).all() and float(as_numpy[1]) == 2.0
    del view
    assert pool.cached_bytes == 0  # the numpy array still holds it
    del as_numpy
    assert pool.cached_bytes == 8 * _MB
    # the same for views NumPy takes of the pool's array itself
    array = pool.empty((2 * _MB,), np.float32)
    numpy_view = array.reshape(2, _MB)[1]
    del array
    assert pool.cached_bytes == 0
    del numpy_view
    assert pool.cached_bytes == 8 * _MB


def test_the_pool_keeps_at_most_its_limit():
    pool = BlockPool(limit_bytes=10 * _MB)
    blocks = [pool.empty((_MB,), np.float32) for _ in range(4)]  # 4 x 4 MB
    del blocks
    assert pool.cached_bytes == 8 * _MB
    pool.limit_bytes = 5 * _MB  # lowering the limit frees what is above it
    assert pool.cached_bytes == 4 * _MB
    pool.limit_bytes = 0
    assert pool.cached_bytes == 0
    pool.empty((_MB,), np.float32)  # dropped at once: not kept
    assert pool.cached_bytes == 0
    pool.limit_bytes = 64 * _MB
    a = pool.empty((_MB,), np.float32)
    del a
    pool.clear()
    assert pool.cached_bytes == 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="limit_bytes"):
            pool.limit_bytes = bad


def test_the_blocks_that_waited_longest_leave_first():
    pool = BlockPool(limit_bytes=12 * _MB)
    a, b, c = pool.empty((_MB,), np.float32), pool.empty((_MB,), np.float32), pool.empty((2 * _MB,), np.float32)
    addresses = {name: arr.ctypes.data for name, arr in (("a", a), ("b", b), ("c", c))}
    del a, b
    assert pool.cached_bytes == 8 * _MB
    del c  # 16 MB would wait: the oldest block (a's) goes
    assert pool.cached_bytes == 12 * _MB
    assert pool.empty((2 * _MB,), np.float32).ctypes.data == addresses["c"]
    assert pool.empty((_MB,), np.float32).ctypes.data == addresses["b"]
    # a block larger than the limit is not kept, and does not push the others out
    pool = BlockPool(limit_bytes=6 * _MB)
    pool.empty((_MB,), np.float32)  # dropped at once: a 4 MB block waits
    assert pool.cached_bytes == 4 * _MB
    pool.empty((4 * _MB,), np.float32)  # 16 MB, dropped at once
    assert pool.cached_bytes == 4 * _MB


def test_threads_never_get_the_same_block_at_once():
    pool = BlockPool(limit_bytes=24 * _MB)
    errors = []

    def work(value):
        for _ in range(200):
            a = pool.empty((_MB // 2 * (1 + value % 2),), np.float32)
            a[:] = value
            if not (a == value).all():
                errors.append(value)

    threads = [threading.Thread(target=work, args=(v,)) for v in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert 0 < pool.cached_bytes <= 24 * _MB
    stats = pool.stats()
    assert stats["hits"] + stats["misses"] == 800 and stats["hits"] > 700


def test_the_cpu_kernels_outputs_come_back_from_the_pool():
    from neurostep.kernels.lif import lif_scan

    pool = output_pool()
    limit = pool.limit_bytes
    x, g = torch.randn(32, 65536), torch.ones(32, 65536)  # 8 MB: spikes and input gradient from the pool

    def step():
        s, _ = lif_scan(x.detach().requires_grad_(True), tau_inv=0.5, v_threshold=1.0, v_reset=0.0, backend="cpu")
        s.backward(g)

    try:
        step()
        before = pool.stats()
        step()
        step()
        after = pool.stats()
        assert after["hits"] - before["hits"] >= 4 and after["misses"] == before["misses"]
        pool.limit_bytes = 0
        step()
        assert pool.stats()["hits"] == after["hits"]
    finally:
        pool.limit_bytes = limit


def test_a_freed_block_over_the_limit_goes_at_the_next_allocation_of_any_size():
    """Freed blocks are found by counting references at the pool's next look: an allocation that reuses a block
    (a hit) still lets a freed block over the limit go, so a one-off large output is not kept."""
    pool = BlockPool(limit_bytes=8 * _MB)
    small = pool.empty((_MB,), np.float32)   # 4 MB
    del small
    large = pool.empty((4 * _MB,), np.float32)   # 16 MB, over the limit
    owner_probe = weakref.ref(pool._blocks[-1][0])
    del large
    again = pool.empty((_MB,), np.float32)   # a hit on the 4 MB block
    assert pool.stats()["hits"] == 1 and owner_probe() is None   # the 16 MB block went back to the C library
    del again
    assert pool.cached_bytes == 4 * _MB
