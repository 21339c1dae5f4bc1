"""Dense products: matmul family, linear, convolution, fused attention, FFTs.

A dense op costs MACs unless an activation operand (never a parameter) is binary; then it costs
ACs on that operand's actual nonzeros (see :meth:`OpCounter.record_dense
<neurostep.energy.dispatch.OpCounter.record_dense>`, which also keeps the spike statistics and
the Spikformer-convention split).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from neurostep.energy.record import CostRecord

if TYPE_CHECKING:
    from neurostep.energy.dispatch import OpCounter


def _matmul(c: OpCounter, a: torch.Tensor, b: torch.Tensor, out: Any, cost: CostRecord) -> CostRecord:
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


def mm(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    """mm/bmm/mv/dot/vdot."""
    cost = CostRecord()
    c.add_bytes(cost, args, kwargs, out)
    return _matmul(c, args[0], args[1], out, cost)


def addmm(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    """addmm/baddbmm/addmv/addbmm: ``beta * bias + alpha * (a @ b)``."""
    cost = CostRecord()
    c.add_bytes(cost, args, kwargs, out)
    bias, a, b = args[0], args[1], args[2]
    beta = kwargs.get("beta", args[3] if len(args) > 3 else 1)
    alpha = kwargs.get("alpha", args[4] if len(args) > 4 else 1)
    o = out
    if beta != 0:
        cost.adds += o.numel()
        if beta != 1:
            cost.muls += bias.numel()
    if alpha != 1:
        cost.muls += o.numel()
    if a.dim() == 3 and o.dim() == 2:
        # addbmm sums the batch of products into one matrix
        cost.adds += o.numel() * (a.shape[0] - 1)
    return _matmul(c, a, b, out, cost)


def addmm_activation(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    """addmm followed by a fused ReLU or GELU."""
    cost = addmm(c, args[:5], {k: v for k, v in kwargs.items() if k in ("beta", "alpha")}, out)
    use_gelu = kwargs.get("use_gelu", args[5] if len(args) > 5 else False)
    n = out.numel()
    if use_gelu:
        cost.exps += n
        cost.muls += 3 * n
        cost.adds += n
    else:
        cost.compares += n
    return cost


def linear(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    """``x @ w.T + bias`` (arrives undecomposed under some dispatch keys)."""
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    cost = CostRecord()
    c.add_bytes(cost, args, kwargs, out)
    if bias is not None:
        cost.adds += out.numel()
    x2 = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    return _matmul(c, x2, w.t(), out, cost)


def conv(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    """aten.convolution(x, w, bias, stride, padding, dilation, transposed, output_padding, groups)."""
    x, w, bias, stride, padding, dilation, transposed, output_padding, groups = args[:9]
    cost = CostRecord()
    c.add_bytes(cost, args, kwargs, out)
    kernel = math.prod(w.shape[2:])
    if transposed:
        # weight (C_in, C_out/groups, *k): every input element meets C_out/groups * k weights
        dense = float(x.numel() * w.shape[1] * kernel)
    else:
        # weight (C_out, C_in/groups, *k): every output element sums C_in/groups * k products
        dense = float(out.numel() * w.shape[1] * kernel)
    if bias is not None:
        cost.adds += out.numel()
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


def sdpa(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
    """Fused attention ops: ``softmax(q k^T * scale) v`` with q (..., Hq, L, E), k/v (..., Hk, S, E/Ev)."""
    q, k, v = args[0], args[1], args[2]
    cost = CostRecord()
    c.add_bytes(cost, args, kwargs, out)
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
    cost.exps += scores
    cost.compares += scores       # running max
    cost.adds += 2 * scores       # subtract max, sum
    cost.muls += scores + rows * L * Ev   # scale scores, normalise outputs
    return cost


def fft(signal_arg: int | None, half: bool) -> Callable[..., CostRecord]:
    """FFTs along ``dim``: a radix-2 transform of ``n`` complex points is ``(n/2) log2 n``
    butterflies, each one complex multiply (4 real multiplies, 2 adds) and two complex adds
    (4 adds): ``2 n log2 n`` multiplies and ``3 n log2 n`` adds per transform. Real-input
    (``r2c``) and real-output (``c2r``) transforms cost half. ``signal_arg`` is the positional
    argument holding the time-domain signal (None: the output does, as for ``c2r``)."""

    def rule(c: OpCounter, args: tuple, kwargs: dict, out: Any) -> CostRecord:
        signal = out if signal_arg is None else args[signal_arg]
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims)
        n = float(math.prod(signal.shape[d] for d in dims))
        transforms = float(signal.numel()) / max(n, 1.0)
        work = transforms * n * math.log2(max(n, 2.0)) * (0.5 if half else 1.0)
        cost = CostRecord()
        cost.muls = 2.0 * work
        cost.adds = 3.0 * work
        c.add_bytes(cost, args, kwargs, out)
        return cost

    return rule

