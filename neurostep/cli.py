"""The ``neurostep`` command.

    neurostep run experiments/<name>.toml      train/evaluate every listed block (resumes)
    neurostep list [mixers|models|tasks|experiments]
    neurostep report runs/<name> [--out PATH]  write the report and plots from stored results
    neurostep bench [NAME ...] [--quick]       run the scripts in benchmarks/
    neurostep energy MODEL [...]               operation/energy report of a registered model
    neurostep tune [--backend B ...]            measure the chunk size of decayed linear attention
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _cmd_run(args: argparse.Namespace) -> int:
    from neurostep.experiment import load_config, run_experiment
    from neurostep.experiment.config import check_device, check_seeds

    cfg = load_config(args.experiment)
    if args.out_dir:
        cfg.out_dir = args.out_dir
    if args.seeds:
        cfg.seeds = check_seeds("--seeds", args.seeds)
        cfg.task_seeds.clear()  # --seeds applies to every task, those with seeds of their own too
    if args.device:
        device = check_device("--device", args.device)
        if cfg.kind != "mixers":   # a file that reads no [train] table would otherwise ignore it in silence
            raise ValueError(f"--device applies to kind = 'mixers' experiments; {args.experiment} is kind = "
                             f"{cfg.kind!r}, whose learners train on the CPU")
        cfg.set_train("device", device)
    if args.no_progress:
        cfg.train["progress"] = False
    if args.workers:
        cfg.workers = args.workers
    run_experiment(cfg, report=not args.no_report)
    return 0


def _experiment_files() -> list[Path]:
    seen: dict[str, Path] = {}
    for root in (Path.cwd() / "experiments", _repo_root() / "experiments"):
        for f in sorted(root.glob("*.toml")) if root.is_dir() else []:
            seen.setdefault(f.name, f)
    return list(seen.values())


def _cmd_list(args: argparse.Namespace) -> int:
    from neurostep.experiment.tasks import TASKS
    from neurostep.models import list_mixers, list_models

    what = args.what
    if what in ("all", "mixers"):
        print("mixers:      " + ", ".join(list_mixers()))
    if what in ("all", "models"):
        print("models:      " + ", ".join(list_models()))
    if what in ("all", "tasks"):
        print("tasks:       " + ", ".join(sorted(TASKS)))
    if what in ("all", "experiments"):
        files = _experiment_files()
        print("experiments: " + ", ".join(str(f.relative_to(Path.cwd()) if f.is_relative_to(Path.cwd()) else f)
                                          for f in files))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from neurostep.experiment import write_report

    path = write_report(args.run_dir, args.out)
    print(f"report: {path}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    bench_dir = Path(args.dir) if args.dir else _repo_root() / "benchmarks"
    scripts = sorted(p for p in bench_dir.glob("*.py") if not p.name.startswith("_"))
    if not scripts:
        raise FileNotFoundError(f"no benchmark scripts in {bench_dir}")
    if args.names:
        by_name = {p.stem: p for p in scripts}
        unknown = [n for n in args.names if n not in by_name]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; available: {sorted(by_name)}")
        scripts = [by_name[n] for n in args.names]
    failed = []
    for script in scripts:
        cmd = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        print(f"== {script.name}: {' '.join(cmd[1:])}", flush=True)
        if subprocess.call(cmd, cwd=bench_dir.parent) != 0:
            failed.append(script.name)
    if failed:
        print(f"benchmarks failed: {failed}", file=sys.stderr)
        return 1
    return 0


def _cmd_energy(argv: list[str]) -> int:
    # Imported here so that the other commands work without pulling in the counter; all
    # arguments (--help included) belong to neurostep.energy's own parser.
    from neurostep.energy import cli_main

    return int(cli_main(argv) or 0)


def _cmd_tune(args: argparse.Namespace) -> int:
    import torch

    from neurostep.kernels.decayed_linear_attention import tuning
    from neurostep.kernels.numba_launch import set_threads

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        set_threads(args.threads)   # the op's numba kernels run on as many threads as its products
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    show = sys.stderr.isatty()

    def on_round(done: int, total: int) -> None:
        if show:
            print(f"\r  round {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    modes = {"train": (True,), "inference": (False,), "both": (True, False)}[args.mode]
    device = tuning.default_device(args.backend)
    where = f"{torch.get_num_threads()} threads" if args.backend == "cpu" else f"on {device}"
    for backward in modes:
        what = "forward+backward" if backward else "forward only (inference)"
        best, medians = tuning.tune_chunk_size(batch=args.batch, length=args.length, heads=args.heads,
                                               k=args.state, v=args.head_dim, dtype=dtype, backward=backward,
                                               candidates=None if args.candidates is None else tuple(args.candidates),
                                               rounds=args.rounds, path=args.file, save=not args.dry_run,
                                               on_round=on_round, backend=args.backend, device=device)
        print(f"decayed linear attention, {args.backend} backend, {what}, B={args.batch} L={args.length} "
              f"H={args.heads} K={args.state} V={args.head_dim} {args.dtype}, {where} "
              f"(median of {args.rounds} rounds):")
        for chunk, seconds in medians.items():
            print(f"  chunk {chunk:>4}: {seconds * 1e3:8.1f} ms{'  <- fastest' if chunk == best else ''}")
        if args.dry_run:
            print("not recorded (--dry-run)")
        else:
            key = tuning.workload_key(args.state, args.head_dim, dtype, tuning.workload_threads(args.backend),
                                      backward)
            print(f"recorded for {tuning.machine_key(args.backend, device)!r} in "
                  f"{args.file or tuning.tuning_file()}: decayed_linear_attention(chunk_size=None) now uses "
                  f"{best} for {key}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurostep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment TOML (finished runs are skipped)")
    run.add_argument("experiment", help="path to experiments/<name>.toml")
    run.add_argument("--out-dir", help="results root (default: [experiment] out_dir, 'runs')")
    run.add_argument("--seeds", type=int, nargs="+", help="override the seeds of every task")
    run.add_argument("--workers", type=int, help="runs trained at a time (default: [experiment] workers)")
    run.add_argument("--device", help='where every run trains: "cpu", "cuda" or "cuda:<n>" '
                                      "(default: [train] device, the CPU)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (they only show on a terminal)")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    lst = sub.add_parser("list", help="list registered mixers, models, tasks and experiment files")
    lst.add_argument("what", nargs="?", default="all", choices=("all", "mixers", "models", "tasks", "experiments"),
                     help="what to list (default: all)")
    rep = sub.add_parser("report", help="write the report and plots of a results directory")
    rep.add_argument("run_dir", help="results directory of an experiment, e.g. runs/attention_alternatives")
    rep.add_argument("--out", help="report file to write (default: <run_dir>/report.md); plots go beside it")
    bench = sub.add_parser("bench", help="run the benchmark scripts in benchmarks/")
    bench.add_argument("names", nargs="*", help="script names without .py (default: all)")
    bench.add_argument("--quick", action="store_true", help="pass --quick to each script")
    bench.add_argument("--dir", help="benchmarks directory (default: the repository's benchmarks/)")
    tune = sub.add_parser("tune", help="measure the fastest chunk size of decayed linear attention (Mamba-2, "
                                       "Lightning Attention) on this CPU or GPU and record it as the default")
    tune.add_argument("--backend", choices=("cpu", "triton"), default="cpu",
                      help="backend to tune (default cpu; triton runs on the current CUDA device, or on the CPU "
                           "under TRITON_INTERPRET=1)")
    tune.add_argument("--batch", type=int, default=1, help="batch rows (default 1)")
    tune.add_argument("--length", type=int, default=2048, help="tokens (default 2048)")
    tune.add_argument("--heads", type=int, default=24, help="heads (default 24)")
    tune.add_argument("--state", type=int, default=128, help="K, Mamba-2's d_state (default 128)")
    tune.add_argument("--head-dim", type=int, default=64, help="V, Mamba-2's head dim (default 64)")
    tune.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                      help="compute dtype (default float32; half-precision inputs compute in float32)")
    tune.add_argument("--threads", type=int, help="torch and numba threads (default: the current counts)")
    tune.add_argument("--candidates", type=int, nargs="+",
                      help="chunk sizes to try (default 32 64 128 on cpu, 16 32 64 128 on triton)")
    tune.add_argument("--rounds", type=int, default=5, help="timed calls of each chunk size (default 5)")
    tune.add_argument("--mode", choices=("both", "train", "inference"), default="both",
                      help="tune calls followed by a backward (train), forward-only calls (inference) or both "
                           "(default)")
    tune.add_argument("--file", help="tuning file (default: $XDG_CACHE_HOME/neurostep/decayed_linear_attention.json)")
    tune.add_argument("--dry-run", action="store_true", help="measure and print, record nothing")
    sub.add_parser("energy", add_help=False,
                   help="operation/energy report of a registered model (`neurostep energy --help` for options)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # numba's and torch's OpenMP pools both spin-wait after parallel regions and starve each other
    # on small machines; it must be set before either starts its pool (a user's setting wins).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if argv[:1] == ["energy"]:
        return _cmd_energy(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        handler = {"run": _cmd_run, "list": _cmd_list, "report": _cmd_report, "bench": _cmd_bench,
                   "tune": _cmd_tune}[args.command]
        return handler(args)
    except Exception as exc:
        from neurostep.experiment.lock import RunDirLocked  # imported on the error path only

        if not isinstance(exc, (ValueError, TypeError, OSError, KeyError, RunDirLocked)):
            raise
        # Configuration mistakes and a busy results directory: one clear line, not a traceback.
        print(f"neurostep {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
