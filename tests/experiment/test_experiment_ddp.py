"""`torchrun --nproc_per_node 2` trains with DDP (gloo on CPU) and matches one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from neurostep.experiment.results import ResultStore

ROOT = Path(__file__).resolve().parents[2]


def test_two_process_ddp_matches_one_process(tmp_path, make_toml):
    toml = make_toml(name="ddp", steps=8)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    single = subprocess.run([sys.executable, "-m", "neurostep", "run", str(toml), "--no-progress", "--no-report",
                             "--out-dir", str(tmp_path / "single")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stdout + single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "neurostep", "run", str(toml), "--no-progress", "--no-report",
                          "--out-dir", str(tmp_path / "ddp")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    (one,) = ResultStore(tmp_path / "single" / "ddp").load()
    two = ResultStore(tmp_path / "ddp" / "ddp").load()
    assert len(two) == 1, "only rank 0 writes results"
    two = two[0]
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["steps"] == one["steps"] == 8
    # Each rank takes half of every global batch and DDP averages gradients, so the two runs
    # take the same optimizer steps up to float summation order.
    assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-3)
    assert abs(two["accuracy"] - one["accuracy"]) <= 0.02
    assert two["config_hash"] == one["config_hash"]


def test_dist_context_leaves_only_the_group_it_joined(tmp_path):
    import torch.distributed as dist

    from neurostep.experiment.train import DistContext

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        DistContext(owns_group=False).close()
        assert dist.is_initialized()    # joined by someone else (the caller): left alone
        DistContext(owns_group=True).close()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_torchrun_joins_a_gloo_group_where_cuda_is_available(tmp_path, monkeypatch):
    # runs train on the CPU by default: an NCCL group, which a machine with CUDA would otherwise suggest,
    # cannot reduce their gradients (gloo reduces CPU and CUDA ones); LOCAL_RANK picks a bare "cuda" device
    import torch
    import torch.distributed as dist

    from neurostep.experiment.train import init_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    backends, join = [], dist.init_process_group

    def record(backend=None, **kwargs):
        backends.append(backend)
        join("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)

    monkeypatch.setattr(dist, "init_process_group", record)
    ctx = init_distributed()
    try:
        assert backends == ["gloo"] and ctx.owns_group and ctx.local_rank == 1
    finally:
        ctx.close()
