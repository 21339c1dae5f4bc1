"""Fused multi-step spiking neuron (LIF / IF / adaptive-threshold LIF): the public op ``lif_scan``.

One call runs a whole ``(T, *lanes)`` sequence through the neuron; backends (``reference``: torch
loop, ``cpu``: numba, ``triton``) share one signature and are chosen by the input's device and
``backend=``. The op is registered as the ``torch.library`` custom ops ``neurostep::lif_forward``
and ``neurostep::lif_backward`` so that ``torch.compile`` traces it and dispatch-level counters
see it. See :func:`lif_scan` for the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from neurostep.engine import (
    KERNELS,
    BackwardCall,
    OpCost,
    check_nonempty,
    check_same_shape,
    check_tensor,
    compute_dtype,
    define_op,
    has_values,
)
from neurostep.engine.fill import filled
from neurostep.engine.layout import dense_strides, in_layout
from neurostep.kernels.lif.common import CONVENTIONS, SNN_RESETS, LIFParams, resting_potential
from neurostep.kernels.lif.surrogates import SURROGATES, Surrogate, get_surrogate

__all__ = ["CONVENTIONS", "SNN_RESETS", "SURROGATES", "LIFState", "Surrogate", "get_surrogate", "lif_scan",
           "resting_state"]


@dataclass
class LIFState:
    """State of a spiking neuron: membrane ``v (*lanes)`` and, for an adaptive threshold, its
    adaptation ``a (*lanes)`` (None otherwise). The state :func:`lif_scan` takes and returns, and the
    state of the neuron modules."""

    v: torch.Tensor
    a: torch.Tensor | None = None


def _absent(t: torch.Tensor | None) -> bool:
    """Whether an output or saved tensor stands for "none": None on the engine's direct path, an empty tensor
    where the call went through the dispatcher (:mod:`neurostep.engine.ops`)."""
    return t is None or t.numel() == 0


def _params(tau_inv: torch.Tensor, v_threshold: torch.Tensor, cdtype: torch.dtype, attrs: dict,
            adaptive: bool) -> LIFParams:
    """The backends' parameters. ``tau_inv`` and ``v_threshold`` stay tensors on the input's device
    (no value is read here: on a GPU that would wait for the device); their values were checked once
    by :func:`lif_scan`."""
    return LIFParams(
        k=_as(tau_inv, cdtype, ()), vth=_as(v_threshold, cdtype, ()), vr=attrs["v_reset"], hard=attrs["hard_reset"],
        decay_input=attrs["decay_input"], detach_reset=attrs["detach_reset"], sid=SURROGATES[attrs["surrogate"]].sid,
        alpha=attrs["alpha"], snn=attrs["convention"] == "snntorch", snn_reset=SNN_RESETS.index(attrs["snn_reset"]),
        adaptive=adaptive, rho=attrs["adapt_rho"], beta=attrs["adapt_beta"],
    )


def _as(t: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """``t`` in ``dtype`` and ``shape``: ``t`` itself when it already is (a torch call that changes
    nothing still costs a microsecond or two, and a small op's call makes dozens)."""
    if t.dtype != dtype:
        t = t.to(dtype)
    return t if t.shape == shape else t.reshape(shape)


LaneOrder = tuple[int, ...] | None
"""The order of the lanes in memory, as strides of the lane shape; None for the contiguous order (the
common case, kept on the cheapest path: a small op's call is mostly such bookkeeping)."""


def _lane_order(v0: torch.Tensor | None, x: torch.Tensor | None) -> LaneOrder:
    """The lane order of a call: the initial state's when it is dense (:func:`lif_scan` lays it out like
    ``x``), else the contiguous order; without an initial state, ``x``'s (:func:`_input_lane_order`). Input,
    state, outputs and gradients all follow it, so a channels-last input gives channels-last spikes without
    a copy."""
    if v0 is None:
        return _input_lane_order(x)
    return None if v0.is_contiguous() else dense_strides(v0)


def _strides(shape: tuple[int, ...], order: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of a ``shape`` tensor, ``lanes`` or ``(T, *lanes)``, whose lanes lie in the order ``order``
    (and whose steps follow each other)."""
    return order if len(shape) == len(order) else (math.prod(shape[1:]), *order)


def _to_compute(t: torch.Tensor, T: int | None, order: LaneOrder, cdtype: torch.dtype) -> torch.Tensor:
    """``t`` (``(T, *lanes)``, or ``lanes`` when ``T`` is None) as the backends take it: ``(T, N)`` (or
    ``(N,)``) in ``cdtype``, its lanes in the memory order ``order``; a view when ``t`` is laid out so
    already, else one copy."""
    n = t.numel() // T if T is not None else t.numel()
    shape = (T, n) if T is not None else (n,)
    if order is None:
        t = _as(t, cdtype, shape)
        return t if t.is_contiguous() else t.contiguous()
    return in_layout(t, _strides(t.shape, order), cdtype).as_strided(shape, _strides(shape, (1,)))


def _from_compute(t: torch.Tensor, shape: tuple[int, ...], order: LaneOrder, dtype: torch.dtype) -> torch.Tensor:
    """A backend's contiguous ``(T, N)`` (or ``(N,)``) result as a ``shape`` tensor in ``dtype`` whose lanes
    lie in the memory order ``order`` (the inverse of :func:`_to_compute`)."""
    if order is None:
        return _as(t, dtype, shape)
    t = t if t.dtype == dtype else t.to(dtype)
    t = t if t.is_contiguous() else t.contiguous()
    return t.as_strided(shape, _strides(shape, order))


def _empty_like_lanes(like: torch.Tensor, shape: tuple[int, ...], order: LaneOrder,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
    """An empty ``shape`` tensor (``(T, *lanes)`` or ``lanes``) with its lanes in the memory order ``order``:
    what :func:`_from_compute` returns, for the fakes."""
    dtype = dtype if dtype is not None else like.dtype
    if order is None:
        return like.new_empty(shape, dtype=dtype)
    return like.new_empty_strided(shape, _strides(shape, order), dtype=dtype)


_ATTRS = ("v_reset", "hard_reset", "decay_input", "detach_reset", "surrogate", "alpha", "convention", "snn_reset",
          "adapt_rho", "adapt_beta", "return_v_seq")


def _forward(
    impl, x: torch.Tensor, v0: torch.Tensor | None, a0: torch.Tensor | None, tau_inv: torch.Tensor,
    v_threshold: torch.Tensor, v_reset: float, hard_reset: bool, decay_input: bool, detach_reset: bool,
    surrogate: str, alpha: float, convention: str, snn_reset: str, adapt_rho: float, adapt_beta: float,
    return_v_seq: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None,
           torch.Tensor | None]:
    """Returns ``(spikes, v_last, a_last, v_seq, h, theta)``, None for each the call does not produce;
    ``h``/``theta`` ``(T, N)`` in the compute dtype are saved for the backward. ``h`` is None when the
    backend recomputes it from ``x`` in the backward (``impl.recomputes_h``). ``v0`` None: the membrane
    starts at rest (``v_reset`` for a hard reset, else 0), with no state tensor to read or differentiate."""
    attrs = dict(zip(_ATTRS, (v_reset, hard_reset, decay_input, detach_reset, surrogate, alpha, convention,
                              snn_reset, adapt_rho, adapt_beta, return_v_seq)))
    adaptive = a0 is not None
    T, lanes, cdtype = x.shape[0], x.shape[1:], compute_dtype(x.dtype)
    p = _params(tau_inv, v_threshold, cdtype, attrs, adaptive)
    order = _lane_order(v0, x)
    xc = _to_compute(x, T, order, cdtype)
    v0c = _to_compute(v0, None, order, cdtype) if v0 is not None else None
    a0c = _to_compute(a0, None, order, cdtype) if adaptive else None
    # h is None where the backend recomputes it in its backward (from x, which autograd then keeps)
    spikes, v_last, a_last, v_seq, h, theta = impl.forward(xc, v0c, a0c, p, return_v_seq)
    out_dtype = x.dtype
    return (
        _from_compute(spikes, x.shape, order, out_dtype),
        _from_compute(v_last, lanes, order, out_dtype),
        _from_compute(a_last, lanes, order, out_dtype) if a_last is not None else None,
        _from_compute(v_seq, x.shape, order, out_dtype) if v_seq is not None else None,
        h,
        theta,
    )


def _forward_fake(x, v0, a0, tau_inv, v_threshold, v_reset, hard_reset, decay_input, detach_reset, surrogate,
                  alpha, convention, snn_reset, adapt_rho, adapt_beta, return_v_seq, *, backend):
    T, lanes, cdtype = x.shape[0], x.shape[1:], compute_dtype(x.dtype)
    n = math.prod(lanes)
    adaptive = a0 is not None and convention != "snntorch"
    saves_h = not KERNELS.resolve("lif", backend, x.device).recomputes_h(convention, a0 is not None)
    order = _lane_order(v0, x)
    # an output the call does not produce is an empty tensor of x's dtype, as the engine makes it
    return (
        _empty_like_lanes(x, x.shape, order),
        _empty_like_lanes(x, lanes, order),
        _empty_like_lanes(x, lanes, order) if a0 is not None else x.new_empty((0,)),
        _empty_like_lanes(x, x.shape, order) if return_v_seq else x.new_empty((0,)),
        x.new_empty((T, n), dtype=cdtype) if saves_h else x.new_empty((0,)),
        x.new_empty((T, n), dtype=cdtype) if adaptive else x.new_empty((0,)),
    )


def _save(args, outputs):
    h, theta = outputs[4], outputs[5]
    need_k_grad = args["needs_input_grad"][3]
    # x is read by the backward to recompute h when the forward saved none, for d/d tau_inv with
    # decay_input (X - V + Vr), and for the lanes' shape and order when there is no initial state (lif_scan
    # leaves it out only where the backend recomputes h); otherwise keep no reference to it.
    keep_x = (_absent(h) or args["v0"] is None
              or (need_k_grad and args["decay_input"] and args["convention"] == "spikingjelly"))
    return (args["x"] if keep_x else None), args["v0"], h, theta, args["tau_inv"], args["v_threshold"]


def _grad_dtype(g_spikes: torch.Tensor | None, state_dtype: torch.dtype) -> torch.dtype:
    return g_spikes.dtype if g_spikes is not None else state_dtype


def _backward(impl, call: BackwardCall):
    g_spikes, g_v_last, g_a_last, g_v_seq = call.grads
    x, v0, h, theta, tau_inv, v_threshold = call.saved
    adaptive = not _absent(theta)
    need_k_grad = call.needs_input_grad[3]
    recompute = _absent(h)
    T, cdtype = (x.shape[0], compute_dtype(x.dtype)) if recompute else (h.shape[0], h.dtype)
    lanes = v0.shape if v0 is not None else x.shape[1:]
    p = _params(tau_inv, v_threshold, cdtype, call.attrs, adaptive)
    order = _lane_order(v0, x)
    xc = _to_compute(x, T, order, cdtype) if x is not None else None

    def prep(g, with_t):
        if g is None or g.numel() == 0:  # an output that was returned empty gets an empty gradient
            return None
        return _to_compute(g, T if with_t else None, order, cdtype)

    gx, gv0, ga0, gk, gvth = impl.backward(
        xc, _to_compute(v0, None, order, cdtype) if v0 is not None else None, None if recompute else h,
        theta if adaptive else None,
        prep(g_spikes, True), prep(g_v_seq, True), prep(g_v_last, False), prep(g_a_last, False), p, need_k_grad,
        need_threshold_grad=call.needs_input_grad[4],
    )
    needs = call.needs_input_grad
    state_dtype = v0.dtype if v0 is not None else x.dtype
    return (
        _from_compute(gx, (T, *lanes), order, _grad_dtype(g_spikes, state_dtype)),
        _from_compute(gv0, lanes, order, state_dtype) if gv0 is not None else None,
        _from_compute(ga0, lanes, order, state_dtype) if ga0 is not None else None,
        _as(gk, tau_inv.dtype, ()) if needs[3] else None,
        _as(gvth, v_threshold.dtype, ()) if needs[4] else None,
    )


def _backward_fake(call: BackwardCall):
    g_spikes = call.grads[0]
    x, v0, h, theta, tau_inv, v_threshold = call.saved
    T = x.shape[0] if _absent(h) else h.shape[0]
    state = v0 if v0 is not None else x
    lanes = v0.shape if v0 is not None else x.shape[1:]
    order = _lane_order(v0, x)
    return (
        _empty_like_lanes(state, (T, *lanes), order, _grad_dtype(g_spikes, state.dtype)),
        _empty_like_lanes(state, lanes, order) if v0 is not None else None,
        _empty_like_lanes(state, lanes, order) if not _absent(theta) else None,
        tau_inv.new_empty(()),
        v_threshold.new_empty(()),
    )


def _cost(args, kwargs, out) -> OpCost:
    """Per element and step: charge adds/muls, one compare, reset, state updates; bytes of x, spikes, saved h."""
    a = dict(zip(("x", "v0", "a0", "tau_inv", "v_threshold", *_ATTRS), args))
    a.update(kwargs or {})
    x = a["x"]
    n = float(x.numel())
    item = x.element_size()
    adaptive = a.get("a0") is not None
    if a["convention"] == "snntorch":
        adds, muls = 2.0, 2.0  # beta*v + x - R*thr
        adds += 1.0  # H - thr for the compare
    else:
        tau_inv = a["tau_inv"]
        # an IF neuron (tau_inv == 0) skips the leak; a tensor without values (meta, fake) counts the LIF charge
        k_is_zero = isinstance(tau_inv, torch.Tensor) and has_values(tau_inv) and bool(tau_inv == 0)
        adds, muls = (1.0, 0.0) if k_is_zero else (3.0, 1.0)  # IF: V + X; LIF: V + k*(X - (V - Vr))
        adds += 1.0  # H - theta for the compare
        if a["hard_reset"]:
            adds, muls = adds + 2.0, muls + 2.0  # S*Vr + (1-S)*H
        else:
            adds, muls = adds + 1.0, muls + 1.0  # H - S*theta
        if adaptive:
            adds, muls = adds + 2.0, muls + 2.0  # theta = vth + rho*a; a = a_p + beta*S
    state = 2.0 if adaptive else 1.0
    writes = 2.0 + (1.0 if a.get("return_v_seq") else 0.0) + (1.0 if adaptive else 0.0)  # spikes, h, (v_seq, theta)
    return OpCost(
        adds=adds * n, muls=muls * n, compares=n, state_updates=state * n,
        bytes_read=n * item, bytes_written=writes * n * item,
    )


LIF = define_op(
    "lif",
    backends={name: f"neurostep.kernels.lif.{name}" for name in ("reference", "cpu", "triton")},
    forward=_forward, forward_fake=_forward_fake, backward=_backward, backward_fake=_backward_fake,
    save=_save, internal_outputs=(4, 5), cost=_cost,
)


def _scalar_param(label: str, name: str, value: float | torch.Tensor, x: torch.Tensor,
                  bounds: tuple[float, float, bool, str] | None) -> torch.Tensor:
    """``tau_inv`` or ``v_threshold`` as a 0-d tensor on ``x``'s device, its value checked once.

    A float is checked as a float. A tensor (a learnable PLIF time constant) is checked without
    waiting for a GPU: on the CPU its value is read, on an accelerator the check is queued with the
    kernels (``torch._assert_async``), on the meta device and in ``torch.compile`` traces it is skipped.
    """
    low, high, closed, hint = bounds if bounds is not None else (None, None, True, "")

    def interval() -> str:   # built for a message only
        return f"[{low}, {high}{']' if closed else ')'}{hint}"

    if isinstance(value, torch.Tensor):
        check_tensor(name, value, ndim=0, device=x.device)
        if not has_values(value):
            return value
        v = value.detach()
        ok = torch.isfinite(v)
        if low is not None:
            ok = ok & (v >= low) & ((v <= high) if closed else (v < high))
        if v.device.type != "cpu":
            torch._assert_async(ok, f"{label} must be finite" + (f" and in {interval()}" if low is not None else ""))
        elif not bool(ok):
            value_f = float(v)
            raise ValueError(f"{label} must be finite, got {value_f}" if not math.isfinite(value_f) or low is None
                             else f"{label} must be in {interval()}, got {value_f}")
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float or a 0-d tensor, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{label} must be finite, got {value}")
    if low is not None and not (low <= value and (value <= high if closed else value < high)):
        raise ValueError(f"{label} must be in {interval()}, got {value}")
    # scalar_tensor: the same 0-d tensor as torch.tensor(value, ...) at half its cost (1.7 against 3.8 us)
    return torch.scalar_tensor(value, dtype=compute_dtype(x.dtype), device=x.device)


def _input_lane_order(x: torch.Tensor) -> LaneOrder:
    """The memory order of ``x (T, *lanes)``'s lanes when one step's lanes fill their memory densely
    (contiguous, channels-last frames, ...), else the contiguous order. The op reads ``x`` without a copy
    when its steps also follow each other densely; otherwise (a frame repeated over time as an expanded
    view, a slice) it copies ``x`` once, into this order."""
    if x.is_contiguous():
        return None
    step = x[0]
    return None if step.is_contiguous() else dense_strides(step)


def resting_state(x: torch.Tensor, value: float) -> torch.Tensor:
    """A ``(*lanes)`` state of ``x (T, *lanes)``, every element ``value``, in x's dtype and device and laid out
    like one step of ``x`` (the layout the op follows): what the op starts from without an initial state, for
    code that needs it as a tensor (the sequence-parallel form passes it between ranks)."""
    lanes = tuple(x.shape[1:])
    order = _input_lane_order(x)
    return filled(x, lanes, value, None if order is None else _strides(lanes, order))


def _state_in(v: torch.Tensor, order: LaneOrder) -> torch.Tensor:
    """A state tensor laid out in the lane order ``order`` (a copy only where it is not)."""
    if order is None:
        return v if v.is_contiguous() else v.contiguous()
    return in_layout(v, order)


def lif_scan(
    x: torch.Tensor,
    initial_state: LIFState | None = None,
    *,
    tau_inv: float | torch.Tensor,
    v_threshold: float | torch.Tensor,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    convention: str = "spikingjelly",
    snn_reset: str = "subtract",
    adapt_rho: float = 0.0,
    adapt_beta: float = 0.0,
    return_v_seq: bool = False,
    output_final_state: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], LIFState | None]:
    """Run a spiking neuron over a whole sequence in one fused call.

    Args:
        x: input current ``(T, *lanes)``, float (fp16/bf16 are computed in fp32 and returned in
            their dtype). Time is dim 0; lanes are independent neurons.
        initial_state: :class:`LIFState` before step 0, or None: membrane ``v_reset`` (hard reset) or 0
            (soft reset, snntorch), adaptation 0. The neuron adapts iff ``adapt_beta != 0`` or the state
            has an ``a``: ``a_p = adapt_rho*a``, ``theta = v_threshold + a_p``, ``a = a_p + adapt_beta*S``
            (spikingjelly convention only).
        tau_inv: ``k = 1/tau`` (0 gives an IF neuron; snntorch convention: ``k = 1 - beta``), a float
            or a 0-d tensor that may require grad (PLIF).
        v_threshold: firing threshold, float or 0-d tensor (may require grad).
        v_reset: hard-reset potential, or None for a soft (subtractive) reset.
        decay_input, detach_reset: spikingjelly's flags.
        surrogate, alpha: surrogate gradient of the spike (see ``SURROGATES``); alpha None = its default.
        convention: ``"spikingjelly"`` (charge, fire with ``>=``, reset) or ``"snntorch"`` (``Leaky`` with
            ``reset_delay=True``: reset from the previous step's membrane, fire with ``>``, membrane
            returned before reset). ``v_reset``/``decay_input``/``detach_reset`` do not apply to snntorch,
            whose reset is chosen by ``snn_reset`` (``"subtract"``, ``"zero"``, ``"none"``).
        return_v_seq: the output is the pair ``(spikes, v_seq)``, ``v_seq (T, *lanes)`` the membrane at
            every step (after reset; snntorch: before).
        output_final_state: also return the final :class:`LIFState` (else None).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Returns:
        ``(out, final_state)``: ``out`` is ``spikes (T, *lanes)`` (or ``(spikes, v_seq)``), ``final_state``
        a :class:`LIFState` in ``x``'s dtype or None. Gradients flow to x, the initial state, tau_inv and
        v_threshold from every output. The lanes keep the memory layout of one step of ``x`` (contiguous, or
        channels-last frames ``(T, B, C, H, W)``): the spikes, the final state and the input's gradient are
        laid out alike, and ``x`` is read without a copy when its steps follow each other densely.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if snn_reset not in SNN_RESETS:
        raise ValueError(f"snn_reset must be one of {SNN_RESETS}, got {snn_reset!r}")
    sur = get_surrogate(surrogate)
    alpha = sur.default_alpha if alpha is None else alpha
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    check_tensor("x", x, min_ndim=1)
    check_nonempty("x", x, 0)
    impl = LIF.resolve_backend(backend, x.device)
    if initial_state is not None and not isinstance(initial_state, LIFState):
        raise TypeError(f"initial_state must be a LIFState (or None), got {type(initial_state).__name__}")
    v0 = initial_state.v if initial_state is not None else None
    a0 = initial_state.a if initial_state is not None else None
    lanes = tuple(x.shape[1:])
    hard = v_reset is not None
    if hard and (not isinstance(v_reset, (int, float)) or not math.isfinite(v_reset)):
        raise ValueError(f"v_reset must be a finite float or None (soft reset), got {v_reset!r}")
    for name, val in (("adapt_rho", adapt_rho), ("adapt_beta", adapt_beta)):
        if not isinstance(val, (int, float)) or not math.isfinite(val):
            raise ValueError(f"{name} must be a finite float, got {val!r}")
    if not 0.0 <= adapt_rho <= 1.0:
        raise ValueError(f"adapt_rho must be in [0, 1], got {adapt_rho}")
    adaptive = adapt_beta != 0.0 or a0 is not None
    if convention == "snntorch" and adaptive:
        raise ValueError("threshold adaptation (adapt_beta / initial_state.a) is only defined for "
                         "convention='spikingjelly'")
    # the state takes x's lane order, which the op then follows (channels-last in, channels-last out)
    order = _input_lane_order(x)
    state_strides = None if order is None else _strides(lanes, order)   # of a default state
    if v0 is None:
        # where the backend recomputes h from x in its backward (and so keeps x), the op starts at rest without a
        # state tensor; elsewhere it gets one, and the backward reads the lanes' layout from it, not from a kept x
        if not impl.recomputes_h(convention, adaptive):
            v0 = resting_state(x, resting_potential(convention == "snntorch", hard, v_reset))
    else:
        check_tensor("initial_state.v", v0, device=x.device)
        check_same_shape("initial_state.v", v0, lanes, f"x.shape[1:] of x with shape {tuple(x.shape)}")
        v0 = _state_in(v0, order)
    if adaptive:
        if a0 is None:
            a0 = filled(x, lanes, 0.0, state_strides)
        else:
            check_tensor("initial_state.a", a0, device=x.device)
            check_same_shape("initial_state.a", a0, lanes, f"x.shape[1:] of x with shape {tuple(x.shape)}")
            a0 = _state_in(a0, order)
    if convention == "spikingjelly" and decay_input:
        k_range = (0.0, 1.0, False, " for a LIF with decay_input=True (spikingjelly requires tau > 1; 0 means an IF "
                   "neuron)")
    else:
        k_range = (0.0, 1.0, True, " (for snntorch: 1 - beta)")
    k_name = "tau_inv (=1/tau)" if not k_range[2] else "tau_inv"
    params = [
        _scalar_param(k_name, "tau_inv", tau_inv, x, k_range),
        _scalar_param("v_threshold", "v_threshold", v_threshold, x, None),
    ]
    spikes, v_last, a_last, v_seq, _, _ = LIF(
        x, v0, a0, params[0], params[1], float(v_reset) if hard else 0.0, hard, bool(decay_input),
        bool(detach_reset), surrogate, float(alpha), convention, snn_reset, float(adapt_rho), float(adapt_beta),
        bool(return_v_seq), backend=backend,
    )
    final = LIFState(v_last, a_last if adaptive else None) if output_final_state else None
    return ((spikes, v_seq) if return_v_seq else spikes), final
