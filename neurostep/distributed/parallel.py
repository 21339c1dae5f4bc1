"""Sequence parallelism: one sequence split along time over the ranks of a process group.

Every rank holds one contiguous chunk of the sequence (rank ``r`` of ``P`` holds tokens
``[r L/P, (r+1) L/P)``) and calls the same code on it. Chunk-boundary states cross ranks in one of two ways:

- two-pass (selective scan, linear scan, chunked decayed linear attention, WKV): a linear recurrence
  ``h_t = a_t h_{t-1} + b_t`` over a chunk gives ``h_end = D h_start + S``, with ``D`` the chunk's
  total decay and ``S`` its final state from a zero start. Every rank scans its chunk from zero, one
  all-gather of the small ``(S, D)`` pairs gives every rank all of them, each rank folds those of the
  ranks before it into its true initial state and scans again from it. Ranks work at the same time;
  the bytes sent are state-sized, independent of the chunk length.
- pipelined (the LIF family, whose reset makes the state update nonlinear): rank ``r`` waits for rank
  ``r - 1``'s final state, scans, and sends its own to ``r + 1``.

Local operations along the sequence use halos: the causal convolution's initial state is the last
``W - 1`` inputs before the chunk, gathered the same way (``previous_tokens`` for token shifts).

Gradients cross ranks too: the all-gather's backward is an all-reduce of the summaries' gradients, the
pipeline's backward sends each initial state's gradient back to the rank that produced it. Every rank
must call ``backward`` (on its own loss) for those exchanges to complete.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from neurostep.distributed import comm
from neurostep.engine import differentiated
from neurostep.kernels.causal_conv1d import CAUSAL_CONV1D, causal_conv1d
from neurostep.kernels.decayed_linear_attention import DECAYED_LINEAR_ATTENTION, decayed_linear_attention
from neurostep.kernels.lif import LIF, LIFState, lif_scan, resting_state
from neurostep.kernels.lif.common import resting_potential
from neurostep.kernels.linear_scan import LINEAR_SCAN, linear_scan
from neurostep.kernels.selective_scan import SELECTIVE_SCAN, selective_scan
from neurostep.kernels.selective_scan.reference import effective_delta
from neurostep.kernels.wkv import PP_INIT, WKV, WKVState, wkv


# ------------------------------------------------------------------------------------- combines
def affine_combine(state: comm.Parts, summary: comm.Parts) -> comm.Parts:
    """``h <- D * h + S`` for a summary ``(S, D)`` (``D`` broadcastable to ``S``)."""
    (h,) = state
    final, decay = summary
    return (decay * h + final,)


def wkv_combine(state: comm.Parts, summary: comm.Parts) -> comm.Parts:
    """WKV's stable state ``(aa, bb, pp)`` (numerator ``aa e^pp``, denominator ``bb e^pp``) through a chunk.

    The true state ``(aa e^pp, bb e^pp)`` follows a linear recurrence with decay ``e^w`` per step, so
    after a chunk of ``n`` tokens it is ``e^{n w}`` times the state before plus the chunk's zero-start
    state. Summing two max-shifted terms is a log-sum-exp: shift both by the larger exponent.
    """
    aa0, bb0, pp0 = state
    aa1, bb1, pp1, log_decay = summary
    carried = pp0 + log_decay
    p = torch.maximum(carried, pp1)
    e0, e1 = torch.exp(carried - p), torch.exp(pp1 - p)
    return e0 * aa0 + e1 * aa1, e0 * bb0 + e1 * bb1, p


def halo_combine(state: comm.Parts, summary: comm.Parts, *, valid: int) -> comm.Parts:
    """The last ``width`` inputs before a chunk, extended by the ``valid`` newest of the next chunk's."""
    (h,) = state
    (tail,) = summary
    width = h.shape[-1]
    return (torch.cat([h, tail[..., tail.shape[-1] - valid:]], dim=-1)[..., -width:],)


# ------------------------------------------------------------------------------------- the group
class _Routing(TorchFunctionMode):
    """Sends the fused ops called inside ``with sp:`` to their sequence-parallel forms."""

    def __init__(self, handlers: dict[Any, Callable[..., Any]]) -> None:
        super().__init__()
        self.handlers = handlers

    def __torch_function__(self, func, types, args=(), kwargs=None):
        handler = self.handlers.get(func)
        if handler is None:
            return func(*args, **(kwargs or {}))
        if kwargs:
            raise TypeError(f"{func} was called with keyword arguments; the fused ops pass them positionally")
        return handler(*args)


class SequenceParallel:
    """The ranks of ``group`` hold consecutive chunks of one sequence; this object runs ops over them.

    Args:
        group: the process group along which sequences are split (None: the default group). Its ranks
            must be ordered like the chunks: group rank ``r`` holds chunk ``r``.

    Use the methods (``selective_scan``, ``linear_scan``, ``decayed_linear_attention``, ``wkv``,
    ``lif_scan``, ``causal_conv1d``, ``ring_attention``) on local chunks, or ``with sp:`` around a
    model whose sequence mixing goes through those fused ops (Mamba, MambaLM, LIF networks): inside
    the block each fused op call on a chunk runs in its sequence-parallel form.

    State convention: ``initial_state`` is the state before the whole sequence and is read on rank 0;
    other ranks pass None (or a fresh state, for the ops that always receive one). The returned final
    state is the state after this rank's chunk (after the whole sequence on the last rank).

    Attributes: ``group``, ``rank``, ``size``, ``stats`` (:class:`~neurostep.distributed.comm.CommStats`,
    this rank's traffic since creation or ``stats.reset()``).
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("SequenceParallel needs torch.distributed initialised (dist.init_process_group, "
                               "or a torchrun launch)")
        self.group = group
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError(f"this process (global rank {dist.get_rank()}) is not a member of the given group")
        self.size = dist.get_world_size(group)
        self.stats = comm.CommStats()
        self._tag = 0
        self._depth = 0
        self._mode: _Routing | None = None
        self._history: torch.Tensor | None = None
        self._keep_history = False
        self._handlers: dict[Any, Callable[..., Any]] = {
            SELECTIVE_SCAN.forward_op: self._selective_scan_op,
            LINEAR_SCAN.forward_op: self._linear_scan_op,
            DECAYED_LINEAR_ATTENTION.forward_op: self._dla_op,
            WKV.forward_op: self._wkv_op,
            LIF.forward_op: self._lif_op,
            CAUSAL_CONV1D.forward_op: self._conv_op,
        }

    def __repr__(self) -> str:
        return f"SequenceParallel(rank={self.rank}, size={self.size})"

    def global_rank(self, group_rank: int) -> int:
        """The global rank of group rank ``group_rank``."""
        return group_rank if self.group is None else dist.get_global_rank(self.group, group_rank)

    def next_tag(self) -> int:
        """A fresh tag for point-to-point messages; every rank draws tags in the same order."""
        self._tag += 1
        return self._tag

    # -- routing -------------------------------------------------------------------------------
    def __enter__(self) -> SequenceParallel:
        if self._depth == 0:
            self._mode = _Routing(self._handlers)
            self._mode.__enter__()
        self._depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth == 0 and self._mode is not None:
            self._mode.__exit__(*exc)
            self._mode = None

    # -- splitting ------------------------------------------------------------------------------
    def split(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's chunk of a whole sequence ``x`` along ``dim`` (a view).

        Raises ValueError unless ``x.shape[dim]`` is a positive multiple of the group size.
        """
        length = x.shape[dim]
        if length == 0 or length % self.size:
            raise ValueError(f"sequence length {length} (dim {dim} of shape {tuple(x.shape)}) must be a positive "
                             f"multiple of the sequence-parallel group size {self.size}")
        n = length // self.size
        return x.narrow(dim, self.rank * n, n)

    @torch.no_grad()
    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """All chunks concatenated along ``dim`` on every rank (for inspection: no gradient)."""
        rows = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(self.size)]
        dist.all_gather(rows, x.contiguous(), group=self.group)
        return torch.cat(rows, dim=dim)

    def previous_tokens(self, x: torch.Tensor, n: int, dim: int = 1,
                        initial: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``n`` tokens before this rank's chunk, for token shifts and short convolutions.

        Args:
            x: this rank's chunk, time along ``dim``.
            n: how many tokens (>= 1); chunks shorter than ``n`` are bridged over several ranks.
            initial: on rank 0, the ``n`` tokens before the sequence (None: zeros).
        Returns:
            ``(prev, x)``: ``prev`` has ``x``'s shape with ``n`` along ``dim``; use the returned ``x``
            (on rank 0 a copy routed through the exchange, so its backward runs on every rank).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        xt = x.movedim(dim, -1)
        if initial is not None and self.rank > 0:
            raise ValueError(f"initial is the context before the whole sequence, read on rank 0; rank {self.rank} "
                             "must pass None")
        start = xt.new_zeros((*xt.shape[:-1], n)) if initial is None else initial.movedim(dim, -1).to(xt.dtype)
        tail = torch.cat([start, xt], dim=-1)[..., -n:] if self.rank == 0 else (
            torch.cat([xt.new_zeros((*xt.shape[:-1], n)), xt], dim=-1)[..., -n:])
        if self.size == 1:
            return start.movedim(-1, dim), x
        combine = functools.partial(halo_combine, valid=min(n, xt.shape[-1]))
        if self.rank == 0:
            routed = comm.prefix_carry(self, combine, 1, (tail,), x)
            return start.movedim(-1, dim), routed
        (prev,) = comm.prefix_carry(self, combine, 1, (tail,), None)
        return prev.movedim(-1, dim), x

    # -- public ops -----------------------------------------------------------------------------
    def selective_scan(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`neurostep.kernels.selective_scan.selective_scan` on this rank's chunk (time is the last dim
        of ``u (batch, dim, L/P)``), two-pass. Same arguments and returns."""
        with self:
            return selective_scan(*args, **kwargs)

    def linear_scan(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`neurostep.kernels.linear_scan.linear_scan` on this rank's chunk (``a, b (batch, L/P, *lanes)``),
        two-pass. Same arguments and returns."""
        with self:
            return linear_scan(*args, **kwargs)

    def decayed_linear_attention(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`neurostep.kernels.decayed_linear_attention.decayed_linear_attention` on this rank's chunk
        (``q, k (B, L/P, H, K)``, ``v (B, L/P, H, V)``), two-pass. Same arguments and returns."""
        with self:
            return decayed_linear_attention(*args, **kwargs)

    def wkv(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, WKVState | None]:
        """:func:`neurostep.kernels.wkv.wkv` on this rank's chunk (``k, v (B, L/P, C)``), two-pass in the
        stable ``(aa, bb, pp)`` form. Same arguments and returns."""
        with self:
            return wkv(*args, **kwargs)

    def lif_scan(self, *args: Any, **kwargs: Any) -> tuple[Any, LIFState | None]:
        """:func:`neurostep.kernels.lif.lif_scan` on this rank's chunk (``x (T/P, *lanes)``), pipelined.
        Same arguments and returns."""
        with self:
            return lif_scan(*args, **kwargs)

    def causal_conv1d(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str | None = None, *, initial_state: torch.Tensor | None = None,
                      output_final_state: bool = False, backend: str = "auto"
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`neurostep.kernels.causal_conv1d.causal_conv1d` on this rank's chunk (``x (B, D, L/P)``), the
        ``W - 1`` inputs before the chunk gathered from earlier ranks (over several ranks when a chunk is
        shorter than ``W - 1``). Same arguments and returns; the final state ``(B, D, W - 1)`` is the last
        ``W - 1`` inputs up to the end of this rank's chunk."""
        self._history, self._keep_history = None, output_final_state
        try:
            with self:
                out, final = causal_conv1d(x, weight, bias, activation, initial_state=initial_state,
                                           output_final_state=output_final_state, backend=backend)
            history = self._history
        finally:
            self._history, self._keep_history = None, False
        if output_final_state and history is not None:
            # The op's own final state reads only this chunk (and zeros before it) on ranks > 0.
            final = torch.cat([history.to(x.dtype), x], dim=-1)[..., -(weight.shape[-1] - 1):]
        return out, final

    def ring_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                       scale: float | None = None) -> torch.Tensor:
        """Softmax attention over the whole sequence by ring self-attention (Li et al. 2021).

        Keys and values travel around the ring (``P - 1`` hops) so that every rank scores its queries
        against the whole sequence; the backward sends their gradients back around the ring. The bytes
        sent grow with the sequence length (activations), unlike the two-pass ops (states).

        Args:
            q: ``(B, H, L/P, E)`` this rank's queries. k: ``(B, H, L/P, E)``. v: ``(B, H, L/P, Ev)``.
            causal: token ``t`` attends to tokens ``<= t`` of the whole sequence.
            scale: None for ``E ** -0.5``.
        Returns:
            ``(B, H, L/P, Ev)`` this rank's outputs.
        """
        if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
            raise ValueError(f"ring_attention needs q, k (B, H, L, E) of one shape and v (B, H, L, Ev), got "
                             f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        e = k.shape[-1]
        kv = torch.cat([k, v.to(k.dtype)], dim=-1)
        if self.size > 1:
            rows = comm.RingGather.apply(self, self.next_tag(), kv)        # (P, B, H, n, E + Ev)
            kv = torch.cat(rows.unbind(0), dim=2)                          # (B, H, P n, E + Ev)
        keys, values = kv[..., :e], kv[..., e:]
        n = q.shape[2]
        mask = None
        if causal:
            rows_pos = torch.arange(n, device=q.device) + self.rank * n
            mask = torch.arange(keys.shape[2], device=q.device)[None, :] <= rows_pos[:, None]
        return F.scaled_dot_product_attention(q, keys, values.to(v.dtype), attn_mask=mask, scale=scale)

    def all_reduce_gradients(self, module: nn.Module) -> None:
        """Sum every parameter gradient of ``module`` over the group.

        Each rank's backward gives the gradient of its own chunk's loss; the parameters are shared by all
        chunks, so their gradient is the sum (use it after ``backward``; with DDP over another group,
        before or after DDP's averaging, the order does not matter).
        """
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if self.size == 1 or not grads:
            return
        flat = comm.all_reduce_sum(self, torch.cat([g.reshape(-1) for g in grads]), "backward")
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    # -- checks ---------------------------------------------------------------------------------
    def _no_state_after_first(self, op: str, state: torch.Tensor | None) -> None:
        if state is not None and self.rank > 0:
            raise ValueError(f"{op}: initial_state is the state before the whole sequence and is read on rank 0; "
                             f"rank {self.rank} of {self.size} must pass None")

    def _fresh_after_first(self, op: str, tensors: tuple[torch.Tensor, ...], values: tuple[float, ...]) -> None:
        if self.rank == 0:
            return
        for t, value in zip(tensors, values):
            if t is not None and not bool((t.detach() == value).all()):
                raise ValueError(f"{op}: initial_state is the state before the whole sequence and is read on rank "
                                 f"0; rank {self.rank} of {self.size} must pass None or a fresh state")

    def _two_pass(self, run: Callable[[Any], tuple[Any, comm.Parts]], zero: Any, given: Any,
                  summary: Callable[[comm.Parts], comm.Parts], combine: comm.Combine, n_state: int,
                  anchor_index: int) -> Any:
        """``run(initial) -> (outputs, final_parts)``; rank 0 scans once from ``given``, other ranks from
        ``zero`` and then from the folded initial state."""
        if self.size == 1:
            return run(given)[0]
        outputs, final = run(given if self.rank == 0 else zero)
        parts = summary(final)
        if self.rank == 0:
            outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
            outputs[anchor_index] = comm.prefix_carry(self, combine, n_state, parts, outputs[anchor_index])
            return tuple(outputs) if len(outputs) > 1 else outputs[0]
        initial = comm.prefix_carry(self, combine, n_state, parts, None)
        return run(initial if n_state > 1 else initial[0])[0]

    # -- the fused ops' sequence-parallel forms (raw arguments as the custom ops receive them) --
    def _selective_scan_op(self, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, channels_last, backend):
        self._no_state_after_first("selective_scan", h0)
        # The chunk's total decay per (batch, d, n): exp(sum_t dt_t A), the product of its step decays.
        steps = delta.transpose(1, 2) if channels_last else delta   # (batch, dim, L)
        log_decay = effective_delta(steps, delta_bias, delta_softplus).sum(-1)[..., None] * A

        def run(initial):
            out = SELECTIVE_SCAN(u, delta, A, B, C, D, z, delta_bias, initial, delta_softplus, channels_last,
                                 backend=backend)
            return out, (out[1],)

        return self._two_pass(run, None, h0, lambda f: (f[0], torch.exp(log_decay)), affine_combine, 1, 0)

    def _linear_scan_op(self, a, b, h0, backend):
        self._no_state_after_first("linear_scan", h0)

        def run(initial):
            h = LINEAR_SCAN(a, b, initial, backend=backend)
            return h, (h[:, -1],)

        return self._two_pass(run, None, h0, lambda f: (f[0], a.prod(dim=1)), affine_combine, 1, 0)

    def _dla_op(self, q, k, v, g, h0, v_scale, scale, chunk_size, backend):
        self._no_state_after_first("decayed_linear_attention", h0)

        def run(initial):
            out = DECAYED_LINEAR_ATTENTION(q, k, v, g, initial, v_scale, scale, chunk_size, backend=backend)
            return out, (out[1],)

        decay = torch.exp(g.sum(dim=1))[..., None, None]  # (B, H, 1, 1)
        return self._two_pass(run, None, h0, lambda f: (f[0], decay), affine_combine, 1, 0)

    def _wkv_op(self, time_decay, time_first, k, v, aa, bb, pp, save_history, backend):
        self._fresh_after_first("wkv", (aa, bb, pp), (0.0, 0.0, PP_INIT))
        # Per channel the true state decays by exp(w) per token, w = -exp(time_decay): exp(n w) per chunk.
        log_decay = (-torch.exp(time_decay.to(aa.dtype)) * k.shape[1]).expand_as(aa)

        def run(initial):
            a0, b0, p0 = initial
            save = differentiated(time_decay, time_first, k, v, a0, b0, p0)
            out = WKV(time_decay, time_first, k, v, a0, b0, p0, save, backend=backend)
            return out, out[1:4]

        zero = (aa, bb, pp)  # fresh on ranks > 0 (checked above)
        return self._two_pass(run, zero, (aa, bb, pp), lambda f: (*f, log_decay), wkv_combine, 3, 0)

    def _lif_op(self, x, v0, a0, tau_inv, v_threshold, v_reset, hard_reset, decay_input, detach_reset, surrogate,
                alpha, convention, snn_reset, adapt_rho, adapt_beta, return_v_seq, backend):
        rest = resting_potential(convention == "snntorch", hard_reset, v_reset)
        self._fresh_after_first("lif_scan", (v0, a0), (rest, 0.0))
        if self.size == 1:
            return LIF(x, v0, a0, tau_inv, v_threshold, v_reset, hard_reset, decay_input, detach_reset, surrogate,
                       alpha, convention, snn_reset, adapt_rho, adapt_beta, return_v_seq, backend=backend)
        if v0 is None:  # at rest (lif_scan passes no state where the backend recomputes h): the ranks pass a tensor
            v0 = resting_state(x, rest)
        tag = self.next_tag()
        # Gradient links across the boundary exist when this call is differentiated; SPMD code makes the
        # same decision on every rank, which keeps sends and receives paired.
        link = differentiated(x, v0, a0, tau_inv, v_threshold)
        states = (v0,) if a0 is None else (v0, a0)
        if self.rank > 0:
            anchor = torch.zeros((), dtype=v0.dtype, requires_grad=link)
            received = comm.PipeRecv.apply(self, tag, anchor, *states)
            states = received if isinstance(received, tuple) else (received,)
        v0 = states[0]
        a0 = states[1] if len(states) > 1 else None
        out = list(LIF(x, v0, a0, tau_inv, v_threshold, v_reset, hard_reset, decay_input, detach_reset, surrogate,
                       alpha, convention, snn_reset, adapt_rho, adapt_beta, return_v_seq, backend=backend))
        if self.rank < self.size - 1:
            finals = [out[1].to(v0.dtype)] + ([out[2].to(v0.dtype)] if a0 is not None else [])
            anchors = [0] + ([3] if return_v_seq else [])
            if link:
                routed = comm.PipeSend.apply(self, tag, len(finals), *finals, *(out[i] for i in anchors))
                routed = routed if isinstance(routed, tuple) else (routed,)
                for i, t in zip(anchors, routed):
                    out[i] = t
            else:
                for s in finals:
                    comm.send(self, s, self.rank + 1, tag, "forward")
        return tuple(out)

    def _conv_op(self, x, weight, bias, initial_states, silu, channels_last, backend):
        self._no_state_after_first("causal_conv1d", initial_states)
        width = weight.shape[-1]
        if self.size == 1 or width == 1:
            return CAUSAL_CONV1D(x, weight, bias, initial_states, silu, channels_last, backend=backend)
        n = width - 1
        xt = x.transpose(1, 2) if channels_last else x  # (B, D, L): the history's layout
        prefix = xt.new_zeros((*xt.shape[:-1], n)) if initial_states is None else initial_states
        tail = torch.cat([prefix if self.rank == 0 else xt.new_zeros(prefix.shape), xt], dim=-1)[..., -n:]
        combine = functools.partial(halo_combine, valid=min(n, xt.shape[-1]))
        if self.rank == 0:
            out = list(CAUSAL_CONV1D(x, weight, bias, initial_states, silu, channels_last, backend=backend))
            out[0] = comm.prefix_carry(self, combine, 1, (tail,), out[0])
            return tuple(out)
        (history,) = comm.prefix_carry(self, combine, 1, (tail,), None)
        if self._keep_history:  # causal_conv1d() builds the final state from it
            self._history = history
        return CAUSAL_CONV1D(x, weight, bias, history, silu, channels_last, backend=backend)


def chunk_length(total: int, size: int) -> int:
    """Tokens per rank for a sequence of ``total`` tokens over ``size`` ranks (must divide)."""
    if total < 1 or total % size:
        raise ValueError(f"sequence length {total} must be a positive multiple of the group size {size}")
    return total // size


def init_sequence_parallel(data_parallel: int = 1) -> tuple[SequenceParallel, dist.ProcessGroup | None]:
    """Groups for data parallel x sequence parallel on an initialised world of ``dp * sp`` processes.

    Ranks ``[i sp, (i+1) sp)`` share one sequence (a sequence-parallel group); ranks with the same
    position in their sequence group form a data-parallel group (give it to DDP's ``process_group``).
    Every process must call this (``new_group`` is collective).

    Returns:
        ``(sp, dp_group)``: this rank's :class:`SequenceParallel` and its data-parallel group (None when
        ``data_parallel == 1``).
    """
    if not dist.is_initialized():
        raise RuntimeError("init_sequence_parallel needs torch.distributed initialised")
    world, rank = dist.get_world_size(), dist.get_rank()
    if not isinstance(data_parallel, int) or data_parallel < 1 or world % data_parallel:
        raise ValueError(f"data_parallel={data_parallel!r} must be a positive divisor of the world size {world}")
    sp_size = world // data_parallel
    sp_group = dp_group = None
    for i in range(data_parallel):
        ranks = list(range(i * sp_size, (i + 1) * sp_size))
        g = dist.new_group(ranks)
        if rank in ranks:
            sp_group = g
    for j in range(sp_size):
        ranks = list(range(j, world, sp_size))
        g = dist.new_group(ranks)
        if rank in ranks:
            dp_group = g
    return SequenceParallel(sp_group), (dp_group if data_parallel > 1 else None)


__all__ = ["SequenceParallel", "affine_combine", "chunk_length", "halo_combine", "init_sequence_parallel",
           "wkv_combine"]
