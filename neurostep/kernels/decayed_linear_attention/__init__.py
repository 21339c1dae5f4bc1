"""Chunked decayed linear attention: one scalar decay per step and head, as one fused op.

``decayed_linear_attention(q, k, v, log_decay, *, scale=None, initial_state=None, output_final_state=False,
chunk_size=None, backend="auto") -> (o, final_state)`` computes, per batch row and head::

    S_t = exp(g_t) S_{t-1} + k_t^T v_t,      o_t = scale * q_t S_t          (S: (K, V))

- Mamba-2's SSD (Dao and Gu 2024) with ``g = dt * A``, ``k = B``, ``v = dt * x``, ``q = C`` and
  ``scale=1.0``; ``log_decay`` is then ``(B, L, H)``, one value per step and head.
- Lightning Attention-2 / TransNormerLLM and RetNet: one constant decay per head, ``log_decay`` of
  shape ``(H,)`` (``log(lambda_h)``).
- flash-linear-attention's ``chunk_simple_gla`` computes the same (``g`` its per-step log-decay);
  ``scale=None`` is its default ``K ** -0.5``.

Backends: ``reference`` (the recurrence token by token, gradients by ``torch.func.vjp``), ``cpu``
(the chunked form on torch's batched matrix products and numba kernels, forward and backward written
by hand) and
``triton`` (the chunked form as Triton kernels; CUDA, or CPU under ``TRITON_INTERPRET=1``). Registered
as ``neurostep::decayed_linear_attention_forward`` / ``_backward``.
"""

from __future__ import annotations

import importlib
import math

import torch

from neurostep.engine import (
    KERNELS,
    BackwardCall,
    OpCost,
    check_nonempty,
    check_tensor,
    compute_dtype,
    define_op,
    differentiated,
    has_values,
)
from neurostep.kernels.decayed_linear_attention.reference import SAVED_TENSORS
from neurostep.kernels.decayed_linear_attention.tuning import BACKENDS as TUNED_BACKENDS
from neurostep.kernels.decayed_linear_attention.tuning import tuned_chunk_size

_NAME = "decayed_linear_attention"


_SAVED = slice(2, 2 + SAVED_TENSORS)   # the outputs after o and the final state


def _forward(impl, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None,
             v_scale: torch.Tensor | None, scale: float,
             chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                       torch.Tensor, torch.Tensor]:
    """Returns ``(o, final_state, *saved)``; ``saved`` (:data:`SAVED_TENSORS` tensors, possibly empty) is what
    the backend's forward keeps for its own backward."""
    o, final, saved = impl.forward(q, k, v, g, h0, scale, chunk_size, v_scale)
    return (o, final, *saved)


def _forward_fake(q, k, v, g, h0, v_scale, scale, chunk_size, *, backend):
    B, K, H = q.shape[0], q.shape[-1], v.shape[2]
    # the backend module is imported by name: the fake runs on meta tensors, where no backend is "available"
    module = importlib.import_module(f"{__name__}.{backend}")
    saved = module.saved_shapes(tuple(q.shape), tuple(v.shape), chunk_size)
    return (v.new_empty(v.shape), q.new_empty(B, H, K, v.shape[-1]), *(q.new_empty(shape) for shape in saved))


def _shape_only(t: torch.Tensor) -> torch.Tensor:
    """A tensor with no elements that keeps ``t``'s leading dims: ``(..., 0)``."""
    return t.new_empty(*t.shape[:-1], 0)


def _save(args, outputs):
    saved = outputs[_SAVED]
    v_scale = args["v_scale"]
    if saved[0].numel():   # the backend keeps its own copies of q, k and v: autograd holds them once
        # the gradient of v_scale reads the unscaled v, which the copies do not hold
        v = args["v"] if v_scale is not None and args["needs_input_grad"][5] else _shape_only(args["v"])
        return (_shape_only(args["q"]), _shape_only(args["k"]), v, args["g"], args["h0"], v_scale, outputs[1],
                *saved)
    return args["q"], args["k"], args["v"], args["g"], args["h0"], v_scale, outputs[1], *saved


def _backward(impl, call: BackwardCall):
    grad_o, grad_final = call.grads
    q, k, v, g, h0, v_scale, final, *saved = call.saved
    grad_o = g.new_zeros(*g.shape, final.shape[-1]) if grad_o is None else grad_o.contiguous()
    grad_final = None if grad_final is None else grad_final.contiguous()
    return impl.backward(grad_o, grad_final, q, k, v, g, h0, final, tuple(saved), call.attrs["scale"],
                         call.attrs["chunk_size"], v_scale)


def _backward_fake(call: BackwardCall):
    q, _, _, g, h0, v_scale, final, *_ = call.saved
    K, V = final.shape[-2:]
    return [g.new_empty(*q.shape[:-1], K), g.new_empty(*q.shape[:-1], K), g.new_empty(*g.shape, V),
            g.new_empty(g.shape),
            None if h0 is None else h0.new_empty(h0.shape),
            None if v_scale is None else v_scale.new_empty(v_scale.shape)]


def _cost(args, kwargs, out) -> OpCost:
    """The chunked form's operations, per batch row, head and chunk of ``C`` tokens (``n`` chunks, the last
    one zero-padded): ``C^2 (K + V)`` multiply-adds for ``((Q K^T) * M) V`` and ``2 C K V`` for the
    inter-chunk output ``(Q exp(b)) S`` and the chunk's state ``(K exp(b_C - b))^T V``; ``C^2 + 2C + 1``
    exps (the decay mask, ``exp(b)``, ``exp(b_C - b)``, ``exp(b_C)``); multiplies: the mask ``C^2``, the
    decayed ``q`` and ``k`` ``2 C K``, the scale ``C V`` and the state's decay ``K V``; adds: the cumulative
    sum ``C``, the two output terms ``C V`` and the state ``K V``; ``K V`` state elements written per
    chunk. With ``G < H`` groups of q and k, ``Q K^T`` (``C^2 K``) is counted once per group and chunk.
    A ``v_scale`` adds ``V`` multiplies per token and head. Bytes: q, k, v, g, ``v_scale`` and the initial
    state read, o and the final state written."""
    q, k, v, g, h0, v_scale, _, chunk_size = args[:8]
    B, L, G, K = q.shape
    H, V = v.shape[-2:]
    C = max(1, min(int(chunk_size), L))
    n = -(-L // C)
    per_chunk = B * H * n
    size = q.element_size()
    state_bytes = float(B * H * K * V * size)
    return OpCost(
        macs=float(B * G * n * C * C * K + per_chunk * (C * C * V + 2 * C * K * V)),
        exps=float(per_chunk * (C * C + 2 * C + 1)),
        muls=float(per_chunk * (C * C + 2 * C * K + C * V + K * V)) + (float(v.numel()) if v_scale is not None
                                                                         else 0.0),
        adds=float(per_chunk * (C + C * V + K * V)),
        state_updates=float(per_chunk * K * V),
        bytes_read=float((q.numel() + k.numel() + v.numel() + g.numel()) * size)
        + (state_bytes if h0 is not None else 0.0) + (float(v_scale.numel() * size) if v_scale is not None else 0.0),
        bytes_written=float(v.numel() * size) + state_bytes,
    )


DECAYED_LINEAR_ATTENTION = define_op(
    _NAME,
    backends={name: f"neurostep.kernels.decayed_linear_attention.{name}" for name in ("reference", "cpu", "triton")},
    forward=_forward, forward_fake=_forward_fake, backward=_backward, backward_fake=_backward_fake,
    save=_save, internal_outputs=tuple(range(_SAVED.start, _SAVED.stop)), cost=_cost,
)


def _check_log_decay(log_decay: torch.Tensor) -> None:
    """``log_decay`` must be finite and ``<= 0``: read on the CPU, queued on an accelerator (no wait),
    skipped on the meta device and in ``torch.compile`` traces."""
    if not has_values(log_decay) or log_decay.numel() == 0:
        return
    d = log_decay.detach()
    ok = (torch.isfinite(d) & (d <= 0)).all()
    if d.device.type != "cpu":
        torch._assert_async(ok, "log_decay must be finite and <= 0")
    elif not bool(ok):
        bad = d[~(torch.isfinite(d) & (d <= 0))]
        raise ValueError(f"log_decay must be finite and <= 0 (a decay exp(log_decay) in (0, 1]), got values such "
                         f"as {bad.flatten()[:4].tolist()}")


def decayed_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    v_scale: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Linear attention with a scalar decay per step and head, in chunks.

    Per batch row and head: ``S_t = exp(g_t) S_{t-1} + k_t^T v_t`` and ``o_t = scale * q_t S_t``, with the
    state ``S`` a ``(K, V)`` matrix.

    Args:
        q, k: ``(B, L, H, K)``, ``L >= 1``; fp16, bf16, fp32 or fp64 (one dtype for q, k and v). Or
            ``(B, L, G, K)`` with ``G`` dividing ``H``: head ``h`` reads group ``h // (H / G)`` (Mamba-2's
            ``ngroups`` of B and C); the cpu backend then forms ``Q K^T`` once per group.
        v: ``(B, L, H, V)``.
        log_decay: ``g``, finite and ``<= 0``: ``(B, L, H)`` one value per step and head (Mamba-2's
            ``dt * A``), or ``(H,)`` one constant per head (Lightning Attention-2, RetNet). Any float dtype.
        v_scale: ``(B, L, H)`` or None: the recurrence reads ``v_scale_t * v_t`` instead of ``v_t`` (Mamba-2's
            ``dt * x``: pass ``v = x``, ``v_scale = dt``). The same as scaling ``v`` first, but the ``cpu``
            backend applies it while it copies ``v`` into chunks, and its backward forms both gradients in the
            pass that writes ``v``'s, so no ``(B, L, H, V)`` product is written and read back. Any float
            dtype; differentiable.
        scale: the output's factor; None means ``K ** -0.5`` (flash-linear-attention's ``simple_gla``);
            Mamba-2 uses 1.0.
        initial_state: ``(B, H, K, V)`` state before the first token, or None (zeros). Differentiable.
        output_final_state: also return the state after the last token (else None).
        chunk_size: tokens per chunk of the chunked backends; None picks the size measured fastest on this
            machine (for ``triton``, this GPU) for this dtype, ``K``, ``V``, thread count (``cpu``) and mode
            (training when an input requires a gradient, else inference) by ``python -m neurostep tune``
            (:mod:`~neurostep.kernels.decayed_linear_attention.tuning`), else 64. The ``triton`` backend needs
            a power of two >= 16. The result does not depend on it beyond rounding.
        backend: ``"auto"`` (``cpu`` on CPU tensors, ``triton`` on CUDA), ``"reference"``, ``"cpu"`` or
            ``"triton"``.

    Returns:
        ``(o, final_state)``: ``o (B, L, H, V)`` in ``q``'s dtype; ``final_state (B, H, K, V)`` in the compute
        dtype (float32, or float64 for float64 inputs), or None. Gradients flow to q, k, v, log_decay,
        v_scale and the initial state, from ``o`` and from the final state.
    """
    q = check_tensor("q", q, ndim=4)
    B, L, G, K = q.shape
    device = q.device
    k = check_tensor("k", k, device=device)
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q (B, L, H, K) = {tuple(q.shape)}, got {tuple(k.shape)}")
    v = check_tensor("v", v, ndim=4, device=device)
    if v.shape[:2] != q.shape[:2] or v.shape[2] == 0 or G == 0 or v.shape[2] % G:
        raise ValueError(f"v must have shape (B, L, H, V) = ({B}, {L}, H, V) with H a multiple of q's {G} heads "
                         f"(groups), got {tuple(v.shape)} for q {tuple(q.shape)}")
    H = v.shape[2]
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
    log_decay = check_tensor("log_decay", log_decay, ndim=(1, 3), device=device)
    if log_decay.dim() == 3 and log_decay.shape != (B, L, H):
        raise ValueError(f"log_decay must have shape (B, L, H) = ({B}, {L}, {H}) or (H,) = ({H},), got "
                         f"{tuple(log_decay.shape)}")
    if log_decay.dim() == 1 and log_decay.shape != (H,):
        raise ValueError(f"log_decay must have shape (B, L, H) = ({B}, {L}, {H}) or (H,) = ({H},), got "
                         f"{tuple(log_decay.shape)}")
    check_nonempty("q", q, 1, "tokens")
    V = v.shape[-1]
    if K == 0 or V == 0:
        raise ValueError(f"q and v need K, V and H >= 1, got q {tuple(q.shape)} and v {tuple(v.shape)}")
    if initial_state is not None:
        check_tensor("initial_state", initial_state, shape=(B, H, K, V), device=device)
    if v_scale is not None:
        check_tensor("v_scale", v_scale, shape=(B, L, H), device=device)
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state must be a bool, got {type(output_final_state).__name__}")
    if scale is None:
        scale = K ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    elif not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    name = DECAYED_LINEAR_ATTENTION.choose_backend(backend, device)
    cd = compute_dtype(q.dtype)
    if chunk_size is None:
        # the chunk size measured on this machine (tuning.py) for training or inference calls, else the
        # backend's default
        backward = differentiated(q, k, v, log_decay, initial_state, v_scale)
        tuned = (tuned_chunk_size(K, V, cd, backward=backward, backend=name, device=device)
                 if name in TUNED_BACKENDS else None)
        chunk_size = tuned if tuned is not None else KERNELS.resolve(_NAME, name, device).CHUNK_SIZE
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}")
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if name == "triton" and (chunk_size < 16 or chunk_size & (chunk_size - 1)):
        raise ValueError(f"the triton backend needs chunk_size a power of two >= 16, got {chunk_size}")
    _check_log_decay(log_decay)

    g = log_decay.to(cd)
    g = g.expand(B, L, H) if g.dim() == 1 else g
    o, final, *_ = DECAYED_LINEAR_ATTENTION(
        q.to(cd).contiguous(), k.to(cd).contiguous(), v.to(cd).contiguous(), g.contiguous(),
        None if initial_state is None else initial_state.to(cd).contiguous(),
        None if v_scale is None else v_scale.to(cd).contiguous(), float(scale), int(chunk_size), backend=name)
    return o.to(q.dtype), (final if output_final_state else None)


__all__ = ["decayed_linear_attention"]
