"""Fused multi-step spiking neuron (LIF / IF / adaptive-threshold LIF): the public op ``lif_scan``.

One call runs a whole ``(T, *lanes)`` sequence through the neuron; backends (``reference``: torch
loop, ``cpu``: numba, ``triton``) share one signature and are chosen by the input's device and
``backend=``. The op is registered as the ``torch.library`` custom ops ``neurostep::lif_forward``
and ``neurostep::lif_backward`` so that ``torch.compile`` traces it and dispatch-level counters
see it. See :func:`lif_scan` for the model.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from neurostep.engine import (
    BACKEND_NAMES,
    KERNELS,
    OpCost,
    check_backend_name,
    check_nonempty,
    check_same_shape,
    check_tensor,
    compute_dtype,
    register_cost,
)
from neurostep.kernels.lif.common import CONVENTIONS, SNN_RESETS, LIFParams
from neurostep.kernels.lif.surrogates import SURROGATES, Surrogate, get_surrogate

__all__ = ["CONVENTIONS", "SNN_RESETS", "SURROGATES", "LIFOutput", "Surrogate", "get_surrogate", "lif_scan"]

KERNELS.register("lif", "reference", "neurostep.kernels.lif.reference")
KERNELS.register("lif", "cpu", "neurostep.kernels.lif.cpu")
KERNELS.register("lif", "triton", "neurostep.kernels.lif.triton")


class LIFOutput(NamedTuple):
    """Result of :func:`lif_scan`. spikes ``(T,*lanes)``; v_last, a_last ``(*lanes)``; v_seq ``(T,*lanes)``."""

    spikes: torch.Tensor
    v_last: torch.Tensor
    a_last: torch.Tensor | None
    v_seq: torch.Tensor | None


def _empty(like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return like.new_empty((0,), dtype=dtype)


def _check_values(tau_inv: torch.Tensor, v_threshold: torch.Tensor, convention: str, decay_input: bool) -> None:
    """Value checks of the parameters. They run inside the op (where values are concrete, also
    under torch.compile) because reading a tensor's value in traced code would break the graph."""
    k = float(tau_inv)
    if not math.isfinite(k):
        raise ValueError(f"tau_inv must be finite, got {k}")
    if convention == "spikingjelly" and decay_input:
        if not 0.0 <= k < 1.0:
            raise ValueError(
                f"tau_inv (=1/tau) must be in [0, 1) for a LIF with decay_input=True (spikingjelly requires "
                f"tau > 1; 0 means an IF neuron), got {k}"
            )
    elif not 0.0 <= k <= 1.0:
        raise ValueError(f"tau_inv must be in [0, 1] (for snntorch: 1 - beta), got {k}")
    vth = float(v_threshold)
    if not math.isfinite(vth):
        raise ValueError(f"v_threshold must be finite, got {vth}")


def _params(tau_inv, v_threshold, v_reset, hard_reset, decay_input, detach_reset, surrogate, alpha,
            convention, snn_reset, adapt_rho, adapt_beta, adaptive) -> LIFParams:
    _check_values(tau_inv, v_threshold, convention, decay_input)
    return LIFParams(
        k=float(tau_inv), vth=float(v_threshold), vr=float(v_reset), hard=bool(hard_reset),
        decay_input=bool(decay_input), detach_reset=bool(detach_reset), sid=SURROGATES[surrogate].sid,
        alpha=float(alpha), snn=convention == "snntorch", snn_reset=SNN_RESETS.index(snn_reset),
        adaptive=bool(adaptive), rho=float(adapt_rho), beta=float(adapt_beta),
    )


def _to_compute(t: torch.Tensor, T: int | None, cdtype: torch.dtype) -> torch.Tensor:
    t = t.to(cdtype)
    t = t.reshape(T, -1) if T is not None else t.reshape(-1)
    return t.contiguous()


@torch.library.custom_op("neurostep::lif_forward", mutates_args=())
def lif_forward(
    x: torch.Tensor, v0: torch.Tensor, a0: torch.Tensor | None, tau_inv: torch.Tensor, v_threshold: torch.Tensor,
    v_reset: float, hard_reset: bool, decay_input: bool, detach_reset: bool, surrogate: str, alpha: float,
    convention: str, snn_reset: str, adapt_rho: float, adapt_beta: float, return_v_seq: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw forward op, not differentiable by itself (:func:`lif_scan` pairs it with ``lif_backward``
    in an autograd Function). Returns ``(spikes, v_last, a_last|empty, v_seq|empty, h|empty, theta|empty)``;
    ``h``/``theta`` ``(T, N)`` in the compute dtype are saved for the backward. ``h`` is empty when
    the backend recomputes it from ``x`` in the backward (``impl.recomputes_h``)."""
    adaptive = a0 is not None
    p = _params(tau_inv, v_threshold, v_reset, hard_reset, decay_input, detach_reset, surrogate, alpha,
                convention, snn_reset, adapt_rho, adapt_beta, adaptive)
    impl = KERNELS.resolve("lif", backend, x.device)
    T, lanes, cdtype = x.shape[0], x.shape[1:], compute_dtype(x.dtype)
    xc = _to_compute(x, T, cdtype)
    v0c = _to_compute(v0, None, cdtype)
    a0c = _to_compute(a0, None, cdtype) if adaptive else None
    spikes, v_last, a_last, v_seq, h, theta = impl.forward(xc, v0c, a0c, p, return_v_seq)
    if h is None:  # the backend recomputes h in its backward (from x, which autograd then keeps)
        h = _empty(x, cdtype)
    out_dtype = x.dtype
    return (
        spikes.to(out_dtype).reshape(x.shape),
        v_last.to(out_dtype).reshape(lanes),
        a_last.to(out_dtype).reshape(lanes) if a_last is not None else _empty(x),
        v_seq.to(out_dtype).reshape(x.shape) if v_seq is not None else _empty(x),
        h,
        theta if theta is not None else _empty(x, cdtype),
    )


@lif_forward.register_fake
def _lif_forward_fake(x, v0, a0, tau_inv, v_threshold, v_reset, hard_reset, decay_input, detach_reset, surrogate,
                      alpha, convention, snn_reset, adapt_rho, adapt_beta, return_v_seq, backend):
    T, lanes, cdtype = x.shape[0], x.shape[1:], compute_dtype(x.dtype)
    n = math.prod(lanes)
    adaptive = a0 is not None and convention != "snntorch"
    saves_h = not KERNELS.resolve("lif", backend, x.device).recomputes_h(convention, a0 is not None)
    return (
        x.new_empty(x.shape),
        x.new_empty(lanes),
        x.new_empty(lanes) if a0 is not None else x.new_empty((0,)),
        x.new_empty(x.shape) if return_v_seq else x.new_empty((0,)),
        x.new_empty((T, n) if saves_h else (0,), dtype=cdtype),
        x.new_empty((T, n), dtype=cdtype) if adaptive else x.new_empty((0,), dtype=cdtype),
    )


@torch.library.custom_op("neurostep::lif_backward", mutates_args=())
def lif_backward(
    x: torch.Tensor, v0: torch.Tensor, h: torch.Tensor, theta: torch.Tensor, g_spikes: torch.Tensor | None,
    g_v_seq: torch.Tensor | None, g_v_last: torch.Tensor | None, g_a_last: torch.Tensor | None,
    tau_inv: torch.Tensor, v_threshold: torch.Tensor, v_reset: float, hard_reset: bool, decay_input: bool,
    detach_reset: bool, surrogate: str, alpha: float, convention: str, snn_reset: str, adapt_rho: float,
    adapt_beta: float, adaptive: bool, need_k_grad: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw backward op. ``x`` is read when ``h`` is empty (the backend recomputes h) or for
    ``need_k_grad`` (else it may be empty); g_* may be None (zero).

    Returns ``(gx (T,*lanes), gv0 (*lanes), ga0 (*lanes)|empty, g_tau_inv (), g_v_threshold ())``.
    """
    p = _params(tau_inv, v_threshold, v_reset, hard_reset, decay_input, detach_reset, surrogate, alpha,
                convention, snn_reset, adapt_rho, adapt_beta, adaptive)
    impl = KERNELS.resolve("lif", backend, h.device)
    recompute = h.numel() == 0
    T, cdtype = (x.shape[0] if recompute else h.shape[0]), h.dtype
    lanes = v0.shape
    xc = _to_compute(x, T, cdtype) if x.numel() > 0 else None

    def prep(g, with_t):
        return None if g is None else _to_compute(g, T if with_t else None, cdtype)

    gx, gv0, ga0, gk, gvth = impl.backward(
        xc, _to_compute(v0, None, cdtype), None if recompute else h, theta if theta.numel() > 0 else None,
        prep(g_spikes, True), prep(g_v_seq, True), prep(g_v_last, False), prep(g_a_last, False), p, need_k_grad,
    )
    x_dtype = g_spikes.dtype if g_spikes is not None else v0.dtype
    return (
        gx.to(x_dtype).reshape((T, *lanes)),
        gv0.to(v0.dtype).reshape(lanes),
        ga0.to(v0.dtype).reshape(lanes) if ga0 is not None else _empty(v0),
        gk.to(tau_inv.dtype).reshape(()),
        gvth.to(v_threshold.dtype).reshape(()),
    )


@lif_backward.register_fake
def _lif_backward_fake(x, v0, h, theta, g_spikes, g_v_seq, g_v_last, g_a_last, tau_inv, v_threshold, v_reset,
                       hard_reset, decay_input, detach_reset, surrogate, alpha, convention, snn_reset, adapt_rho,
                       adapt_beta, adaptive, need_k_grad, backend):
    T, lanes = (x.shape[0] if h.numel() == 0 else h.shape[0]), v0.shape
    x_dtype = g_spikes.dtype if g_spikes is not None else v0.dtype
    return (
        v0.new_empty((T, *lanes), dtype=x_dtype),
        v0.new_empty(lanes),
        v0.new_empty(lanes) if adaptive else v0.new_empty((0,)),
        tau_inv.new_empty(()),
        v_threshold.new_empty(()),
    )


_ARG_NAMES = ("x", "v0", "a0", "tau_inv", "v_threshold", "v_reset", "hard_reset", "decay_input", "detach_reset",
              "surrogate", "alpha", "convention", "snn_reset", "adapt_rho", "adapt_beta", "return_v_seq", "backend")


def _setup_context(ctx, inputs, output):
    a = dict(zip(_ARG_NAMES, inputs))
    x, tau_inv = a["x"], a["tau_inv"]
    _, _, a_last, _, h, theta = output
    needs = ctx.needs_input_grad
    need_k_grad = bool(needs[3])
    # x is read by the backward to recompute h when the forward saved none, and for d/d tau_inv with
    # decay_input (X - V + Vr); otherwise keep no reference.
    keep_x = h.numel() == 0 or (need_k_grad and a["decay_input"] and a["convention"] == "spikingjelly")
    ctx.save_for_backward(x if keep_x else None, a["v0"], h, theta, tau_inv, a["v_threshold"])
    ctx.flags = {name: a[name] for name in _ARG_NAMES[5:] if name != "return_v_seq"}
    ctx.x_dtype = x.dtype
    ctx.adaptive = a["a0"] is not None
    ctx.need_k_grad = need_k_grad
    ctx.mark_non_differentiable(h, theta)
    ctx.set_materialize_grads(False)


def _backward(ctx, g_spikes, g_v_last, g_a_last, g_v_seq, g_h, g_theta):
    x, v0, h, theta, tau_inv, v_threshold = ctx.saved_tensors
    f = ctx.flags
    if g_spikes is not None:
        g_spikes = g_spikes.to(ctx.x_dtype)
    gx, gv0, ga0, gk, gvth = torch.ops.neurostep.lif_backward(
        x if x is not None else h.new_empty((0,)), v0, h, theta,
        g_spikes, g_v_seq if (g_v_seq is not None and g_v_seq.numel() > 0) else None, g_v_last,
        g_a_last if (g_a_last is not None and g_a_last.numel() > 0) else None,
        tau_inv, v_threshold, f["v_reset"], f["hard_reset"], f["decay_input"], f["detach_reset"], f["surrogate"],
        f["alpha"], f["convention"], f["snn_reset"], f["adapt_rho"], f["adapt_beta"], ctx.adaptive,
        ctx.need_k_grad, f["backend"],
    )
    if g_spikes is None:
        gx = gx.to(ctx.x_dtype)
    return (gx, gv0, ga0 if ctx.adaptive else None, gk, gvth) + (None,) * (len(_ARG_NAMES) - 5)


class _LIFScan(torch.autograd.Function):
    """Autograd of the fused neuron: :func:`lif_forward` forward, ``lif_backward`` backward.

    An ``autograd.Function`` rather than ``lif_forward.register_autograd``: the custom op's autograd
    wrapper re-binds all 17 schema arguments on every call (about 75 us, quadratic in their
    number), which dominated the small layers of spiking models (T = 4, a few thousand neurons).
    torch.compile traces the Function and the two custom ops inside it as before.
    """

    @staticmethod
    def forward(ctx, *args):
        output = lif_forward(*args)
        _setup_context(ctx, args, output)
        return output

    backward = staticmethod(_backward)


def lif_scan(
    x: torch.Tensor,
    v0: torch.Tensor | None = None,
    a0: torch.Tensor | None = None,
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
    backend: str = "auto",
) -> LIFOutput:
    """Run a spiking neuron over a whole sequence in one fused call.

    Args:
        x: input current ``(T, *lanes)``, float (fp16/bf16 are computed in fp32 and returned in
            their dtype). Lanes are independent neurons.
        v0: initial membrane ``(*lanes)``; None means ``v_reset`` (hard reset) or 0 (soft reset,
            snntorch).
        a0: initial threshold adaptation ``(*lanes)`` or None (zeros). The neuron adapts iff
            ``adapt_beta != 0`` or ``a0`` is given: ``a_p = adapt_rho*a``, ``theta = v_threshold + a_p``,
            ``a = a_p + adapt_beta*S`` (spikingjelly convention only).
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
        return_v_seq: also return the membrane at every step (after reset; snntorch: before).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Returns:
        :class:`LIFOutput` ``(spikes (T,*lanes), v_last (*lanes), a_last (*lanes) | None,
        v_seq (T,*lanes) | None)``; gradients flow to x, v0, a0, tau_inv and v_threshold from all outputs.
    """
    check_backend_name(backend, BACKEND_NAMES)
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
        raise ValueError("threshold adaptation (adapt_beta / a0) is only defined for convention='spikingjelly'")
    if v0 is None:
        v0 = x.new_full(lanes, float(v_reset) if (hard and convention == "spikingjelly") else 0.0)
    else:
        check_tensor("v0", v0, device=x.device)
        check_same_shape("v0", v0, lanes, f"x.shape[1:] of x with shape {tuple(x.shape)}")
    if adaptive:
        if a0 is None:
            a0 = x.new_zeros(lanes)
        else:
            check_tensor("a0", a0, device=x.device)
            check_same_shape("a0", a0, lanes, f"x.shape[1:] of x with shape {tuple(x.shape)}")
    params = []
    for name, val in (("tau_inv", tau_inv), ("v_threshold", v_threshold)):
        if isinstance(val, torch.Tensor):
            check_tensor(name, val, ndim=0, device=x.device)
        elif isinstance(val, (int, float)) and not isinstance(val, bool):
            val = torch.tensor(float(val), dtype=compute_dtype(x.dtype), device=x.device)
        else:
            raise TypeError(f"{name} must be a float or a 0-d tensor, got {type(val).__name__}")
        params.append(val)
    spikes, v_last, a_last, v_seq, _, _ = _LIFScan.apply(
        x, v0, a0, params[0], params[1], float(v_reset) if hard else 0.0, hard, bool(decay_input),
        bool(detach_reset), surrogate, float(alpha), convention, snn_reset, float(adapt_rho), float(adapt_beta),
        bool(return_v_seq), backend,
    )
    return LIFOutput(spikes, v_last, a_last if adaptive else None, v_seq if return_v_seq else None)


@register_cost("neurostep::lif_forward")
def _lif_cost(args, kwargs, out) -> OpCost:
    """Per element and step: charge adds/muls, one compare, reset, state updates; bytes of x, spikes, saved h."""
    a = dict(zip(_ARG_NAMES, args))
    a.update(kwargs or {})
    x = a["x"]
    n = float(x.numel())
    item = x.element_size()
    adaptive = a.get("a0") is not None
    if a["convention"] == "snntorch":
        adds, muls = 2.0, 2.0  # beta*v + x - R*thr
        adds += 1.0  # H - thr for the compare
    else:
        k_is_zero = False
        tau_inv = a["tau_inv"]
        if isinstance(tau_inv, torch.Tensor) and tau_inv.device.type != "meta":
            try:
                k_is_zero = float(tau_inv) == 0.0
            except RuntimeError:  # a fake/symbolic tensor has no value: count the LIF charge
                k_is_zero = False
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
