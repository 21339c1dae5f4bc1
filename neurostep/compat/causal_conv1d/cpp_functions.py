"""``causal_conv1d.cpp_functions``: the compiled extension's three entry points, as Python functions.

Some callers (mamba-ssm's fused Mamba path among them) bypass ``causal_conv1d_fn`` and call these
directly. The forward and the decode update delegate to
:mod:`~neurostep.compat.causal_conv1d.causal_conv1d_interface`; the backward differentiates that
forward with autograd instead of running a hand-written kernel.
"""

from __future__ import annotations

import torch

from neurostep.compat.causal_conv1d.causal_conv1d_interface import causal_conv1d_fn, causal_conv1d_update

__all__ = ["causal_conv1d_bwd_function", "causal_conv1d_fwd_function", "causal_conv1d_update_function"]


def _act(silu_activation: bool) -> str | None:
    return "silu" if silu_activation else None


def causal_conv1d_fwd_function(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    seq_idx: torch.Tensor | None,
    initial_states: torch.Tensor | None,
    final_states_out: torch.Tensor | None,
    silu_activation: bool,
) -> torch.Tensor:
    """Forward; writes the last ``width - 1`` inputs into ``final_states_out`` when one is given."""
    if final_states_out is None:
        return causal_conv1d_fn(x, weight, bias, seq_idx, initial_states, False, None, _act(silu_activation))
    out, _ = causal_conv1d_fn(x, weight, bias, seq_idx, initial_states, True, final_states_out, _act(silu_activation))
    return out


def causal_conv1d_bwd_function(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dout: torch.Tensor,
    seq_idx: torch.Tensor | None,
    initial_states: torch.Tensor | None,
    dfinal_states: torch.Tensor | None,
    dx: torch.Tensor | None,
    return_dinitial_states: bool,
    silu_activation: bool,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients ``(dx, dweight, dbias, dinitial_states)``; ``dx`` is written into the given tensor if any."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_()
        wg = weight.detach().requires_grad_()
        bg = None if bias is None else bias.detach().requires_grad_()
        ig = None if initial_states is None else initial_states.detach().requires_grad_(return_dinitial_states)
        inputs = [t for t in (xg, wg, bg) if t is not None]
        if ig is not None and return_dinitial_states:
            inputs.append(ig)
        if dfinal_states is not None:
            out, final = causal_conv1d_fn(xg, wg, bg, seq_idx, ig, True, None, _act(silu_activation))
            grads = torch.autograd.grad([out, final], inputs, [dout, dfinal_states], allow_unused=True)
        else:
            out = causal_conv1d_fn(xg, wg, bg, seq_idx, ig, False, None, _act(silu_activation))
            grads = torch.autograd.grad(out, inputs, dout, allow_unused=True)
    grads = list(grads)
    gx, gw = grads.pop(0), grads.pop(0)
    gb = grads.pop(0) if bias is not None else None
    gi = grads.pop(0) if (initial_states is not None and return_dinitial_states) else None
    gx = torch.zeros_like(x) if gx is None else gx
    if dx is not None:
        dx.copy_(gx)
        gx = dx
    return gx, gw, gb, gi


def causal_conv1d_update_function(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    silu_activation: bool,
    cache_seqlens: torch.Tensor | None,
    conv_state_indices: torch.Tensor | None,
) -> torch.Tensor:
    """Decode update of ``conv_state`` in place; ``x (batch, dim, seqlen)``."""
    return causal_conv1d_update(x, conv_state, weight, bias, _act(silu_activation), cache_seqlens, conv_state_indices)
