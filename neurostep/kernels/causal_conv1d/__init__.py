"""Depthwise causal 1-D convolution (Mamba's short conv) and its one-token decode update.

``causal_conv1d_fn`` takes any width ``W >= 1`` and an optional conv state carried from a previous
chunk. Backends: ``reference`` (torch), ``cpu`` (numba), ``triton``. Registered as
``neurostep::causal_conv1d_forward`` / ``_backward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neurostep.engine import BackwardCall, OpCost, check_finite, check_nonempty, check_tensor, define_op
from neurostep.engine.layout import channels_last_layout

_ACTIVATIONS = (None, "silu", "swish")


def _forward(impl, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             initial_states: torch.Tensor | None, silu: bool, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(out, saved)``: ``saved`` is what the backend's backward reads (empty if nothing). With
    ``channels_last``, ``x`` and ``out`` are ``(B, L, D)``."""
    return impl.forward(x, weight, bias, initial_states, silu, channels_last)


def _forward_fake(x, weight, bias, initial_states, silu, channels_last, *, backend):
    return x.new_empty(x.shape), x.new_empty(0)


def _save(args, outputs):
    return args["x"], args["weight"], args["bias"], args["initial_states"], outputs[1]


def _backward(impl, call: BackwardCall):
    (grad_out,) = call.grads
    x, weight, bias, initial_states, saved = call.saved
    grad_out = torch.zeros_like(x) if grad_out is None else grad_out.contiguous()
    return impl.backward(grad_out, x, weight, bias, initial_states, saved, call.attrs["silu"],
                         call.attrs["channels_last"])


def _backward_fake(call: BackwardCall):
    return [None if t is None else t.new_empty(t.shape) for t in call.saved[:4]]


def _cost(args, kwargs, out) -> OpCost:
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


CAUSAL_CONV1D = define_op(
    "causal_conv1d",
    backends={name: f"neurostep.kernels.causal_conv1d.{name}" for name in ("reference", "cpu", "triton")},
    forward=_forward, forward_fake=_forward_fake, backward=_backward, backward_fake=_backward_fake,
    save=_save, internal_outputs=(1,), cost=_cost,
)


def _check_activation(activation: str | None) -> bool:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    return activation is not None


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    *,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Depthwise causal convolution ``(B, D, L) -> (B, D, L)`` with neurostep's state convention.

    ``x`` may be channels-first (time contiguous, torch's conv1d layout) or channels-last (its channels
    contiguous: ``x.stride(1) == 1``, such as the transpose of a token-major ``(B, L, D)`` block, as
    causal-conv1d accepts): the kernels read either layout without a transposing copy, and ``out`` comes in
    the layout of ``x``.

    Args:
        x: ``(B, D, L)``. weight: ``(D, W)``, ``W >= 1``. bias: ``(D,)`` or None.
        activation: None or ``"silu"``.
        initial_state: ``(B, D, W-1)``, the last ``W-1`` inputs of the previous chunk, or None (zeros).
        output_final_state: also return the last ``W-1`` inputs ``(B, D, W-1)`` (to carry into the next
            chunk; else None).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.
    Returns:
        ``(out, final_state)``: ``out (B, D, L)`` in ``x``'s dtype; the final state in ``x``'s dtype, or None.
    """
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
    if initial_state is not None:
        check_tensor("initial_state", initial_state, shape=(batch, dim, width - 1), device=x.device)
    silu = _check_activation(activation)
    name = CAUSAL_CONV1D.choose_backend(backend, x.device)

    cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32

    def prep(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(cdtype).contiguous()

    channels_last = channels_last_layout(x)
    xk = prep(x.transpose(1, 2)) if channels_last else prep(x)
    out, _ = CAUSAL_CONV1D(xk, prep(weight), prep(bias), prep(initial_state), silu, channels_last, backend=name)
    out = (out.transpose(1, 2) if channels_last else out).to(x.dtype)
    if not output_final_state:
        return out, None
    history = x if initial_state is None else torch.cat([initial_state.to(x.dtype), x], dim=-1)
    if history.shape[-1] < width - 1:
        history = F.pad(history, (width - 1 - history.shape[-1], 0))
    return out, history[..., history.shape[-1] - (width - 1):]


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
    """causal-conv1d's ``causal_conv1d_fn`` argument names and return convention over :func:`causal_conv1d`.

    ``initial_states`` / ``return_final_states`` are causal-conv1d's spellings of ``initial_state`` /
    ``output_final_state``; returns ``out``, or ``(out, final_states)``. Code written for causal-conv1d
    calls this; neurostep's own code calls :func:`causal_conv1d`.
    """
    out, final = causal_conv1d(x, weight, bias, activation, initial_state=initial_states,
                               output_final_state=return_final_states, backend=backend)
    return (out, final) if return_final_states else out


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


__all__ = ["causal_conv1d", "causal_conv1d_fn", "causal_conv1d_update"]
