"""Reductions, softmax, norms and pools: adds, multiplies, exps and compares per element."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from neurostep.energy.operands import first_tensor
from neurostep.energy.record import CostRecord

if TYPE_CHECKING:
    from neurostep.energy.dispatch import OpCounter


def reduction(adds: float, muls: float, compares: float, exps: float = 0.0,
              per_input: bool = False) -> Callable[..., CostRecord]:
    """Reductions cost ``in - out`` combining ops (``in`` when ``per_input``), per kind."""

    def rule(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
        x = args[0]
        o = first_tensor(out)
        n_in = float(x.numel())
        n_out = float(o.numel()) if o is not None else 1.0
        n = n_in if per_input else max(n_in - n_out, 0.0)
        if not per_input and n_in == n_out:
            # a binary max/min (maximum of two tensors) arrives under the same packet name
            n = n_out
        cost = CostRecord()
        cost.adds = adds * n
        cost.muls = muls * n
        cost.exps = exps * n
        cost.compares = compares * n
        c.add_bytes(cost, args, kwargs, out)
        return cost

    return rule


_sum = reduction(1, 0, 0)


def mean(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    cost = _sum(c, args, kwargs, out)
    cost.muls += float(first_tensor(out).numel())   # one division per output
    return cost


def var(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    # mean (n adds), centre (n adds), square (n muls), sum (n adds), divide per output
    n = float(args[0].numel())
    n_out = float(first_tensor(out).numel())
    cost = CostRecord()
    cost.adds = 3 * n
    cost.muls = n + 2 * n_out
    c.add_bytes(cost, args, kwargs, out)
    return cost


def softmax(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    # max (compare), subtract max (add), exp, sum (add), normalise (mul) per element
    n = float(args[0].numel())
    cost = CostRecord()
    cost.adds = 2 * n
    cost.muls = n
    cost.exps = n
    cost.compares = n
    c.add_bytes(cost, args, kwargs, out)
    return cost


def _norm_stats_cost(n: float, rows: float, affine: bool, cost: CostRecord) -> None:
    # mean: n adds; centre: n adds; variance: n muls + n adds; normalise: n muls; rsqrt per row
    cost.adds += 3 * n
    cost.muls += 2 * n
    cost.exps += rows
    if affine:
        cost.adds += n
        cost.muls += n


def layer_norm(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    x, shape = args[0], args[1]
    weight = args[2] if len(args) > 2 else None
    n = float(x.numel())
    rows = n / max(math.prod(shape), 1)
    cost = CostRecord()
    _norm_stats_cost(n, rows, weight is not None, cost)
    c.add_bytes(cost, args, kwargs, out)
    return cost


def group_norm(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    # native_group_norm(input, weight, bias, N, C, HxW, group, eps)
    x, weight = args[0], args[1]
    n = float(x.numel())
    rows = float(args[3] * args[6]) if len(args) > 6 else 1.0
    cost = CostRecord()
    _norm_stats_cost(n, rows, weight is not None, cost)
    c.add_bytes(cost, args, kwargs, out)
    return cost


def batch_norm(training_arg: int | None) -> Callable[..., CostRecord]:
    """BatchNorm variants; ``training_arg`` is the index of the ``training`` flag (None: eval-only op)."""

    def rule(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
        x = args[0]
        training = bool(args[training_arg]) if training_arg is not None and len(args) > training_arg else False
        n = float(x.numel())
        channels = float(x.shape[1]) if x.dim() > 1 else 1.0
        cost = CostRecord()
        if training:
            _norm_stats_cost(n, channels, True, cost)
        else:
            # with running statistics BN is a per-channel scale and shift (foldable into the layer before)
            cost.adds += n
            cost.muls += n
        c.add_bytes(cost, args, kwargs, out)
        return cost

    return rule


def _window(args: tuple, kwargs: dict) -> int:
    kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size", [1])
    return math.prod(kernel) if isinstance(kernel, (list, tuple)) else kernel


def avg_pool(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    # (window - 1) adds and one multiply per output
    window = _window(args, kwargs)
    n_out = float(out.numel())
    cost = CostRecord()
    cost.adds = n_out * (window - 1)
    cost.muls = n_out
    c.add_bytes(cost, args, kwargs, out)
    return cost


def max_pool(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    # (window - 1) compares per output; the indices output is written, not computed
    window = _window(args, kwargs)
    o = first_tensor(out)
    cost = CostRecord()
    cost.compares = float(o.numel()) * (window - 1)
    c.add_bytes(cost, args, kwargs, out)
    return cost
