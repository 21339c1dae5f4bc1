"""Training (DistributedDataParallel-ready), evaluation and the measurements of one run.

A run trains one block on one task for at most ``[train] steps`` optimizer steps, evaluates
every ``eval_every`` steps (the learning curve), and stops early when the evaluation metric
reaches ``target`` in ``target_evals`` evaluations in a row or has not improved for ``patience``
evaluations. Before the clock starts, one forward and backward pass on a copy of the model
compiles or loads the kernels; its time is reported as ``compile_time_s``, never as training time.

Device: ``[train] device`` (``"cpu"`` by default, or ``"cuda"``). The model is built on the CPU from the
seed and then moved, so a run starts from the same weights on every device; batches are drawn on the CPU
and moved, and evaluation and measurement run where the model is.

Distributed: when started under ``torchrun`` (``WORLD_SIZE > 1``) every rank builds the same
model from the same seed and draws the same global batch; each rank takes an equal slice of
every global batch and DDP averages the gradients, so an optimizer step equals the
single-process step on the whole global batch (up to float summation order). Rank 0
evaluates, measures and writes results; the others wait at a barrier.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from neurostep.experiment.backbone import build_backbone
from neurostep.experiment.config import ExperimentConfig
from neurostep.experiment.tasks import IGNORE, TaskData
from neurostep.models import count_params

# A run whose final training loss is this close to the chance-level loss learned nothing.
NOT_TRAINED_FRACTION = 0.05


# ----------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0       # the rank among this machine's processes: which GPU a bare "cuda" means
    owns_group: bool = False  # this context joined the process group, so it leaves it (:meth:`close`)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group this context joined. A gloo group left to the interpreter's exit can
        abort the process there ("terminate called without an active exception", seen in a two-process
        run under load), after every result was written."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed() -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Always gloo, whichever ``[train] device`` the runs use: gloo reduces CPU gradients and CUDA ones (NCCL,
    which the environment would suggest wherever CUDA is available, only CUDA ones), and an experiment's tasks
    may train on different devices. Single-process runs do nothing.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")), owns_group=owns)


def run_device(name: str, ctx: DistContext | None = None) -> torch.device:
    """The device that ``[train] device = name`` means for this process, after checking that it exists.

    A bare ``"cuda"`` is the process's own GPU: ``cuda:<LOCAL_RANK>`` under ``torchrun``, else ``cuda:0``.
    Raises ``RuntimeError`` naming the fix where torch sees no CUDA device or fewer than the index asks for.
    """
    ctx = ctx or DistContext()
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise RuntimeError(f"[train] device = {name!r}, but torch {torch.__version__} sees no CUDA device "
                           f"(built for CUDA {torch.version.cuda}); set device = \"cpu\" or run on a machine "
                           "with a GPU and a CUDA build of torch")
    index = ctx.local_rank if device.index is None else device.index
    count = torch.cuda.device_count()
    if index >= count:
        raise RuntimeError(f"[train] device = {name!r} asks for cuda:{index} in process {ctx.rank}, but torch sees "
                           f"{count} CUDA device(s)")
    return torch.device("cuda", index)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any): where its inputs must go."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


# ----------------------------------------------------------------------------- spike rates
def _neuron_classes() -> tuple[type, ...]:
    """Spiking neuron classes of :mod:`neurostep.neuro` (empty until the neurons exist)."""
    neuro = importlib.import_module("neurostep.neuro")
    names = ("SpikingNeuron", "LIF", "IF", "ParametricLIF", "AdaptiveLIF")
    return tuple(c for c in (getattr(neuro, n, None) for n in names) if isinstance(c, type))


class SpikeMonitor:
    """Counts spikes per neuron layer while active.

    Neuron layers are called through ``forward``, ``scan`` or ``step``; a step hook
    (:meth:`neurostep.engine.Recurrent.register_step_hook`) sees each outermost ``scan``/``step``
    call once, ``forward`` included (it scans), and the hooks are removed on exit.
    """

    def __init__(self, model: nn.Module) -> None:
        classes = _neuron_classes()
        self.layers = {name: m for name, m in model.named_modules() if classes and isinstance(m, classes)}
        self.spikes: dict[str, float] = {name: 0.0 for name in self.layers}
        self.elements: dict[str, float] = {name: 0.0 for name in self.layers}
        self._handles: list[Any] = []

    def _count(self, name: str) -> Callable[..., None]:
        def post(module: nn.Module, method: str, args: tuple, kwargs: dict, output: Any) -> None:
            s = output[0] if isinstance(output, tuple) else output
            if isinstance(s, torch.Tensor):
                self.spikes[name] += float(s.detach().float().sum())
                self.elements[name] += float(s.numel())

        return post

    def __enter__(self) -> SpikeMonitor:
        for name, module in self.layers.items():
            self._handles.append(module.register_step_hook(post=self._count(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def rates(self) -> dict[str, float]:
        return {n: self.spikes[n] / self.elements[n] for n in self.layers if self.elements[n] > 0}

    def overall(self) -> float | None:
        total = sum(self.elements.values())
        return sum(self.spikes.values()) / total if total > 0 else None


# ----------------------------------------------------------------------------- batches
def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the scored targets (positions marked :data:`IGNORE` do not count)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE)


def train_batches(task: TaskData, batch: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless global training batches for run seed ``seed``.

    Streaming tasks draw fresh samples from a generator seeded by (seed, data seed); fixed
    sets are shuffled anew each epoch. Every block run with the same seed sees the same batches.
    """
    if task.streaming:
        if task.sampler is None:
            raise ValueError(f"task {task.name!r} has neither a training set nor a sampler")
        rng = np.random.default_rng([seed, 2])
        while True:
            yield task.sampler(batch, rng)
    assert task.x_train is not None and task.y_train is not None
    n = task.x_train.shape[0]
    if batch > n:
        raise ValueError(f"[train] batch_size ({batch}) is larger than the training set of {task.name!r} ({n})")
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen)
        for s in range(n // batch):
            idx = perm[s * batch:(s + 1) * batch]
            yield task.x_train[idx], task.y_train[idx]


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, task: TaskData, batch_size: int, split: str = "test") -> dict[str, Any]:
    """Loss and metric on the ``"test"`` or ``"val"`` split.

    Accuracy counts scored targets (not :data:`IGNORE`); ``bpc`` is the loss in bits. A task with
    ``answer_positions`` also gets ``position_accuracy``, the accuracy at each of those positions.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    xs, ys = (task.x_test, task.y_test) if split == "test" else (task.x_val, task.y_val)
    device = model_device(model)
    was_training = model.training
    model.eval()
    n = xs.shape[0]
    positions = list(task.answer_positions or ())
    loss_sum, correct, count = 0.0, 0, 0
    hits = torch.zeros(len(positions), dtype=torch.int64)
    for i in range(0, n, batch_size):
        j = min(i + batch_size, n)
        logits, target = model(xs[i:j].to(device)), ys[i:j].to(device)
        hit = logits.argmax(-1) == target           # (batch,) or (batch, L): one argmax serves both counts
        y = target.reshape(-1)
        flat = logits.reshape(-1, logits.shape[-1])
        scored = y != IGNORE
        loss_sum += float(F.cross_entropy(flat[scored], y[scored], reduction="sum"))
        correct += int(hit.reshape(-1)[scored].sum())
        count += int(scored.sum())
        if positions:
            hits += hit[:, positions].sum(0).cpu()
    model.train(was_training)
    loss = loss_sum / count
    out: dict[str, Any] = {"test_loss": loss, "accuracy": correct / count}
    if positions:
        out["position_accuracy"] = (hits.double() / n).tolist()
    if task.metric == "bpc":
        out["bpc"] = loss / math.log(2.0)
    out["metric"] = out[task.metric]
    return out


def _improved(metric: float, best: float, higher: bool, min_delta: float) -> bool:
    return metric > best + min_delta if higher else metric < best - min_delta


def _reached(metric: float, target: float, higher: bool) -> bool:
    return target > 0 and (metric >= target if higher else metric <= target)


# ----------------------------------------------------------------------------- training
def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices and kernels only.

    Biases, norm scales and every parameter marked ``_no_weight_decay``
    (Mamba's ``A_log``, ``D`` and step-size bias, as mamba-ssm marks them) are not decayed:
    decaying ``A_log`` and the step-size bias towards 0 would shorten a state space model's memory.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fused_adamw_ok(model: nn.Module) -> bool:
    """Whether torch's fused AdamW (one kernel per parameter group) takes every parameter of ``model``.

    It does for floating-point parameters on CPU and CUDA. Why use it: the default CPU AdamW runs a
    dozen small ops per parameter, which for the experiments' small models is a visible share of a
    training step (measured 2.3 ms against 0.9 ms per step for the Mamba model of selective copying).
    """
    params = list(model.parameters())
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)


def warm_up(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds for one forward+backward and one inference pass on a copy of ``model``.

    The first call of each kernel compiles it (or loads it from numba's cache); timing it
    here keeps compilation out of the training time. The copy leaves the model, its
    BatchNorm statistics and the random streams (the CPU's, and the GPU's where the model is on one)
    untouched. ``x`` and ``y`` go to the model's device.
    """
    device = model_device(model)
    x, y = x.to(device), y.to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        start = time.perf_counter()
        twin = copy.deepcopy(model)
        twin.train()
        loss_fn(twin(x), y).backward()
        twin.eval()
        with torch.no_grad():
            twin(x[:1])
        _synchronize(device)
        return time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a GPU runs asynchronously), so that a clock read after it is true."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_model(model: nn.Module, task: TaskData, train: dict[str, Any], seed: int,
                ctx: DistContext | None = None, desc: str = "", progress: bool = False) -> dict[str, Any]:
    """AdamW with warm-up and cosine decay for up to ``train["steps"]`` steps, evaluating every
    ``eval_every`` steps; returns the statistics and the learning curve.

    ``train`` holds [train] keys; missing ones take their defaults (``device`` is not read here: the
    model trains where it is, :func:`model_device`). The global batch ``train["batch_size"]`` must be
    divisible by the world size.
    """
    from neurostep.experiment.config import TRAIN_DEFAULTS

    train = {**TRAIN_DEFAULTS, **train}
    ctx = ctx or DistContext()
    batch, world, total = train["batch_size"], ctx.world_size, train["steps"]
    if batch % world:
        raise ValueError(f"[train] batch_size ({batch}) must be divisible by the number of processes ({world})")
    higher = task.metric != "bpc"
    device = model_device(model)
    batches = train_batches(task, batch, seed)
    x0, y0 = next(batches)
    compile_s = warm_up(model, x0[ctx.rank::world], y0[ctx.rank::world])
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if ctx.enabled else model
    opt = torch.optim.AdamW(param_groups(model, train["weight_decay"]), lr=train["lr"], fused=fused_adamw_ok(model))
    warmup = max(1, int(total * train["warmup"]))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, s / total))))
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)
    curve: list[dict[str, float]] = []
    best, since_best, stopped = (-math.inf if higher else math.inf), 0, "budget"
    at_target = 0   # evaluations in a row that reached the target
    interval_losses: list[float] = []
    eval_time = 0.0
    model.train()
    start = time.perf_counter()
    step = 0
    x, y = x0, y0
    while step < total:
        if step > 0:
            x, y = next(batches)
        loss = loss_fn(net(x[ctx.rank::world].to(device)), y[ctx.rank::world].to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: training loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if train["grad_clip"] > 0:
            # foreach: one C++ loop over the parameters instead of a Python one, the same norms and products
            # bit for bit on the CPU (checked on every model of the main job), 0.08-0.10 ms less per step there;
            # on a GPU it is torch's default
            nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"], foreach=True)
        opt.step()
        sched.step()
        step += 1
        interval_losses.append(float(loss.detach()))   # waits for a GPU's queued step: the clock stays true
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{interval_losses[-1]:.3f}")
        if step % train["eval_every"] and step < total:
            continue
        t_eval = time.perf_counter()
        stop = None
        if ctx.is_main:
            ev = evaluate(model, task, train["eval_batch_size"], "val")
            curve.append({"step": step, "samples": step * batch, "train_loss": float(np.mean(interval_losses)),
                          "val_metric": ev["metric"], "val_loss": ev["test_loss"]})
            interval_losses = []
            if _improved(ev["metric"], best, higher, train["min_delta"]):
                best, since_best = ev["metric"], 0
            else:
                since_best += 1
            at_target = at_target + 1 if _reached(ev["metric"], train["target"], higher) else 0
            if at_target >= train["target_evals"]:
                stop = "target"
            elif train["patience"] and since_best >= train["patience"]:
                stop = "plateau"
        stop = _agree(stop, ctx)
        eval_time += time.perf_counter() - t_eval
        if stop:
            stopped = stop
            break
    if bar is not None:
        bar.close()
    train_time = time.perf_counter() - start - eval_time
    final_loss = curve[-1]["train_loss"] if curve else float("nan")
    return {"steps": step, "stopped": stopped, "train_loss": final_loss, "train_time_s": train_time,
            "eval_time_s": eval_time, "compile_time_s": compile_s, "curve": curve}


def _agree(stop: str | None, ctx: DistContext) -> str | None:
    """Rank 0's early-stop decision, broadcast so that every rank leaves the loop together."""
    if not ctx.enabled:
        return stop
    box = [stop]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- measurements
def _timed(fn: Callable[[], Any], reps: int, device: torch.device) -> float:
    fn()  # warm-up: first calls compile kernels and fill caches
    _synchronize(device)
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_energy(model: nn.Module, x: torch.Tensor, profile: str) -> dict[str, Any]:
    """Operation and energy counts per sample from :func:`neurostep.energy.count` on batch ``x``.

    ``energy_uj`` is one inference (the profile's total: compute plus, for memory-inclusive
    profiles, memory). ``train_energy_uj`` estimates one training sample as that forward pass
    plus a backward pass of twice its operations at the MAC price (gradients are dense even
    where the forward pass saw spikes).
    """
    from neurostep.energy import count, get_profile

    report = count(model, x, profile=profile)
    total = report.as_dict()["total"]
    per = float(x.shape[0])
    energy_uj = total["energy_total_pj"] / per * 1e-6
    dense_ops = (total["macs"] + total["acs"]) / per
    return {
        "macs": total["macs"] / per,
        "acs": total["acs"] / per,
        "energy_uj": energy_uj,
        "energy_compute_uj": total["energy_compute_pj"] / per * 1e-6,
        "train_energy_uj": energy_uj + 2.0 * dense_ops * get_profile(profile).mac_pj * 1e-6,
        "energy_profile": profile,
        "energy_total": {k: v for k, v in total.items() if isinstance(v, int | float)},
    }


def measure(model: nn.Module, task: TaskData, measure_cfg: dict[str, Any], eval_batch: int) -> dict[str, Any]:
    """Parameters, spike rates (test set), energy, latency (batch 1) and throughput of a trained model."""
    model.eval()
    device = model_device(model)
    out: dict[str, Any] = {"params": count_params(model)}
    with SpikeMonitor(model) as mon, torch.no_grad():
        for i in range(0, task.x_test.shape[0], eval_batch):
            model(task.x_test[i:i + eval_batch].to(device))
    out["spike_rate"] = mon.overall()
    out["spike_rates"] = mon.rates()
    if measure_cfg["energy"]:
        out.update(measure_energy(model, task.x_test[:16].to(device), measure_cfg["energy_profile"]))
    else:
        out.update({"macs": None, "acs": None, "energy_uj": None, "train_energy_uj": None})
    reps = measure_cfg["latency_reps"]
    one = task.x_test[:1].to(device)
    many = task.x_test[:measure_cfg["throughput_batch"]].to(device)
    with torch.no_grad():
        out["latency_ms"] = 1e3 * _timed(lambda: model(one), reps, device)
        out["throughput_sps"] = many.shape[0] / _timed(lambda: model(many), reps, device)
    return out


def initial_spike_rate(model: nn.Module, x: torch.Tensor) -> float | None:
    """Spike rate of ``model`` on ``x`` as the first training step sees it (training mode, on a
    copy so that BatchNorm statistics stay untouched); None when it has no neurons."""
    twin = copy.deepcopy(model).train()
    with SpikeMonitor(twin) as mon, torch.no_grad():
        twin(x.to(model_device(model)))
    return mon.overall()


def build_run_model(cfg: ExperimentConfig, block: str, task_label: str, task: TaskData) -> nn.Module:
    """The model that the runs of ``block`` on ``task_label`` train: the task's backbone and the block's options
    for that task (:meth:`ExperimentConfig.backbone_for`, :meth:`ExperimentConfig.block_options_for`)."""
    return build_backbone(block, task, cfg.backbone_for(task_label), cfg.block_options_for(block, task_label))


def train_run(cfg: ExperimentConfig, block: str, task_label: str, seed: int, task: TaskData,
              ctx: DistContext | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Train and evaluate ``block`` on ``task`` with ``seed``; returns the result record (rank 0)."""
    from neurostep.kernels.numba_launch import use_threads

    ctx = ctx or DistContext()
    threads = cfg.train["threads"]
    # numba's kernels too, as in the runner's worker processes: some kernels sum partial results per
    # thread (the selective scan's B and C gradients), so a run in this process would otherwise round
    # differently from the same run in a worker
    with use_threads(threads) if threads > 0 else contextlib.nullcontext():
        return _train_run(cfg, block, task_label, seed, task, ctx, progress)


def _train_run(cfg: ExperimentConfig, block: str, task_label: str, seed: int, task: TaskData,
               ctx: DistContext, progress: bool | None) -> dict[str, Any]:
    progress = cfg.train["progress"] if progress is None else progress
    cpu0 = time.process_time()
    device = run_device(cfg.train["device"], ctx)
    torch.manual_seed(seed)
    model = build_run_model(cfg, block, task_label, task).to(device)
    rate0 = initial_spike_rate(model, task.x_test[:32])
    desc = f"{block} / {task_label} / seed {seed}"
    stats = train_model(model, task, cfg.train, seed, ctx, desc=desc, progress=progress)
    record: dict[str, Any] = {
        "experiment": cfg.name, "block": block, "task": task_label, "seed": seed,
        "config_hash": cfg.config_hash(block, task_label), "config": cfg.run_config(block, task_label),
        "metric_name": task.metric, "causal": task.causal, "chance": task.chance, "chance_loss": task.chance_loss,
        "initial_spike_rate": rate0,
    }
    if ctx.is_main:
        record.update(evaluate(model, task, cfg.train["eval_batch_size"]))
        record.update(stats)
        record["trained"] = bool(stats["train_loss"] < (1.0 - NOT_TRAINED_FRACTION) * task.chance_loss)
        record.update(measure(model, task, cfg.measure, cfg.train["eval_batch_size"]))
        if record.get("train_energy_uj") is not None:
            for point in record["curve"]:
                point["train_energy_uj"] = point["samples"] * record["train_energy_uj"]
        record.update({
            "seq_len": task.seq_len, "world_size": ctx.world_size, "threads": torch.get_num_threads(),
            "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__, "machine": platform.machine(), "finished_at": time.time(),
            "cpu_time_s": time.process_time() - cpu0,
        })
    return record
