"""Sequence parallelism on CPU (gloo): bytes and seconds of communication per rank against sequence length.

For each op (selective scan, chunked decayed linear attention and WKV two-pass, LIF pipelined, ring
self-attention as the softmax baseline), each world size and each sequence length, every rank runs
forward+backward on its chunk; the table gives the bytes one rank sends (forward and backward, from
:class:`neurostep.distributed.CommStats`), the bytes of that rank's input chunk for comparison, the
seconds spent inside communication calls (waiting for slower ranks included), the wall time of the
slowest rank, and one process on the whole sequence. The two-pass ops send state-sized summaries
whatever the length; ring attention sends every other rank's keys and values.

    .venv/bin/python benchmarks/distributed.py            # world sizes 2 and 4, lengths 512..8192
    .venv/bin/python benchmarks/distributed.py --quick    # world size 2, two short lengths

The script launches itself under ``torchrun`` once per world size (``--worker`` runs one rank).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# See benchmarks/wkv.py: spinning OpenMP pools starve each other on a 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, table, write_result  # noqa: E402

from neurostep.distributed import SequenceParallel  # noqa: E402
from neurostep.kernels.decayed_linear_attention import decayed_linear_attention  # noqa: E402
from neurostep.kernels.lif import lif_scan  # noqa: E402
from neurostep.kernels.selective_scan import selective_scan  # noqa: E402
from neurostep.kernels.wkv import wkv  # noqa: E402

# Widths of a small language-model layer: Mamba Di=128, N=16; 4 heads of 32 for attention and linear
# attention; 256 channels for WKV and LIF. Batch 1.
SHAPES = {"selective_scan": "B=1, Di=128, N=16", "decayed_linear_attention": "B=1, H=4, K=V=32",
          "wkv": "B=1, C=256", "lif_scan": "B=1, 256 neurons", "ring_attention": "B=1, H=4, E=32, causal"}
FORMS = {"selective_scan": "two-pass", "decayed_linear_attention": "two-pass", "wkv": "two-pass",
         "lif_scan": "pipelined", "ring_attention": "ring"}


def make_case(name: str, length: int, g: torch.Generator) -> tuple[list[torch.Tensor], Callable]:
    """Leaf tensors for one chunk of ``length`` tokens and ``run(sp_or_none, *leaves) -> output``."""
    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    if name == "selective_scan":
        t = [r(1, 128, length), r(1, 128, length, scale=0.5), -torch.rand(128, 16, generator=g) - 0.1,
             r(1, 16, length), r(1, 16, length)]
        return t, lambda sp, u, d, A, B, C: (sp.selective_scan if sp else selective_scan)(
            u, d, A, B, C, delta_softplus=True)[0]
    if name == "decayed_linear_attention":
        t = [r(1, length, 4, 32), r(1, length, 4, 32), r(1, length, 4, 32),
             -torch.rand(1, length, 4, generator=g) * 0.1]
        return t, lambda sp, q, k, v, ld: (sp.decayed_linear_attention if sp else decayed_linear_attention)(
            q, k, v, ld)[0]
    if name == "wkv":
        t = [r(256, scale=0.5), r(256, scale=0.5), r(1, length, 256), r(1, length, 256)]
        return t, lambda sp, w, u, k, v: (sp.wkv if sp else wkv)(w, u, k, v)[0]
    if name == "lif_scan":
        t = [r(length, 1, 256, scale=1.5) + 0.5]
        return t, lambda sp, x: (sp.lif_scan if sp else lif_scan)(x, tau_inv=0.5, v_threshold=1.0)[0]
    if name == "ring_attention":
        t = [r(1, 4, length, 32), r(1, 4, length, 32), r(1, 4, length, 32)]

        def attend(sp, q, k, v):
            if sp is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return sp.ring_attention(q, k, v, causal=True)
        return t, attend
    raise ValueError(f"unknown case {name!r}")


# Which of each case's tensors hold one entry per token (the others are parameters).
PER_TOKEN = {"selective_scan": (0, 1, 3, 4), "decayed_linear_attention": (0, 1, 2, 3), "wkv": (2, 3),
             "lif_scan": (0,), "ring_attention": (0, 1, 2)}


def activation_bytes(name: str, tensors: list[torch.Tensor]) -> int:
    """Bytes of the chunk's per-token inputs."""
    return sum(tensors[i].numel() * tensors[i].element_size() for i in PER_TOKEN[name])


def fwd_bwd(run: Callable, sp: SequenceParallel | None, tensors: list[torch.Tensor]) -> None:
    leaves = [t.clone().requires_grad_() for t in tensors]
    run(sp, *leaves).float().sum().backward()


def worker(args: argparse.Namespace) -> None:
    """One rank: every case and length; rank 0 writes all ranks' measurements to ``args.worker``."""
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    sp = SequenceParallel()
    rows = []
    for name in args.cases:
        for total in args.lengths:
            local = total // sp.size
            tensors, run = make_case(name, local, torch.Generator().manual_seed(sp.rank))
            fwd_bwd(run, sp, tensors)  # warm-up (kernel caches, first messages)
            walls, comm_s, sent = [], [], []
            for _ in range(args.repeats):
                dist.barrier()
                sp.stats.reset()
                t0 = time.perf_counter()
                fwd_bwd(run, sp, tensors)
                walls.append(time.perf_counter() - t0)
                comm_s.append(sp.stats.seconds["forward"] + sp.stats.seconds["backward"])
                sent.append((sp.stats.bytes_sent["forward"], sp.stats.bytes_sent["backward"]))
            rows.append({"case": name, "length": total, "rank": sp.rank, "wall_s": statistics.median(walls),
                         "comm_s": statistics.median(comm_s), "bytes_forward": sent[-1][0],
                         "bytes_backward": sent[-1][1], "chunk_input_bytes": activation_bytes(name, tensors)})
    everything: list = [None] * sp.size
    dist.all_gather_object(everything, rows)
    if sp.rank == 0:
        Path(args.worker).write_text(json.dumps([r for part in everything for r in part]))
    dist.destroy_process_group()


def single_process(cases: list[str], lengths: list[int], repeats: int) -> dict[tuple[str, int], float]:
    """Forward+backward seconds of the plain op on the whole sequence in this process."""
    torch.set_num_threads(1)
    out = {}
    for name in cases:
        for total in lengths:
            tensors, run = make_case(name, total, torch.Generator().manual_seed(0))
            fwd_bwd(run, None, tensors)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fwd_bwd(run, None, tensors)
                times.append(time.perf_counter() - t0)
            out[(name, total)] = statistics.median(times)
    return out


def kib(n: float) -> str:
    return f"{n / 1024:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--cases", nargs="+", default=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="world size 2, lengths 256 and 1024, 2 repeats")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "distributed.json"))
    args = parser.parse_args()
    if args.quick:
        args.worlds, args.lengths, args.repeats = [2], [256, 1024], 2
    for case in args.cases:
        if case not in SHAPES:
            raise SystemExit(f"unknown case {case!r}; choose from {list(SHAPES)}")
    for world in args.worlds:
        for total in args.lengths:
            if total % world:
                raise SystemExit(f"length {total} is not a multiple of the world size {world}")
    if args.worker:
        worker(args)
        return

    load_before = load_average()
    single = single_process(args.cases, args.lengths, args.repeats)
    measured = {}
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    for world in args.worlds:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "rows.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
                   __file__, "--worker", str(target), "--lengths", *map(str, args.lengths), "--cases", *args.cases,
                   "--repeats", str(args.repeats)]
            subprocess.run(cmd, check=True, env=env)
            measured[world] = json.loads(target.read_text())
    load_after = load_average()

    columns = ["op (form)", "ranks", "length", "sent/rank fwd KiB", "sent/rank bwd KiB", "chunk input KiB",
               "comm s/rank (max)", "fwd+bwd s (slowest rank)", "1 process s"]
    rows, records = [], []
    for name in args.cases:
        for world in args.worlds:
            for total in args.lengths:
                per_rank = [r for r in measured[world] if r["case"] == name and r["length"] == total]
                fwd = max(r["bytes_forward"] for r in per_rank)
                bwd = max(r["bytes_backward"] for r in per_rank)
                comm_s = max(r["comm_s"] for r in per_rank)
                wall = max(r["wall_s"] for r in per_rank)
                chunk = per_rank[0]["chunk_input_bytes"]
                rows.append([f"{name} ({FORMS[name]})", world, total, kib(fwd), kib(bwd), kib(chunk), f"{comm_s:.4f}",
                             f"{wall:.4f}", f"{single[(name, total)]:.4f}"])
                records.append({"case": name, "form": FORMS[name], "shape": SHAPES[name], "world": world,
                                "length": total, "max_bytes_forward": fwd, "max_bytes_backward": bwd,
                                "chunk_input_bytes": chunk, "max_comm_s": comm_s, "slowest_rank_wall_s": wall,
                                "single_process_s": single[(name, total)], "per_rank": per_rank})
    widths = [max(len(str(c)), *(len(str(row[i])) for row in rows)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
    print(f"load average before: {load_before}\nload average after:  {load_after}")
    shapes = "; ".join(f"{k}: {v}" for k, v in SHAPES.items())
    title = (f"Sequence parallelism, fp32 forward+backward on gloo (CPU), one torch thread per rank, median of "
             f"{args.repeats}; bytes are what one rank sends (the most over ranks). Shapes: {shapes}")
    out = write_result(args.out, {"benchmark": "sequence_parallel_communication", "quick": args.quick,
                                  "repeats": args.repeats, "results": records},
                       load_before=load_before, tables=[table(title, columns, rows)], summary=[])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
