"""``mamba_ssm.modules.mamba2``: the Mamba-2 (SSD) mixer.

One ``in_proj`` produces, along its last axis, ``[z0 | x0 | z | xBC | dt]``: an optional gated-MLP
pair of width ``d_mlp`` each (present when ``d_ssm < d_inner``), the gate ``z`` and the conv input
``xBC`` (``x`` of width ``d_ssm`` followed by ``B`` and ``C``, ``ngroups * d_state`` each), and one
step size per head. With ``H = nheads = d_ssm / headdim``, ``G = ngroups``, ``N = d_state``::

    in_proj.weight  (2 d_inner + 2 G N + H, d_model)   conv1d.weight (d_ssm + 2 G N, 1, d_conv)
    dt_bias (H,)    A_log (H,)    D (H,) or (d_ssm,) with D_has_hdim
    norm.weight (d_ssm,) when rmsnorm                  out_proj.weight (d_model, d_inner)

Names, shapes and the order of random draws are mamba-ssm's. The scan is
:func:`~neurostep.compat.mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined` (or its
conv-fused sibling), the conv and decode step the compat ``causal_conv1d`` and
``selective_state_update``. Tensor parallelism (``process_group``) is refused. The decode step
clamps ``dt`` to ``dt_limit`` as the parallel pass does, so decoding reproduces it for any limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from neurostep.compat.causal_conv1d.causal_conv1d_interface import causal_conv1d_fn, causal_conv1d_update
from neurostep.compat.causal_conv1d.causal_conv1d_varlen import causal_conv1d_varlen_states
from neurostep.compat.mamba_ssm.modules._params import (
    cached_decode_states,
    depthwise_conv,
    inverse_softplus,
    log_uniform_steps,
    no_weight_decay,
)
from neurostep.compat.mamba_ssm.ops.triton.layernorm_gated import RMSNorm as RMSNormGated
from neurostep.compat.mamba_ssm.ops.triton.selective_state_update import selective_state_update
from neurostep.compat.mamba_ssm.ops.triton.ssd_combined import (
    mamba_chunk_scan_combined,
    mamba_split_conv1d_scan_combined,
)

try:  # gives save_pretrained / from_pretrained / push_to_hub, as upstream's class has
    from huggingface_hub import PyTorchModelHubMixin
except ImportError:  # pragma: no cover - huggingface_hub is optional
    class PyTorchModelHubMixin:  # noqa: D101
        pass

__all__ = ["Mamba2"]

if TYPE_CHECKING:
    from neurostep.compat.mamba_ssm.utils.generation import InferenceParams

_NO_LIMIT = (0.0, float("inf"))


class Mamba2(nn.Module, PyTorchModelHubMixin):
    """Mamba-2 mixer ``(B, L, d_model) -> (B, L, d_model)`` (or ``(B * L, d_model)`` with ``seqlen``).

    Args (mamba-ssm's): ``d_state`` N, ``d_conv`` taps, ``conv_init`` (uniform bound of the conv
    weight, else PyTorch's default), ``expand`` (``d_inner = expand * d_model``), ``headdim``,
    ``d_ssm`` (channels that go through the SSM, default all; the rest form a gated MLP),
    ``ngroups`` (heads sharing one ``B``/``C``), ``A_init_range`` (``A`` uniform in it),
    ``D_has_hdim`` (one skip weight per channel instead of per head), ``rmsnorm`` and
    ``norm_before_gate`` (the gated RMSNorm on the output), ``dt_min``, ``dt_max``,
    ``dt_init_floor``, ``dt_limit`` (clamp of softplus(dt)), ``bias``, ``conv_bias``, ``chunk_size``
    (accepted; the scan is not chunked), ``use_mem_eff_path`` (one fused call without a cache),
    ``layer_idx`` (cache key), ``process_group`` (must be None), ``sequence_parallel``, ``device``,
    ``dtype``.
    """

    def __init__(
        self, d_model: int, d_state: int = 128, d_conv: int = 4, conv_init: float | None = None, expand: float = 2,
        headdim: int = 64, d_ssm: int | None = None, ngroups: int = 1, A_init_range: tuple[float, float] = (1, 16),
        D_has_hdim: bool = False, rmsnorm: bool = True, norm_before_gate: bool = False, dt_min: float = 0.001,
        dt_max: float = 0.1, dt_init_floor: float = 1e-4, dt_limit: tuple[float, float] = (0.0, float("inf")),
        bias: bool = False, conv_bias: bool = True, chunk_size: int = 256, use_mem_eff_path: bool = True,
        layer_idx: int | None = None, process_group: object | None = None, sequence_parallel: bool = True,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if process_group is not None:
            raise NotImplementedError("Mamba2 here runs on one device: pass process_group=None "
                                      "(neurostep.compat has no tensor parallelism)")
        lo_A, hi_A = A_init_range
        if not 0 < lo_A <= hi_A:
            raise ValueError(f"A_init_range must satisfy 0 < low <= high, got {A_init_range!r}")
        factory = {"device": device, "dtype": dtype}
        # sizes
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        if self.d_ssm % headdim:
            raise ValueError(f"d_ssm={self.d_ssm} is not a multiple of headdim={headdim}")
        self.headdim, self.nheads, self.ngroups = headdim, self.d_ssm // headdim, ngroups
        # behaviour
        self.activation = "silu"
        self.conv_init = conv_init
        self.D_has_hdim = D_has_hdim
        self.rmsnorm, self.norm_before_gate = rmsnorm, norm_before_gate
        self.dt_limit = dt_limit
        self.chunk_size, self.use_mem_eff_path = chunk_size, use_mem_eff_path
        self.layer_idx = layer_idx
        # parallelism (one device only)
        self.process_group, self.sequence_parallel = process_group, sequence_parallel
        self.world_size, self.local_rank = 1, 0

        # Random draws, in order: in_proj, conv1d (plus conv_init's re-draw), dt, A, [norm], out_proj.
        bc_width = 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + bc_width + self.nheads, bias=bias, **factory)
        self.conv1d = depthwise_conv(self.d_ssm + bc_width, d_conv, conv_bias, factory)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.act = nn.SiLU()
        # softplus(dt_bias) starts log-uniform in [dt_min, dt_max]
        steps = log_uniform_steps(self.nheads, dt_min, dt_max, dt_init_floor, factory)
        self.dt_bias = no_weight_decay(inverse_softplus(steps))
        decay_rates = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(lo_A, hi_A)
        self.A_log = no_weight_decay(decay_rates.log().to(dtype=dtype))
        self.D = no_weight_decay(torch.ones(self.d_ssm if D_has_hdim else self.nheads, device=device))
        if rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_ssm // ngroups, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    # -- shared pieces ----------------------------------------------------------------------
    def _D_heads(self) -> Tensor:
        """``D`` as the scans take it: ``(H,)``, or ``(H, headdim)`` with ``D_has_hdim``."""
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    def _split_projection(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``in_proj``'s output ``(..., width)`` -> ``z0, x0, z, xBC, dt`` along the last axis."""
        bc = 2 * self.ngroups * self.d_state
        d_mlp = (zxbcdt.shape[-1] - 2 * self.d_ssm - bc - self.nheads) // 2
        return zxbcdt.split([d_mlp, d_mlp, self.d_ssm, self.d_ssm + bc, self.nheads], dim=-1)

    def _split_xbc(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The conv output ``(..., d_ssm + 2 G N)`` -> ``x (..., H, P)``, ``B``, ``C`` ``(..., G, N)``."""
        gn = self.ngroups * self.d_state
        x, B, C = xbc.split([self.d_ssm, gn, gn], dim=-1)
        return (x.unflatten(-1, (self.nheads, self.headdim)), B.unflatten(-1, (self.ngroups, self.d_state)),
                C.unflatten(-1, (self.ngroups, self.d_state)))

    def _limit_kwargs(self) -> dict:
        return {} if tuple(self.dt_limit) == _NO_LIMIT else {"dt_limit": self.dt_limit}

    def _output(self, y: Tensor, z: Tensor | None, z0: Tensor, x0: Tensor) -> Tensor:
        """Gate (through the norm when ``rmsnorm``), prepend the MLP part, project: ``y (..., d_ssm)``."""
        if self.rmsnorm:
            y = self.norm(y, z)
        if z0.shape[-1]:
            y = torch.cat([x0 * F.silu(z0), y], dim=-1)
        return self.out_proj(y)

    # -- parallel pass ----------------------------------------------------------------------
    def forward(
        self, u: Tensor, seqlen: int | None = None, seq_idx: Tensor | None = None, cu_seqlens: Tensor | None = None,
        inference_params: InferenceParams | None = None,
    ) -> Tensor:
        """Mix ``u``: ``(B, L, d_model)``, or ``(B * L, d_model)`` when ``seqlen`` is given; same shape out.

        ``seq_idx (B, L)`` marks packed sequences (no state crosses a change of index).
        ``cu_seqlens (S + 1,)`` gives their boundaries when a packed prompt (``B == 1``) fills an
        ``inference_params`` cache for ``S`` sequences. With a cache and ``seqlen_offset > 0``
        the input is one token per row and the states advance in place.
        """
        flat = seqlen is not None
        if flat:
            batch = u.shape[0] // seqlen
        else:
            batch, seqlen = u.shape[:2]
        conv_state = ssm_state = None
        if inference_params is not None:
            rows = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
            conv_state, ssm_state = self._get_states_from_cache(inference_params, rows)
            if inference_params.seqlen_offset > 0:
                return self.step(u, conv_state, ssm_state)[0]
        zxbcdt = self.in_proj(u)
        if flat:
            zxbcdt = zxbcdt.view(batch, seqlen, -1)
        A = -torch.exp(self.A_log.float())  # fp32 even for half weights, where exp could overflow
        if self.use_mem_eff_path and inference_params is None:
            out = self._fused(zxbcdt, A, seq_idx)
        else:
            out = self._unfused(zxbcdt, A, seq_idx, cu_seqlens, conv_state, ssm_state,
                                want_varlen=cu_seqlens is not None and inference_params is not None)
        return out.reshape(batch * seqlen, -1) if flat else out

    def _fused(self, zxbcdt: Tensor, A: Tensor, seq_idx: Tensor | None) -> Tensor:
        """Conv, scan, gated norm and ``out_proj`` in one call, without states."""
        norm_weight = self.norm.weight if self.rmsnorm else None
        norm_eps = self.norm.eps if self.rmsnorm else 1e-6
        return mamba_split_conv1d_scan_combined(
            zxbcdt, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias, A, D=self._D_heads(),
            chunk_size=self.chunk_size, seq_idx=seq_idx, activation=self.activation,
            rmsnorm_weight=norm_weight, rmsnorm_eps=norm_eps, outproj_weight=self.out_proj.weight,
            outproj_bias=self.out_proj.bias, headdim=None if self.D_has_hdim else self.headdim,
            ngroups=self.ngroups, norm_before_gate=self.norm_before_gate, **self._limit_kwargs())

    def _fill_conv_state(self, conv_state: Tensor, xbc: Tensor, cu_seqlens: Tensor | None) -> None:
        """Write the last ``d_conv`` conv inputs of each sequence into ``conv_state (S, C, d_conv)``."""
        if cu_seqlens is not None:
            if xbc.shape[0] != 1:
                raise ValueError(f"a prompt packed with cu_seqlens must have batch 1, got {xbc.shape[0]}")
            conv_state.copy_(causal_conv1d_varlen_states(xbc[0], cu_seqlens, state_len=conv_state.shape[-1]))
        else:
            channels_first = xbc.mT
            # zero-filled on the left when the prompt is shorter than the window
            conv_state.copy_(F.pad(channels_first, (self.d_conv - channels_first.shape[-1], 0)))

    def _unfused(self, zxbcdt: Tensor, A: Tensor, seq_idx: Tensor | None, cu_seqlens: Tensor | None,
                 conv_state: Tensor | None, ssm_state: Tensor | None, want_varlen: bool) -> Tensor:
        """Conv and scan as separate calls; fills the decode states in place when given. ``zxbcdt (B, L, width)``."""
        z0, x0, z, xbc, dt = self._split_projection(zxbcdt)
        if conv_state is not None:
            self._fill_conv_state(conv_state, xbc, cu_seqlens)
        xbc = causal_conv1d_fn(xbc.mT, self.conv1d.weight.squeeze(1), bias=self.conv1d.bias,
                               activation=self.activation, seq_idx=seq_idx).mT
        x, B, C = self._split_xbc(xbc)
        gate = None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim))
        result = mamba_chunk_scan_combined(
            x, dt, A, B, C, chunk_size=self.chunk_size, D=self._D_heads(), z=gate, dt_bias=self.dt_bias,
            dt_softplus=True, seq_idx=seq_idx, cu_seqlens=cu_seqlens, **self._limit_kwargs(),
            return_final_states=ssm_state is not None, return_varlen_states=want_varlen)
        if ssm_state is None:
            y = result
        else:
            y, final, *per_sequence = result
            ssm_state.copy_(final if cu_seqlens is None else per_sequence[0])
        return self._output(y.flatten(-2), z, z0, x0)

    # -- decoding ---------------------------------------------------------------------------
    def step(self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Advance one token: ``hidden_states (B, 1, d_model)``.

        ``conv_state (B, d_ssm + 2 G N, d_conv)`` and ``ssm_state (B, H, headdim, N)`` are updated
        in place and returned after the output ``(B, 1, d_model)``.
        """
        if hidden_states.shape[1] != 1:
            raise ValueError(f"step decodes one token at a time, got {hidden_states.shape[1]} tokens")
        z0, x0, z, xbc, dt = self._split_projection(self.in_proj(hidden_states[:, 0]))
        xbc = causal_conv1d_update(xbc, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                   self.activation)
        x, B, C = self._split_xbc(xbc)
        H, P, N = self.nheads, self.headdim, self.d_state
        # selective_state_update's head layout: every quantity repeated over the head dimension P
        A = (-torch.exp(self.A_log.float())).view(H, 1, 1).expand(H, P, N)
        dt = dt.unsqueeze(-1).expand(*dt.shape, P)
        dt_bias = self.dt_bias.unsqueeze(-1).expand(H, P)
        D = self._D_heads()
        D = D if D.dim() == 2 else D.unsqueeze(-1).expand(H, P)
        softplus = True
        if tuple(self.dt_limit) != _NO_LIMIT:
            # clamp the step as the parallel pass does, then hand it over final
            dt = F.softplus(dt.float() + dt_bias.float()).clamp(*self.dt_limit)
            dt_bias, softplus = None, False
        gate = None if self.rmsnorm else z.unflatten(-1, (H, P))
        y = selective_state_update(ssm_state, x, dt, A, B, C, D, z=gate, dt_bias=dt_bias, dt_softplus=softplus)
        return self._output(y.flatten(-2), z, z0, x0).unsqueeze(1), conv_state, ssm_state

    def _zero_states(self, batch_size: int, device: torch.device, conv_dtype: torch.dtype,
                     ssm_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        # the conv state is (B, C, d_conv) with the channels contiguous, the layout the conv update expects
        channels = self.conv1d.weight.shape[0]
        conv_state = torch.zeros(batch_size, self.d_conv, channels, device=device, dtype=conv_dtype).mT
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=ssm_dtype)
        return conv_state, ssm_state

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None,
                                 **kwargs) -> tuple[Tensor, Tensor]:
        """Zero decode states ``(B, d_ssm + 2 G N, d_conv)`` and ``(B, H, headdim, N)``.

        ``dtype`` overrides both; by default they take ``conv1d``'s and ``in_proj``'s dtypes.
        """
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        ssm_dtype = self.in_proj.weight.dtype if dtype is None else dtype
        return self._zero_states(batch_size, self.out_proj.weight.device, conv_dtype, ssm_dtype)

    def _get_states_from_cache(
        self, inference_params: InferenceParams, batch_size: int, initialize_states: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """This layer's states in ``inference_params.key_value_memory_dict[layer_idx]``.

        Created when missing, and recreated when the cached ones were made for another batch
        size; ``initialize_states`` zeroes reused ones.
        """
        return cached_decode_states(self, inference_params.key_value_memory_dict, batch_size, initialize_states,
                                    self.in_proj.weight.dtype)
