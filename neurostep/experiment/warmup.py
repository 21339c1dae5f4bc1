"""Compile each kernel once, on one worker, before the runs that need it.

On a cold numba cache the first call of a fused op compiles its kernels: about 3-16 s per op, forward
and backward together (``benchmarks/results/compile_time.json``). Parallel workers that start runs of
blocks sharing an op would each compile it at the same time, and a worker compiling the selective scan holds up every
run queued behind it. So the runner first finds which fused ops each (block, task) calls, by
tracing its model on the meta device (shapes only: nothing computes, nothing compiles), and gives
each op to one *warm-up*: one forward+backward of the first model that calls it. While an op
warms up, the other workers take runs that do not call it (:func:`take_ready`). With a warm cache a
warm-up loads the kernels in about a second.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_NAMESPACE = "neurostep"
_SUFFIXES = ("_forward", "_backward")


class _FusedOpRecorder(TorchDispatchMode):
    """Collects the names of the fused ops (``neurostep::<op>_forward`` / ``_backward``) that run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == _NAMESPACE:
            name = func.name().split("::", 1)[1]
            for suffix in _SUFFIXES:
                name = name.removesuffix(suffix)
            self.ops.add(name)
        return func(*args, **(kwargs or {}))


def fused_ops(model: torch.nn.Module, x: torch.Tensor) -> frozenset[str]:
    """The fused ops (``"selective_scan"``, ``"lif"``, ...) that a training step of ``model`` on the
    batch ``x`` calls, forward or backward.

    A copy of the model runs on the meta device, so nothing is computed and no kernel compiles;
    ``model`` itself is left as it is. Args: ``model``, any module; ``x`` ``(N, ...)`` an input batch
    of it.
    """
    twin = copy.deepcopy(model).to("meta")
    twin.train()
    recorder = _FusedOpRecorder()
    with recorder:
        out = twin(x.to("meta"))
        out.float().sum().backward()
    return frozenset(recorder.ops)


@dataclass(frozen=True)
class WarmUp:
    """One warm-up: a training step of ``block`` on ``task`` compiles ``ops`` (the ops it is the first to
    call); ``needs`` are the ops it calls that other warm-ups compile."""

    block: str
    task: str
    ops: frozenset[str]
    needs: frozenset[str]


def plan_warm_ups(calls: Mapping[tuple[str, str], frozenset[str]]) -> list[WarmUp]:
    """Warm-ups that compile every op in ``calls`` exactly once.

    ``calls`` maps each (block, task) to its fused ops, in the order the runs are taken. Each op goes
    to the first (block, task) that calls it: the runs that start first then find their kernels
    compiled in the same variants (an op's kernels can specialise on what a block passes, such as
    the groups of B and C of a selective scan).
    """
    plan, covered = [], set()
    for (block, task), ops in calls.items():
        own = ops - covered
        if own:
            plan.append(WarmUp(block, task, frozenset(own), frozenset(ops & covered)))
            covered |= own
    return plan


def take_ready(jobs: list[tuple[frozenset[str], Any]], warming: set[str], slots: int) -> list[Any]:
    """Remove from ``jobs`` and return, in order, up to ``slots`` jobs that call none of the ops in
    ``warming`` (a job that calls one would compile it a second time, or wait on the same compile).

    ``jobs`` holds ``(ops the job calls, job)``, warm-ups (:class:`WarmUp`) and runs alike; a warm-up
    taken adds its own ops to ``warming``, so later jobs in the same call wait for it too. The caller
    removes a warm-up's ops from ``warming`` when it finishes.
    """
    taken = []
    for entry in list(jobs):
        if len(taken) >= slots:
            break
        needs, job = entry
        if needs & warming:
            continue
        jobs.remove(entry)
        if isinstance(job, WarmUp):
            warming |= job.ops
        taken.append(job)
    return taken


__all__ = ["WarmUp", "fused_ops", "plan_warm_ups", "take_ready"]
