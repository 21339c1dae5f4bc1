"""Fused ops in two source trees side by side: does a change make the ops slower?

Times the forward and backward of every fused op (LIF at the neuron benchmark's shape and at a small
per-layer shape where per-call overhead shows, selective scan, causal convolution, linear scan, WKV) in
the working tree and in a git revision checked out into a temporary worktree. Each round runs one
process per tree, alternating, so both see the same machine load; the table gives the median over
rounds of each process's median, and new/old.

    python benchmarks/revisions.py --against 782491d

The working tree's uncommitted changes count as "new"; the revision is checked out clean.
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
from pathlib import Path

if __name__ == "__main__" and "--worker" not in sys.argv:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent


def _cases() -> dict:
    """name -> (forward+backward callable, repeats). Calls only what both API generations share."""
    import torch

    from neurostep.kernels.causal_conv1d import causal_conv1d_fn
    from neurostep.kernels.lif import lif_scan
    from neurostep.kernels.linear_scan import linear_scan
    from neurostep.kernels.selective_scan import selective_scan_fn
    from neurostep.kernels.wkv import wkv

    g = torch.Generator().manual_seed(0)

    def leaf(*shape, scale=1.0, offset=0.0):
        return (torch.randn(*shape, generator=g) * scale + offset).requires_grad_()

    def lif(T, N):
        x = leaf(T, N, scale=1.5, offset=0.4)
        gs = torch.randn(T, N, generator=g)
        return lambda: lif_scan(x, tau_inv=0.5, v_threshold=1.0)[0].backward(gs)

    def selective(B, D, L, N):
        u, dt = leaf(B, D, L), leaf(B, D, L, scale=0.5)
        A = (-torch.rand(D, N, generator=g) - 0.1).requires_grad_()
        Bm, Cm = leaf(B, N, L), leaf(B, N, L)
        gy = torch.randn(B, D, L, generator=g)
        return lambda: selective_scan_fn(u, dt, A, Bm, Cm, delta_softplus=True).backward(gy)

    def conv(B, D, L, W):
        x, w = leaf(B, D, L), leaf(D, W)
        gy = torch.randn(B, D, L, generator=g)
        return lambda: causal_conv1d_fn(x, w, activation="silu").backward(gy)

    def linear(B, L, M):
        a = torch.rand(B, L, M, generator=g).mul(0.99).requires_grad_()
        b = leaf(B, L, M)
        gy = torch.randn(B, L, M, generator=g)
        return lambda: linear_scan(a, b)[0].backward(gy)

    def rwkv(B, T, C):
        w, u = leaf(C), leaf(C)
        k, v = leaf(B, T, C), leaf(B, T, C)
        gy = torch.randn(B, T, C, generator=g)
        return lambda: wkv(w, u, k, v)[0].backward(gy)

    return {
        "lif T=32 N=65536": (lif(32, 65536), 15),
        "lif T=4 N=1024": (lif(4, 1024), 300),
        "selective_scan B=1 D=768 L=1024 N=16": (selective(1, 768, 1024, 16), 5),
        "causal_conv1d B=1 D=1536 L=1024 W=4": (conv(1, 1536, 1024, 4), 15),
        "linear_scan B=1 L=1024 M=768": (linear(1, 1024, 768), 15),
        "wkv B=1 T=1024 C=768": (rwkv(1, 1024, 768), 15),
    }


def worker(threads: int) -> None:
    """Run in the tree under test (its neurostep on sys.path): print {case: median seconds} as JSON."""
    import numba
    import torch

    # numba's pool first: starting, it sets the OpenMP thread count that torch's count is (the tree under
    # test may predate neurostep.kernels.numba_launch.set_threads, which does the same)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(threads)
    medians = {}
    for name, (fn, repeats) in _cases().items():
        for _ in range(3):  # compile or load kernels, warm caches and allocator
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        medians[name] = statistics.median(times)
    print(json.dumps(medians))


def _run_tree(tree: Path, threads: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(threads)]
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the benchmark failed in {tree}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD",
                        help="git revision to compare the working tree with (default: the last commit)")
    parser.add_argument("--rounds", type=int, default=5, help="processes per tree, alternating")
    parser.add_argument("--quick", action="store_true", help="two rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "revisions.json"))
    args = parser.parse_args()
    if args.worker:
        worker(args.threads)
        return
    if args.quick:
        args.rounds = 2

    from _results import load_average, table, write_result

    revision = subprocess.run(["git", "rev-parse", "--short", args.against], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="neurostep-rev-") as tmp:
        old_tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old_tree), revision], cwd=ROOT, check=True)
        try:
            rounds: dict[str, list[list[float]]] = {"old": [], "new": []}
            for i in range(args.rounds):
                for label, tree in (("old", old_tree), ("new", ROOT)):
                    rounds[label].append(list(_run_tree(tree, args.threads).values()))
                    print(f"round {i + 1}/{args.rounds}: {label} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, check=False)
    names = list(_cases_names())
    columns = ["op (forward + backward)", f"{revision} ms", f"working tree ({head}+) ms", "new / old"]
    rows = []
    for j, name in enumerate(names):
        old = statistics.median(r[j] for r in rounds["old"]) * 1e3
        new = statistics.median(r[j] for r in rounds["new"]) * 1e3
        rows.append([name, f"{old:.3f}", f"{new:.3f}", f"{new / old:.3f}"])
    title = f"Fused ops, working tree against {revision} ({args.rounds} alternating rounds, {args.threads} threads)"
    print(title)
    for row in [columns, *rows]:
        print("  ".join(f"{cell:>14}" if i else f"{cell:<40}" for i, cell in enumerate(row)))
    out = write_result(args.out, {"against": revision, "head": head, "rounds": args.rounds, "threads": args.threads,
                                  "raw_seconds": rounds, "cases": names},
                       tables=[table(title, columns, rows)], summary=[], load_before=load_before)
    print(f"wrote {out}")


def _cases_names() -> list[str]:
    # the names without building tensors or importing neurostep (which may be a different tree)
    return ["lif T=32 N=65536", "lif T=4 N=1024", "selective_scan B=1 D=768 L=1024 N=16",
            "causal_conv1d B=1 D=1536 L=1024 W=4", "linear_scan B=1 L=1024 M=768", "wkv B=1 T=1024 C=768"]


if __name__ == "__main__":
    main()
