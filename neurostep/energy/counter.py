"""Operation counter: a ``TorchDispatchMode`` that prices every aten op and every custom op.

It sees the ops that actually run (``linear``, ``matmul`` and ``einsum`` arrive as their
``addmm``/``mm``/``bmm`` decompositions), so functional calls and custom kernels are counted
as well as modules. Rules:

* Dense ops (mm, addmm, bmm, baddbmm, mv, dot, convolution, SDPA): MACs, unless an operand
  that is an activation (not a parameter) is binary, in which case they are ACs on its actual
  nonzeros: ``x @ W`` with binary ``x`` costs ``nnz(x) * out_features``; a convolution with a
  binary input costs, per nonzero input element, the number of (output position, output
  channel) pairs it reaches (computed exactly with a convolution of the nonzero mask by a ones
  kernel, so padding and stride are honoured).
* Elementwise ops, reductions, softmax and norms: adds, multiplies, exps and compares per
  element (see ``neurostep.energy.rules.elementwise.POINTWISE``).
* Custom ops (``neurostep::*`` and any other namespace): the formula declared with
  ``neurostep.engine.register_cost`` under the op's qualified name; without one, bytes only
  and the op is listed in ``Report.unknown_ops``.
* Memory: bytes read (inputs, with parameter reads kept apart) and written (outputs) per op;
  views move nothing.

Parameters are never treated as spikes: a zero-initialised weight is "binary" but multiplying
by it still takes MACs on hardware that does not know it is zero.

Layout: this module holds :func:`count` and turns the tallies into a :class:`Report`;
:mod:`neurostep.energy.dispatch` holds the dispatch mode (:class:`OpCounter`) and the module
hooks that attribute each op to the module call stack it ran under;
:mod:`neurostep.energy.rules` holds the per-op rules and the one table that maps aten ops to them;
:mod:`neurostep.energy.record` holds :class:`CostRecord`, one op's counts as named fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurostep.energy.dispatch import OpCounter, model_param_storages, track_modules
from neurostep.energy.profiles import EnergyProfile, get_profile
from neurostep.energy.record import FIELDS, CostRecord
from neurostep.energy.report import MODES, Counts, Report

__all__ = ["FIELDS", "CostRecord", "OpCounter", "count", "model_param_storages"]

# Reports copy every record field into Counts by name.
assert all(hasattr(Counts, name) for name in FIELDS)


def count(
    model: nn.Module,
    *inputs: Any,
    profile: str | EnergyProfile | Mapping[str, Any] | Path = "45nm_fp32",
    mode: str = "ops",
    first_layer: str | None = None,
    no_grad: bool = True,
    **kwargs: Any,
) -> Report:
    """Run ``model(*inputs, **kwargs)`` once and count its operations, bytes and energy.

    Args:
        model: any ``nn.Module``; a ``torch.compile`` wrapper is counted eagerly on its
            ``_orig_mod`` (noted in the report).
        inputs, kwargs: the forward's arguments (tensors on CPU or CUDA).
        profile: a preset name (``"45nm_fp32"``, ``"45nm_fp16"``, ``"45nm_int8"``,
            ``"45nm_fp32_memory"``), an :class:`EnergyProfile`, a dict, or a ``.toml`` path.
        mode: ``"ops"`` (every op at its price) or ``"spikformer"`` (the paper's convention:
            first layer at MAC cost, the others as SOPs = input firing rate x dense MACs).
        first_layer: module path of the first layer for ``mode="spikformer"``; default: the
            module of the first dense op that runs.
        no_grad: run the forward under ``torch.no_grad()`` (inference energy).

    Returns:
        A :class:`Report` with per-module (inclusive) and total counts.

    >>> report = count(nn.Linear(8, 4), torch.ones(2, 8))
    >>> report.total.acs     # binary input: 16 nonzeros x 4 outputs
    64.0
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    prof = get_profile(profile)
    notes: list[str] = []
    target = model
    orig = getattr(model, "_orig_mod", None)
    if isinstance(orig, nn.Module):
        target = orig
        notes.append("model is wrapped by torch.compile: counted eagerly on model._orig_mod "
                     "(the compiled graph runs the same operations, fused)")
    names = dict(target.named_modules())
    if first_layer is not None and first_layer not in names:
        raise ValueError(f"first_layer {first_layer!r} is not a module path of the model; "
                         f"some paths: {[n for n in names if n][:10]}")
    counter = OpCounter(model_param_storages(target), first_layer)
    with track_modules(counter, names), torch.no_grad() if no_grad else nullcontext(), counter:
        target(*inputs, **kwargs)
    return _build_report(counter, target, prof, mode, notes)


def _build_report(counter: OpCounter, model: nn.Module, profile: EnergyProfile, mode: str,
                  notes: list[str]) -> Report:
    """Inclusive per-module totals: an op belongs to every module on the call stack when it ran
    and to every tree ancestor of the innermost one (containers whose own methods bypass
    ``__call__``, e.g. ``blocks.0`` when the model calls ``block._run``, still get their total)."""
    tree_order = {name: i for i, name in enumerate(n for n, _ in model.named_modules())}
    sums: dict[str, Counts] = {}
    total = Counts(calls=counter.calls.get("", 1))
    for stack, cost in counter.by_stack.items():
        _add(total, cost)
        owners = set(stack)
        if stack:
            parts = stack[-1].split(".")
            owners.update(".".join(parts[:i]) for i in range(1, len(parts)))
        owners.discard("")
        for p in owners:
            if p not in sums:
                sums[p] = Counts(calls=counter.calls.get(p, 0))
            _add(sums[p], cost)
    for p in counter.order:   # modules that ran but cost nothing still appear
        if p and p not in sums:
            sums[p] = Counts(calls=counter.calls[p])
    modules = {p: sums[p] for p in sorted(sums, key=lambda p: (tree_order.get(p, len(tree_order)), p))}
    ops = {name: Counts(calls=counter.op_calls.get(name, 0), **cost.as_dict())
           for name, cost in counter.by_op.items()}
    if mode == "spikformer":
        notes.append(f"spikformer convention: first layer = {counter.first_layer or '<root>'!r}")
    return Report(model=type(model).__name__, total=total, modules=modules, ops=ops, profile=profile, mode=mode,
                  unknown_ops=dict(counter.unknown_ops), notes=notes + counter.notes)


def _add(counts: Counts, cost: CostRecord) -> None:
    """Add a record's fields into the same-named fields of ``counts``."""
    for name, value in cost.as_dict().items():
        setattr(counts, name, getattr(counts, name) + value)
