"""RWKV-4 WKV (the attention of RWKV-4 and SpikeGPT) as one fused, differentiable op.

``wkv(w, u, k, v, initial_state=None, output_final_state=False, backend="auto") -> (y, final_state)``.
``w`` is RWKV's raw ``time_decay`` parameter, not the decay: the op computes the log-decay ``-exp(w)`` itself (as
RWKV-4, SpikeGPT and transformers' RWKV do), so each step scales the history by
``exp(-exp(w))`` in (0, 1). ``u`` is ``time_first``, the bonus of the current token, used as is.
Inside the backends (``reference.py``, ``cpu.py``, ``triton.py``) ``w`` already denotes the
log-decay ``-exp(time_decay)``. The state ``(aa, bb, pp)`` is the numerically stable form
(true numerator ``aa * exp(pp)``, denominator ``bb * exp(pp)``); a fresh state is
``(0, 0, -1e38)``.

Backends: ``reference`` (torch loop, gradients by ``torch.func.vjp`` of it), ``cpu`` (numba, fused),
``triton`` (CUDA, or CPU under ``TRITON_INTERPRET=1``). Registered as the custom ops
``neurostep::wkv_forward`` / ``neurostep::wkv_backward`` with fake implementations.

Backward in brief (full comments in ``cpu.py``): with ``ga = dL/daa``, ``gb = dL/dbb`` carried in
the shifted scale, per step (``e1, e2`` the output's shifted exps, ``f1, f2`` the state's,
``den = e1*bb + e2``, ``q = gy/den``)::

    gk_t = q*e2*(v - y) + (ga*v + gb)*f2 + delta*(1 - r)      gv_t = q*e2 + ga*f2
    gu  += q*e2*(v - y)                                         gw  += (ga*aa + gb*bb)*f1 + delta*r
    ga  <- q*e1 + ga*f1        gb <- -q*y*e1 + gb*f1           delta <- delta*r

where ``r`` is 1 if ``w + pp > k`` (0.5 on a tie, as ``torch.maximum``), else 0, and ``delta`` is
the part of the final ``dL/dpp`` not explained by ``aa`` and ``bb`` (0 unless a loss reads ``pp``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from neurostep.engine import (
    BackwardCall,
    OpCost,
    check_finite,
    check_nonempty,
    check_tensor,
    compute_dtype,
    define_op,
    differentiated,
)
from neurostep.kernels.wkv import reference

PP_INIT = -1e38


@dataclass
class WKVState:
    """Stable WKV state, each ``(B, C)`` in the compute dtype (fp32, or fp64 for fp64 inputs).

    Iterating gives ``aa, bb, pp`` (so ``aa, bb, pp = state`` unpacks it)."""

    aa: torch.Tensor
    bb: torch.Tensor
    pp: torch.Tensor

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.aa, self.bb, self.pp))


def init_state(batch: int, channels: int, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> WKVState:
    """A fresh state ``(aa=0, bb=0, pp=-1e38)`` of shape ``(batch, channels)`` each."""
    dtype = compute_dtype(dtype)
    zeros = torch.zeros(batch, channels, device=device, dtype=dtype)
    return WKVState(zeros, zeros.clone(), torch.full_like(zeros, PP_INIT))


# --------------------------------------------------------------------------------------------
# custom ops


def _decay(time_decay: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return -torch.exp(time_decay.to(dtype))


def _forward(impl, time_decay: torch.Tensor, time_first: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             aa: torch.Tensor, bb: torch.Tensor, pp: torch.Tensor, save_history: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(y, aa_T, bb_T, pp_T, hist)``; ``hist`` (3, B, T, C) is saved for the backward when
    ``save_history`` (else empty)."""
    cd = aa.dtype
    w = _decay(time_decay, cd).contiguous()
    u = time_first.to(cd).contiguous()
    y, aa_T, bb_T, pp_T, hist = impl.forward(w, u, k.to(cd).contiguous(), v.to(cd).contiguous(), aa.contiguous(),
                                             bb.contiguous(), pp.contiguous(), save_history)
    return y.to(k.dtype), aa_T, bb_T, pp_T, hist


def _forward_fake(time_decay, time_first, k, v, aa, bb, pp, save_history, *, backend):
    B, T, C = k.shape
    hist_shape = (3, B, T, C) if save_history else (3, 0, 0, 0)
    return (k.new_empty(k.shape), aa.new_empty(aa.shape), bb.new_empty(bb.shape), pp.new_empty(pp.shape),
            aa.new_empty(hist_shape))


def _save(args, outputs):
    if not args["save_history"]:
        return ()
    y, aa_T, bb_T, _, hist = outputs
    return args["time_decay"], args["time_first"], args["k"], args["v"], y, hist, aa_T, bb_T


def _backward(impl, call: BackwardCall):
    if not call.saved:
        raise RuntimeError("wkv was called without saving its history (no input required grad at call time), "
                           "so it cannot be differentiated")
    time_decay, time_first, k, v, y, hist, aa_T, bb_T = call.saved
    gy, g_aa, g_bb, g_pp = (torch.zeros_like(like) if g is None else g
                            for g, like in zip(call.grads, (y, aa_T, aa_T, aa_T)))
    cd = hist.dtype
    w = _decay(time_decay, cd).contiguous()
    u = time_first.to(cd).contiguous()
    gw, gu, gk, gv, g_aa0, g_bb0, g_pp0 = impl.backward(
        w, u, k.to(cd).contiguous(), v.to(cd).contiguous(), y.to(cd).contiguous(), hist, aa_T.contiguous(),
        bb_T.contiguous(), gy.to(cd).contiguous(), g_aa.to(cd).contiguous(), g_bb.to(cd).contiguous(),
        g_pp.to(cd).contiguous())
    # dL/dtime_decay = dL/dw * dw/dtime_decay = dL/dw * w, since w = -exp(time_decay).
    g_td = (gw.sum(0) * w).to(time_decay.dtype)
    return [g_td, gu.sum(0).to(time_first.dtype), gk.to(k.dtype), gv.to(v.dtype), g_aa0, g_bb0, g_pp0]


def _backward_fake(call: BackwardCall):
    time_decay, time_first, k, v, _, _, aa_T, _ = call.saved
    return [t.new_empty(t.shape) for t in (time_decay, time_first, k, v, aa_T, aa_T, aa_T)]


def _cost(args, kwargs, out) -> OpCost:
    """Per (sequence, token, channel) as the fused kernels compute it: 2 exps (one per max-shifted
    pair, the other factor being exactly 1), 2 compares (the maxima), 6 muls, 7 adds and one
    division counted as a mul, 3 state writes; plus C exps for ``-exp(time_decay)``."""
    k = args[2]
    n = float(k.numel())
    C = float(k.shape[-1])
    state_bytes = float(sum(t.numel() * t.element_size() for t in args[4:7]))
    hist = out[4]
    return OpCost(
        exps=2.0 * n + C,
        compares=2.0 * n,
        muls=7.0 * n,
        adds=7.0 * n,
        state_updates=3.0 * n,
        bytes_read=2.0 * n * k.element_size() + state_bytes + 2.0 * C * args[0].element_size(),
        bytes_written=n * k.element_size() + state_bytes + float(hist.numel() * hist.element_size()),
    )


WKV = define_op(
    "wkv",
    backends={name: f"neurostep.kernels.wkv.{name}" for name in ("reference", "cpu", "triton")},
    forward=_forward, forward_fake=_forward_fake, backward=_backward, backward_fake=_backward_fake,
    save=_save, internal_outputs=(4,), cost=_cost,
)


# --------------------------------------------------------------------------------------------
# public op


def _check_state(state: object, batch: int, channels: int, device: torch.device, cd: torch.dtype,
                 name: str = "initial_state") -> WKVState:
    if isinstance(state, WKVState):
        state = tuple(state)
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        length = f" of length {len(state)}" if isinstance(state, (tuple, list)) else ""
        raise TypeError(f"{name} must be a WKVState or a tuple (aa, bb, pp) of three (B, C) tensors, got "
                        f"{type(state).__name__}{length}")
    parts = []
    for part, t in zip((f"{name}.aa", f"{name}.bb", f"{name}.pp"), state):
        check_tensor(part, t, shape=(batch, channels), device=device)
        parts.append(t.to(cd))
    return WKVState(*parts)


def wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        initial_state: WKVState | tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None, *,
        output_final_state: bool = False, backend: str = "auto") -> tuple[torch.Tensor, WKVState | None]:
    """RWKV-4 WKV over a sequence.

    Args:
        w: ``(C,)`` RWKV's raw ``time_decay`` parameter, **not** the decay itself: the op uses
            ``-exp(w)`` as the log-decay per step (RWKV-4/SpikeGPT/transformers convention). Finite.
        u: ``(C,)`` ``time_first``, the bonus of the current token (used as is). Finite.
        k, v: ``(B, T, C)``, ``T >= 1``; fp16/bf16/fp32/fp64. NaN in them propagates to ``y``.
        initial_state: a :class:`WKVState` (or a tuple ``(aa, bb, pp)``), each ``(B, C)``, or None for a
            fresh state. Differentiable.
        output_final_state: also return the final state (else None).
        backend: ``"auto"`` (cpu on CPU tensors, triton on CUDA), ``"reference"``, ``"cpu"``, ``"triton"``.

    Returns:
        ``(y, final_state)``: ``y (B, T, C)`` in ``k``'s dtype; the final :class:`WKVState` in the compute
        dtype (fp32 for fp16/bf16/fp32 inputs, fp64 for fp64), or None.
    """
    k = check_tensor("k", k, ndim=3)
    B, T, C = k.shape
    device = k.device
    v = check_tensor("v", v, shape=(B, T, C), device=device)
    if v.dtype != k.dtype:
        raise TypeError(f"v must have the dtype of k ({k.dtype}), got {v.dtype}")
    w = check_tensor("w (time_decay)", w, shape=(C,), device=device)
    u = check_tensor("u (time_first)", u, shape=(C,), device=device)
    check_nonempty("k", k, 1, "tokens")
    check_finite("w (time_decay)", w)
    check_finite("u (time_first)", u)
    cd = compute_dtype(k.dtype)
    state = init_state(B, C, device, cd) if initial_state is None else _check_state(initial_state, B, C, device, cd)
    name = WKV.choose_backend(backend, device)
    save = differentiated(w, u, k, v, *state)
    y, aa, bb, pp, _ = WKV(w, u, k, v, state.aa, state.bb, state.pp, save, backend=name)
    return y, (WKVState(aa, bb, pp) if output_final_state else None)


def wkv_step(w: torch.Tensor, u: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor,
             state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, WKVState]:
    """One token in plain torch (for decoding): ``k_t, v_t`` ``(B, C)`` -> ``(y_t (B, C), state)``.

    Same arguments and semantics as :func:`wkv` with ``T = 1`` (``w`` is the raw ``time_decay``);
    differentiable through autograd.
    """
    k_t = check_tensor("k_t", k_t, ndim=2)
    B, C = k_t.shape
    device = k_t.device
    check_tensor("v_t", v_t, shape=(B, C), device=device)
    check_tensor("w (time_decay)", w, shape=(C,), device=device)
    check_tensor("u (time_first)", u, shape=(C,), device=device)
    cd = compute_dtype(k_t.dtype)
    state = init_state(B, C, device, cd) if state is None else _check_state(state, B, C, device, cd, "state")
    y, aa, bb, pp = reference.step(-torch.exp(w.to(cd)), u.to(cd), k_t.to(cd), v_t.to(cd), *state)
    return y.to(k_t.dtype), WKVState(aa, bb, pp)


__all__ = ["PP_INIT", "WKVState", "init_state", "wkv", "wkv_step"]
