"""The experiment driver: plan the (block, task, seed) runs, skip finished ones, train the rest
(one at a time, under ``torchrun``, or ``workers`` processes side by side), write the report.

``<out_dir>/<name>/`` holds ``results.jsonl`` / ``results.csv`` (one record per finished run),
``plan.json`` (which file, which runs, which blocks were skipped and why), a copy of the
experiment file, ``report.md`` and the plots. A second runner on the same directory is refused
(:class:`~neurostep.experiment.lock.RunLock`).
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from neurostep.experiment.config import ExperimentConfig
from neurostep.experiment.lock import RunLock
from neurostep.experiment.results import ResultStore
from neurostep.experiment.tasks import build_task, task_defaults
from neurostep.experiment.train import (
    DistContext,
    build_run_model,
    init_distributed,
    run_device,
    train_run,
    warm_up,
)
from neurostep.experiment.warmup import WarmUp, fused_ops, plan_warm_ups, take_ready
from neurostep.files import atomic_write_text
from neurostep.memory import retain_freed_memory


@dataclass(frozen=True)
class PlannedRun:
    block: str
    task: str
    seed: int
    config_hash: str


@dataclass(frozen=True)
class Skipped:
    block: str
    task: str
    reason: str


def import_plugins(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ValueError(f"[experiment] imports: cannot import {name!r}: {exc}") from exc


def check_blocks(blocks: list[str]) -> None:
    from neurostep.models import list_mixers

    registered = list_mixers()
    unknown = [b for b in blocks if b not in registered]
    if unknown:
        raise ValueError(f"unknown block(s) {unknown}; registered mixers: {registered}")


def plan_runs(cfg: ExperimentConfig) -> tuple[list[PlannedRun], list[Skipped]]:
    """Every (block, task, seed) to run, task by task, and the blocks a task cannot run.

    A causal task (the papers train those tasks with causal models) runs the causal form of
    each block; a block that has none is skipped, never run bidirectionally in silence.
    """
    from neurostep.models import mixer_causality

    runs, skipped = [], []
    for task in cfg.tasks:
        items = cfg.learners if cfg.kind == "concept_shift" else cfg.blocks_for(task)
        causal = cfg.kind == "mixers" and cfg.task_options[task]["causal"]
        for block in items:
            if causal and mixer_causality(block) == "never":
                skipped.append(Skipped(block, task, "has no causal form and the task is causal "
                                                    "(set causal = false in the task's table to run it anyway)"))
                continue
            for seed in cfg.seeds_for(task, block):
                runs.append(PlannedRun(block, task, seed, cfg.config_hash(block, task)))
    return runs, skipped


def _cost(cfg: ExperimentConfig, run: PlannedRun) -> float:
    """A rough relative cost (steps x batch x tokens) to start long runs first when several workers share them."""
    train = cfg.train_for(run.task)
    options = cfg.task_options[run.task]
    length = options.get("seq_len", options.get("context", 16))
    return float(train["steps"] * train["batch_size"] * length)


def parallel_order(cfg: ExperimentConfig, todo: list[tuple[int, PlannedRun]]) -> list[tuple[int, PlannedRun]]:
    """The order in which parallel workers take the runs: longest first, and among runs of equal cost
    the blocks take turns, seed by seed.

    Why the turns: on a cold kernel cache two workers that start the same block would both compile its
    kernels (minutes for the selective scan), where different blocks compile different kernels and
    later runs of a block load them from the cache.
    """
    def turn(run: PlannedRun) -> int:
        return cfg.seeds_for(run.task, run.block).index(run.seed)

    return sorted(todo, key=lambda item: (-_cost(cfg, item[1]), turn(item[1])))


def _task_plan(cfg: ExperimentConfig, task: str) -> dict[str, Any]:
    """A task's entry in ``plan.json``: its base task, its blocks (or learners) and each one's seeds."""
    items = cfg.blocks_for(task) if cfg.kind == "mixers" else cfg.learners
    return {"task": cfg.task_options.get(task, {}).get("task", task), "blocks": items,
            "seeds": {item: cfg.seeds_for(task, item) for item in items}}


def _write_plan(cfg: ExperimentConfig, runs: list[PlannedRun], skipped: list[Skipped],
                session: dict[str, Any] | None = None) -> None:
    """``plan.json``: what the file asks for, what is skipped and why, and (``session``) how the
    last invocation went: its start, end, wall time and how many runs it trained."""
    plan = {
        "experiment": cfg.name,
        "kind": cfg.kind,
        "source": cfg.source,
        "description": cfg.description,
        "seeds": cfg.seeds,
        "tasks": {t: _task_plan(cfg, t) for t in cfg.tasks},
        "config_hashes": sorted({r.config_hash for r in runs}),
        "skipped": [vars(s) for s in skipped],
        "workers": cfg.workers,
        "written_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "session": session or {},
    }
    atomic_write_text(cfg.run_dir / "plan.json", json.dumps(plan, indent=1) + "\n")


def read_plan(run_dir: str | Path) -> dict[str, Any]:
    """The run directory's ``plan.json`` (empty when results were written without one)."""
    path = Path(run_dir) / "plan.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


# ----------------------------------------------------------------------------- one run
def run_one(cfg: ExperimentConfig, run: PlannedRun, ctx: DistContext | None = None,
            progress: bool | None = None, shared: Any = None) -> dict[str, Any]:
    """Train one planned run and return its record (concept-shift runs use ``shared`` data)."""
    if cfg.kind == "concept_shift":
        from neurostep.experiment.shift import concept_shift_run

        return concept_shift_run(cfg, run.block, run.task, run.seed, shared)
    options = cfg.task_options[run.task]
    task = build_task(options["task"], options)
    cfg_task = replace(cfg, train=cfg.train_for(run.task), backbone=cfg.backbone_for(run.task))
    return train_run(cfg_task, run.block, run.task, run.seed, task, ctx, progress)


def _exit_when_orphaned(parent_pid: int, poll_s: float = 1.0) -> None:
    """Watch the parent from a daemon thread and end this process once the parent is gone.

    Why: a runner killed by a signal it cannot clean up after (SIGTERM, SIGKILL, a closed
    terminal's SIGHUP) leaves its pool workers behind, and each would go on training the runs
    already queued to it for minutes, on cores the user thinks are free, for results nobody
    records. Orphans are re-parented, so a changed parent pid means the runner died.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="neurostep-parent-watch", daemon=True).start()


def _worker_init(threads: int, parent_pid: int | None = None) -> None:
    """Each worker process computes on ``threads`` cores (torch and numba alike), keeps freed
    memory for reuse (:func:`retain_freed_memory`) and exits if the runner dies."""
    from neurostep.kernels.numba_launch import set_threads  # imports numba: only where kernels run

    if parent_pid is not None:
        _exit_when_orphaned(parent_pid)
    retain_freed_memory()
    set_threads(threads)
    # torch.optim imports torch._dynamo at the first optimizer step (about 1.3 s on the 2-core AMD EPYC):
    # imported here, it stays out of the first run's training time and overlaps the runner's planning.
    import torch._dynamo  # noqa: F401


def _worker_started() -> int:
    """A job that only makes the pool start a worker (:func:`_run_parallel`); returns its process id."""
    return os.getpid()


def _worker_run(cfg: ExperimentConfig, run: PlannedRun, shared: Any) -> dict[str, Any]:
    import_plugins(cfg.imports)
    return run_one(cfg, run, progress=False, shared=shared)


def _worker_warm_up(cfg: ExperimentConfig, block: str, task_label: str) -> float:
    """One forward+backward (and an inference pass) of ``block`` on a batch of ``task_label``, on the task's
    ``[train] device``, so that its kernels compile here; returns its seconds."""
    import_plugins(cfg.imports)
    options = cfg.task_options[task_label]
    task = build_task(options["task"], options)
    model = build_run_model(cfg, block, task_label, task).to(run_device(cfg.train_for(task_label)["device"]))
    return warm_up(model, task.x_test[:2], task.y_test[:2])


# ----------------------------------------------------------------------------- the driver
def run_experiment(cfg: ExperimentConfig, *, progress: bool | None = None, report: bool = True,
                   log: Callable[[str], None] = print) -> Path:
    """Run every planned (block, task, seed) of ``cfg`` that has no stored result yet; returns the run dir.

    Results go to ``<out_dir>/<name>/results.{jsonl,csv}``; with ``report`` the Markdown report
    and plots are written there at the end. Progress bars appear only on a terminal. The processes that
    train (this one when it trains the runs itself) keep freed memory for reuse (:func:`retain_freed_memory`).
    """
    import_plugins(cfg.imports)
    ctx = init_distributed()
    if cfg.kind == "concept_shift":
        from neurostep.experiment.shift import concept_shift_runs, prepare_concept_shift

        cfg = replace(cfg, tasks=concept_shift_runs(cfg))
        shared = prepare_concept_shift(cfg)
    else:
        check_blocks(cfg.all_blocks())
        for label in cfg.tasks:   # fail on bad task options, or a device this machine lacks, before anything trains
            task_defaults(cfg.task_options[label]["task"])
            run_device(cfg.train_for(label)["device"], ctx)
        shared = None
    runs, skipped = plan_runs(cfg)
    want_progress = (cfg.train.get("progress", True) if progress is None else progress) and sys.stderr.isatty()
    lock = RunLock(cfg.run_dir) if ctx.is_main else None
    if lock is not None:
        lock.acquire()
    started, wall0 = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter()
    try:
        store = ResultStore(cfg.run_dir)
        done = store.done_keys()
        if ctx.is_main:
            if cfg.source:
                atomic_write_text(cfg.run_dir / "experiment.toml", Path(cfg.source).read_text(encoding="utf-8"))
            _write_plan(cfg, runs, skipped)
            for s in skipped:
                log(f"skipped {s.block} on {s.task}: {s.reason}")
        # Every rank must agree on the plan before anyone appends a result.
        ctx.barrier()
        todo = []
        for i, run in enumerate(runs, 1):
            if (run.block, run.task, run.seed, run.config_hash) in done:
                if ctx.is_main:
                    log(f"[{i}/{len(runs)}] {run.block} / {run.task} / seed {run.seed}: done before, skipped")
            else:
                todo.append((i, run))
        workers = 1 if ctx.enabled or cfg.kind == "concept_shift" else min(cfg.workers, max(1, len(todo)))
        warm_ups: list[dict[str, Any]] = []
        if workers > 1:
            warm_ups = _run_parallel(cfg, todo, len(runs), store, workers, shared, want_progress, log)
        else:
            retain_freed_memory()
            for i, run in todo:
                record = run_one(cfg, run, ctx, want_progress, shared)
                if ctx.is_main:
                    store.append(record)
                    log(f"[{i}/{len(runs)}] {run.block} / {run.task} / seed {run.seed}: {_summary(record)}")
                ctx.barrier()
        if ctx.is_main:
            # The wall time of the training session, beside the plan (compare it with a time budget).
            _write_plan(cfg, runs, skipped, {"started_at": started, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                             "wall_s": round(time.perf_counter() - wall0, 1),
                                             "trained_runs": len(todo), "workers": workers,
                                             "warm_ups": warm_ups})
        if report and ctx.is_main:
            from neurostep.experiment.report import write_report

            path = write_report(cfg.run_dir)
            log(f"results: {store.jsonl} and {store.csv}")
            log(f"report:  {path}")
        ctx.barrier()
    finally:
        if lock is not None:
            lock.release()
        ctx.close()
    return cfg.run_dir


def _warm_up_plan(cfg: ExperimentConfig, queue: list[tuple[int, PlannedRun]]) -> tuple[list[WarmUp], dict]:
    """The warm-ups of the runs in ``queue`` and the fused ops each (block, task) calls (empty where the
    model cannot be traced on the meta device: such runs never wait)."""
    calls: dict[tuple[str, str], frozenset[str]] = {}
    tasks: dict[str, Any] = {}
    for _, run in queue:
        key = (run.block, run.task)
        if key in calls:
            continue
        try:
            if run.task not in tasks:
                options = cfg.task_options[run.task]
                tasks[run.task] = build_task(options["task"], options)
            task = tasks[run.task]
            model = build_run_model(cfg, run.block, run.task, task)
            calls[key] = fused_ops(model, task.x_test[:2])
        except Exception:  # noqa: BLE001 - a block that cannot run on meta tensors is simply not warmed up
            calls[key] = frozenset()
    return plan_warm_ups(calls), calls


def _run_parallel(cfg: ExperimentConfig, todo: list[tuple[int, PlannedRun]], total: int, store: ResultStore,
                  workers: int, shared: Any, progress: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """``workers`` spawned processes: first the warm-ups (:mod:`neurostep.experiment.warmup`), then the runs
    in :func:`parallel_order`; a job waits while a fused op it calls is warming up on another worker. The
    parent appends each record as it arrives. Returns the warm-ups as they finished: the ops, the block and
    task whose model called them, and the seconds (the kernels' compile time on a cold cache), which no
    run's record holds."""
    done_warm_ups: list[dict[str, Any]] = []
    threads = cfg.train["threads"] or 1
    queue = parallel_order(cfg, todo)
    bar = None
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                             initargs=(threads, os.getpid())) as pool:
        # A spawning pool starts a worker per job submitted while none is idle: one trivial job each starts
        # them all now, so that their imports (torch, numba, torch._dynamo) run while this process traces
        # the models for the warm-up plan, instead of after it.
        for _ in range(workers):
            pool.submit(_worker_started)
        warm_ups, calls = _warm_up_plan(cfg, queue)
        jobs: list[tuple[frozenset[str], Any]] = [(w.needs, w) for w in warm_ups]
        jobs += [(calls[(run.block, run.task)], (i, run)) for i, run in queue]
        warming: set[str] = set()
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(queue), desc=f"{cfg.name} ({workers} workers)", unit="run", file=sys.stderr)
        pending: dict[Future, Any] = {}
        try:
            while jobs or pending:
                # fill the idle workers with the first jobs that call no op now warming up
                for job in take_ready(jobs, warming, workers - len(pending)):
                    if isinstance(job, WarmUp):
                        pending[pool.submit(_worker_warm_up, cfg, job.block, job.task)] = job
                    else:
                        pending[pool.submit(_worker_run, cfg, job[1], shared)] = job
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    job = pending.pop(fut)
                    if isinstance(job, WarmUp):
                        warming -= job.ops
                        seconds = fut.result()
                        done_warm_ups.append({"ops": sorted(job.ops), "block": job.block, "task": job.task,
                                              "seconds": round(seconds, 2)})
                        log(f"kernels {', '.join(sorted(job.ops))} ready ({job.block} / {job.task}, "
                            f"{seconds:.1f} s)")
                        continue
                    i, run = job
                    record = fut.result()
                    store.append(record)
                    log(f"[{i}/{total}] {run.block} / {run.task} / seed {run.seed}: {_summary(record)}")
                    if bar is not None:
                        bar.update(1)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
    return done_warm_ups


def _summary(record: dict[str, Any]) -> str:
    parts = []
    name = record.get("metric_name", "metric")
    if record.get("metric") is not None:
        parts.append(f"{name} {record['metric']:.4f}")
    if record.get("trained") is False:
        parts.append("NOT TRAINED (loss at chance)")
    for key, fmt in (("steps", "{:d} steps"), ("params", "{:,.0f} params"), ("energy_uj", "{:.3f} uJ"),
                     ("spike_rate", "spike rate {:.3f}"), ("train_time_s", "trained in {:.1f} s"),
                     ("compile_time_s", "compile {:.1f} s")):
        if record.get(key) is not None:
            parts.append(fmt.format(record[key]))
    return ", ".join(parts)
