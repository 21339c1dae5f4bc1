"""Training loop (DistributedDataParallel-ready), evaluation and measurements of one run,
and the experiment driver that skips finished runs and writes the report.

Distributed: when started under ``torchrun`` (``WORLD_SIZE > 1``) every rank builds the same
model from the same seed and draws the same global batch order; each rank takes an equal
slice of every global batch and DDP averages the gradients, so an optimizer step equals the
single-process step on the whole global batch (up to float summation order). Rank 0
evaluates, measures and writes results; the others wait at a barrier.
"""

from __future__ import annotations

import importlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from neurostep.experiment.backbone import build_backbone
from neurostep.experiment.config import ExperimentConfig
from neurostep.experiment.results import ResultStore, atomic_write_text
from neurostep.experiment.tasks import TaskData, build_task
from neurostep.models import count_params


# ----------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed() -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    gloo on CPU, NCCL when CUDA is available to this process. Single-process runs do nothing.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend=backend)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())


# ----------------------------------------------------------------------------- spike rates
def _neuron_classes() -> tuple[type, ...]:
    """Spiking neuron classes of :mod:`neurostep.neuro` (empty until the neurons exist)."""
    neuro = importlib.import_module("neurostep.neuro")
    names = ("SpikingNeuron", "LIF", "IF", "ParametricLIF", "AdaptiveLIF")
    return tuple(c for c in (getattr(neuro, n, None) for n in names) if isinstance(c, type))


class SpikeMonitor:
    """Counts spikes per neuron layer while active.

    Neuron modules are called through ``forward``, ``scan`` or ``step``; each instance's
    methods are wrapped (instance attributes, removed on exit) and only the outermost call
    counts, so a ``forward`` that calls ``scan`` is not counted twice.
    """

    def __init__(self, model: nn.Module) -> None:
        classes = _neuron_classes()
        self.layers = {name: m for name, m in model.named_modules() if classes and isinstance(m, classes)}
        self.spikes: dict[str, float] = {name: 0.0 for name in self.layers}
        self.elements: dict[str, float] = {name: 0.0 for name in self.layers}

    def _wrap(self, name: str, module: nn.Module, method: str, depth: list[int]) -> Callable[..., Any]:
        bound = getattr(module, method)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            depth[0] += 1
            try:
                out = bound(*args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                s = out[0] if isinstance(out, tuple) else out
                if isinstance(s, torch.Tensor):
                    self.spikes[name] += float(s.detach().float().sum())
                    self.elements[name] += float(s.numel())
            return out

        return wrapped

    def __enter__(self) -> SpikeMonitor:
        for name, module in self.layers.items():
            depth = [0]
            for method in ("forward", "scan", "step"):
                if hasattr(module, method):
                    setattr(module, method, self._wrap(name, module, method, depth))
        return self

    def __exit__(self, *exc: object) -> None:
        for module in self.layers.values():
            for method in ("forward", "scan", "step"):
                module.__dict__.pop(method, None)

    def rates(self) -> dict[str, float]:
        return {n: self.spikes[n] / self.elements[n] for n in self.layers if self.elements[n] > 0}

    def overall(self) -> float | None:
        total = sum(self.elements.values())
        return sum(self.spikes.values()) / total if total > 0 else None


# ----------------------------------------------------------------------------- training
def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def train_model(model: nn.Module, task: TaskData, train: dict[str, Any], seed: int, ctx: DistContext,
                desc: str = "", progress: bool = True) -> dict[str, Any]:
    """AdamW with warm-up + cosine decay over the task's training set; returns loss statistics.

    The global batch ``train["batch_size"]`` must be divisible by the world size.
    """
    batch, world = train["batch_size"], ctx.world_size
    if batch % world:
        raise ValueError(f"[train] batch_size ({batch}) must be divisible by the number of processes ({world})")
    n = task.x_train.shape[0]
    steps_per_epoch = max(1, n // batch)
    total = train["epochs"] * steps_per_epoch
    if train["max_steps"] > 0:
        total = min(total, train["max_steps"])
    warmup = max(1, total // 20)
    net: nn.Module = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, s / total))))
    gen = torch.Generator().manual_seed(seed)
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)
    step, losses = 0, []
    model.train()
    start = time.perf_counter()
    while step < total:
        perm = torch.randperm(n, generator=gen)
        for s in range(steps_per_epoch):
            if step >= total:
                break
            idx = perm[s * batch:(s + 1) * batch][ctx.rank::world]
            loss = _loss(net(task.x_train[idx]), task.y_train[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: training loss became {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if train["grad_clip"] > 0:
                nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if bar is not None:
        bar.close()
    tail = losses[-max(1, len(losses) // 10):]
    return {"steps": step, "train_loss": sum(tail) / len(tail), "train_time_s": time.perf_counter() - start}


@torch.no_grad()
def evaluate(model: nn.Module, task: TaskData, batch_size: int) -> dict[str, float]:
    """Test-set loss and metric: accuracy (fraction of targets right) or bits per character."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for i in range(0, task.x_test.shape[0], batch_size):
        logits = model(task.x_test[i:i + batch_size])
        y = task.y_test[i:i + batch_size]
        flat = logits.reshape(-1, logits.shape[-1])
        loss_sum += float(F.cross_entropy(flat, y.reshape(-1), reduction="sum"))
        correct += int((flat.argmax(-1) == y.reshape(-1)).sum())
        count += y.numel()
    loss = loss_sum / count
    out = {"test_loss": loss, "accuracy": correct / count}
    if task.metric == "bpc":
        out["bpc"] = loss / math.log(2.0)
    out["metric"] = out[task.metric]
    return out


# ----------------------------------------------------------------------------- measurements
def _timed(fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm-up: first calls compile kernels and fill caches
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_energy(model: nn.Module, x: torch.Tensor, profile: str) -> dict[str, Any]:
    """Operation and energy counts per sample from :func:`neurostep.energy.count` on batch ``x``.

    Energy is the profile's total (compute plus, for memory-inclusive profiles, memory).
    """
    try:
        from neurostep.energy import count
    except ImportError as exc:
        raise RuntimeError(
            "neurostep.energy.count is not available, so energy cannot be measured "
            f"({exc}); set [measure] energy = false to run without it") from exc
    report = count(model, x, profile=profile)
    total = report.as_dict()["total"]
    per = float(x.shape[0])
    return {
        "macs": total["macs"] / per,
        "acs": total["acs"] / per,
        "energy_uj": total["energy_total_pj"] / per * 1e-6,
        "energy_compute_uj": total["energy_compute_pj"] / per * 1e-6,
        "energy_profile": profile,
        "energy_total": {k: v for k, v in total.items() if isinstance(v, int | float)},
    }


def measure(model: nn.Module, task: TaskData, measure_cfg: dict[str, Any], eval_batch: int) -> dict[str, Any]:
    """Parameters, spike rates (test set), energy, latency (batch 1) and throughput of a trained model."""
    model.eval()
    out: dict[str, Any] = {"params": count_params(model)}
    with SpikeMonitor(model) as mon, torch.no_grad():
        for i in range(0, task.x_test.shape[0], eval_batch):
            model(task.x_test[i:i + eval_batch])
    out["spike_rate"] = mon.overall()
    out["spike_rates"] = mon.rates()
    if measure_cfg["energy"]:
        out.update(measure_energy(model, task.x_test[:16], measure_cfg["energy_profile"]))
    else:
        out.update({"macs": None, "acs": None, "energy_uj": None})
    reps = measure_cfg["latency_reps"]
    one = task.x_test[:1]
    many = task.x_test[:measure_cfg["throughput_batch"]]
    with torch.no_grad():
        out["latency_ms"] = 1e3 * _timed(lambda: model(one), reps)
        out["throughput_sps"] = many.shape[0] / _timed(lambda: model(many), reps)
    return out


def train_run(cfg: ExperimentConfig, block: str, task_label: str, seed: int, task: TaskData,
              ctx: DistContext | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Train and evaluate ``block`` on ``task`` with ``seed``; returns the result record (rank 0)."""
    ctx = ctx or DistContext()
    threads = torch.get_num_threads()
    if cfg.train["threads"] > 0:
        torch.set_num_threads(cfg.train["threads"])
    try:
        return _train_run(cfg, block, task_label, seed, task, ctx, progress)
    finally:
        torch.set_num_threads(threads)


def _train_run(cfg: ExperimentConfig, block: str, task_label: str, seed: int, task: TaskData,
               ctx: DistContext, progress: bool | None) -> dict[str, Any]:
    progress = cfg.train["progress"] if progress is None else progress
    cpu0 = time.process_time()
    torch.manual_seed(seed)
    model = build_backbone(block, task, cfg.backbone, cfg.block_options.get(block))
    desc = f"{block} / {task_label} / seed {seed}"
    stats = train_model(model, task, cfg.train, seed, ctx, desc=desc, progress=progress)
    record: dict[str, Any] = {
        "experiment": cfg.name, "block": block, "task": task_label, "seed": seed,
        "config_hash": cfg.config_hash(block, task_label), "metric_name": task.metric,
    }
    if ctx.is_main:
        record.update(evaluate(model, task, cfg.train["eval_batch_size"]))
        record.update(stats)
        record.update(measure(model, task, cfg.measure, cfg.train["eval_batch_size"]))
        record.update({
            "seq_len": task.seq_len, "world_size": ctx.world_size, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "machine": platform.machine(), "finished_at": time.time(),
            "cpu_time_s": time.process_time() - cpu0,
        })
    return record


# ----------------------------------------------------------------------------- driver
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


def plan_runs(cfg: ExperimentConfig) -> Iterator[tuple[str, str, int]]:
    """(block, task, seed) in run order: task by task, so each task's data is built once."""
    items = cfg.blocks if cfg.kind == "mixers" else cfg.learners
    for task in cfg.tasks:
        for block in items:
            for seed in cfg.seeds:
                yield block, task, seed


def run_experiment(cfg: ExperimentConfig, *, progress: bool | None = None, report: bool = True,
                   log: Callable[[str], None] = print) -> Path:
    """Run every (block, task, seed) of ``cfg`` that has no stored result yet; returns the run dir.

    Results go to ``<out_dir>/<name>/results.{jsonl,csv}``; with ``report`` the Markdown report
    and plots are written there at the end.
    """
    import_plugins(cfg.imports)
    ctx = init_distributed()
    store = ResultStore(cfg.run_dir)
    if cfg.kind == "concept_shift":
        from neurostep.experiment.shift import concept_shift_runs, prepare_concept_shift

        cfg = replace(cfg, tasks=concept_shift_runs(cfg))
        shared = prepare_concept_shift(cfg)
    else:
        check_blocks(cfg.blocks)
        shared = None
    done = store.done_keys()
    if ctx.is_main:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.source:
            atomic_write_text(cfg.run_dir / "experiment.toml", Path(cfg.source).read_text(encoding="utf-8"))
    # Every rank must agree on the plan before anyone appends a result.
    ctx.barrier()
    runs = list(plan_runs(cfg))
    tasks: dict[str, TaskData] = {}
    for i, (block, task_label, seed) in enumerate(runs, 1):
        key = (block, task_label, seed, cfg.config_hash(block, task_label))
        if key in done:
            if ctx.is_main:
                log(f"[{i}/{len(runs)}] {block} / {task_label} / seed {seed}: done before, skipped")
            continue
        if cfg.kind == "concept_shift":
            from neurostep.experiment.shift import concept_shift_run

            record = concept_shift_run(cfg, block, task_label, seed, shared)
        else:
            if task_label not in tasks:
                tasks = {task_label: build_task(cfg.task_options[task_label]["task"], cfg.task_options[task_label])}
            record = train_run(cfg, block, task_label, seed, tasks[task_label], ctx, progress)
        if ctx.is_main:
            store.append(record)
            log(f"[{i}/{len(runs)}] {block} / {task_label} / seed {seed}: "
                + _summary(record))
        ctx.barrier()
    if report and ctx.is_main:
        from neurostep.experiment.report import write_report

        path = write_report(cfg.run_dir)
        log(f"results: {store.jsonl} and {store.csv}")
        log(f"report:  {path}")
    ctx.barrier()
    return cfg.run_dir


def _summary(record: dict[str, Any]) -> str:
    parts = []
    name = record.get("metric_name", "metric")
    if record.get("metric") is not None:
        parts.append(f"{name} {record['metric']:.4f}")
    for key, fmt in (("params", "{:,.0f} params"), ("energy_uj", "{:.3f} uJ"), ("spike_rate", "spike rate {:.3f}"),
                     ("latency_ms", "{:.2f} ms"), ("train_time_s", "trained in {:.1f} s")):
        if record.get(key) is not None:
            parts.append(fmt.format(record[key]))
    return ", ".join(parts)
