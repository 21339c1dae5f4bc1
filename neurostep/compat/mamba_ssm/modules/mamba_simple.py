"""``mamba_ssm.modules.mamba_simple``: the selective-SSM mixer ``Mamba`` and the 1.x ``Block``.

The constructor takes mamba-ssm's arguments plus the three that Vision Mamba's fork added
(``bimamba_type``, ``if_divide_out``, ``init_layer_scale``). Parameter names and shapes, and the
order in which they are created and drawn from the RNG, are the ones mamba-ssm checkpoints and
seeded upstream runs expect. With ``Di = int(expand * d_model)``, ``R = dt_rank`` and
``N = d_state``::

    in_proj.weight  (2 Di, d_model)     conv1d.weight (Di, 1, d_conv)   conv1d.bias (Di,)
    x_proj.weight   (R + 2 N, Di)       dt_proj.weight (Di, R)          dt_proj.bias (Di,)
    A_log (Di, N)   D (Di,)             out_proj.weight (d_model, Di)   gamma (d_model,) optional

``bimamba_type="v1"`` adds only ``A_b_log``: the reversed scan shares every other weight.
``"v2"`` gives the reversed scan its own ``A_b_log``, ``conv1d_b``, ``x_proj_b``, ``dt_proj_b`` and
``D_b``; the two directions are summed (halved when ``if_divide_out``) before ``out_proj``.

Unlike the fork, the single-token decode step also multiplies by ``gamma`` when
``init_layer_scale`` is set, so that decoding token by token gives the parallel forward's output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from neurostep.compat.causal_conv1d.causal_conv1d_interface import causal_conv1d_fn, causal_conv1d_update
from neurostep.compat.mamba_ssm.modules._params import (
    cached_decode_states,
    depthwise_conv,
    inverse_softplus,
    log_uniform_steps,
    no_weight_decay,
)
from neurostep.compat.mamba_ssm.ops.selective_scan_interface import (
    bimamba_inner_fn,
    mamba_inner_fn,
    mamba_inner_fn_no_out_proj,
    selective_scan_fn,
)
from neurostep.compat.mamba_ssm.ops.triton.layer_norm import RMSNorm, layer_norm_fn, rms_norm_fn
from neurostep.compat.mamba_ssm.ops.triton.selective_state_update import selective_state_update

__all__ = ["Block", "Mamba"]

if TYPE_CHECKING:
    from neurostep.compat.mamba_ssm.utils.generation import InferenceParams

_BIMAMBA_TYPES = ("none", "v1", "v2")


def _log_s4d_real(rows: int, d_state: int, device: torch.device | None) -> Tensor:
    """``log(1..N)`` on every one of ``rows`` rows, fp32 ``(rows, N)``: the S4D-real diagonal, as ``A_log``."""
    n = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
    return n.log().expand(rows, d_state).contiguous()


def _last_window(x: Tensor, width: int) -> Tensor:
    """The last ``width`` steps of ``x (B, C, L)``, zero-filled on the left when ``L < width``."""
    return F.pad(x, (width - x.shape[-1], 0))


def _init_dt_proj_(dt_proj: nn.Linear, scheme: str, scale: float, dt_min: float, dt_max: float,
                   floor: float, factory: dict) -> None:
    """Initialise the step-size projection in place.

    Weight: ``scale / sqrt(R)``, either everywhere (``"constant"``) or as the bound of a uniform
    draw (``"random"``). Bias: the inverse softplus of step sizes drawn log-uniformly in
    ``[dt_min, dt_max]`` (then floored at ``floor``), so ``softplus(bias)`` starts in that range.
    The weight is drawn before the bias: seeded runs depend on that order.
    """
    bound = dt_proj.in_features ** -0.5 * scale
    if scheme == "random":
        nn.init.uniform_(dt_proj.weight, -bound, bound)
    elif scheme == "constant":
        nn.init.constant_(dt_proj.weight, bound)
    else:
        raise NotImplementedError(f"dt_init is 'random' or 'constant', not {scheme!r}")
    step = log_uniform_steps(dt_proj.out_features, dt_min, dt_max, floor, factory)
    with torch.no_grad():
        dt_proj.bias.copy_(inverse_softplus(step))
    dt_proj.bias._no_reinit = True  # an LM's _init_weights zeroes Linear biases unless told not to


class Mamba(nn.Module):
    """Selective state-space mixer ``(B, L, d_model) -> (B, L, d_model)``.

    Args (mamba-ssm's): ``d_state`` N, ``d_conv`` conv taps, ``expand`` (``Di = int(expand * d_model)``),
    ``dt_rank`` (``"auto"``: ``ceil(d_model / 16)``), the step-size init ``dt_min``, ``dt_max``,
    ``dt_init`` (``"random"`` / ``"constant"``), ``dt_scale``, ``dt_init_floor``, ``conv_bias``,
    ``bias`` (of ``in_proj`` and ``out_proj``), ``use_fast_path`` (one fused call when no cache is
    given), ``layer_idx`` (the key of this layer's decode states in an ``InferenceParams``),
    ``device``, ``dtype``. Vision Mamba's: ``bimamba_type`` (``"none"``, ``"v1"``, ``"v2"``),
    ``if_divide_out``, ``init_layer_scale`` (a per-channel output scale ``gamma`` starting there).
    """

    def __init__(
        self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2, dt_rank: int | str = "auto",
        dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False, use_fast_path: bool = True,
        layer_idx: int | None = None, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
        bimamba_type: str = "none", if_divide_out: bool = False, init_layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        if bimamba_type not in _BIMAMBA_TYPES:
            raise ValueError(f"bimamba_type is one of {_BIMAMBA_TYPES}, got {bimamba_type!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.layer_idx, self.use_fast_path = layer_idx, use_fast_path
        # Vision Mamba's options
        self.bimamba_type, self.if_divide_out, self.init_layer_scale = bimamba_type, if_divide_out, init_layer_scale
        if init_layer_scale is not None:
            self.gamma = nn.Parameter(torch.full((d_model,), float(init_layer_scale)))
        di, proj_width = self.d_inner, self.dt_rank + 2 * d_state

        # Creation order below fixes the RNG draws: in_proj, conv1d, x_proj, dt_proj (default
        # init, then its own re-draw), [conv1d_b, x_proj_b, dt_proj_b for v2], out_proj.
        self.in_proj = nn.Linear(d_model, 2 * di, bias=bias, **factory)
        self.conv1d = depthwise_conv(di, d_conv, conv_bias, factory)
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(di, proj_width, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True, **factory)
        _init_dt_proj_(self.dt_proj, dt_init, dt_scale, dt_min, dt_max, dt_init_floor, factory)
        # A_log and D stay fp32 whatever ``dtype`` is.
        self.A_log = no_weight_decay(_log_s4d_real(di, d_state, device))
        self.D = no_weight_decay(torch.ones(di, device=device))
        if bimamba_type != "none":
            self.A_b_log = no_weight_decay(_log_s4d_real(di, d_state, device))
        if bimamba_type == "v2":
            # the fork keeps PyTorch's default init for the reversed direction's projections
            self.conv1d_b = depthwise_conv(di, d_conv, conv_bias, factory)
            self.x_proj_b = nn.Linear(di, proj_width, bias=False, **factory)
            self.dt_proj_b = nn.Linear(self.dt_rank, di, bias=True, **factory)
            self.D_b = no_weight_decay(torch.ones(di, device=device))
        self.out_proj = nn.Linear(di, d_model, bias=bias, **factory)

    # -- parallel pass ----------------------------------------------------------------------
    def forward(self, hidden_states: Tensor, inference_params: InferenceParams | None = None) -> Tensor:
        """Mix ``hidden_states (B, L, d_model)``; returns ``(B, L, d_model)``.

        With ``inference_params`` this layer's ``(conv_state, ssm_state)`` are read from (or
        created in) its cache under ``layer_idx``: at ``seqlen_offset == 0`` the prompt fills
        them, afterwards ``hidden_states`` must be one token and the states advance in place.
        """
        batch = hidden_states.shape[0]
        if inference_params is None:
            conv_state = ssm_state = None
        else:
            conv_state, ssm_state = self._get_states_from_cache(inference_params, batch)
            if inference_params.seqlen_offset > 0:
                return self.step(hidden_states, conv_state, ssm_state)[0]
        xz = self._project_in(hidden_states)
        A = -torch.exp(self.A_log.float())
        if self.use_fast_path and inference_params is None:
            out = self._fused(xz, A)
        else:
            out = self._unfused(xz, A, conv_state, ssm_state)
        return self._scaled(out)

    def _project_in(self, hidden_states: Tensor) -> Tensor:
        """``in_proj`` of ``(B, L, d_model)`` laid out channel-first: ``(B, 2 Di, L)``."""
        xz = self.in_proj.weight @ hidden_states.mT
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype).unsqueeze(-1)
        return xz

    def _scaled(self, out: Tensor) -> Tensor:
        return out if self.init_layer_scale is None else out * self.gamma

    def _direction(self, suffix: str) -> tuple[nn.Conv1d, nn.Linear, nn.Linear, Tensor]:
        """The conv, the two projections and ``D`` (fp32) of the forward (``""``) or reversed (``"_b"``) scan."""
        return (getattr(self, "conv1d" + suffix), getattr(self, "x_proj" + suffix),
                getattr(self, "dt_proj" + suffix), getattr(self, "D" + suffix).float())

    def _fused(self, xz: Tensor, A: Tensor) -> Tensor:
        """The whole layer in one fused call per direction, no states kept. ``xz (B, 2 Di, L)``."""
        conv, x_proj, dt_proj, D = self._direction("")
        shared = (conv.weight, conv.bias, x_proj.weight, dt_proj.weight)
        scan_kw = {"delta_bias": dt_proj.bias.float(), "delta_softplus": True}
        if self.bimamba_type == "none":
            return mamba_inner_fn(xz, *shared, self.out_proj.weight, self.out_proj.bias, A, None, None, D,
                                  **scan_kw)
        A_b = -torch.exp(self.A_b_log.float())
        if self.bimamba_type == "v1":
            return bimamba_inner_fn(xz, *shared, self.out_proj.weight, self.out_proj.bias, A, A_b, None, None, D,
                                    **scan_kw)
        fwd = mamba_inner_fn_no_out_proj(xz, *shared, A, None, None, D, **scan_kw)
        conv_b, x_proj_b, dt_proj_b, D_b = self._direction("_b")
        bwd = mamba_inner_fn_no_out_proj(xz.flip([-1]), conv_b.weight, conv_b.bias, x_proj_b.weight,
                                         dt_proj_b.weight, A_b, None, None, D_b,
                                         delta_bias=dt_proj_b.bias.float(), delta_softplus=True)
        both = (fwd + bwd.flip([-1])).mT
        if self.if_divide_out:
            both = both / 2
        return F.linear(both, self.out_proj.weight, self.out_proj.bias)

    def _unfused(self, xz: Tensor, A: Tensor, conv_state: Tensor | None, ssm_state: Tensor | None) -> Tensor:
        """Conv, then scan, as separate calls; fills ``conv_state`` / ``ssm_state`` in place when given.

        Only the forward direction runs here, as in the fork. ``xz (B, 2 Di, L)``.
        """
        x, z = xz.chunk(2, dim=1)
        if conv_state is not None:
            conv_state.copy_(_last_window(x, self.d_conv))
        x = causal_conv1d_fn(x=x, weight=self.conv1d.weight.squeeze(1), bias=self.conv1d.bias,
                             activation=self.activation)
        coeffs = self.x_proj(x.mT)  # (B, L, R + 2N)
        dt_low, B, C = coeffs.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj.weight @ dt_low.mT  # (B, Di, L); the bias is added inside the scan
        result = selective_scan_fn(x, delta, A, B.mT.contiguous(), C.mT.contiguous(), self.D.float(), z=z,
                                   delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                                   return_last_state=ssm_state is not None)
        if ssm_state is not None:
            y, final = result
            ssm_state.copy_(final)
        else:
            y = result
        return self.out_proj(y.mT)

    # -- decoding ---------------------------------------------------------------------------
    def step(self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Advance one token: ``hidden_states (B, 1, d_model)``.

        ``conv_state (B, Di, d_conv)`` and ``ssm_state (B, Di, N)`` are updated in place and
        returned after the output ``(B, 1, d_model)``.
        """
        if hidden_states.shape[1] != 1:
            raise ValueError(f"step decodes one token at a time, got {hidden_states.shape[1]} tokens")
        x, z = self.in_proj(hidden_states[:, 0]).chunk(2, dim=-1)  # (B, Di) each
        x = causal_conv1d_update(x, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.activation)
        dt_low, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt_low, self.dt_proj.weight)  # bias and softplus applied by the update
        A = -torch.exp(self.A_log.float())
        y = selective_state_update(ssm_state, x, dt, A, B, C, self.D, z=z, dt_bias=self.dt_proj.bias,
                                   dt_softplus=True)
        return self._scaled(self.out_proj(y)).unsqueeze(1), conv_state, ssm_state

    def _zero_states(self, batch_size: int, device: torch.device, conv_dtype: torch.dtype,
                     ssm_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        return (torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=conv_dtype),
                torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype))

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None,
                                 **kwargs) -> tuple[Tensor, Tensor]:
        """Zero decode states ``(B, Di, d_conv)`` and ``(B, Di, N)`` (``max_seqlen`` is not needed).

        ``dtype`` overrides both; by default they take ``conv1d``'s and ``dt_proj``'s dtypes.
        """
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        ssm_dtype = self.dt_proj.weight.dtype if dtype is None else dtype
        return self._zero_states(batch_size, self.out_proj.weight.device, conv_dtype, ssm_dtype)

    def _get_states_from_cache(
        self, inference_params: InferenceParams, batch_size: int, initialize_states: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """This layer's states in ``inference_params.key_value_memory_dict[layer_idx]``.

        Created when missing, and recreated when the cached ones were made for another batch
        size; ``initialize_states`` zeroes reused ones.
        """
        return cached_decode_states(self, inference_params.key_value_memory_dict, batch_size, initialize_states,
                                    self.dt_proj.weight.dtype)


class Block(nn.Module):
    """mamba-ssm 1.x's residual unit (no MLP): ``residual += x``, then ``mixer(norm(residual))``.

    The add comes before the norm so that both can run as one fused ``layer_norm_fn`` /
    ``rms_norm_fn`` call; ``forward`` therefore takes and returns the running residual alongside
    the mixer output. The mixer is built before the norm (RNG order of seeded models).
    """

    def __init__(
        self, dim: int, mixer_cls: Callable[[int], nn.Module], norm_cls: Callable[[int], nn.Module] = nn.LayerNorm,
        fused_add_norm: bool = False, residual_in_fp32: bool = False,
    ) -> None:
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.fused_add_norm = fused_add_norm
        self.mixer = mixer_cls(dim)
        self.norm = norm_cls(dim)
        if fused_add_norm and not isinstance(self.norm, (nn.LayerNorm, RMSNorm)):
            raise TypeError(f"fused_add_norm works with nn.LayerNorm or RMSNorm, not {type(self.norm).__name__}")

    def forward(
        self, hidden_states: Tensor, residual: Tensor | None = None, inference_params: InferenceParams | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``hidden_states``, ``residual``: ``(B, L, dim)`` (``residual`` None in the first block).

        Returns the mixer output and the updated residual (fp32 when ``residual_in_fp32``).
        """
        if self.fused_add_norm:
            norm_fn = rms_norm_fn if isinstance(self.norm, RMSNorm) else layer_norm_fn
            normed, residual = norm_fn(hidden_states, self.norm.weight, self.norm.bias, residual=residual,
                                       prenorm=True, residual_in_fp32=self.residual_in_fp32, eps=self.norm.eps)
        else:
            residual = hidden_states if residual is None else hidden_states + residual
            normed = self.norm(residual.to(self.norm.weight.dtype))
            if self.residual_in_fp32:
                residual = residual.float()
        return self.mixer(normed, inference_params=inference_params), residual

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None,
                                 **kwargs) -> tuple[Tensor, Tensor]:
        """The mixer's decode states (see its ``allocate_inference_cache``)."""
        return self.mixer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)
