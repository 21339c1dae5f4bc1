"""How each op is priced: one table from aten op name to rule, and the lookup that picks a rule.

A rule is ``rule(counter, args, kwargs, out) -> CostRecord | None``: it sees the op's arguments
and outputs as the dispatcher passed them and the :class:`~neurostep.energy.dispatch.OpCounter`
(for bytes, parameter reads and spike statistics); ``None`` means the op costs nothing at all.
The rules live by concern in :mod:`.dense`, :mod:`.reductions`, :mod:`.elementwise` and
:mod:`.memory`; :data:`RULES` is the one place that says which aten op gets which rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

from neurostep.energy.record import CostRecord
from neurostep.energy.rules import dense, elementwise, memory, reductions
from neurostep.engine import COSTS, CountAs, OpCost

if TYPE_CHECKING:
    from neurostep.energy.dispatch import OpCounter

Rule = Callable[["OpCounter", tuple, dict, Any], "CostRecord | None"]


def free(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> None:
    """Views and metadata ops: no arithmetic and no memory traffic."""
    return None


def _merge(*sections: Mapping[str, Rule]) -> Mapping[str, Rule]:
    """One read-only table; an op named in two sections is a mistake (which rule would win?)."""
    table: dict[str, Rule] = {}
    for section in sections:
        for key, rule in section.items():
            if key in table:
                raise ValueError(f"op {key!r} has two pricing rules")
            table[key] = rule
    return MappingProxyType(table)


# Keys are aten overload packet names without a trailing in-place underscore (see op_key).
RULES: Mapping[str, Rule] = _merge(
    {   # dense products
        "mm": dense.mm, "bmm": dense.mm, "mv": dense.mm, "dot": dense.mm, "vdot": dense.mm,
        "addmm": dense.addmm, "baddbmm": dense.addmm, "addmv": dense.addmm, "addbmm": dense.addmm,
        "_addmm_activation": dense.addmm_activation, "linear": dense.linear,
        "convolution": dense.conv,
        "_scaled_dot_product_flash_attention": dense.sdpa,
        "_scaled_dot_product_flash_attention_for_cpu": dense.sdpa,
        "_scaled_dot_product_efficient_attention": dense.sdpa,
        "_scaled_dot_product_cudnn_attention": dense.sdpa,
        "_scaled_dot_product_fused_attention_overrideable": dense.sdpa,
        "_fft_r2c": dense.fft(0, half=True), "_fft_c2r": dense.fft(None, half=True),
        "_fft_c2c": dense.fft(0, half=False),
    },
    {   # elementwise
        key: elementwise.pointwise(*counts, scalar_alpha=key in elementwise.ALPHA_OPS)
        for key, counts in elementwise.POINTWISE.items()
    },
    {"clamp": elementwise.clamp, "clip": elementwise.clamp,
     "pow": elementwise.power, "float_power": elementwise.power},
    {   # reductions, softmax, norms, pools
        "sum": reductions.reduction(1, 0, 0), "nansum": reductions.reduction(1, 0, 0), "mean": reductions.mean,
        "prod": reductions.reduction(0, 1, 0),
        "amax": reductions.reduction(0, 0, 1), "amin": reductions.reduction(0, 0, 1),
        "max": reductions.reduction(0, 0, 1), "min": reductions.reduction(0, 0, 1),
        "argmax": reductions.reduction(0, 0, 1), "argmin": reductions.reduction(0, 0, 1),
        "aminmax": reductions.reduction(0, 0, 2),
        "cumsum": reductions.reduction(1, 0, 0, per_input=True),
        "cumprod": reductions.reduction(0, 1, 0, per_input=True),
        "logsumexp": reductions.reduction(2, 0, 1, exps=1, per_input=True),
        "count_nonzero": reductions.reduction(1, 0, 1, per_input=True),
        "all": reductions.reduction(0, 0, 1, per_input=True), "any": reductions.reduction(0, 0, 1, per_input=True),
        "linalg_vector_norm": reductions.reduction(1, 1, 0, per_input=True),
        "norm": reductions.reduction(1, 1, 0, per_input=True),
        "var": reductions.var, "std": reductions.var, "var_mean": reductions.var, "std_mean": reductions.var,
        "_softmax": reductions.softmax, "softmax": reductions.softmax, "_log_softmax": reductions.softmax,
        "log_softmax": reductions.softmax, "_safe_softmax": reductions.softmax,
        "native_layer_norm": reductions.layer_norm, "native_group_norm": reductions.group_norm,
        "native_batch_norm": reductions.batch_norm(5), "_native_batch_norm_legit": reductions.batch_norm(5),
        "_native_batch_norm_legit_functional": reductions.batch_norm(5),
        "cudnn_batch_norm": reductions.batch_norm(5), "miopen_batch_norm": reductions.batch_norm(5),
        "_native_batch_norm_legit_no_training": reductions.batch_norm(None),
        "avg_pool1d": reductions.avg_pool, "avg_pool2d": reductions.avg_pool, "avg_pool3d": reductions.avg_pool,
        "max_pool1d_with_indices": reductions.max_pool, "max_pool2d_with_indices": reductions.max_pool,
        "max_pool3d_with_indices": reductions.max_pool, "max_pool1d": reductions.max_pool,
        "max_pool2d": reductions.max_pool,
    },
    {   # data movement
        "embedding": memory.embedding, "copy": memory.copy,
        **dict.fromkeys(memory.MOVE_OPS, memory.bytes_only),
        **dict.fromkeys(memory.WRITE_ONLY, memory.write_only),
        **dict.fromkeys(memory.NO_TRAFFIC, free),
    },
)
"""aten op name (see :func:`op_key`) -> its rule; read-only, and no op is named twice."""


def op_key(func: torch._ops.OpOverload) -> str:
    """The :data:`RULES` key of an aten op: its overload packet, in-place underscore dropped."""
    name = func.overloadpacket.__name__
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name


def rule_for(func: Any) -> Rule:
    """Pick the rule of an op: a declared custom-op formula or the rule of the aten op a custom op is
    declared to compute, else the table, else bytes only.

    Called once per op overload and counter (the counter caches the answer); an op with no rule
    is counted for bytes and named in ``OpCounter.unknown_ops``.
    """
    qualified = func._schema.name            # "aten::addmm", "neurostep::lif_forward"
    formula = COSTS.get(qualified)
    if formula is not None:
        return declared(formula, qualified)
    alias = COSTS.alias_of(qualified)           # a custom op that computes what an aten op computes
    if alias is not None:
        return counted_as(alias)
    if func.namespace not in ("aten", "prims"):
        return unknown(qualified)
    if func.is_view:
        return free
    rule = RULES.get(op_key(func))
    return rule if rule is not None else unknown(qualified)


def counted_as(alias: CountAs) -> Rule:
    """The rule of a custom op declared to compute an aten op: that op's rule on the adapted arguments."""
    rule = RULES[alias.aten_name.split("::", 1)[1]]
    return lambda c, args, kwargs, out: rule(c, alias.arguments(args), {}, alias.result(out))


def declared(formula: Callable[..., OpCost], qualified: str) -> Rule:
    """The rule of a custom op priced by the :class:`~neurostep.engine.OpCost` formula declared for it.

    A formula that gives no bytes gets the generic byte count; parameter reads are always counted
    here, since a formula cannot tell parameters from activations.
    """

    def rule(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
        try:
            cost = formula(args, kwargs, out)
        except Exception as exc:  # name the formula: the traceback alone points at the counter
            raise RuntimeError(f"the cost formula declared for {qualified} failed: {exc}") from exc
        if not isinstance(cost, OpCost):
            raise TypeError(f"the cost formula for {qualified} must return an OpCost, "
                            f"got {type(cost).__name__}")
        record = CostRecord(
            macs=float(cost.macs), acs=float(cost.acs), adds=float(cost.adds), muls=float(cost.muls),
            exps=float(cost.exps), compares=float(cost.compares), state_updates=float(cost.state_updates),
            bytes_read=float(cost.bytes_read), bytes_written=float(cost.bytes_written),
        )
        if not (cost.bytes_read or cost.bytes_written):
            c.add_bytes(record, args, kwargs, out)
        else:
            record.param_bytes_read = float(c.param_bytes(args, kwargs))
        return record

    return rule


def unknown(qualified: str) -> Rule:
    """An op with neither a table rule nor a declared formula: bytes only, and listed as unknown."""

    def rule(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
        c.record_unknown(qualified)
        return memory.bytes_only(c, args, kwargs, out)

    return rule
