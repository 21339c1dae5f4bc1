"""Collectives with autograd for sequence parallelism, and the per-rank traffic they record.

Three differentiable exchanges carry everything the sequence-parallel ops need:

- :class:`PrefixCarry`: every rank contributes a small summary of its chunk (a zero-start final state
  and a total decay, or the last few inputs); one all-gather gives every rank all summaries and it folds
  those of the ranks before it into its initial state. Backward: each rank differentiates its own fold,
  one all-reduce of the per-summary gradients, and each rank keeps the rows of its own summary.
- :class:`PipeRecv` / :class:`PipeSend`: a state sent from rank ``r - 1`` to rank ``r`` (forward) and
  its gradient sent back from ``r`` to ``r - 1`` (backward), for recurrences that are not linear.
- :class:`RingGather`: chunks passed around a ring until every rank has all of them (ring
  self-attention); its backward is a ring reduce-scatter of the gradients.

The byte counts in :class:`CommStats` are what a rank puts on the wire with the ring algorithms
(all-gather: ``(P - 1) * n`` elements; all-reduce: ``2 (P - 1) / P`` of the reduced buffer), so they
do not depend on how a backend implements a collective.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from neurostep.distributed.parallel import SequenceParallel

Parts = tuple[torch.Tensor, ...]
Combine = Callable[[Parts, Parts], Parts]


@dataclass
class CommStats:
    """Traffic of one rank: bytes it sent, messages, and seconds spent inside communication calls
    (waiting for slower ranks included), split by pass (``"forward"`` or ``"backward"``)."""

    bytes_sent: dict[str, int] = field(default_factory=lambda: {"forward": 0, "backward": 0})
    messages: dict[str, int] = field(default_factory=lambda: {"forward": 0, "backward": 0})
    seconds: dict[str, float] = field(default_factory=lambda: {"forward": 0.0, "backward": 0.0})

    def add(self, phase: str, nbytes: int, seconds: float, messages: int = 1) -> None:
        """Count ``messages`` calls that sent ``nbytes`` in all and took ``seconds``."""
        self.bytes_sent[phase] += int(nbytes)
        self.messages[phase] += messages
        self.seconds[phase] += seconds

    def reset(self) -> None:
        """Zero every counter."""
        for table in (self.bytes_sent, self.messages, self.seconds):
            for key in table:
                table[key] = 0


def all_gather_rows(sp: SequenceParallel, flat: torch.Tensor, phase: str) -> torch.Tensor:
    """``flat (n,)`` of every rank stacked: ``(P, n)``, row ``j`` from group rank ``j``."""
    rows = [torch.empty_like(flat) for _ in range(sp.size)]
    start = time.perf_counter()
    dist.all_gather(rows, flat.contiguous(), group=sp.group)
    sp.stats.add(phase, (sp.size - 1) * flat.numel() * flat.element_size(), time.perf_counter() - start)
    return torch.stack(rows)


def all_reduce_sum(sp: SequenceParallel, t: torch.Tensor, phase: str) -> torch.Tensor:
    """Sum of ``t`` over the group (a new tensor)."""
    t = t.contiguous().clone()
    start = time.perf_counter()
    dist.all_reduce(t, group=sp.group)
    volume = 2 * (sp.size - 1) * t.numel() * t.element_size() // sp.size
    sp.stats.add(phase, volume, time.perf_counter() - start)
    return t


def send(sp: SequenceParallel, t: torch.Tensor, to: int, tag: int, phase: str) -> None:
    """Blocking send of ``t`` to group rank ``to``."""
    start = time.perf_counter()
    dist.send(t.contiguous(), dst=sp.global_rank(to), group=sp.group, tag=tag)
    sp.stats.add(phase, t.numel() * t.element_size(), time.perf_counter() - start)


def recv(sp: SequenceParallel, like: torch.Tensor, frm: int, tag: int, phase: str) -> torch.Tensor:
    """Blocking receive from group rank ``frm`` into a new tensor shaped like ``like``."""
    out = torch.empty_like(like, memory_format=torch.contiguous_format)
    start = time.perf_counter()
    dist.recv(out, src=sp.global_rank(frm), group=sp.group, tag=tag)
    sp.stats.add(phase, 0, time.perf_counter() - start, messages=0)  # a receive sends nothing
    return out


def sendrecv(sp: SequenceParallel, t: torch.Tensor, to: int, frm: int, tag: int, phase: str) -> torch.Tensor:
    """Send ``t`` to ``to`` and receive a tensor like it from ``frm`` at the same time (a ring step)."""
    t = t.contiguous()
    out = torch.empty_like(t)
    start = time.perf_counter()
    works = [dist.isend(t, dst=sp.global_rank(to), group=sp.group, tag=tag),
             dist.irecv(out, src=sp.global_rank(frm), group=sp.group, tag=tag)]
    for w in works:
        w.wait()
    sp.stats.add(phase, t.numel() * t.element_size(), time.perf_counter() - start)
    return out


def flatten(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``parts`` (one dtype) into one flat buffer, so a summary travels as one message."""
    dtypes = {p.dtype for p in parts}
    if len(dtypes) != 1:
        raise TypeError(f"the parts of a chunk summary must share one dtype, got {sorted(map(str, dtypes))}")
    return torch.cat([p.reshape(-1) for p in parts])


def unflatten(flat: torch.Tensor, shapes: Sequence[torch.Size]) -> Parts:
    """Inverse of :func:`flatten` for parts of the given shapes."""
    out, offset = [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(flat[offset:offset + n].reshape(shape))
        offset += n
    return tuple(out)


def fold(combine: Combine, rows: Sequence[Parts], n_state: int, upto: int) -> Parts:
    """The state entering chunk ``upto``: rank 0's summary holds its true final state (its first
    ``n_state`` parts); every later chunk ``j < upto`` is folded in with ``combine(state, summary_j)``."""
    state = tuple(p.clone() for p in rows[0][:n_state])
    for j in range(1, upto):
        state = combine(state, rows[j])
    return state


class PrefixCarry(torch.autograd.Function):
    """All-gather the chunk summaries and fold those of earlier ranks into this rank's initial state.

    ``apply(sp, combine, n_state, n_parts, *parts, *anchor)``. On rank 0 (whose chunk starts from the
    sequence's own initial state) the result is ``anchor`` passed through, so that the backward runs on
    every rank (its all-reduce needs all of them); on other ranks it is the ``n_state`` state tensors.
    """

    @staticmethod
    def forward(ctx: Any, sp: SequenceParallel, combine: Combine, n_state: int, n_parts: int,
                *tensors: torch.Tensor) -> Any:
        parts, anchor = tensors[:n_parts], tensors[n_parts:]
        shapes = [p.shape for p in parts]
        gathered = all_gather_rows(sp, flatten(parts), "forward")
        ctx.sp, ctx.combine, ctx.n_state, ctx.shapes, ctx.n_anchor = sp, combine, n_state, shapes, len(anchor)
        ctx.save_for_backward(gathered)
        if sp.rank == 0:
            return anchor[0].clone()
        rows = [unflatten(row, shapes) for row in gathered]
        return fold(combine, rows, n_state, sp.rank)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        sp = ctx.sp
        (gathered,) = ctx.saved_tensors
        grad_rows = torch.zeros_like(gathered)
        if sp.rank > 0:
            leaves = [tuple(p.detach().requires_grad_() for p in unflatten(gathered[j], ctx.shapes))
                      for j in range(sp.rank)]
            with torch.enable_grad():
                state = fold(ctx.combine, leaves, ctx.n_state, sp.rank)
            flat_leaves = [p for row in leaves for p in row]
            got = torch.autograd.grad(state, flat_leaves, grads, allow_unused=True)
            for j in range(sp.rank):
                chunk = got[j * len(ctx.shapes):(j + 1) * len(ctx.shapes)]
                grad_rows[j] = flatten([torch.zeros(s, dtype=gathered.dtype, device=gathered.device) if g is None
                                        else g for g, s in zip(chunk, ctx.shapes)])
        total = all_reduce_sum(sp, grad_rows, "backward")
        own = unflatten(total[sp.rank], ctx.shapes)
        anchor_grad = (grads[0],) if sp.rank == 0 and ctx.n_anchor else (None,) * ctx.n_anchor
        return (None, None, None, None, *own, *anchor_grad)


def prefix_carry(sp: SequenceParallel, combine: Combine, n_state: int, parts: Sequence[torch.Tensor],
                 anchor: torch.Tensor | None) -> Any:
    """Run :class:`PrefixCarry`; ``anchor`` must be given on rank 0 and None elsewhere."""
    if (anchor is None) != (sp.rank > 0):
        raise ValueError("prefix_carry takes an anchor on rank 0 only")
    tensors = (*parts, anchor) if anchor is not None else tuple(parts)
    return PrefixCarry.apply(sp, combine, n_state, len(parts), *tensors)


class PipeRecv(torch.autograd.Function):
    """Receive a state from rank ``r - 1``; backward sends its gradient back.

    ``apply(sp, tag, link, *likes)``: ``likes`` give the shapes and dtypes; ``link`` is a 0-d tensor
    that requires grad when gradients must flow back across the boundary (its own gradient is None).
    """

    @staticmethod
    def forward(ctx: Any, sp: SequenceParallel, tag: int, link: torch.Tensor, *likes: torch.Tensor) -> Any:
        ctx.sp, ctx.tag = sp, tag
        out = tuple(recv(sp, like, sp.rank - 1, tag, "forward") for like in likes)
        return out if len(out) > 1 else out[0]

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        for g in grads:
            send(ctx.sp, g, ctx.sp.rank - 1, ctx.tag, "backward")
        return (None, None, None, *(None for _ in grads))


class PipeSend(torch.autograd.Function):
    """Send a state to rank ``r + 1``; backward receives its gradient from there.

    ``apply(sp, tag, n_state, *states, *anchors)`` returns copies of ``anchors`` (this rank's outputs):
    routing them through this node makes autograd visit it whenever the outputs get a gradient.
    """

    @staticmethod
    def forward(ctx: Any, sp: SequenceParallel, tag: int, n_state: int, *tensors: torch.Tensor) -> Any:
        states, anchors = tensors[:n_state], tensors[n_state:]
        for s in states:
            send(sp, s, sp.rank + 1, tag, "forward")
        ctx.sp, ctx.tag = sp, tag
        ctx.likes = [torch.empty_like(s, memory_format=torch.contiguous_format) for s in states]
        out = tuple(a.clone() for a in anchors)
        return out if len(out) > 1 else out[0]

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        state_grads = tuple(recv(ctx.sp, like, ctx.sp.rank + 1, ctx.tag, "backward") for like in ctx.likes)
        return (None, None, None, *state_grads, *grads)


class RingGather(torch.autograd.Function):
    """Every rank's chunk, passed around the ring: ``(P, *chunk)``, row ``j`` from group rank ``j``.

    Backward: a ring reduce-scatter, so each rank receives the summed gradient of its own chunk.
    """

    @staticmethod
    def forward(ctx: Any, sp: SequenceParallel, tag: int, x: torch.Tensor) -> torch.Tensor:
        ctx.sp, ctx.tag = sp, tag
        rows: list[torch.Tensor | None] = [None] * sp.size
        rows[sp.rank] = x.contiguous()
        current = rows[sp.rank]
        for step in range(1, sp.size):
            current = sendrecv(sp, current, (sp.rank + 1) % sp.size, (sp.rank - 1) % sp.size, tag, "forward")
            rows[(sp.rank - step) % sp.size] = current
        return torch.stack(rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        sp, size, rank = ctx.sp, ctx.sp.size, ctx.sp.rank
        # Partial sums travel one hop per step; after P - 1 steps rank r holds the sum for row r.
        acc = grad[(rank - 1) % size].contiguous()
        for step in range(1, size):
            acc = sendrecv(sp, acc, (rank + 1) % size, (rank - 1) % size, ctx.tag, "backward")
            acc = acc + grad[(rank - 1 - step) % size]
        return None, None, acc


__all__ = ["CommStats", "PipeRecv", "PipeSend", "PrefixCarry", "RingGather", "all_gather_rows", "all_reduce_sum",
           "flatten", "fold", "prefix_carry", "unflatten"]
