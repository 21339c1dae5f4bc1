"""Ops that move, create or look up data: bytes only, no arithmetic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from neurostep.energy.operands import iter_tensors, tensor_bytes
from neurostep.energy.record import CostRecord

if TYPE_CHECKING:
    from neurostep.energy.dispatch import OpCounter

# Ops that compute nothing worth pricing: they move or create data (bytes are still counted).
MOVE_OPS = frozenset({
    "clone", "_to_copy", "contiguous", "cat", "stack", "index", "index_select", "gather", "scatter",
    "scatter_add", "index_put", "index_add", "index_copy", "masked_fill", "masked_scatter", "masked_select",
    "where", "repeat", "repeat_interleave", "flip", "roll", "constant_pad_nd", "reflection_pad1d",
    "reflection_pad2d", "replicate_pad1d", "replicate_pad2d", "pad", "bernoulli", "tril", "triu",
    "neg", "abs", "floor", "ceil", "round", "trunc", "frac", "logical_and", "logical_or", "logical_not",
    "logical_xor", "bitwise_and", "bitwise_or", "bitwise_not", "bitwise_xor", "isnan", "isinf", "isfinite",
    "nan_to_num", "im2col", "col2im", "unfold_copy", "split_with_sizes_copy", "narrow_copy", "slice_scatter",
    "select_scatter", "diagonal_scatter", "as_strided_scatter", "one_hot", "sort", "topk",
    "nonzero", "unique", "_unique2", "bucketize", "searchsorted", "dropout", "native_dropout",
    "sym_constrain_range", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_index_put_impl",
    "set",
})
# Ops that write their output without reading tensor data (their tensor arguments give only
# shapes, dtypes or the destination).
WRITE_ONLY = frozenset({
    "fill", "zero", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "new_zeros", "new_ones",
    "new_full", "arange", "linspace", "logspace", "eye", "scalar_tensor", "rand", "randn", "rand_like",
    "randn_like", "randint", "randint_like", "normal", "uniform", "random", "exponential", "geometric",
    "cauchy", "log_normal",
})
# Ops that neither compute nor move data (allocation without writing, metadata, scalar reads).
NO_TRAFFIC = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view", "lift_fresh",
    "lift_fresh_copy", "_local_scalar_dense", "detach", "alias", "resize", "is_same_size", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "_assert_async", "_assert_scalar", "_functional_assert_async",
    "record_stream", "_has_compatible_shallow_copy_type", "is_pinned", "_nested_tensor_from_mask",
})


def bytes_only(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    """Every tensor argument read, every output written."""
    cost = CostRecord()
    c.add_bytes(cost, args, kwargs, out)
    return cost


def write_only(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    cost = CostRecord()
    cost.bytes_written = float(sum(tensor_bytes(t) for t in iter_tensors(out if isinstance(out, (tuple, list))
                                                                        else (out,))))
    return cost


def copy(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    """copy_(dst, src): the source is read, the destination only written."""
    cost = CostRecord()
    src = args[1] if len(args) > 1 else kwargs.get("src")
    if isinstance(src, torch.Tensor):
        cost.bytes_read = float(tensor_bytes(src))
        cost.param_bytes_read = float(tensor_bytes(src)) if c.is_param(src) else 0.0
    cost.bytes_written = float(tensor_bytes(args[0]))
    return cost


def embedding(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    """A lookup reads only the selected rows (and the indices), not the whole table."""
    weight, indices = args[0], args[1]
    cost = CostRecord()
    rows = float(tensor_bytes(out))
    cost.bytes_read = rows + tensor_bytes(indices)
    cost.bytes_written = float(tensor_bytes(out))
    if c.is_param(weight):
        cost.param_bytes_read = rows
    return cost
