"""Depthwise causal 1-D convolution (Mamba's short conv) and its one-token decode update.

``causal_conv1d_fn`` takes any width ``W >= 1`` and an optional conv state carried from a previous
chunk. Backends: ``reference`` (torch), ``cpu`` (numba), ``triton``. Registered as
``neurostep::causal_conv1d_forward`` / ``_backward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neurostep.engine import KERNELS, OpCost, check_finite, check_nonempty, check_tensor, register_cost
from neurostep.engine.checks import check_backend_name

OP = "causal_conv1d"
KERNELS.register(OP, "reference", "neurostep.kernels.causal_conv1d.reference")
KERNELS.register(OP, "cpu", "neurostep.kernels.causal_conv1d.cpu")
KERNELS.register(OP, "triton", "neurostep.kernels.causal_conv1d.triton")

_BACKENDS = ("reference", "cpu", "triton")
_ACTIVATIONS = (None, "silu", "swish")


def _none_as_empty(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Custom ops cannot return None: an empty tensor stands for 'no such input'."""
    return like.new_empty(0) if t is None else t


@torch.library.custom_op("neurostep::causal_conv1d_forward", mutates_args=())
def _cc_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    initial_states: torch.Tensor | None,
    silu: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    impl = KERNELS.resolve(OP, backend, x.device)
    return impl.forward(x, weight, bias, initial_states, silu)


@_cc_forward.register_fake
def _(x, weight, bias, initial_states, silu, backend):
    return x.new_empty(x.shape), x.new_empty(0)


@torch.library.custom_op("neurostep::causal_conv1d_backward", mutates_args=())
def _cc_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    initial_states: torch.Tensor | None,
    saved: torch.Tensor,
    silu: bool,
    backend: str,
) -> list[torch.Tensor]:
    impl = KERNELS.resolve(OP, backend, x.device)
    grads = impl.backward(grad_out.contiguous(), x, weight, bias, initial_states, saved, silu)
    return [_none_as_empty(g, x) for g in grads]


@_cc_backward.register_fake
def _(grad_out, x, weight, bias, initial_states, saved, silu, backend):
    return [x.new_empty(0) if t is None else t.new_empty(t.shape) for t in (x, weight, bias, initial_states)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, initial_states, silu, backend = inputs
    ctx.silu, ctx.backend = silu, backend
    ctx.present = (bias is not None, initial_states is not None)
    ctx.save_for_backward(x, weight, _none_as_empty(bias, x), _none_as_empty(initial_states, x), output[1])


def _backward(ctx, grad_out, grad_saved):
    x, weight, bias, initial_states, saved = ctx.saved_tensors
    bias = bias if ctx.present[0] else None
    initial_states = initial_states if ctx.present[1] else None
    dx, dw, db, dinit = _cc_backward(grad_out, x, weight, bias, initial_states, saved, ctx.silu, ctx.backend)
    return dx, dw, (db if ctx.present[0] else None), (dinit if ctx.present[1] else None), None, None


_cc_forward.register_autograd(_backward, setup_context=_setup_context)


@register_cost("neurostep::causal_conv1d_forward")
def _causal_conv1d_cost(args, kwargs, out) -> OpCost:
    """W MACs per output element, plus bias add and SiLU (1 exp, 1 mul, 1 add, 1 div as mul)."""
    x, weight, bias, silu = args[0], args[1], args[2], args[4]
    elems = float(x.numel())
    itemsize = x.element_size()
    return OpCost(
        macs=elems * weight.shape[1],
        adds=elems * ((1.0 if bias is not None else 0.0) + (1.0 if silu else 0.0)),
        muls=elems * (2.0 if silu else 0.0),
        exps=elems * (1.0 if silu else 0.0),
        bytes_read=float(x.numel() + weight.numel()) * itemsize,
        bytes_written=elems * itemsize,
    )


def _check_activation(activation: str | None) -> bool:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    return activation is not None


def causal_conv1d_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    activation: str | None = None,
    *,
    return_final_states: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution ``(B, D, L) -> (B, D, L)``.

    Args:
        x: ``(B, D, L)``. weight: ``(D, W)``, ``W >= 1``. bias: ``(D,)`` or None.
        initial_states: ``(B, D, W-1)``, the last ``W-1`` inputs of the previous chunk, or None (zeros).
        activation: None or ``"silu"``.
        return_final_states: also return the last ``W-1`` inputs ``(B, D, W-1)`` (to carry into the next chunk).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.
    Returns:
        ``out (B, D, L)`` in ``x``'s dtype (and the final states in ``x``'s dtype when asked).
    """
    check_backend_name(backend, _BACKENDS)
    x = check_tensor("x", x, ndim=3)
    batch, dim, length = x.shape
    check_nonempty("x", x, 2)
    weight = check_tensor("weight", weight, ndim=2, device=x.device)
    if weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(f"weight must have shape (D={dim}, W>=1), got {tuple(weight.shape)} for x {tuple(x.shape)}")
    width = weight.shape[1]
    check_finite("weight", weight)
    if bias is not None:
        check_tensor("bias", bias, shape=(dim,), device=x.device)
        check_finite("bias", bias)
    if initial_states is not None:
        check_tensor("initial_states", initial_states, shape=(batch, dim, width - 1), device=x.device)
    silu = _check_activation(activation)
    name = KERNELS.choose(OP, backend, x.device)

    cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32

    def prep(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(cdtype).contiguous()

    out, _ = _cc_forward(prep(x), prep(weight), prep(bias), prep(initial_states), silu, name)
    out = out.to(x.dtype)
    if not return_final_states:
        return out
    history = x if initial_states is None else torch.cat([initial_states.to(x.dtype), x], dim=-1)
    if history.shape[-1] < width - 1:
        history = F.pad(history, (width - 1 - history.shape[-1], 0))
    return out, history[..., history.shape[-1] - (width - 1):]


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step: shift ``x`` into the state and convolve (mamba-ssm's decode convention).

    Args:
        x: ``(B, D)``, the new input. conv_state: ``(B, D, W)``, the last ``W`` inputs before ``x``.
        weight: ``(D, W)``. bias: ``(D,)`` or None. activation: None or ``"silu"``.
    Returns:
        ``out (B, D)`` in ``x``'s dtype and ``new_conv_state (B, D, W)`` (the last ``W`` inputs,
        ``x`` included) in ``conv_state``'s dtype; ``conv_state`` itself is not modified.
    """
    x = check_tensor("x", x, ndim=2)
    batch, dim = x.shape
    weight = check_tensor("weight", weight, ndim=2, device=x.device)
    if weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(f"weight must have shape (D={dim}, W>=1), got {tuple(weight.shape)} for x {tuple(x.shape)}")
    check_tensor("conv_state", conv_state, shape=(batch, dim, weight.shape[1]), device=x.device)
    if bias is not None:
        check_tensor("bias", bias, shape=(dim,), device=x.device)
    silu = _check_activation(activation)
    new_state = torch.cat([conv_state[..., 1:], x[..., None].to(conv_state.dtype)], dim=-1)
    cdtype = torch.float64 if torch.float64 in (x.dtype, conv_state.dtype) else torch.float32
    pre = (new_state.to(cdtype) * weight.to(cdtype)).sum(-1)
    if bias is not None:
        pre = pre + bias.to(cdtype)
    out = F.silu(pre) if silu else pre
    return out.to(x.dtype), new_state


__all__ = ["causal_conv1d_fn", "causal_conv1d_update"]
