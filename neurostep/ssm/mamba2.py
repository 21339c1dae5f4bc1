"""Mamba-2 (state space duality, Dao and Gu 2024) block and a Mamba-2 language model.

``Mamba2`` keeps mamba-ssm's and Hugging Face ``Mamba2Mixer``'s parameter names and shapes
(``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm.weight``, ``out_proj``), so their
state_dicts load directly. One layer, with ``Di = H * P`` (``H`` heads of ``P = headdim``
channels), ``G`` groups of ``B`` and ``C`` and state size ``N``::

    z, xBC, dt = split(in_proj(u))                    # (B, L, Di), (B, L, Di + 2GN), (B, L, H)
    x, B, C    = split(silu(causal_depthwise_conv(xBC)))
    dt         = clamp(softplus(dt + dt_bias), *dt_limit) ;  A = -exp(A_log)        (one per head)
    S_t        = exp(dt_t A) S_{t-1} + B_t^T (dt_t x_t) ;  y_t = C_t S_t + D x_t    (S: (N, P) per head)
    out        = out_proj(RMSNormGated(y, z))           # or y * silu(z) without the norm

Head ``h`` reads group ``h // (H / G)`` of ``B`` and ``C``. The scan is the shared op
:func:`~neurostep.kernels.decayed_linear_attention.decayed_linear_attention` with ``q = C``, ``k = B``
(left in their ``G`` groups, which the op shares between heads), ``v = x`` with ``v_scale = dt`` (the op
forms ``dt * x`` in its copy of ``x``), ``log_decay = dt * A`` and ``scale = 1``; the one-token step is the
same recurrence written out.

``Mamba2LM`` stacks such layers as mamba-ssm's ``MambaLMHeadModel`` does (pre-norm RMSNorm
residual blocks, fp32 residual stream, final RMSNorm) and builds itself from a Hugging Face
``Mamba2ForCausalLM`` with :meth:`Mamba2LM.from_hf`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neurostep.engine import Recurrent, check_nonempty, check_tensor, compute_dtype
from neurostep.kernels.causal_conv1d import causal_conv1d, causal_conv1d_update
from neurostep.layers import RMSNorm, inverse_softplus, log_uniform_steps
from neurostep.ssm.mamba import (
    HF_SHARED_IGNORED_FIELDS,
    SSMLanguageModel,
    _batch_size,
    column_major_,
    inner_width,
    require_silu,
)


@dataclass
class Mamba2State:
    """Decode state of one Mamba-2 layer.

    ``conv_state (B, Di + 2GN, d_conv)``: the last ``d_conv`` inputs of the causal conv (newest
    last), as in :class:`~neurostep.ssm.mamba.MambaState`. ``ssm_state (B, H, N, P)``: one
    ``(N, P)`` state per head, the layout of the decayed-linear-attention op (``(K, V)`` with
    ``k = B``, ``v = dt * x``); mamba-ssm and Hugging Face keep its transpose ``(B, H, P, N)``.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor


@dataclass
class Mamba2LMState:
    """Mamba2LM decode state: one :class:`Mamba2State` per layer in ``layers``."""

    layers: list[Mamba2State]


class RMSNormGated(nn.Module):
    """mamba-ssm's gated RMSNorm over groups of channels: ``(..., Di), gate (..., Di) -> (..., Di)``.

    ``norm_before_gate=False`` (Mamba-2's and Hugging Face's choice) computes
    ``rmsnorm(y * silu(z)) * weight``; ``True`` computes ``rmsnorm(y) * weight * silu(z)``. The
    mean square runs over each of ``Di / group_size`` groups. Computed in fp32 (fp64 for fp64
    inputs); returns that dtype, as Hugging Face's ``MambaRMSNormGated`` does for its fp32 input.
    """

    def __init__(self, dim: int, eps: float = 1e-5, norm_before_gate: bool = False,
                 group_size: int | None = None) -> None:
        super().__init__()
        group_size = dim if group_size is None else group_size
        if group_size < 1 or dim % group_size:
            raise ValueError(f"group_size must divide dim={dim}, got {group_size}")
        self.eps = eps
        self.norm_before_gate = norm_before_gate
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        cdtype = torch.float64 if y.dtype == torch.float64 else torch.float32
        y = y.to(cdtype)
        gate = None if z is None else F.silu(z.to(cdtype))
        if gate is not None and not self.norm_before_gate:
            y = y * gate
        shape = y.shape
        grouped = y.reshape(*shape[:-1], shape[-1] // self.group_size, self.group_size)
        y = F.rms_norm(grouped, (self.group_size,), eps=self.eps).reshape(shape) * self.weight.to(cdtype)
        if gate is not None and self.norm_before_gate:
            y = y * gate
        return y

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}, "
                f"norm_before_gate={self.norm_before_gate}")


# The one-token decay exp(dt * A) takes its exponent clamped here, as the SSD op's chunked CPU form
# does: exp(-60) = 9e-27 is far below any output's resolution, while exponents below about -87 give
# denormal decays (fp32), on which the state's products run about 25 times slower.
LOG_DECAY_FLOOR = -60.0


def _ssd():
    # Imported on first use: the block's module imports without the op's backends loaded.
    from neurostep.kernels.decayed_linear_attention import decayed_linear_attention

    return decayed_linear_attention


class Mamba2(Recurrent):
    """Mamba-2 (SSD) mixer, drop-in ``(B, L, C) -> (B, L, C)`` and a step/scan recurrence.

    Args follow mamba-ssm's ``Mamba2``: ``d_state`` N, ``d_conv`` taps, ``expand`` (Di =
    int(expand * d_model); ``d_inner`` sets it directly), ``headdim`` P (H = Di / P heads),
    ``ngroups`` G (H must be a multiple), ``A_init_range`` (A = -uniform(range), per head),
    dt init range and floor, ``dt_limit`` (dt clamped to it, in the scan and in the step),
    ``conv_bias``, ``bias`` (in/out projections), ``rmsnorm`` (the gated RMSNorm before
    ``out_proj``; else ``y * silu(z)``), ``norm_before_gate``, ``norm_eps``. ``chunk_size`` is the
    chunk length of the SSD op (None: the op's backend default); it changes rounding only.
    ``backend`` selects the kernels of the conv and the SSD op (``"auto"``, ``"reference"``,
    ``"cpu"``, ``"triton"``).
    """

    causal = True  # output at token t depends only on tokens <= t
    time_dim = 1

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: float = 2, headdim: int = 64,
                 ngroups: int = 1, A_init_range: tuple[float, float] = (1.0, 16.0), dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 dt_limit: tuple[float, float] = (0.0, float("inf")), conv_bias: bool = True, bias: bool = False,
                 rmsnorm: bool = True, norm_before_gate: bool = False, norm_eps: float = 1e-5,
                 chunk_size: int | None = None, backend: str = "auto", *, d_inner: int | None = None) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("headdim", headdim),
                            ("ngroups", ngroups)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.d_inner = inner_width(d_model, expand, d_inner)
        if self.d_inner % headdim:
            raise ValueError(f"d_inner={self.d_inner} (expand * d_model) must be a multiple of headdim={headdim}")
        nheads = self.d_inner // headdim
        if nheads % ngroups:
            raise ValueError(f"the number of heads ({nheads} = d_inner / headdim) must be a multiple of "
                             f"ngroups={ngroups}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"need 0 < A_init_range[0] <= A_init_range[1], got {A_init_range}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        lo, hi = (float(v) for v in dt_limit)
        if not 0.0 <= lo <= hi:
            raise ValueError(f"dt_limit must be (low, high) with 0 <= low <= high, got {tuple(dt_limit)}")
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                       or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand if d_inner is None else self.d_inner / d_model
        self.headdim = headdim
        self.nheads = nheads
        self.ngroups = ngroups
        self.dt_limit = (lo, hi)
        self.chunk_size = chunk_size
        self.backend = backend
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        # in_proj -> [z, x, B, C, dt], mamba-ssm's and Hugging Face's order
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + nheads, bias=bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1,
                                bias=conv_bias)
        with torch.no_grad():
            # dt log-uniform in [dt_min, dt_max]; dt_bias is its inverse softplus
            self.dt_bias = nn.Parameter(inverse_softplus(log_uniform_steps(nheads, dt_min, dt_max, dt_init_floor)))
            A = torch.empty(nheads).uniform_(*A_init_range)
            self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = (RMSNormGated(self.d_inner, eps=norm_eps, norm_before_gate=norm_before_gate,
                                  group_size=self.d_inner // ngroups) if rmsnorm else None)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        column_major_(self.in_proj)
        column_major_(self.out_proj)

    # -- state ------------------------------------------------------------------------
    def init_state(self, batch_shape: tuple[int, ...] | int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> Mamba2State:
        """Zero state for a batch: ``batch_shape`` is ``(B,)``, ``(B, C)`` (a step's shape) or ``B``."""
        batch = _batch_size(batch_shape, self.d_model)
        device = self.in_proj.weight.device if device is None else device
        cdtype = compute_dtype(dtype if dtype is not None else self.in_proj.weight.dtype)
        return Mamba2State(
            torch.zeros(batch, self.conv_dim, self.d_conv, device=device, dtype=cdtype),
            torch.zeros(batch, self.nheads, self.d_state, self.headdim, device=device, dtype=cdtype))

    def _check_state(self, state: Mamba2State, batch: int, device: torch.device) -> None:
        if not isinstance(state, Mamba2State):
            raise TypeError(f"state must be a Mamba2State (from init_state), got {type(state).__name__}")
        check_tensor("state.conv_state", state.conv_state, shape=(batch, self.conv_dim, self.d_conv), device=device)
        check_tensor("state.ssm_state", state.ssm_state, shape=(batch, self.nheads, self.d_state, self.headdim),
                     device=device)

    def _check_input(self, x: torch.Tensor, ndim: int) -> torch.Tensor:
        what = "(B, L, d_model)" if ndim == 3 else "(B, d_model)"
        x = check_tensor("x", x, ndim=ndim)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape {what} with d_model={self.d_model}, got {tuple(x.shape)}")
        if ndim == 3:
            check_nonempty("x", x, 1, "tokens")
        return x

    # -- pieces -----------------------------------------------------------------------
    def _dt(self, dt: torch.Tensor, cdtype: torch.dtype) -> torch.Tensor:
        """``clamp(softplus(dt + dt_bias), *dt_limit)`` in the compute dtype."""
        dt = F.softplus(dt.to(cdtype) + self.dt_bias.to(cdtype))
        lo, hi = self.dt_limit
        if lo > 0.0 or hi != float("inf"):
            dt = dt.clamp(min=lo, max=hi)
        return dt

    def _heads(self, bc: torch.Tensor) -> torch.Tensor:
        """``(..., G, N) -> (..., H, N)``: head ``h`` reads group ``h // (H / G)``."""
        rep = self.nheads // self.ngroups
        if rep == 1:
            return bc
        return bc.unsqueeze(-2).expand(*bc.shape[:-1], rep, bc.shape[-1]).reshape(
            *bc.shape[:-2], self.nheads, bc.shape[-1])

    def _gate_out(self, y: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The gated norm (or ``y * silu(z)``) and ``out_proj``; ``y, z (..., Di)``."""
        if self.norm is not None:
            y = self.norm(y, z)
        else:
            y = y * F.silu(z.to(y.dtype))
        return self.out_proj(y.to(dtype))

    def _conv_tokens(self, xbc: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """``silu(causal depthwise conv)`` of ``xbc (B, L, C)`` in the token-major layout, after the ``W - 1``
        earlier inputs ``history (B, C, W - 1)`` (None: zeros).

        The ``causal_conv1d`` op on its channels-last kernels: ``xbc`` stays token-major from ``in_proj`` to the
        SSD op, with no transposing copy, and the op's fused backward replaces autograd through ``W`` shifted
        multiply-adds (3.3x faster forward+backward at the main experiment's (32, 48, 320), 2.1x for a
        512-token prefill's conv, one thread; docs/ssm.md)."""
        out, _ = causal_conv1d(xbc.transpose(1, 2), self.conv1d.weight[:, 0, :], self.conv1d.bias, "silu",
                               initial_state=history, backend=self.backend)
        return out.transpose(1, 2)

    # -- recurrence -------------------------------------------------------------------
    def scan(self, x: torch.Tensor, state: Mamba2State | None = None) -> tuple[torch.Tensor, Mamba2State]:
        """Whole sequence: the conv and the SSD op.

        x: ``(B, L, d_model)``; state: a :class:`Mamba2State` to resume from (None = zeros).
        Returns ``y (B, L, d_model)`` and the state after the last token, so scanning two halves
        with the carried state equals scanning the whole.
        """
        x = self._check_input(x, 3)
        batch, length, _ = x.shape
        if state is not None:
            self._check_state(state, batch, x.device)
        cdtype = compute_dtype(x.dtype)
        di, cd, h, p, g, n = self.d_inner, self.conv_dim, self.nheads, self.headdim, self.ngroups, self.d_state
        # one GEMM for z, xBC and dt (three GEMMs on row slices of the weight cost more: the dt slice
        # has only H rows)
        z, xbc, dt = self.in_proj(x).split([di, cd, h], dim=-1)
        width = self.d_conv
        history = (xbc.new_zeros(batch, cd, width, dtype=cdtype) if state is None
                   else state.conv_state.to(cdtype))
        new_conv = torch.cat([history, xbc[:, -width:].transpose(1, 2).to(cdtype)], dim=-1)[..., -width:]
        xbc = self._conv_tokens(xbc.to(cdtype), None if state is None else history[..., 1:])  # (B, L, conv_dim)
        xs = xbc[..., :di].reshape(batch, length, h, p)
        # B and C stay in their G groups: the op forms C B^T once per group, not once per head
        Bm = xbc[..., di:di + g * n].reshape(batch, length, g, n)
        Cm = xbc[..., di + g * n:].reshape(batch, length, g, n)
        dt = self._dt(dt, cdtype)                                                   # (B, L, H)
        o, last = self._ssd_core(xs, dt, Bm, Cm, None if state is None else state.ssm_state)
        y = torch.addcmul(o, xs, self.D.to(cdtype)[:, None]).reshape(batch, length, di)
        return self._gate_out(y, z, x.dtype), Mamba2State(new_conv, last)

    def _ssd_core(self, xs: torch.Tensor, dt: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor,
                  ssm_state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The SSD over a chunk: ``xs (B, L, H, P)``, ``dt (B, L, H)`` (after softplus), ``Bm, Cm (B, L, G, N)``
        and the state before it ``(B, H, N, P)`` or None; returns ``o (B, L, H, P)`` (without the ``D`` skip)
        and the state after it. One method, so that a benchmark can measure the layer without it."""
        A = -torch.exp(self.A_log.to(dt.dtype))
        return _ssd()(Cm, Bm, xs, dt * A, v_scale=dt, scale=1.0, initial_state=ssm_state, output_final_state=True,
                      chunk_size=self.chunk_size, backend=self.backend)

    def step(self, x_t: torch.Tensor, state: Mamba2State) -> tuple[torch.Tensor, Mamba2State]:
        """One token: ``x_t (B, d_model) -> y_t (B, d_model)``; returns a new state (no in-place update)."""
        x_t = self._check_input(x_t, 2)
        batch = x_t.shape[0]
        self._check_state(state, batch, x_t.device)
        cdtype = compute_dtype(x_t.dtype)
        di, cd, h, p, g, n = self.d_inner, self.conv_dim, self.nheads, self.headdim, self.ngroups, self.d_state
        z, xbc, dt = self.in_proj(x_t).split([di, cd, h], dim=-1)
        xc, conv_state = causal_conv1d_update(xbc, state.conv_state, self.conv1d.weight[:, 0, :], self.conv1d.bias,
                                              activation="silu")
        xc = xc.to(cdtype)
        xs = xc[:, :di].reshape(batch, h, p)
        Bm = self._heads(xc[:, di:di + g * n].reshape(batch, g, n))
        Cm = self._heads(xc[:, di + g * n:].reshape(batch, g, n))
        dt = self._dt(dt, cdtype)                                                   # (B, H)
        decay = torch.exp((dt * -torch.exp(self.A_log.to(cdtype))).clamp(min=LOG_DECAY_FLOOR))
        S = state.ssm_state.to(cdtype) * decay[..., None, None] + Bm[..., :, None] * (xs * dt[..., None])[..., None, :]
        y = torch.einsum("bhn,bhnp->bhp", Cm, S) + xs * self.D.to(cdtype)[:, None]
        return self._gate_out(y.reshape(batch, di), z, x_t.dtype), Mamba2State(conv_state, S)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Drop-in mixer: ``(B, N, C) -> (B, N, C)``, causal over the N tokens (grid_size unused)."""
        return self.scan(x)[0]

    def decode_step_(self, x_t: torch.Tensor, state: Mamba2State, A: torch.Tensor) -> torch.Tensor:
        """Decode fast path: :meth:`step` without input checks, updating ``state`` in place.

        ``x_t (B, d_model)`` fp32; ``A = -exp(A_log)`` precomputed once per generation. Used by
        :meth:`Mamba2LM.generate` under ``torch.inference_mode`` on fp32 weights; :meth:`step` is its
        specification and the tests hold them equal.
        """
        batch = x_t.shape[0]
        di, cd, h, p, g, n = self.d_inner, self.conv_dim, self.nheads, self.headdim, self.ngroups, self.d_state
        zxbcdt = F.linear(x_t, self.in_proj.weight, self.in_proj.bias)
        z, x, dt = zxbcdt[:, :di], zxbcdt[:, di:di + cd], zxbcdt[:, di + cd:]
        conv = state.conv_state
        # Shift the conv window left by one (a copy of the overlap: copy_ on overlapping views is undefined).
        conv[:, :, :-1] = conv[:, :, 1:].clone()
        conv[:, :, -1] = x
        xc = (conv * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            xc += self.conv1d.bias
        xc = F.silu(xc)
        xs = xc[:, :di].reshape(batch, h, p)
        Bm = self._heads(xc[:, di:di + g * n].reshape(batch, g, n))
        Cm = self._heads(xc[:, di + g * n:].reshape(batch, g, n))
        dt = self._dt(dt, xc.dtype)
        S = state.ssm_state.view(batch * h, n, p)
        decay = torch.exp((dt * A).clamp_(min=LOG_DECAY_FLOOR))
        # S = decay S + B^T (dt x): the outer product accumulated by baddbmm, no (B, H, N, P) temporary
        S.mul_(decay.reshape(-1, 1, 1)).baddbmm_(Bm.reshape(-1, n, 1), (xs * dt[..., None]).reshape(-1, 1, p))
        y = torch.bmm(Cm.reshape(-1, 1, n), S).view(batch, h, p)                  # (B, H, P)
        y = torch.addcmul(y, self.D[:, None], xs).reshape(batch, di)
        return self._gate_out(y, z, x_t.dtype)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, d_inner={self.d_inner}, "
                f"headdim={self.headdim}, nheads={self.nheads}, ngroups={self.ngroups}, "
                f"chunk_size={self.chunk_size}, backend={self.backend!r}")


# ---------------------------------------------------------------------------------------
# Language model
# ---------------------------------------------------------------------------------------


class Mamba2Block(nn.Module):
    """Pre-norm residual block: ``r = r + Mamba2(RMSNorm(r))``; ``r`` keeps the dtype it arrives in."""

    def __init__(self, d_model: int, norm_eps: float = 1e-5, **mixer_kwargs) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = Mamba2(d_model, norm_eps=norm_eps, **mixer_kwargs)

    def forward(self, residual: torch.Tensor, state: Mamba2State | None = None) -> tuple[torch.Tensor, Mamba2State]:
        """``residual (B, L, C)`` -> new residual (same dtype) and the mixer's final state."""
        h = self.norm(residual.to(self.norm.weight.dtype))
        y, state = self.mixer.scan(h, state)
        return residual + y.to(residual.dtype), state

    def step(self, residual: torch.Tensor, state: Mamba2State) -> tuple[torch.Tensor, Mamba2State]:
        h = self.norm(residual.to(self.norm.weight.dtype))
        y, state = self.mixer.step(h, state)
        return residual + y.to(residual.dtype), state


class Mamba2Backbone(nn.Module):
    """Embedding, ``n_layer`` Mamba-2 blocks and the final RMSNorm (mamba-ssm's ``MixerModel`` names)."""

    def __init__(self, vocab_size: int, d_model: int, n_layer: int, norm_eps: float = 1e-5, **mixer_kwargs) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(Mamba2Block(d_model, norm_eps, **mixer_kwargs) for _ in range(n_layer))
        self.norm_f = RMSNorm(d_model, eps=norm_eps)


class Mamba2LM(SSMLanguageModel):
    """Mamba-2 language model (mamba-ssm ``MambaLMHeadModel`` with ``layer="Mamba2"``).

    Args:
        vocab_size: tokenizer size; padded up to a multiple of ``pad_vocab_size_multiple`` (16 as
            in the mamba2 checkpoints' configs).
        d_model, n_layer: width and depth. ``d_state``, ``d_conv``, ``expand``, ``d_inner``,
            ``headdim``, ``ngroups``, ``A_init_range``, the dt arguments, ``conv_bias``, ``bias``,
            ``rmsnorm``, ``norm_before_gate``, ``chunk_size`` and ``backend`` go to every
            :class:`Mamba2` layer.
        norm_eps: epsilon of every RMSNorm, the gated one included (Hugging Face's ``layer_norm_epsilon``).
        tie_embeddings: the head shares the embedding table (the mamba2 checkpoints do).
        residual_in_fp32, rescale_prenorm_residual: as in :class:`~neurostep.ssm.mamba.MambaLM`.

    ``forward(input_ids (B, L)) -> logits (B, L, V)``; ``scan``/``step`` carry a :class:`Mamba2LMState`
    (one :class:`Mamba2State` per layer); ``generate`` decodes greedily.
    """

    state_class = Mamba2LMState

    def __init__(self, vocab_size: int, d_model: int, n_layer: int, d_state: int = 128, d_conv: int = 4,
                 expand: float = 2, headdim: int = 64, ngroups: int = 1, conv_bias: bool = True, bias: bool = False,
                 norm_eps: float = 1e-5, pad_vocab_size_multiple: int = 16, tie_embeddings: bool = True,
                 backend: str = "auto", *, d_inner: int | None = None, chunk_size: int | None = None,
                 A_init_range: tuple[float, float] = (1.0, 16.0), dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, dt_limit: tuple[float, float] = (0.0, float("inf")),
                 rmsnorm: bool = True, norm_before_gate: bool = False, residual_in_fp32: bool = True,
                 rescale_prenorm_residual: bool = True) -> None:
        super().__init__()
        self._check_sizes(vocab_size=vocab_size, d_model=d_model, n_layer=n_layer,
                          pad_vocab_size_multiple=pad_vocab_size_multiple)
        if vocab_size % pad_vocab_size_multiple:
            vocab_size += pad_vocab_size_multiple - vocab_size % pad_vocab_size_multiple
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layer = n_layer
        self.residual_in_fp32 = bool(residual_in_fp32)
        self.backbone = Mamba2Backbone(vocab_size, d_model, n_layer, norm_eps, d_state=d_state, d_conv=d_conv,
                                       expand=expand, headdim=headdim, ngroups=ngroups, A_init_range=A_init_range,
                                       dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor, dt_limit=dt_limit,
                                       conv_bias=conv_bias, bias=bias, rmsnorm=rmsnorm,
                                       norm_before_gate=norm_before_gate, chunk_size=chunk_size, backend=backend,
                                       d_inner=d_inner)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self._init_weights(n_layer, rescale_prenorm_residual)
        self._tie_and_lay_out(tie_embeddings)

    @classmethod
    def from_hf(cls, model: nn.Module, **kwargs) -> Mamba2LM:
        """Build from a Hugging Face ``Mamba2ForCausalLM``: its config, weights, dtype and device.

        Every field of ``Mamba2Config`` is mapped (:data:`HF_MAMBA2_CONFIG_FIELDS` says how); a
        value this class cannot honour raises ``ValueError`` naming the field. The parameter names
        are Hugging Face's but for ``backbone.embeddings`` (``backbone.embedding`` here), which
        :meth:`load_hf_state_dict` renames. ``kwargs`` (``backend``, ``chunk_size``) go to the
        constructor.
        """
        ours = cls(**{**hf_mamba2_config_kwargs(model.config), **kwargs})
        ours.load_hf_state_dict(model.state_dict())
        ref = next(model.parameters())
        return ours.to(device=ref.device, dtype=ref.dtype)


# How Mamba2LM.from_hf maps each field of transformers' Mamba2Config (tests check the list is complete).
HF_MAMBA2_CONFIG_FIELDS: dict[str, str] = {
    "vocab_size": "vocab_size (pad_vocab_size_multiple=1: the table keeps HF's size)",
    "hidden_size": "d_model",
    "num_hidden_layers": "n_layer",
    "num_heads": "the number of heads: d_inner = num_heads * head_dim",
    "head_dim": "headdim",
    "expand": "checked: hidden_size * expand must equal num_heads * head_dim (HF's own rule)",
    "state_size": "d_state",
    "n_groups": "ngroups (num_heads must be a multiple)",
    "conv_kernel": "d_conv",
    "use_bias": "bias (in_proj and out_proj)",
    "use_conv_bias": "conv_bias",
    "hidden_act": "the conv activation: only 'silu' (refused otherwise)",
    "layer_norm_epsilon": "norm_eps (the block norms, the final norm and the gated norm)",
    "residual_in_fp32": "residual_in_fp32",
    "tie_word_embeddings": "tie_embeddings",
    "time_step_limit": "dt_limit (HF clamps dt in its chunked scan only; neurostep in the scan and the step)",
    "chunk_size": "not copied: the SSD op's chunk length changes rounding only, so the op picks its "
                  "backend's (pass chunk_size= to from_hf to force one)",
    "time_step_min": "dt_min (init only; the loaded weights replace it)",
    "time_step_max": "dt_max (init only)",
    "time_step_floor": "dt_init_floor (init only)",
    "rescale_prenorm_residual": "rescale_prenorm_residual (init only)",
    "time_step_rank": "ignored: Mamba-2 has no dt projection (HF's mixer stores it unused)",
    **HF_SHARED_IGNORED_FIELDS,
    "use_cache": "ignored: decoding always carries the explicit Mamba2LMState",
    # legacy fields, present in configs saved by older transformers (HF's mixer never read them)
    "rms_norm": "rmsnorm: HF always applies the gated RMSNorm, so False is refused",
    "norm_before_gate": "norm_before_gate: HF always gates before the norm, so True is refused",
}


def hf_mamba2_config_kwargs(cfg: object) -> dict[str, object]:
    """:class:`Mamba2LM` keyword arguments for a transformers ``Mamba2Config``.

    Raises ``ValueError`` naming the field for a value neurostep cannot honour.
    """
    require_silu(cfg, "Mamba2Config", "Mamba2")
    heads, head_dim, hidden = cfg.num_heads, cfg.head_dim, cfg.hidden_size
    if cfg.expand * hidden != heads * head_dim:
        raise ValueError(f"Mamba2Config: hidden_size * expand ({hidden} * {cfg.expand}) must equal num_heads * "
                         f"head_dim ({heads} * {head_dim})")
    if heads % cfg.n_groups:
        raise ValueError(f"Mamba2Config.num_heads={heads} must be a multiple of n_groups={cfg.n_groups}")
    if getattr(cfg, "rms_norm", True) is False:
        raise ValueError("Mamba2Config.rms_norm=False is not honoured by transformers' Mamba2Mixer (it always "
                         "applies the gated RMSNorm); refusing an ambiguous config")
    if getattr(cfg, "norm_before_gate", False) is True:
        raise ValueError("Mamba2Config.norm_before_gate=True is not honoured by transformers' Mamba2Mixer (it "
                         "always gates before the norm); refusing an ambiguous config")
    limit = tuple(float(v) for v in getattr(cfg, "time_step_limit", (0.0, float("inf"))))
    if len(limit) != 2:
        raise ValueError(f"Mamba2Config.time_step_limit must be (low, high), got {cfg.time_step_limit!r}")
    return dict(vocab_size=cfg.vocab_size, d_model=hidden, n_layer=cfg.num_hidden_layers, d_state=cfg.state_size,
                d_conv=cfg.conv_kernel, d_inner=heads * head_dim, headdim=head_dim, ngroups=cfg.n_groups,
                conv_bias=bool(cfg.use_conv_bias), bias=bool(cfg.use_bias), norm_eps=float(cfg.layer_norm_epsilon),
                pad_vocab_size_multiple=1, tie_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
                residual_in_fp32=bool(getattr(cfg, "residual_in_fp32", True)), dt_limit=limit,
                dt_min=float(getattr(cfg, "time_step_min", 0.001)), dt_max=float(getattr(cfg, "time_step_max", 0.1)),
                dt_init_floor=float(getattr(cfg, "time_step_floor", 1e-4)), rmsnorm=True, norm_before_gate=False,
                rescale_prenorm_residual=bool(getattr(cfg, "rescale_prenorm_residual", False)))


__all__ = ["HF_MAMBA2_CONFIG_FIELDS", "Mamba2", "Mamba2Backbone", "Mamba2Block", "Mamba2LM", "Mamba2LMState",
           "Mamba2State", "RMSNormGated", "hf_mamba2_config_kwargs"]
