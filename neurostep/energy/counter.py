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
  element (see ``_POINTWISE``).
* Custom ops (``neurostep::*`` and any other namespace): the formula declared with
  ``neurostep.engine.register_cost`` under the op's qualified name; without one, bytes only
  and the op is listed in ``Report.unknown_ops``.
* Memory: bytes read (inputs, with parameter reads kept apart) and written (outputs) per op;
  views move nothing.

Parameters are never treated as spikes: a zero-initialised weight is "binary" but multiplying
by it still takes MACs on hardware that does not know it is zero.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from neurostep.energy.profiles import EnergyProfile, get_profile
from neurostep.energy.report import MODES, Counts, Report
from neurostep.engine import COSTS, OpCost, Recurrent

# Order of the per-op cost vector kept by the counter (a plain list is the cheapest accumulator).
FIELDS: tuple[str, ...] = (
    "macs",               # multiply-accumulates on dense operands
    "acs",                # accumulates driven by binary operands (synaptic operations)
    "adds",
    "muls",
    "exps",
    "compares",
    "state_updates",
    "bytes_read",
    "bytes_written",
    "param_bytes_read",   # the part of bytes_read that reads parameters
    "spike_nnz",          # nonzeros of binary activation operands of dense ops
    "spike_numel",        # elements of those operands (spike rate = nnz / numel)
    "dense_macs",         # MACs the dense ops would take with every operand dense
    "sops",               # Spikformer convention: input firing rate x dense MACs (layers after the first)
    "first_layer_macs",   # Spikformer convention: dense MACs of the first layer
)
assert all(hasattr(Counts, name) for name in FIELDS)
_IDX = {name: i for i, name in enumerate(FIELDS)}
_N = len(FIELDS)
_OPCOST_FIELDS = ("macs", "acs", "adds", "muls", "exps", "compares", "state_updates", "bytes_read", "bytes_written")

# Per output element: (adds, muls, exps, compares). Names are aten overload packets without
# a trailing in-place underscore. Transcendentals count one exp each; a comparison-based
# activation counts its compares (and the multiply of its negative branch).
_POINTWISE: dict[str, tuple[float, float, float, float]] = {
    "add": (1, 0, 0, 0), "sub": (1, 0, 0, 0), "rsub": (1, 0, 0, 0),
    "mul": (0, 1, 0, 0), "div": (0, 1, 0, 0), "reciprocal": (0, 1, 0, 0), "square": (0, 1, 0, 0),
    "true_divide": (0, 1, 0, 0), "floor_divide": (0, 1, 0, 0), "remainder": (1, 1, 0, 0),
    "addcmul": (1, 2, 0, 0), "addcdiv": (1, 2, 0, 0), "lerp": (2, 1, 0, 0),
    "exp": (0, 0, 1, 0), "exp2": (0, 0, 1, 0), "expm1": (0, 0, 1, 0), "log": (0, 0, 1, 0),
    "log2": (0, 0, 1, 0), "log10": (0, 0, 1, 0), "log1p": (0, 0, 1, 0), "sqrt": (0, 0, 1, 0),
    "rsqrt": (0, 0, 1, 0), "sigmoid": (0, 0, 1, 0), "tanh": (0, 0, 1, 0), "erf": (0, 0, 1, 0),
    "erfc": (0, 0, 1, 0), "erfinv": (0, 0, 1, 0), "sin": (0, 0, 1, 0), "cos": (0, 0, 1, 0),
    "tan": (0, 0, 1, 0), "atan": (0, 0, 1, 0), "atan2": (0, 0, 1, 0), "asin": (0, 0, 1, 0),
    "acos": (0, 0, 1, 0), "sinh": (0, 0, 1, 0), "cosh": (0, 0, 1, 0), "logit": (0, 0, 1, 0),
    "softplus": (1, 0, 2, 1), "silu": (0, 1, 1, 0), "gelu": (1, 3, 1, 0), "mish": (1, 1, 3, 0),
    "elu": (1, 1, 1, 1), "selu": (1, 2, 1, 1), "celu": (1, 1, 1, 1), "log_sigmoid_forward": (1, 0, 2, 0),
    "hardswish": (1, 2, 0, 2), "hardsigmoid": (1, 1, 0, 2), "leaky_relu": (0, 1, 0, 1),
    "relu": (0, 0, 0, 1), "relu6": (0, 0, 0, 2), "threshold": (0, 0, 0, 1), "hardtanh": (0, 0, 0, 2),
    "clamp_min": (0, 0, 0, 1), "clamp_max": (0, 0, 0, 1), "maximum": (0, 0, 0, 1), "minimum": (0, 0, 0, 1),
    "fmax": (0, 0, 0, 1), "fmin": (0, 0, 0, 1),
    "ge": (0, 0, 0, 1), "gt": (0, 0, 0, 1), "le": (0, 0, 0, 1), "lt": (0, 0, 0, 1), "eq": (0, 0, 0, 1),
    "ne": (0, 0, 0, 1), "heaviside": (0, 0, 0, 1), "sign": (0, 0, 0, 1), "sgn": (0, 0, 0, 1),
}

# Ops that compute nothing worth pricing: they move or create data (bytes are still counted).
_MOVE_OPS = frozenset({
    "clone", "_to_copy", "contiguous", "cat", "stack", "index", "index_select", "gather", "scatter",
    "scatter_add", "index_put", "index_add", "index_copy", "masked_fill", "masked_scatter", "masked_select",
    "where", "repeat", "repeat_interleave", "flip", "roll", "constant_pad_nd", "reflection_pad1d",
    "reflection_pad2d", "replicate_pad1d", "replicate_pad2d", "pad", "bernoulli", "tril", "triu",
    "neg", "abs", "floor", "ceil", "round", "trunc", "frac", "logical_and", "logical_or", "logical_not",
    "logical_xor", "bitwise_and", "bitwise_or", "bitwise_not", "bitwise_xor", "isnan", "isinf", "isfinite",
    "nan_to_num", "im2col", "col2im", "unfold_copy", "split_with_sizes_copy", "narrow_copy", "slice_scatter",
    "select_scatter", "diagonal_scatter", "as_strided_scatter", "embedding", "one_hot", "sort", "topk",
    "nonzero", "unique", "_unique2", "bucketize", "searchsorted", "max_pool2d_with_indices",
    "max_pool1d_with_indices", "max_pool3d_with_indices", "dropout", "native_dropout", "sym_constrain_range",
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_index_put_impl", "set",
})
# Ops that write their output without reading tensor data (their tensor arguments give only
# shapes, dtypes or the destination), and copies that read only their source.
_WRITE_ONLY = frozenset({
    "fill", "zero", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "new_zeros", "new_ones",
    "new_full", "arange", "linspace", "logspace", "eye", "scalar_tensor", "rand", "randn", "rand_like",
    "randn_like", "randint", "randint_like", "normal", "uniform", "random", "exponential", "geometric",
    "cauchy", "log_normal",
})
# Ops that neither compute nor move data (allocation without writing, metadata, scalar reads).
_NO_TRAFFIC = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view", "lift_fresh",
    "lift_fresh_copy", "_local_scalar_dense", "detach", "alias", "resize", "is_same_size", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "_assert_async", "_assert_scalar", "_functional_assert_async",
    "record_stream", "_has_compatible_shallow_copy_type", "is_pinned", "_nested_tensor_from_mask",
})


def _op_key(func: torch._ops.OpOverload) -> str:
    name = func.overloadpacket.__name__
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name


def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements of ``t`` (an expanded, stride-0 dim holds one element)."""
    if t.layout != torch.strided:   # sparse/nested: no strides; count the logical elements
        return t.numel() * t.element_size()
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size() if t.numel() else 0


def _iter_tensors(items: Sequence[Any]) -> Any:
    for a in items:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            for b in a:
                if isinstance(b, torch.Tensor):
                    yield b


class _ActStats:
    """What the counter knows about an activation operand: binary or not, and its nonzeros."""

    __slots__ = ("binary", "nnz", "numel")

    def __init__(self, binary: bool, nnz: int, numel: int) -> None:
        self.binary = binary
        self.nnz = nnz
        self.numel = numel

    @property
    def rate(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0


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
    """

    def __init__(self, param_storages: set[int] | None = None, first_layer: str | None = None) -> None:
        super().__init__()
        self.param_storages = set(param_storages or ())
        self.first_layer = first_layer
        self.stack: tuple[str, ...] = ()
        self.by_stack: dict[tuple[str, ...], list[float]] = {}
        self.by_op: dict[str, list[float]] = {}
        self.op_calls: dict[str, int] = {}
        self.unknown_ops: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.order: list[str] = []
        self.notes: list[str] = []
        self._handlers: dict[Any, Callable[..., list[float] | None]] = {}
        self._act_cache: dict[tuple, tuple[weakref.ref, int, _ActStats]] = {}

    # module stack (driven by the hooks installed in count()) ---------------------------
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
        handler = self._handlers.get(func)
        if handler is None:
            handler = self._resolve(func)
            self._handlers[func] = handler
        cost = handler(func, args, kwargs, out)
        if cost is not None:
            name = func.name()
            acc = self.by_stack.get(self.stack)
            if acc is None:
                acc = self.by_stack[self.stack] = [0.0] * _N
            per_op = self.by_op.get(name)
            if per_op is None:
                per_op = self.by_op[name] = [0.0] * _N
            for i, v in enumerate(cost):
                if v:
                    acc[i] += v
                    per_op[i] += v
            self.op_calls[name] = self.op_calls.get(name, 0) + 1
        return out

    def _resolve(self, func: Any) -> Callable[..., list[float] | None]:
        """Pick the cost rule of an op once; later calls reuse it."""
        qualified = func._schema.name            # "aten::addmm", "neurostep::lif_forward"
        formula = COSTS.get(qualified)
        if formula is not None:
            return self._custom(formula, qualified)
        if func.namespace not in ("aten", "prims"):
            return self._unknown(qualified)
        key = _op_key(func)
        if func.is_view or key in _NO_TRAFFIC:
            return lambda *a: None
        rule = _DENSE.get(key)
        if rule is not None:
            return lambda f, args, kwargs, out: rule(self, args, kwargs, out)
        if key in _POINTWISE:
            return self._pointwise(*_POINTWISE[key], scalar_alpha=key in ("add", "sub", "rsub"))
        rule = _OTHER.get(key)
        if rule is not None:
            return lambda f, args, kwargs, out: rule(self, args, kwargs, out)
        if key in _MOVE_OPS:
            return self._bytes_only
        if key in _WRITE_ONLY:
            return self._write_only
        if key == "copy":
            return self._copy
        return self._unknown(qualified)

    # rules ---------------------------------------------------------------------------------
    def _custom(self, formula: Callable[..., OpCost], qualified: str) -> Callable[..., list[float]]:
        def handle(func: Any, args: tuple, kwargs: dict, out: Any) -> list[float]:
            try:
                declared = formula(args, kwargs, out)
            except Exception as exc:  # name the formula: the traceback alone points at the counter
                raise RuntimeError(f"the cost formula declared for {qualified} failed: {exc}") from exc
            if not isinstance(declared, OpCost):
                raise TypeError(f"the cost formula for {qualified} must return an OpCost, "
                                f"got {type(declared).__name__}")
            cost = [0.0] * _N
            for name in _OPCOST_FIELDS:
                cost[_IDX[name]] = float(getattr(declared, name))
            if not (declared.bytes_read or declared.bytes_written):
                self._add_bytes(cost, args, kwargs, out)
            else:
                cost[_IDX["param_bytes_read"]] = float(self._param_bytes(args, kwargs))
            return cost

        return handle

    def _unknown(self, qualified: str) -> Callable[..., list[float]]:
        def handle(func: Any, args: tuple, kwargs: dict, out: Any) -> list[float]:
            self.unknown_ops[qualified] = self.unknown_ops.get(qualified, 0) + 1
            return self._bytes_only(func, args, kwargs, out)

        return handle

    def _bytes_only(self, func: Any, args: tuple, kwargs: dict, out: Any) -> list[float]:
        cost = [0.0] * _N
        self._add_bytes(cost, args, kwargs, out)
        return cost

    def _write_only(self, func: Any, args: tuple, kwargs: dict, out: Any) -> list[float]:
        cost = [0.0] * _N
        cost[8] = float(sum(_tensor_bytes(t) for t in _iter_tensors(out if isinstance(out, (tuple, list))
                                                                     else (out,))))
        return cost

    def _copy(self, func: Any, args: tuple, kwargs: dict, out: Any) -> list[float]:
        # copy_(dst, src): the destination is only written
        cost = [0.0] * _N
        src = args[1] if len(args) > 1 else kwargs.get("src")
        if isinstance(src, torch.Tensor):
            cost[7] = float(_tensor_bytes(src))
            cost[9] = float(_tensor_bytes(src)) if self.is_param(src) else 0.0
        cost[8] = float(_tensor_bytes(args[0]))
        return cost

    def _pointwise(self, adds: float, muls: float, exps: float, compares: float,
                   scalar_alpha: bool) -> Callable[..., list[float]]:
        def handle(func: Any, args: tuple, kwargs: dict, out: Any) -> list[float]:
            o = out[0] if isinstance(out, (tuple, list)) else out
            n = float(o.numel()) if isinstance(o, torch.Tensor) else 1.0
            cost = [0.0] * _N
            cost[2] = adds * n
            # add/sub with alpha != 1 scale their second operand first
            extra_mul = 1.0 if scalar_alpha and kwargs.get("alpha", 1) != 1 else 0.0
            cost[3] = (muls + extra_mul) * n
            cost[4] = exps * n
            cost[5] = compares * n
            self._add_bytes(cost, args, kwargs, out)
            return cost

        return handle

    # helpers --------------------------------------------------------------------------------
    def is_param(self, t: torch.Tensor) -> bool:
        if not self.param_storages or t.device.type == "meta" or t.layout != torch.strided:
            return False
        try:
            return t.untyped_storage().data_ptr() in self.param_storages
        except (RuntimeError, NotImplementedError):   # tensor subclasses without a storage
            return False

    def _param_bytes(self, args: tuple, kwargs: dict) -> int:
        total = 0
        seen: set[int] = set()
        for t in _iter_tensors(list(args) + list(kwargs.values())):
            if id(t) not in seen and self.is_param(t):
                seen.add(id(t))
                total += _tensor_bytes(t)
        return total

    def _add_bytes(self, cost: list[float], args: tuple, kwargs: dict, out: Any) -> None:
        read = 0
        param = 0
        seen: set[int] = set()
        for t in _iter_tensors(list(args) + list(kwargs.values()) if kwargs else args):
            if id(t) in seen:
                continue
            seen.add(id(t))
            b = _tensor_bytes(t)
            read += b
            if self.is_param(t):
                param += b
        written = 0
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for t in _iter_tensors(outs):
            written += _tensor_bytes(t)
        cost[7] += read
        cost[8] += written
        cost[9] += param

    def act_stats(self, t: torch.Tensor) -> _ActStats | None:
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
            stats = _ActStats(True, 0, 0)
        elif t.dtype == torch.bool:
            stats = _ActStats(True, int(torch.count_nonzero(t)), numel)
        else:
            # binary <=> every nonzero equals 1 (NaN is nonzero and not 1, so it is not binary)
            nnz, ones = torch.stack([torch.count_nonzero(t), torch.count_nonzero(t == 1)]).tolist()
            stats = _ActStats(nnz == ones, int(nnz), numel)
        self._act_cache[key] = (weakref.ref(base), version, stats)
        return stats

    def record_dense(self, cost: list[float], dense_macs: float, stats_a: _ActStats | None,
                     stats_b: _ActStats | None, synaptic: float | None) -> list[float]:
        """Fill the dense-op fields: MACs, or ``synaptic`` ACs when an operand is binary."""
        cost[_IDX["dense_macs"]] += dense_macs
        binary = [s for s in (stats_a, stats_b) if s is not None and s.binary]
        if synaptic is None:
            cost[_IDX["macs"]] += dense_macs
        else:
            cost[_IDX["acs"]] += synaptic
        for s in binary:
            cost[_IDX["spike_nnz"]] += s.nnz
            cost[_IDX["spike_numel"]] += s.numel
        # Spikformer convention: the layer's input is its activation operand (the left one if both are).
        act = stats_a if stats_a is not None else stats_b
        rate = act.rate if act is not None else 1.0
        current = self.stack[-1] if self.stack else ""
        if self.first_layer is None:
            self.first_layer = current
        if current == self.first_layer or current.startswith(self.first_layer + "."):
            cost[_IDX["first_layer_macs"]] += dense_macs
        else:
            cost[_IDX["sops"]] += rate * dense_macs
        return cost


# dense rules --------------------------------------------------------------------------------
def _matmul(c: OpCounter, a: torch.Tensor, b: torch.Tensor, out: Any, cost: list[float]) -> list[float]:
    """``a (..., M, K) @ b (..., K, N)`` with equal (already broadcast) batch dims, or mv/dot."""
    if a.dim() == 1 and b.dim() == 1:
        m, k, n, batch = 1, a.shape[0], 1, 1
    elif b.dim() == 1:
        m, k, n, batch = a.shape[-2], a.shape[-1], 1, math.prod(a.shape[:-2])
    else:
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        batch = math.prod(a.shape[:-2])
    dense = float(batch * m * n * k)
    sa, sb = c.act_stats(a), c.act_stats(b)
    a_bin = sa is not None and sa.binary
    b_bin = sb is not None and sb.binary
    synaptic: float | None = None
    if a_bin and b_bin:
        # each (i, k, j) with a[i, k] = b[k, j] = 1 is one accumulate
        # integer arithmetic keeps the count exact at any size
        am, bm = a != 0, b != 0
        if b.dim() == 1:
            synaptic = float((am & bm).sum(dtype=torch.int64)) if a.dim() == 1 else \
                float((am.sum(-2, dtype=torch.int64) * bm).sum())
        else:
            synaptic = float((am.sum(-2, dtype=torch.int64) * bm.sum(-1, dtype=torch.int64)).sum())
    elif a_bin:
        synaptic = float(sa.nnz * n)   # each nonzero a[..., i, k] adds row k of b (n values)
    elif b_bin:
        synaptic = float(sb.nnz * m)   # each nonzero b[..., k, j] adds column k of a (m values)
    return c.record_dense(cost, dense, sa, sb, synaptic)


def _mm(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    cost = [0.0] * _N
    c._add_bytes(cost, args, kwargs, out)
    return _matmul(c, args[0], args[1], out, cost)


def _addmm(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    """addmm/baddbmm/addmv/addbmm: ``beta * bias + alpha * (a @ b)``."""
    cost = [0.0] * _N
    c._add_bytes(cost, args, kwargs, out)
    bias, a, b = args[0], args[1], args[2]
    beta = kwargs.get("beta", args[3] if len(args) > 3 else 1)
    alpha = kwargs.get("alpha", args[4] if len(args) > 4 else 1)
    o = out
    if beta != 0:
        cost[_IDX["adds"]] += o.numel()
        if beta != 1:
            cost[_IDX["muls"]] += bias.numel()
    if alpha != 1:
        cost[_IDX["muls"]] += o.numel()
    if a.dim() == 3 and o.dim() == 2:
        # addbmm sums the batch of products into one matrix
        cost[_IDX["adds"]] += o.numel() * (a.shape[0] - 1)
    return _matmul(c, a, b, out, cost)


def _addmm_activation(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    cost = _addmm(c, args[:5], {k: v for k, v in kwargs.items() if k in ("beta", "alpha")}, out)
    use_gelu = kwargs.get("use_gelu", args[5] if len(args) > 5 else False)
    n = out.numel()
    if use_gelu:
        cost[_IDX["exps"]] += n
        cost[_IDX["muls"]] += 3 * n
        cost[_IDX["adds"]] += n
    else:
        cost[_IDX["compares"]] += n
    return cost


def _linear(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    cost = [0.0] * _N
    c._add_bytes(cost, args, kwargs, out)
    if bias is not None:
        cost[_IDX["adds"]] += out.numel()
    x2 = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    return _matmul(c, x2, w.t(), out, cost)


def _conv(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    """aten.convolution(x, w, bias, stride, padding, dilation, transposed, output_padding, groups)."""
    x, w, bias, stride, padding, dilation, transposed, output_padding, groups = args[:9]
    cost = [0.0] * _N
    c._add_bytes(cost, args, kwargs, out)
    kernel = math.prod(w.shape[2:])
    if transposed:
        # weight (C_in, C_out/groups, *k): every input element meets C_out/groups * k weights
        dense = float(x.numel() * w.shape[1] * kernel)
    else:
        # weight (C_out, C_in/groups, *k): every output element sums C_in/groups * k products
        dense = float(out.numel() * w.shape[1] * kernel)
    if bias is not None:
        cost[_IDX["adds"]] += out.numel()
    sx = c.act_stats(x)
    synaptic: float | None = None
    if sx is not None and sx.binary:
        synaptic = _conv_binary_acs(x, w, stride, padding, dilation, transposed, output_padding, groups)
    return c.record_dense(cost, dense, sx, None, synaptic)


def _conv_binary_acs(x: torch.Tensor, w: torch.Tensor, stride: Sequence[int], padding: Sequence[int],
                     dilation: Sequence[int], transposed: bool, output_padding: Sequence[int], groups: int) -> float:
    """Exact accumulates of a convolution whose input is binary.

    Convolving the nonzero mask with a ones kernel of one output channel per group counts, at
    every output position, the nonzero inputs of the receptive field; each of them is added
    into every output channel of its group, hence the factor ``C_out / groups``.
    """
    # a binary fp32 input is its own nonzero mask: no copy needed
    mask = x if x.dtype == torch.float32 else (x != 0).to(torch.float32)
    with torch.no_grad():
        if transposed:
            ones = torch.ones((w.shape[0], 1, *w.shape[2:]), dtype=torch.float32, device=x.device)
            occ = torch.ops.aten.convolution.default(mask, ones, None, stride, padding, dilation, True,
                                                     output_padding, groups)
            per_group_out = w.shape[1]
        else:
            ones = torch.ones((groups, w.shape[1], *w.shape[2:]), dtype=torch.float32, device=x.device)
            occ = torch.ops.aten.convolution.default(mask, ones, None, stride, padding, dilation, False,
                                                     [0] * len(stride), groups)
            per_group_out = w.shape[0] // groups
    return float(occ.sum(dtype=torch.float64)) * per_group_out


def _sdpa(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    """Fused attention ops: ``softmax(q k^T * scale) v`` with q (..., Hq, L, E), k/v (..., Hk, S, E/Ev)."""
    q, k, v = args[0], args[1], args[2]
    cost = [0.0] * _N
    c._add_bytes(cost, args, kwargs, out)
    L, E = q.shape[-2], q.shape[-1]
    S, Ev = k.shape[-2], v.shape[-1]
    rows = math.prod(q.shape[:-2])   # batch x query heads
    rep = q.shape[-3] // k.shape[-3] if q.dim() >= 3 and k.dim() >= 3 and k.shape[-3] else 1  # GQA
    sq, sk, sv = c.act_stats(q), c.act_stats(k), c.act_stats(v)
    qk_dense = float(rows * L * S * E)
    pv_dense = float(rows * L * S * Ev)
    qk_syn: float | None = None
    if sq is not None and sq.binary and sk is not None and sk.binary:
        qm = (q != 0).sum(-2, dtype=torch.int64)
        km = (k != 0).sum(-2, dtype=torch.int64)
        if rep > 1:
            km = km.repeat_interleave(rep, dim=-2)
        qk_syn = float((qm * km).sum())
    elif sq is not None and sq.binary:
        qk_syn = float(sq.nnz * S)
    elif sk is not None and sk.binary:
        qk_syn = float(sk.nnz * L * rep)
    c.record_dense(cost, qk_dense, sq, sk, qk_syn)
    # the attention probabilities are dense; only a binary v makes the second product ACs
    pv_syn = float(sv.nnz * L * rep) if sv is not None and sv.binary else None
    c.record_dense(cost, pv_dense, None, sv, pv_syn)
    scores = float(rows * L * S)
    cost[_IDX["exps"]] += scores
    cost[_IDX["compares"]] += scores       # running max
    cost[_IDX["adds"]] += 2 * scores       # subtract max, sum
    cost[_IDX["muls"]] += scores + rows * L * Ev   # scale scores, normalise outputs
    return cost


_DENSE: dict[str, Callable[..., list[float]]] = {
    "mm": _mm, "bmm": _mm, "mv": _mm, "dot": _mm, "vdot": _mm,
    "addmm": _addmm, "baddbmm": _addmm, "addmv": _addmm, "addbmm": _addmm,
    "_addmm_activation": _addmm_activation, "linear": _linear,
    "convolution": _conv,
    "_scaled_dot_product_flash_attention": _sdpa,
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa,
    "_scaled_dot_product_efficient_attention": _sdpa,
    "_scaled_dot_product_cudnn_attention": _sdpa,
    "_scaled_dot_product_fused_attention_overrideable": _sdpa,
}


# reductions, softmax, norms ------------------------------------------------------------------
def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    return None


def _reduction(adds: float, muls: float, compares: float, exps: float = 0.0,
               per_input: bool = False) -> Callable[..., list[float]]:
    """Reductions cost ``in - out`` combining ops (``in`` when ``per_input``), per kind."""

    def rule(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
        x = args[0]
        o = _first_tensor(out)
        n_in = float(x.numel())
        n_out = float(o.numel()) if o is not None else 1.0
        n = n_in if per_input else max(n_in - n_out, 0.0)
        if not per_input and n_in == n_out:
            # a binary max/min (maximum of two tensors) arrives under the same packet name
            n = n_out
        cost = [0.0] * _N
        cost[2] = adds * n
        cost[3] = muls * n
        cost[4] = exps * n
        cost[5] = compares * n
        c._add_bytes(cost, args, kwargs, out)
        return cost

    return rule


def _mean(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    cost = _reduction(1, 0, 0)(c, args, kwargs, out)
    cost[3] += float(_first_tensor(out).numel())   # one division per output
    return cost


def _var(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    # mean (n adds), centre (n adds), square (n muls), sum (n adds), divide per output
    n = float(args[0].numel())
    n_out = float(_first_tensor(out).numel())
    cost = [0.0] * _N
    cost[2] = 3 * n
    cost[3] = n + 2 * n_out
    c._add_bytes(cost, args, kwargs, out)
    return cost


def _softmax(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    # max (compare), subtract max (add), exp, sum (add), normalise (mul) per element
    n = float(args[0].numel())
    cost = [0.0] * _N
    cost[2] = 2 * n
    cost[3] = n
    cost[4] = n
    cost[5] = n
    c._add_bytes(cost, args, kwargs, out)
    return cost


def _norm_stats_cost(n: float, rows: float, affine: bool, cost: list[float]) -> None:
    # mean: n adds; centre: n adds; variance: n muls + n adds; normalise: n muls; rsqrt per row
    cost[2] += 3 * n
    cost[3] += 2 * n
    cost[4] += rows
    if affine:
        cost[2] += n
        cost[3] += n


def _layer_norm(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    x, shape = args[0], args[1]
    weight = args[2] if len(args) > 2 else None
    n = float(x.numel())
    rows = n / max(math.prod(shape), 1)
    cost = [0.0] * _N
    _norm_stats_cost(n, rows, weight is not None, cost)
    c._add_bytes(cost, args, kwargs, out)
    return cost


def _group_norm(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    # native_group_norm(input, weight, bias, N, C, HxW, group, eps)
    x, weight = args[0], args[1]
    n = float(x.numel())
    rows = float(args[3] * args[6]) if len(args) > 6 else 1.0
    cost = [0.0] * _N
    _norm_stats_cost(n, rows, weight is not None, cost)
    c._add_bytes(cost, args, kwargs, out)
    return cost


def _batch_norm(training_arg: int | None) -> Callable[..., list[float]]:
    """BatchNorm variants; ``training_arg`` is the index of the ``training`` flag (None: eval-only op)."""

    def rule(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
        x = args[0]
        training = bool(args[training_arg]) if training_arg is not None and len(args) > training_arg else False
        n = float(x.numel())
        channels = float(x.shape[1]) if x.dim() > 1 else 1.0
        cost = [0.0] * _N
        if training:
            _norm_stats_cost(n, channels, True, cost)
        else:
            # with running statistics BN is a per-channel scale and shift (foldable into the layer before)
            cost[2] += n
            cost[3] += n
        c._add_bytes(cost, args, kwargs, out)
        return cost

    return rule


def _pool(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    # avg_pool: (window - 1) adds and one multiply per output
    kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size", [1])
    window = math.prod(kernel) if isinstance(kernel, (list, tuple)) else kernel
    n_out = float(out.numel())
    cost = [0.0] * _N
    cost[2] = n_out * (window - 1)
    cost[3] = n_out
    c._add_bytes(cost, args, kwargs, out)
    return cost


def _max_pool(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size", [1])
    window = math.prod(kernel) if isinstance(kernel, (list, tuple)) else kernel
    o = _first_tensor(out)
    cost = [0.0] * _N
    cost[5] = float(o.numel()) * (window - 1)
    c._add_bytes(cost, args, kwargs, out)
    return cost


def _clamp(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    bounds = [b for b in (args[1] if len(args) > 1 else kwargs.get("min"),
                          args[2] if len(args) > 2 else kwargs.get("max")) if b is not None]
    cost = [0.0] * _N
    cost[5] = float(out.numel()) * len(bounds)
    c._add_bytes(cost, args, kwargs, out)
    return cost


def _pow(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    """x ** e: a square is one multiply, a (reciprocal) square root one exp, a small integer power
    ``|e| - 1`` multiplies (plus a division if negative), anything else exp(e * log x)."""
    e = args[1] if len(args) > 1 else kwargs.get("exponent")
    n = float(out.numel())
    cost = [0.0] * _N
    if isinstance(e, (int, float)) and not isinstance(e, bool):
        if abs(e) in (0.5,):
            cost[4] = n
        elif float(e).is_integer() and 1 <= abs(e) <= 8:
            cost[3] = n * (abs(e) - 1 + (1 if e < 0 else 0))
        else:
            cost[3] = n
            cost[4] = 2 * n
    else:   # tensor exponent
        cost[3] = n
        cost[4] = 2 * n
    c._add_bytes(cost, args, kwargs, out)
    return cost


def _embedding(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
    # a lookup reads only the selected rows, not the whole table
    weight, indices = args[0], args[1]
    cost = [0.0] * _N
    rows = float(_tensor_bytes(out))
    cost[7] = rows + _tensor_bytes(indices)
    cost[8] = float(_tensor_bytes(out))
    if c.is_param(weight):
        cost[9] = rows
    return cost


def _fft(signal_arg: int | None, half: bool) -> Callable[..., list[float]]:
    """FFTs along ``dim``: a radix-2 transform of ``n`` complex points is ``(n/2) log2 n``
    butterflies, each one complex multiply (4 real multiplies, 2 adds) and two complex adds
    (4 adds): ``2 n log2 n`` multiplies and ``3 n log2 n`` adds per transform. Real-input
    (``r2c``) and real-output (``c2r``) transforms cost half. ``signal_arg`` is the positional
    argument holding the time-domain signal (None: the output does, as for ``c2r``)."""

    def rule(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> list[float]:
        signal = out if signal_arg is None else args[signal_arg]
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims)
        n = float(math.prod(signal.shape[d] for d in dims))
        transforms = float(signal.numel()) / max(n, 1.0)
        work = transforms * n * math.log2(max(n, 2.0)) * (0.5 if half else 1.0)
        cost = [0.0] * _N
        cost[_IDX["muls"]] = 2.0 * work
        cost[_IDX["adds"]] = 3.0 * work
        c._add_bytes(cost, args, kwargs, out)
        return cost

    return rule


_OTHER: dict[str, Callable[..., list[float]]] = {
    "sum": _reduction(1, 0, 0), "nansum": _reduction(1, 0, 0), "mean": _mean,
    "prod": _reduction(0, 1, 0),
    "amax": _reduction(0, 0, 1), "amin": _reduction(0, 0, 1), "max": _reduction(0, 0, 1),
    "min": _reduction(0, 0, 1), "argmax": _reduction(0, 0, 1), "argmin": _reduction(0, 0, 1),
    "aminmax": _reduction(0, 0, 2),
    "cumsum": _reduction(1, 0, 0, per_input=True), "cumprod": _reduction(0, 1, 0, per_input=True),
    "logsumexp": _reduction(2, 0, 1, exps=1, per_input=True),
    "count_nonzero": _reduction(1, 0, 1, per_input=True),
    "all": _reduction(0, 0, 1, per_input=True), "any": _reduction(0, 0, 1, per_input=True),
    "linalg_vector_norm": _reduction(1, 1, 0, per_input=True), "norm": _reduction(1, 1, 0, per_input=True),
    "var": _var, "std": _var, "var_mean": _var, "std_mean": _var,
    "_softmax": _softmax, "softmax": _softmax, "_log_softmax": _softmax, "log_softmax": _softmax,
    "_safe_softmax": _softmax,
    "native_layer_norm": _layer_norm, "native_group_norm": _group_norm,
    "native_batch_norm": _batch_norm(5), "_native_batch_norm_legit": _batch_norm(5),
    "_native_batch_norm_legit_functional": _batch_norm(5), "cudnn_batch_norm": _batch_norm(5),
    "miopen_batch_norm": _batch_norm(5), "_native_batch_norm_legit_no_training": _batch_norm(None),
    "avg_pool1d": _pool, "avg_pool2d": _pool, "avg_pool3d": _pool,
    "max_pool2d_with_indices": _max_pool, "max_pool1d_with_indices": _max_pool,
    "max_pool3d_with_indices": _max_pool, "max_pool2d": _max_pool, "max_pool1d": _max_pool,
    "clamp": _clamp, "clip": _clamp, "pow": _pow, "float_power": _pow,
    "embedding": _embedding,
    "_fft_r2c": _fft(0, half=True), "_fft_c2r": _fft(None, half=True), "_fft_c2c": _fft(0, half=False),
}


def model_param_storages(model: nn.Module) -> set[int]:
    """Data pointers of the storages of a model's parameters (meta tensors excluded)."""
    out: set[int] = set()
    for p in model.parameters():
        if p.device.type != "meta":
            out.add(p.untyped_storage().data_ptr())
    return out


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

    def pre_hook(path: str) -> Callable[..., None]:
        return lambda module, args: counter.push(path)

    def post_hook(path: str) -> Callable[..., None]:
        return lambda module, args, output: counter.pop(path)

    handles = []
    try:
        for path, module in names.items():
            handles.append(module.register_forward_pre_hook(pre_hook(path)))
            handles.append(module.register_forward_hook(post_hook(path), always_call=True))
            # Recurrent blocks call each other's scan()/step() directly, bypassing __call__ and
            # its hooks: their step hooks attribute those calls.
            if isinstance(module, Recurrent):
                handles.append(module.register_step_hook(*_step_hooks(counter, path), always_call=True))
        with torch.no_grad() if no_grad else nullcontext(), counter:
            target(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return _build_report(counter, target, prof, mode, notes)


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


def _build_report(counter: OpCounter, model: nn.Module, profile: EnergyProfile, mode: str,
                  notes: list[str]) -> Report:
    """Inclusive per-module totals: an op belongs to every module on the call stack when it ran
    and to every tree ancestor of the innermost one (containers whose own methods bypass
    ``__call__``, e.g. ``blocks.0`` when the model calls ``block._run``, still get their total)."""
    tree_order = {name: i for i, name in enumerate(n for n, _ in model.named_modules())}
    sums: dict[str, Counts] = {}
    total = Counts(calls=counter.calls.get("", 1))
    for stack, values in counter.by_stack.items():
        total.add_vector(FIELDS, values)
        owners = set(stack)
        if stack:
            parts = stack[-1].split(".")
            owners.update(".".join(parts[:i]) for i in range(1, len(parts)))
        owners.discard("")
        for p in owners:
            if p not in sums:
                sums[p] = Counts(calls=counter.calls.get(p, 0))
            sums[p].add_vector(FIELDS, values)
    for p in counter.order:   # modules that ran but cost nothing still appear
        if p and p not in sums:
            sums[p] = Counts(calls=counter.calls[p])
    modules = {p: sums[p] for p in sorted(sums, key=lambda p: (tree_order.get(p, len(tree_order)), p))}
    ops = {name: Counts.from_vector(FIELDS, v, calls=counter.op_calls.get(name, 0))
           for name, v in counter.by_op.items()}
    if mode == "spikformer":
        notes.append(f"spikformer convention: first layer = {counter.first_layer or '<root>'!r}")
    return Report(model=type(model).__name__, total=total, modules=modules, ops=ops, profile=profile, mode=mode,
                  unknown_ops=dict(counter.unknown_ops), notes=notes + counter.notes)
