"""Sequence parallelism over 2 and 4 gloo processes equals one process.

Each world size is launched once (``sp_worker.py`` runs every check and writes its results), so the
module costs two process-group start-ups; the tests below read the results. The 2 processes start under
torchrun, the 4 with the environment torchrun would give them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neurostep.distributed import SequenceParallel
from neurostep.distributed.parallel import halo_combine, wkv_combine
from neurostep.kernels.wkv import wkv

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("sp_worker.py")
WORLDS = (2, 4)
TOL = {"float32": 1e-5, "float64": 1e-10}
OPS = ("selective_scan", "selective_scan_grouped", "linear_scan", "decayed_linear_attention",
       "decayed_linear_attention_per_head", "decayed_linear_attention_grouped", "decayed_linear_attention_v_scale",
       "wkv", "wkv_fresh", "lif_scan",
       "lif_scan_adaptive_soft", "causal_conv1d_w4", "causal_conv1d_w7", "causal_conv1d_w4_channels_last",
       "ring_attention_causal1",
       "ring_attention_causal0")
MODELS = ("mamba_lm", "spikegpt", "lif_network")
ERRORS = ("error_split_length", "error_state_after_rank0", "error_wkv_state_after_rank0", "error_not_in_group")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, list[dict]]:
    """Per world size, every rank's results. Both worlds run at the same time: 2 processes under torchrun
    (its launch path) and 4 started directly with the variables torchrun would set (no launcher agent, whose
    start-up and shutdown would double the module's time on two cores)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               PYTHONPATH=str(ROOT))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    folders = {world: tmp_path_factory.mktemp(f"world{world}") for world in WORLDS}
    # One process first runs every check on its own (world size 1): it compiles each kernel variant
    # the workers call into numba's cache. From a cold cache (a fresh clone) six workers would all
    # compile the same kernels at once, which on two cores takes longer than their timeout.
    warm = tmp_path_factory.mktemp("warm_cache")
    subprocess.run([sys.executable, str(WORKER), str(warm)], cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=1200, check=False,
                   env=dict(env, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(_free_port())))
    procs = {2: [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                   "2", str(WORKER), str(folders[2])], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)]}
    port = _free_port()
    procs[4] = [subprocess.Popen([sys.executable, str(WORKER), str(folders[4])], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True,
                                 env=dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="4",
                                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
                for r in range(4)]
    out = {}
    for world in WORLDS:
        logs = []
        for p in procs[world]:
            try:
                logs.append(p.communicate(timeout=400)[0])
            except subprocess.TimeoutExpired:
                p.kill()
                logs.append(p.communicate()[0] + "\n(timed out)")
        ranks = []
        for r in range(world):
            path = folders[world] / f"rank{r}.json"
            ranks.append(json.loads(path.read_text()) if path.exists() else {"results": {}})
        exc = [d["results"]["exception"] for d in ranks if "exception" in d["results"]]
        failed = [p.returncode for p in procs[world] if p.returncode != 0]
        assert not failed and not exc, (exc[0] if exc else "") + "\n".join(log[-3000:] for log in logs)
        out[world] = ranks
    return out


@pytest.mark.parametrize("dtype", ("float32", "float64"))
@pytest.mark.parametrize("name", OPS + MODELS)
@pytest.mark.parametrize("world", WORLDS)
def test_outputs_and_gradients_equal_one_process(runs, world, name, dtype):
    for rank, data in enumerate(runs[world]):
        worst = data["results"][f"{name}/{dtype}"]
        assert worst <= TOL[dtype], f"rank {rank} of {world}: |parallel - single| exceeds {TOL[dtype]} by {worst}"


@pytest.mark.parametrize("world", WORLDS)
def test_bad_input_raises_before_any_exchange(runs, world):
    for rank, data in enumerate(runs[world]):
        # rank 0 may pass an initial state and belongs to the one-rank group, so it checks only the split
        for name in ERRORS if rank > 0 else ERRORS[:1]:
            assert data["results"].get(name) == 0.0, f"{name} on rank {rank}: no error or the wrong message"


@pytest.mark.parametrize("world", WORLDS)
def test_two_pass_sends_states_and_ring_attention_sends_activations(runs, world):
    for data in runs[world]:
        assert data["results"]["traffic_two_pass_state_sized"] == 0.0
        assert data["results"]["traffic_ring_activation_sized"] == 0.0


def test_ddp_over_data_parallel_group_with_sequence_parallel_group(runs):
    """4 processes: 2 replicas (DDP) x 2 chunks of each sequence; gradients equal one process."""
    for data in runs[4]:
        assert data["results"]["ddp_mamba_lm/float64"] <= TOL["float64"]
        for name in ("lif_scan", "ring_attention_causal1", "causal_conv1d_w7"):  # inside the 2-rank groups
            assert data["results"][f"subgroup_{name}/float64"] <= TOL["float64"]


def test_sequence_parallel_needs_torch_distributed():
    if torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        SequenceParallel()


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_wkv_combine_equals_scanning_through(dtype):
    """The two-pass fold of WKV's stable state is the state of scanning both chunks in one go."""
    g = torch.Generator().manual_seed(0)
    w, u = torch.randn(4, generator=g, dtype=dtype), torch.randn(4, generator=g, dtype=dtype)
    k, v = torch.randn(2, 10, 4, generator=g, dtype=dtype) * 3, torch.randn(2, 10, 4, generator=g, dtype=dtype)
    _, whole = wkv(w, u, k, v, output_final_state=True)
    _, first = wkv(w, u, k[:, :6], v[:, :6], output_final_state=True)
    _, second = wkv(w, u, k[:, 6:], v[:, 6:], output_final_state=True)
    aa, bb, pp = wkv_combine(tuple(first), (*second, (-torch.exp(w) * 4).expand(2, 4)))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(aa * torch.exp(pp), whole.aa * torch.exp(whole.pp), rtol=tol, atol=tol)
    torch.testing.assert_close(bb * torch.exp(pp), whole.bb * torch.exp(whole.pp), rtol=tol, atol=tol)


def test_halo_combine_bridges_short_chunks():
    h = torch.arange(5.0)[None]
    tail = torch.tensor([[0.0, 0.0, 0.0, 10.0, 11.0]])  # a chunk of 2 tokens, zero-padded to the halo width
    (out,) = halo_combine((h,), (tail,), valid=2)
    assert out.tolist() == [[2.0, 3.0, 4.0, 10.0, 11.0]]
