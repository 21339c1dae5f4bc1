"""The dispatch mode that prices every op as it runs, and the module hooks that say where it ran.

:class:`OpCounter` sees each aten and custom op, asks :func:`neurostep.energy.rules.rule_for`
once per op overload how to price it, and adds each call's :class:`CostRecord` to the sum of the
module call stack it ran under and to the sum of its op. :func:`track_modules` keeps that stack:
forward hooks on every module, and step hooks on recurrent blocks whose ``scan``/``step`` other
blocks call directly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from neurostep.energy.operands import ActStats, iter_tensors, tensor_bytes
from neurostep.energy.record import CostRecord
from neurostep.energy.rules import Rule, rule_for
from neurostep.engine import Recurrent


class OpCounter(TorchDispatchMode):
    """Dispatch mode that accumulates op costs per module call stack and per op.

    Use :func:`neurostep.energy.count` rather than this class directly; it installs the module
    hooks that maintain the module-path stack and turns the tallies into a :class:`Report`.

    Args:
        param_storages: data pointers of the model's parameter storages (reads from them are
            parameter reads, and they are never treated as spike operands).
        first_layer: module path whose dense ops (its own and its submodules') are the "first
            layer" of the Spikformer convention; ``None`` picks the innermost module of the first
            dense op executed.

    Attributes:
        by_stack: summed cost per module call stack (a tuple of module paths, outermost first).
        by_op: summed cost per op overload name (``"aten::addmm"``).
        op_calls, unknown_ops: calls per priced op, and per op priced for bytes only.
        calls, order: forward calls per module path, and the paths in first-call order.
    """

    def __init__(self, param_storages: set[int] | None = None, first_layer: str | None = None) -> None:
        super().__init__()
        self.param_storages = set(param_storages or ())
        self.first_layer = first_layer
        self.stack: tuple[str, ...] = ()
        self.by_stack: dict[tuple[str, ...], CostRecord] = {}
        self.by_op: dict[str, CostRecord] = {}
        self.op_calls: dict[str, int] = {}
        self.unknown_ops: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.order: list[str] = []
        self.notes: list[str] = []
        # per op overload: its rule and its name, looked up once (the op's schema never changes)
        self._rules: dict[Any, tuple[Rule, str]] = {}
        self._act_cache: dict[tuple, tuple[weakref.ref, int, ActStats]] = {}

    # module stack (driven by the hooks of track_modules) -----------------------------------
    def push(self, path: str) -> None:
        self.stack = self.stack + (path,)
        if path not in self.calls:
            self.calls[path] = 0
            self.order.append(path)
        self.calls[path] += 1

    def pop(self, path: str) -> None:
        # Pop back to the matching entry: a forward that raised may have skipped inner pops.
        if path in self.stack:
            idx = len(self.stack) - 1 - self.stack[::-1].index(path)
            self.stack = self.stack[:idx]

    # dispatch ------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        entry = self._rules.get(func)
        if entry is None:
            entry = self._rules[func] = (rule_for(func), func.name())
        rule, name = entry
        cost = rule(self, args, kwargs, out)
        if cost is not None:
            acc = self.by_stack.get(self.stack)
            if acc is None:
                acc = self.by_stack[self.stack] = CostRecord()
            per_op = self.by_op.get(name)
            if per_op is None:
                per_op = self.by_op[name] = CostRecord()
            cost.add_into(acc, per_op)
            self.op_calls[name] = self.op_calls.get(name, 0) + 1
        return out

    def record_unknown(self, qualified: str) -> None:
        """Note one call of an op that has no rule and no declared formula."""
        self.unknown_ops[qualified] = self.unknown_ops.get(qualified, 0) + 1

    # what rules ask the counter ------------------------------------------------------------
    def is_param(self, t: torch.Tensor) -> bool:
        """Whether ``t`` lives in one of the model's parameter storages."""
        if not self.param_storages or t.device.type == "meta" or t.layout != torch.strided:
            return False
        try:
            return t.untyped_storage().data_ptr() in self.param_storages
        except (RuntimeError, NotImplementedError):   # tensor subclasses without a storage
            return False

    def param_bytes(self, args: tuple, kwargs: dict) -> int:
        """Bytes of the distinct parameter tensors among an op's arguments."""
        total = 0
        seen: set[int] = set()
        for t in iter_tensors(list(args) + list(kwargs.values())):
            if id(t) not in seen and self.is_param(t):
                seen.add(id(t))
                total += tensor_bytes(t)
        return total

    def add_bytes(self, cost: CostRecord, args: tuple, kwargs: dict, out: Any) -> None:
        """Add the op's traffic to ``cost``: each distinct input tensor read once, each output written."""
        read = 0
        param = 0
        seen: set[int] = set()
        for t in iter_tensors(list(args) + list(kwargs.values()) if kwargs else args):
            if id(t) in seen:
                continue
            seen.add(id(t))
            b = tensor_bytes(t)
            read += b
            if self.is_param(t):
                param += b
        written = 0
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for t in iter_tensors(outs):
            written += tensor_bytes(t)
        cost.bytes_read += read
        cost.bytes_written += written
        cost.param_bytes_read += param

    def act_stats(self, t: torch.Tensor) -> ActStats | None:
        """Binary-ness and nonzeros of an activation operand; ``None`` for parameters.

        One fused pass pair and one device sync per distinct tensor version: the result is
        cached on the tensor's base (Q, K and V projections read the same spikes).
        """
        if (not isinstance(t, torch.Tensor) or t.device.type == "meta" or t.layout != torch.strided
                or t.is_complex() or self.is_param(t)):
            return None
        base = t._base if t._base is not None else t
        key = (id(base), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        hit = self._act_cache.get(key)
        version = t._version
        if hit is not None and hit[0]() is base and hit[1] == version:
            return hit[2]
        numel = t.numel()
        if numel == 0:
            stats = ActStats(True, 0, 0)
        elif t.dtype == torch.bool:
            stats = ActStats(True, int(torch.count_nonzero(t)), numel)
        else:
            # binary <=> every nonzero equals 1 (NaN is nonzero and not 1, so it is not binary)
            nnz, ones = torch.stack([torch.count_nonzero(t), torch.count_nonzero(t == 1)]).tolist()
            stats = ActStats(nnz == ones, int(nnz), numel)
        self._act_cache[key] = (weakref.ref(base), version, stats)
        return stats

    def record_dense(self, cost: CostRecord, dense_macs: float, stats_a: ActStats | None,
                     stats_b: ActStats | None, synaptic: float | None) -> CostRecord:
        """Fill the dense-op fields: MACs, or ``synaptic`` ACs when an operand is binary.

        Here rather than in the dense rules because the Spikformer split (first layer or not)
        depends on the module stack the op runs under.
        """
        cost.dense_macs += dense_macs
        if synaptic is None:
            cost.macs += dense_macs
        else:
            cost.acs += synaptic
        for s in (stats_a, stats_b):
            if s is not None and s.binary:
                cost.spike_nnz += s.nnz
                cost.spike_numel += s.numel
        # Spikformer convention: the layer's input is its activation operand (the left one if both are).
        act = stats_a if stats_a is not None else stats_b
        rate = act.rate if act is not None else 1.0
        current = self.stack[-1] if self.stack else ""
        if self.first_layer is None:
            self.first_layer = current
        if current == self.first_layer or current.startswith(self.first_layer + "."):
            cost.first_layer_macs += dense_macs
        else:
            cost.sops += rate * dense_macs
        return cost


def model_param_storages(model: nn.Module) -> set[int]:
    """Data pointers of the storages of a model's parameters (meta tensors excluded)."""
    out: set[int] = set()
    for p in model.parameters():
        if p.device.type != "meta":
            out.add(p.untyped_storage().data_ptr())
    return out


@contextmanager
def track_modules(counter: OpCounter, modules: Mapping[str, nn.Module]) -> Iterator[None]:
    """Keep ``counter``'s module stack while the block runs: hooks on each of ``modules`` (path -> module)."""

    def pre_hook(path: str) -> Callable[..., None]:
        return lambda module, args: counter.push(path)

    def post_hook(path: str) -> Callable[..., None]:
        return lambda module, args, output: counter.pop(path)

    handles = []
    try:
        for path, module in modules.items():
            handles.append(module.register_forward_pre_hook(pre_hook(path)))
            handles.append(module.register_forward_hook(post_hook(path), always_call=True))
            # Recurrent blocks call each other's scan()/step() directly, bypassing __call__ and
            # its hooks: their step hooks attribute those calls.
            if isinstance(module, Recurrent):
                handles.append(module.register_step_hook(*_step_hooks(counter, path), always_call=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _step_hooks(counter: OpCounter, path: str) -> tuple[Callable[..., None], Callable[..., None]]:
    """Pre and post step hooks that put ``path`` on the counter's module stack for a direct
    ``scan``/``step`` call, unless the call came through the module's own ``__call__`` (forward
    -> scan), which already did."""
    pushed: list[bool] = []

    def pre(module: nn.Module, method: str, args: tuple, kwargs: dict) -> None:
        pushed.append(not (counter.stack and counter.stack[-1] == path))
        if pushed[-1]:
            counter.push(path)

    def post(module: nn.Module, method: str, args: tuple, kwargs: dict, output: Any) -> None:
        if pushed.pop():
            counter.pop(path)

    return pre, post
