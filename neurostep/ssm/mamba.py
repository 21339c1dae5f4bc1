"""Mamba (selective state-space) block and a Mamba language model.

``Mamba`` keeps mamba-ssm's and Hugging Face ``MambaMixer``'s parameter names and shapes
(``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``), so their
state_dicts load directly. One layer, with ``Di = expand * d_model``::

    x, z  = in_proj(u).chunk(2)                      # (B, L, Di) each
    x     = silu(causal_depthwise_conv(x))           # conv1d, d_conv taps
    dt, B, C = split(x_proj(x))                      # (B, L, R), (B, L, N), (B, L, N)
    dt    = softplus(dt_proj(dt))                    # bias inside the scan
    h_l   = exp(dt_l A) h_{l-1} + dt_l B_l x_l ;  y_l = <h_l, C_l> + D x_l
    out   = out_proj(y * silu(z))

``MambaLM`` stacks such layers as mamba-ssm's ``MambaLMHeadModel`` does (pre-norm RMSNorm
residual blocks with an fp32 residual stream, final RMSNorm, head tied to the embedding) and
loads a Hugging Face ``MambaForCausalLM`` state_dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neurostep.engine import Recurrent, check_nonempty, check_tensor, check_token_range, compute_dtype
from neurostep.kernels.causal_conv1d import causal_conv1d, causal_conv1d_update
from neurostep.kernels.selective_scan import selective_scan, selective_state_update
from neurostep.layers import RMSNorm, inverse_softplus, log_uniform_steps, s4d_real_log_A
from neurostep.ssm.s4d import lti_convolution


@dataclass
class MambaState:
    """Decode state of one Mamba layer.

    ``conv_state (B, Di, d_conv)``: the last ``d_conv`` inputs of the causal conv (newest last),
    as mamba-ssm and Hugging Face keep it. ``ssm_state (B, Di, N)``: the SSM state ``h``.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor


@dataclass
class MambaLMState:
    """MambaLM decode state: one MambaState per layer in ``layers`` (``(B, Di, d_conv)`` and ``(B, Di, N)``)."""

    layers: list[MambaState]


def column_major_(linear: nn.Module, name: str = "weight") -> None:
    """Store ``linear.<name>`` (out, in) as the transpose of a contiguous (in, out) tensor.

    Values, shape and state_dict keys are unchanged. Why: at batch 1 a decode step is a chain
    of matrix-vector products bound by memory bandwidth, and torch's CPU GEMV streams an
    (in, out)-contiguous matrix about twice as fast as the row-major one (measured 25 vs 12
    GB/s for the 50280 x 768 head); large GEMMs are unaffected.
    """
    w = getattr(linear, name)
    if w.dim() == 2 and not w.t().is_contiguous():
        setattr(linear, name, nn.Parameter(w.detach().t().contiguous().t(), requires_grad=w.requires_grad))


def inner_width(d_model: int, expand: float, d_inner: int | None = None) -> int:
    """The inner width ``Di``: ``d_inner`` when given, else ``int(expand * d_model)`` as mamba-ssm and HF compute it.

    ``expand`` may be a float (1.5); a non-positive ``expand`` or a resulting width below 1 raises.
    """
    if d_inner is not None:
        if isinstance(d_inner, bool) or not isinstance(d_inner, int) or d_inner < 1:
            raise ValueError(f"d_inner must be a positive int, got {d_inner!r}")
        return d_inner
    if isinstance(expand, bool) or not isinstance(expand, (int, float)) or not expand > 0:
        raise ValueError(f"expand must be a positive number, got {expand!r}")
    width = int(expand * d_model)
    if width < 1:
        raise ValueError(f"expand * d_model must be at least 1, got {expand!r} * {d_model}")
    return width


def _resolve_dt_rank(dt_rank: int | str, d_model: int) -> int:
    if dt_rank == "auto":
        return math.ceil(d_model / 16)
    if not isinstance(dt_rank, int) or dt_rank < 1:
        raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
    return dt_rank


class _SSMParams(nn.Module):
    """Helpers shared by the Mamba variants: build and initialise one direction's parameters."""

    def _make_direction(self, suffix: str, d_inner: int, d_state: int, d_conv: int, dt_rank: int,
                        conv_bias: bool, dt_min: float, dt_max: float, dt_init_floor: float,
                        dt_scale: float = 1.0, dt_init: str = "random") -> None:
        """Create ``conv1d{s}``, ``x_proj{s}``, ``dt_proj{s}``, ``A{s}_log``, ``D{s}`` with mamba-ssm's init."""
        conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        std = dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                nn.init.constant_(dt_proj.weight, std)
            else:
                nn.init.uniform_(dt_proj.weight, -std, std)
            # dt log-uniform in [dt_min, dt_max]; the bias is its inverse softplus so that
            # softplus(bias) == dt at init.
            dt_proj.bias.copy_(inverse_softplus(log_uniform_steps(d_inner, dt_min, dt_max, dt_init_floor)))
        dt_proj.bias._no_reinit = True
        A_log = nn.Parameter(s4d_real_log_A(d_inner, d_state))
        A_log._no_weight_decay = True
        D = nn.Parameter(torch.ones(d_inner))
        D._no_weight_decay = True
        for lin in (x_proj, dt_proj):
            column_major_(lin)
        setattr(self, f"conv1d{suffix}", conv)
        setattr(self, f"x_proj{suffix}", x_proj)
        setattr(self, f"dt_proj{suffix}", dt_proj)
        setattr(self, f"A{suffix}_log", A_log)
        setattr(self, f"D{suffix}", D)

    def _direction(self, suffix: str) -> tuple[nn.Conv1d, nn.Linear, nn.Linear, nn.Parameter, nn.Parameter]:
        return (getattr(self, f"conv1d{suffix}"), getattr(self, f"x_proj{suffix}"),
                getattr(self, f"dt_proj{suffix}"), getattr(self, f"A{suffix}_log"), getattr(self, f"D{suffix}"))

    def _ssm_scan(self, x: torch.Tensor, z: torch.Tensor, suffix: str, state: MambaState | None,
                  output_final_state: bool = True) -> tuple[torch.Tensor, MambaState | None]:
        """Conv + selective scan of one direction over a chunk.

        x, z: ``(B, Di, L)`` (x before the conv), both channels-first or both channels-last (transposes of
        ``(B, L, Di)`` blocks: the conv and the scan then run on them without transposing copies, and ``y``
        comes channels-last). Returns ``y (B, Di, L)`` (gated by silu(z)) and the state after the chunk, or
        None without ``output_final_state`` (the drop-in ``forward``, whose final state nothing reads).
        """
        conv, _, _, A_log, D = self._direction(suffix)
        batch, d_inner, length = x.shape
        width = conv.weight.shape[-1]
        cdtype = compute_dtype(x.dtype)
        if state is None:
            history = x.new_zeros(batch, d_inner, width, dtype=cdtype)
            init_h = None
        else:
            history, init_h = state.conv_state, state.ssm_state
        xc, _ = causal_conv1d(x, conv.weight[:, 0, :], conv.bias, "silu",
                              initial_state=None if state is None else history[..., 1:].to(x.dtype),
                              backend=self.backend)
        y, last = self._ssm_core(xc, z, suffix, init_h, output_final_state)
        if not output_final_state:
            return y, None
        # The next chunk's conv needs the last d_conv inputs seen so far.
        new_conv = torch.cat([history.to(cdtype), x[..., -width:].to(cdtype)], dim=-1)[..., -width:]
        return y, MambaState(new_conv, last)

    def _ssm_core(self, xc: torch.Tensor, z: torch.Tensor, suffix: str, init_h: torch.Tensor | None,
                  output_final_state: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The state space model on the conv output ``xc (B, Di, L)``: ``y`` gated by silu(z), and the last
        state (None without ``output_final_state``)."""
        _, _, _, A_log, D = self._direction(suffix)
        delta, Bm, Cm, delta_bias = self._scan_coefficients(xc, suffix)
        # Parameters enter in the compute dtype: fp32 for half-precision models, fp64 for fp64 ones.
        cdtype = compute_dtype(xc.dtype)
        A = -torch.exp(A_log.to(cdtype))
        return selective_scan(xc, delta, A, Bm, Cm, D.to(cdtype), z, delta_bias=delta_bias, delta_softplus=True,
                              initial_state=init_h, output_final_state=output_final_state, backend=self.backend)

    def _scan_coefficients(self, xc: torch.Tensor, suffix: str
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Selection: ``delta (B, Di, L)`` (channels-last), ``B, C (B, N, L)`` and the delta bias from the conv
        output ``xc``."""
        _, x_proj, dt_proj, A_log, _ = self._direction(suffix)
        x_dbl = F.linear(xc.transpose(1, 2), x_proj.weight)  # (B, L, R + 2N)
        rank = dt_proj.weight.shape[1]
        n = A_log.shape[1]
        dt, Bm, Cm = torch.split(x_dbl, [rank, n, n], dim=-1)
        # token-major, as x_dbl: for the channels-last blocks of scan() a transpose of it is the scan's layout (a
        # channels-first xc gets it copied by the scan); the bias is added inside the scan
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)
        return delta, Bm.transpose(1, 2), Cm.transpose(1, 2), dt_proj.bias.to(compute_dtype(xc.dtype))

    def _step_coefficients(self, xc: torch.Tensor, suffix: str
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token's selection: ``dt (B, Di)``, ``B, C (B, N)`` and the dt bias from ``xc (B, Di)``."""
        _, x_proj, dt_proj, A_log, _ = self._direction(suffix)
        x_dbl = F.linear(xc, x_proj.weight)
        rank = dt_proj.weight.shape[1]
        n = A_log.shape[1]
        dt, Bm, Cm = torch.split(x_dbl, [rank, n, n], dim=-1)
        return F.linear(dt, dt_proj.weight), Bm, Cm, dt_proj.bias.to(compute_dtype(xc.dtype))

    def _ssm_step(self, x: torch.Tensor, z: torch.Tensor, suffix: str, state: MambaState
                  ) -> tuple[torch.Tensor, MambaState]:
        """One token of one direction: x, z ``(B, Di)`` -> ``y (B, Di)`` and the new state."""
        conv, _, _, A_log, D = self._direction(suffix)
        xc, conv_state = causal_conv1d_update(x, state.conv_state, conv.weight[:, 0, :], conv.bias, activation="silu")
        dt, Bm, Cm, dt_bias = self._step_coefficients(xc, suffix)
        cdtype = compute_dtype(xc.dtype)
        y, ssm_state = selective_state_update(state.ssm_state, xc, dt, -torch.exp(A_log.to(cdtype)), Bm, Cm,
                                              D.to(cdtype), z=z, dt_bias=dt_bias, dt_softplus=True)
        return y, MambaState(conv_state, ssm_state)


class Mamba(_SSMParams, Recurrent):
    """Mamba selective-SSM mixer, drop-in ``(B, L, C) -> (B, L, C)`` and a step/scan recurrence.

    Args follow mamba-ssm's ``Mamba``: ``d_state`` N, ``d_conv`` taps, ``expand`` (Di =
    int(expand * d_model), an int or a float such as 1.5), ``dt_rank`` (``"auto"`` = ceil(d_model
    / 16)), dt init range, floor, scale and scheme (``dt_init``: ``"random"`` or ``"constant"``),
    ``conv_bias``, ``bias`` (in/out projections). ``d_inner`` sets the inner width directly
    (Hugging Face's ``intermediate_size``) and then overrides ``expand``. ``backend`` selects the
    kernels of the scan and the conv (``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"``).
    """

    causal = True  # output at token t depends only on tokens <= t: it may replace causal attention

    time_dim = 1

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 backend: str = "auto", *, d_inner: int | None = None, dt_scale: float = 1.0,
                 dt_init: str = "random") -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = inner_width(d_model, expand, d_inner)
        self.expand = expand if d_inner is None else self.d_inner / d_model
        self.dt_rank = _resolve_dt_rank(dt_rank, d_model)
        self.backend = backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self._make_direction("", self.d_inner, d_state, d_conv, self.dt_rank, conv_bias, dt_min, dt_max,
                             dt_init_floor, dt_scale, dt_init)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        column_major_(self.in_proj)
        column_major_(self.out_proj)

    # -- state ------------------------------------------------------------------------
    def init_state(self, batch_shape: tuple[int, ...] | int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> MambaState:
        """Zero state for a batch: ``batch_shape`` is ``(B,)``, ``(B, C)`` (a step's shape) or ``B``."""
        batch = _batch_size(batch_shape, self.d_model)
        device = self.in_proj.weight.device if device is None else device
        cdtype = compute_dtype(dtype if dtype is not None else self.in_proj.weight.dtype)
        return MambaState(torch.zeros(batch, self.d_inner, self.d_conv, device=device, dtype=cdtype),
                          torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=cdtype))

    def _check_state(self, state: MambaState, batch: int, device: torch.device) -> None:
        if not isinstance(state, MambaState):
            raise TypeError(f"state must be a MambaState (from init_state), got {type(state).__name__}")
        check_tensor("state.conv_state", state.conv_state, shape=(batch, self.d_inner, self.d_conv), device=device)
        check_tensor("state.ssm_state", state.ssm_state, shape=(batch, self.d_inner, self.d_state), device=device)

    def _check_input(self, x: torch.Tensor, ndim: int) -> torch.Tensor:
        what = "(B, L, d_model)" if ndim == 3 else "(B, d_model)"
        x = check_tensor("x", x, ndim=ndim)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape {what} with d_model={self.d_model}, got {tuple(x.shape)}")
        if ndim == 3:
            check_nonempty("x", x, 1, "tokens")
        return x

    # -- recurrence -------------------------------------------------------------------
    def scan(self, x: torch.Tensor, state: MambaState | None = None, *, output_final_state: bool = True
             ) -> tuple[torch.Tensor, MambaState | None]:
        """Whole sequence through the fused kernels.

        x: ``(B, L, d_model)``; state: a ``MambaState`` to resume from (None = zeros).
        Returns ``y (B, L, d_model)`` and the state after the last token, so scanning two
        halves with the carried state equals scanning the whole; without ``output_final_state``
        the state is None and is not computed (the drop-in ``forward``).
        """
        x = self._check_input(x, 3)
        if state is not None:
            self._check_state(state, x.shape[0], x.device)
        xs, z = self._in_proj_channels_last(x)
        y, new_state = self._ssm_scan(xs, z, "", state, output_final_state)
        return self.out_proj(y.transpose(1, 2).to(x.dtype)), new_state

    def _in_proj_channels_last(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``in_proj`` of ``x (B, L, C)`` as two token-major products: ``x, z`` of ``(B, Di, L)`` each, the
        transposes of ``(B, L, Di)`` blocks (channels-last), which the conv, the projections of the selection
        and the scan read as they are and whose output ``out_proj`` reads as it is: no transposing copy in
        the forward or the backward.

        Channels-first blocks, the layout of mamba-ssm's kernels, took 18 transposing copies per training step
        of the main experiment's two-layer model; with them the steps of the ``mamba`` mixer were 1.14-1.19x
        slower (``docs/ssm.md``). The two halves are two products, so that each comes out contiguous. The
        tokens are the products' rows, as they were in the channels-first products (``W @ x^T`` run by
        ``torch.matmul`` as ``x W^T`` and then copied), so each token's values are the same to the bit and do
        not depend on how many tokens a call holds: one ``bmm`` per batch row from the weight side, with the
        tokens as columns, made sequence-parallel ``MambaLM`` (``tests/distributed``) drift from one process
        25 times more in float32, past its tolerance."""
        weight, bias = self.in_proj.weight, self.in_proj.bias
        d_inner = self.d_inner
        xs = F.linear(x, weight[:d_inner], None if bias is None else bias[:d_inner])
        z = F.linear(x, weight[d_inner:], None if bias is None else bias[d_inner:])
        return xs.transpose(1, 2), z.transpose(1, 2)

    def step(self, x_t: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One token: ``x_t (B, d_model) -> y_t (B, d_model)``; returns a new state (no in-place update)."""
        x_t = self._check_input(x_t, 2)
        self._check_state(state, x_t.shape[0], x_t.device)
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)
        y, new_state = self._ssm_step(xs, z, "", state)
        return self.out_proj(y.to(x_t.dtype)), new_state

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Drop-in mixer: ``(B, N, C) -> (B, N, C)``, causal over the N tokens (grid_size unused). :meth:`scan`
        without the final state, which is then not computed."""
        return self.scan(x, output_final_state=False)[0]

    def decode_step_(self, x_t: torch.Tensor, state: MambaState, A: torch.Tensor,
                     weights: MambaLayerDecodeWeights | None = None) -> torch.Tensor:
        """Decode fast path: :meth:`step` without input checks, updating ``state`` in place.

        ``x_t (B, d_model)`` fp32 -> ``(B, d_model)`` fp32; ``A = -exp(A_log)`` precomputed once
        per generation. Used by :meth:`MambaLM.generate` under ``torch.inference_mode`` on fp32
        weights, where the per-token Python and dispatch overhead matters; :meth:`step` (through
        the kernels' reference decode ops) is its specification and the tests hold them equal.
        ``weights`` (from :meth:`MambaLM.prepare_decode`) replaces ``in_proj`` and ``out_proj``
        by bf16 or int8 copies; the conv, the scan, the state and the small ``x_proj`` and
        ``dt_proj`` stay fp32.
        """
        d_inner = self.d_inner
        if weights is None:
            xz = F.linear(x_t, self.in_proj.weight, self.in_proj.bias)
        else:
            xz = weights.in_proj(x_t)
        x, z = xz[:, :d_inner], xz[:, d_inner:]
        conv = state.conv_state
        # Shift the conv window left by one (a copy of the overlap: copy_ on overlapping views is undefined).
        conv[:, :, :-1] = conv[:, :, 1:].clone()
        conv[:, :, -1] = x
        xc = (conv * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            xc += self.conv1d.bias
        xc = F.silu(xc)
        x_dbl = F.linear(xc, self.x_proj.weight)
        rank, n = self.dt_rank, self.d_state
        dt = F.softplus(F.linear(x_dbl[:, :rank], self.dt_proj.weight, self.dt_proj.bias))
        Bm = x_dbl[:, rank:rank + n]
        Cm = x_dbl[:, rank + n:]
        decay = torch.exp(dt.unsqueeze(-1) * A)  # (B, Di, N)
        h = state.ssm_state
        h.mul_(decay).add_((dt * xc).unsqueeze(-1) * Bm.unsqueeze(1))
        y = torch.bmm(h, Cm.unsqueeze(-1)).squeeze(-1)
        y = torch.addcmul(y, self.D, xc) * F.silu(z)
        if weights is None:
            return F.linear(y, self.out_proj.weight, self.out_proj.bias)
        return weights.out_proj(y)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
                f"dt_rank={self.dt_rank}, backend={self.backend!r}")


class MambaLTI(Mamba):
    """Mamba with selection switched off: an LTI (S4D-like) state-space model inside the Mamba block.

    The control of the Mamba paper's selective-copying table ("Mamba with S4"): the block keeps
    ``in_proj``, the causal conv, the SiLU gate and ``out_proj``, but ``delta``, ``B`` and ``C``
    are learned parameters instead of functions of the input::

        delta = softplus(dt_bias)            # (Di,)    one step size per channel, as dt init
        h_l   = exp(delta A) h_{l-1} + delta B x_l ;  y_l = <h_l, C> + D x_l      B, C: (Di, N)

    so the layer is a fixed (time-invariant) convolution of its input: it cannot decide by
    content which tokens to keep. ``B`` starts at 1 and ``C`` at N(0, 1) (S4D's real init),
    ``A`` and ``dt`` as in :class:`Mamba`. Same interface as :class:`Mamba`.

    ``mode="conv"`` (default) computes a whole sequence as S4 does, as one long convolution
    (:func:`~neurostep.ssm.s4d.lti_convolution`: through an FFT, or as a Toeplitz product for short
    sequences). ``mode="scan"`` runs the
    selective-scan kernels with constant coefficients; the two agree to float rounding (tested).
    """

    MODES = ("conv", "scan")

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 backend: str = "auto", mode: str = "conv") -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        super().__init__(d_model, d_state, d_conv, expand, dt_rank=1, dt_min=dt_min, dt_max=dt_max,
                         dt_init_floor=dt_init_floor, conv_bias=conv_bias, bias=bias, backend=backend)
        self.mode = mode
        # Selection off: the projections that made delta, B and C depend on x are replaced by parameters.
        dt_bias = self.dt_proj.bias.detach().clone()
        del self.x_proj, self.dt_proj
        self.dt_bias = nn.Parameter(dt_bias)
        self.dt_bias._no_weight_decay = True
        self.B = nn.Parameter(torch.ones(self.d_inner, d_state))
        self.C = nn.Parameter(torch.randn(self.d_inner, d_state))

    def _direction(self, suffix: str) -> tuple[nn.Conv1d, None, None, nn.Parameter, nn.Parameter]:
        return self.conv1d, None, None, self.A_log, self.D


    def _scan_coefficients(self, xc: torch.Tensor, suffix: str
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``delta`` is 0 before the bias (``softplus(dt_bias)`` for every token); ``B, C`` are ``(Di, N)``."""
        return torch.zeros_like(xc), self.B, self.C, self.dt_bias.to(compute_dtype(xc.dtype))

    def _ssm_core(self, xc: torch.Tensor, z: torch.Tensor, suffix: str, init_h: torch.Tensor | None,
                  output_final_state: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.mode == "scan":
            return super()._ssm_core(xc, z, suffix, init_h, output_final_state)
        cdtype = compute_dtype(xc.dtype)
        # the short conv runs channels-last (its faster kernels); the long convolution is a product batched
        # over the channels, which wants them outermost: one copy to the channels-first layout
        y, last = lti_convolution(xc.to(cdtype).contiguous(), F.softplus(self.dt_bias.to(cdtype)),
                                  -torch.exp(self.A_log.to(cdtype)), self.B.to(cdtype), self.C.to(cdtype),
                                  self.D.to(cdtype), None if init_h is None else init_h.to(cdtype),
                                  output_final_state=output_final_state)
        if z is not None:
            y = y * F.silu(z.to(cdtype))
        return y.to(xc.dtype), last

    def _step_coefficients(self, xc: torch.Tensor, suffix: str
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = xc.shape[0]
        # The decode op takes B, C per batch row in groups of lanes: one group per channel.
        Bm = self.B.unsqueeze(0).expand(batch, -1, -1)
        Cm = self.C.unsqueeze(0).expand(batch, -1, -1)
        return torch.zeros_like(xc), Bm, Cm, self.dt_bias.to(compute_dtype(xc.dtype))

    def decode_step_(self, x_t: torch.Tensor, state: MambaState, A: torch.Tensor) -> torch.Tensor:
        """:meth:`step` with ``state`` updated in place (the selective fast path reads ``x_proj``)."""
        y, new = self.step(x_t, state)
        state.conv_state.copy_(new.conv_state)
        state.ssm_state.copy_(new.ssm_state)
        return y

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
                f"selective=False, mode={self.mode!r}, backend={self.backend!r}")


def _batch_size(batch_shape: tuple[int, ...] | int, d_model: int) -> int:
    if isinstance(batch_shape, int):
        return batch_shape
    shape = tuple(batch_shape)
    if len(shape) == 2 and shape[1] != d_model:
        raise ValueError(f"batch_shape must be (B,) or (B, d_model={d_model}), got {shape}")
    if len(shape) not in (1, 2) or shape[0] < 1:
        raise ValueError(f"batch_shape must be (B,) or (B, d_model={d_model}), got {shape}")
    return int(shape[0])


# ---------------------------------------------------------------------------------------
# Reduced-precision decode weights
# ---------------------------------------------------------------------------------------

DECODE_WEIGHT_DTYPES: tuple[str, ...] = ("fp32", "bf16", "int8")
"""The weight dtypes :meth:`MambaLM.prepare_decode` and ``generate(decode_weights=...)`` accept."""


class DecodeLinear:
    """One Linear's weight as the batch-1 decode step reads it: fp32, bf16 or int8.

    Called on ``x (B, in)`` fp32, it returns ``x W^T + b`` as ``(B, out)`` fp32; the bias stays
    fp32. ``"fp32"`` refers to the module's own weight (no copy). ``"bf16"`` keeps a row-major bf16
    copy, multiplied by ``torch.mv`` at batch 1 (at batch 1 no faster than fp32 on the development
    machine: torch 2.14's bf16 matrix-vector products were compute-bound at 4-9 GB/s of bf16 weights
    where the fp32 one streamed 16-21 GB/s; ``mv`` was the fastest of ``mv``, ``F.linear`` and
    oneDNN's prepacked linear on the Mamba-130m projections, and matched the packed one on the head).
    ``"int8"`` keeps symmetric per-output-channel int8 weights, ``W ~= q * s[:, None]`` with
    ``s = max|W_row| / 127``, for ``torch._weight_int8pack_mm`` (about 8 GB/s of int8 weights there,
    so fewer seconds per matrix than fp32). Both reduced paths round the activation to bf16 on the
    way in (the int8 kernel with an fp32 input ran about ten times slower) and return bf16, widened
    to fp32 here; the products accumulate in fp32 inside the kernels.
    """

    def __init__(self, linear: nn.Linear, weight_dtype: str) -> None:
        if weight_dtype not in DECODE_WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype must be one of {DECODE_WEIGHT_DTYPES}, got {weight_dtype!r}")
        w = linear.weight.detach()
        self.weight_dtype = weight_dtype
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.out_features, self.in_features = w.shape
        self.weight: torch.Tensor | None = None   # fp32 (the module's) or bf16 (row-major): (out, in)
        self.qweight: torch.Tensor | None = None  # int8 (out, in + pad), row-major as the kernel reads it
        self.scale: torch.Tensor | None = None    # (out,) bf16, the kernel's scale dtype
        self.pad = 0                              # int8: zero columns appended to qweight
        if weight_dtype == "fp32":
            self.weight = w
        elif weight_dtype == "bf16":
            # row-major: torch's bf16 matrix-vector product reads rows as dot products
            self.weight = w.to(torch.bfloat16).contiguous()
        else:
            # Round the scale to bf16 first and quantise with the rounded value, so that q * s is
            # exactly the weight the kernel multiplies by (zero rows get scale 1 and q = 0).
            amax = w.float().abs().amax(dim=1)
            scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(torch.bfloat16)
            q = torch.round(w.float() / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
            # the int8 kernel reads the reduction dimension in blocks of 16 (and crashed on other
            # widths): zero columns pad it, and the call pads x to match
            self.pad = -self.in_features % 16
            self.qweight = F.pad(q, (0, self.pad)).contiguous()
            self.scale = scale

    @property
    def nbytes(self) -> int:
        """Bytes of weight, scale and bias one call reads."""
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        if self.weight_dtype == "fp32":
            return self.weight.numel() * 4 + bias
        if self.weight_dtype == "bf16":
            return self.out_features * self.in_features * 2 + bias
        return self.out_features * self.in_features + self.scale.numel() * 2 + bias

    def dequantized(self) -> torch.Tensor:
        """The ``(out, in)`` fp32 weight this copy multiplies by (for tests and error analysis)."""
        if self.weight_dtype == "int8":
            return self.qweight[:, :self.in_features].float() * self.scale.float()[:, None]
        return self.weight.float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, in)`` fp32 -> ``(B, out)`` fp32."""
        if self.weight_dtype == "fp32":
            return F.linear(x, self.weight, self.bias)
        xb = x.to(torch.bfloat16)
        if self.weight_dtype == "int8":
            y = torch._weight_int8pack_mm(F.pad(xb, (0, self.pad)) if self.pad else xb, self.qweight, self.scale)
        elif xb.shape[0] == 1:
            y = torch.mv(self.weight, xb[0]).unsqueeze(0)
        else:
            y = F.linear(xb, self.weight)
        y = y.float()
        return y if self.bias is None else y + self.bias


@dataclass
class MambaLayerDecodeWeights:
    """One layer's projections for :meth:`Mamba.decode_step_`: ``in_proj``, ``out_proj`` in the decode dtype."""

    in_proj: DecodeLinear
    out_proj: DecodeLinear


@dataclass
class MambaDecodeWeights:
    """A snapshot of a :class:`MambaLM`'s decode weights in one dtype, from :meth:`MambaLM.prepare_decode`.

    ``layers`` holds each layer's ``in_proj``/``out_proj`` and ``lm_head`` the head, converted;
    everything else a decode step reads stays the model's fp32 parameters. ``nbytes`` is the
    weight bytes one decode token streams, the numerator of the decoding roofline. The snapshot
    does not follow later changes of the model's weights (prepare again).
    """

    weight_dtype: str
    layers: list[MambaLayerDecodeWeights]
    lm_head: DecodeLinear
    nbytes: int
    model_id: int


# ---------------------------------------------------------------------------------------
# Language model
# ---------------------------------------------------------------------------------------


class MambaBlock(nn.Module):
    """Pre-norm residual block: ``r = r + Mamba(RMSNorm(r))``.

    The residual ``r`` keeps the dtype it arrives in: fp32 in :class:`MambaLM` by default
    (``residual_in_fp32``), the model's dtype otherwise.
    """

    def __init__(self, d_model: int, norm_eps: float = 1e-5, **mixer_kwargs) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = Mamba(d_model, **mixer_kwargs)

    def forward(self, residual: torch.Tensor, state: MambaState | None = None
                ) -> tuple[torch.Tensor, MambaState]:
        """``residual (B, L, C)`` -> new residual (same dtype) and the mixer's final state."""
        h = self.norm(residual.to(self.norm.weight.dtype))
        y, state = self.mixer.scan(h, state)
        return residual + y.to(residual.dtype), state

    def step(self, residual: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        h = self.norm(residual.to(self.norm.weight.dtype))
        y, state = self.mixer.step(h, state)
        return residual + y.to(residual.dtype), state


class MambaBackbone(nn.Module):
    """Embedding, ``n_layer`` Mamba blocks and the final RMSNorm (mamba-ssm's ``MixerModel`` names)."""

    def __init__(self, vocab_size: int, d_model: int, n_layer: int, norm_eps: float = 1e-5,
                 **mixer_kwargs) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(MambaBlock(d_model, norm_eps, **mixer_kwargs) for _ in range(n_layer))
        self.norm_f = RMSNorm(d_model, eps=norm_eps)


class SSMLanguageModel(nn.Module):
    """What :class:`MambaLM` and :class:`~neurostep.ssm.mamba2.Mamba2LM` share: prefill, step, greedy decoding.

    A subclass builds ``backbone`` (``embedding``, ``layers`` of pre-norm blocks whose ``mixer`` has
    ``init_state``/``scan``/``step``/``decode_step_``, ``norm_f``) and ``lm_head``, sets
    ``vocab_size``, ``d_model``, ``n_layer``, ``tie_embeddings`` and ``residual_in_fp32``, and names
    its per-model state dataclass (a ``layers`` list) in ``state_class``.
    """

    state_class: type = MambaLMState

    def _check_sizes(self, **sizes: int) -> None:
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    def _tie_and_lay_out(self, tie_embeddings: bool) -> None:
        # The (V, d) table is stored (d, V)-contiguous: the head's GEMV, which reads the whole
        # table every token, streams it twice as fast; the embedding gathers only a few rows.
        column_major_(self.backbone.embedding)
        column_major_(self.lm_head)
        self.tie_embeddings = bool(tie_embeddings)
        if tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    @torch.no_grad()
    def _init_weights(self, n_layer: int, rescale: bool = True) -> None:
        """mamba-ssm's init: embedding N(0, 0.02), zero Linear biases, out_proj scaled by 1/sqrt(n_layer)."""
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit",
                                                                                         False):
                nn.init.zeros_(module.bias)
        for layer in self.backbone.layers:
            w = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            if rescale:
                w /= math.sqrt(n_layer)

    # -- state ------------------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None):
        """One zero layer state per layer, in this model's ``state_class``."""
        return self.state_class([layer.mixer.init_state(batch, device, dtype) for layer in self.backbone.layers])

    def _check_ids(self, input_ids: torch.Tensor, ndim: int) -> None:
        check_tensor("input_ids", input_ids, ndim=ndim, dtypes=(torch.int64, torch.int32))
        if ndim == 2 and input_ids.shape[1] == 0:
            raise ValueError(f"input_ids has 0 tokens (shape {tuple(input_ids.shape)}); need at least one")
        check_token_range("input_ids", input_ids, self.vocab_size)

    def _check_states(self, states) -> None:
        name = self.state_class.__name__
        if not isinstance(states, self.state_class):
            raise TypeError(f"states must be a {name} (from init_state or scan), got {type(states).__name__}")
        if len(states.layers) != self.n_layer:
            raise ValueError(f"states must hold {self.n_layer} layer states (one per layer), got {len(states.layers)}")

    def _residual(self, embedded: torch.Tensor) -> torch.Tensor:
        """The residual stream from the embedding: fp32 with ``residual_in_fp32``, else as embedded."""
        return embedded.float() if self.residual_in_fp32 else embedded

    # -- sequence ---------------------------------------------------------------------
    def scan(self, input_ids: torch.Tensor, states=None, *, last_only: bool = False):
        """Prefill: ``input_ids (B, L)`` -> ``logits (B, L, V)`` (``(B, 1, V)`` if ``last_only``) and states."""
        self._check_ids(input_ids, 2)
        if states is not None:
            self._check_states(states)
        residual = self._residual(self.backbone.embedding(input_ids))
        new_states = []
        for i, layer in enumerate(self.backbone.layers):
            residual, st = layer(residual, None if states is None else states.layers[i])
            new_states.append(st)
        if last_only:
            residual = residual[:, -1:]
        h = self.backbone.norm_f(residual.to(self.backbone.norm_f.weight.dtype))
        return self.lm_head(h.to(self.lm_head.weight.dtype)), self.state_class(new_states)

    def forward(self, input_ids: torch.Tensor, states=None) -> torch.Tensor:
        """``input_ids (B, L)`` -> ``logits (B, L, V)``."""
        return self.scan(input_ids, states)[0]

    def step(self, token: torch.Tensor, states):
        """One decode token: ``token (B,)`` -> ``logits (B, V)`` and the new per-layer states."""
        self._check_ids(token, 1)
        self._check_states(states)
        residual = self._residual(self.backbone.embedding(token))
        new_states = []
        for layer, st in zip(self.backbone.layers, states.layers):
            residual, st = layer.step(residual, st)
            new_states.append(st)
        h = self.backbone.norm_f(residual.to(self.backbone.norm_f.weight.dtype))
        return self.lm_head(h.to(self.lm_head.weight.dtype)), self.state_class(new_states)

    decode_weight_dtypes: tuple[str, ...] = ("fp32",)
    """The ``decode_weights`` names this model's ``generate`` accepts (MambaLM adds bf16 and int8)."""

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *,
                 decode_weights: str | MambaDecodeWeights = "fp32") -> torch.Tensor:
        """Greedy decoding: prefill ``input_ids (B, L)`` with ``scan``, then ``step`` per new token.

        Returns ``(B, L + max_new_tokens)``. No stopping token: it always produces exactly
        ``max_new_tokens`` (compare with Hugging Face ``generate(min_new_tokens=...)``).

        ``decode_weights`` picks the weights the per-token steps stream: ``"fp32"`` (the model's
        own), a name in :attr:`decode_weight_dtypes` (converted for this call), or a
        :class:`MambaDecodeWeights` from :meth:`MambaLM.prepare_decode` (converted once, reused).
        The prefill always runs on the fp32 weights, and the state stays fp32.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        self._check_ids(input_ids, 2)
        self._check_decode_weights(decode_weights, input_ids)
        if max_new_tokens == 0:
            return input_ids.clone()
        if isinstance(decode_weights, MambaDecodeWeights):
            weights = decode_weights
        else:
            weights = None if decode_weights == "fp32" else self.prepare_decode(decode_weights)
        logits, states = self.scan(input_ids, last_only=True)
        fast = weights is not None or self._fast_decode_ok(input_ids)
        if fast:
            mixers = [layer.mixer for layer in self.backbone.layers]
            neg_A = [-torch.exp(m.A_log.float()) for m in mixers]
            states = self.state_class([type(s)(s.conv_state.contiguous(), s.ssm_state.contiguous())
                                       for s in states.layers])
        out = torch.empty(input_ids.shape[0], input_ids.shape[1] + max_new_tokens, dtype=input_ids.dtype,
                          device=input_ids.device)
        out[:, :input_ids.shape[1]] = input_ids
        token = logits[:, -1].argmax(-1)
        pos = input_ids.shape[1]
        for i in range(max_new_tokens):
            out[:, pos + i] = token
            if i + 1 == max_new_tokens:
                break
            if fast:
                logits = self._fast_step(token, states, neg_A, weights)
            else:
                logits, states = self.step(token, states)
            token = logits.argmax(-1)
        return out

    def _check_decode_weights(self, spec: str | MambaDecodeWeights, input_ids: torch.Tensor) -> None:
        """Refuse a ``decode_weights`` that ``generate`` cannot honour for this model and input."""
        if isinstance(spec, MambaDecodeWeights):
            if spec.model_id != id(self) or len(spec.layers) != self.n_layer:
                raise ValueError("decode_weights was prepared from another model; call this model's prepare_decode")
        elif isinstance(spec, str):
            if spec not in DECODE_WEIGHT_DTYPES:
                raise ValueError(f"decode_weights must be one of {DECODE_WEIGHT_DTYPES} or a MambaDecodeWeights, "
                                 f"got {spec!r}")
            if spec not in self.decode_weight_dtypes:
                raise ValueError(f"{type(self).__name__} decodes with {self.decode_weight_dtypes} weights only, "
                                 f"got {spec!r}")
            if spec == "fp32":
                return
        else:
            raise TypeError(f"decode_weights must be a str or a MambaDecodeWeights, got {type(spec).__name__}")
        if not self._fast_decode_ok(input_ids):
            w = self.lm_head.weight
            raise ValueError(f"reduced-precision decode weights are made from fp32 weights on the input's device; "
                             f"this model holds {w.dtype} weights on {w.device}, input_ids is on {input_ids.device}")

    def _fast_decode_ok(self, input_ids: torch.Tensor) -> bool:
        """The in-place decode path covers fp32 weights on the input's device; else ``step`` runs."""
        w = self.lm_head.weight
        return w.dtype == torch.float32 and w.device == input_ids.device

    def _fast_step(self, token: torch.Tensor, states, neg_A: list[torch.Tensor],
                   weights: MambaDecodeWeights | None = None) -> torch.Tensor:
        """:meth:`step` through each mixer's ``decode_step_``, updating ``states`` in place.

        ``token (B,)`` -> logits ``(B, V)`` fp32; ``weights`` replaces the big projections and the
        head by a reduced-precision snapshot (None: the model's fp32 weights).
        """
        residual = F.embedding(token, self.backbone.embedding.weight)
        d = (self.d_model,)
        layer_weights = [None] * self.n_layer if weights is None else weights.layers
        for layer, st, A, lw in zip(self.backbone.layers, states.layers, neg_A, layer_weights):
            # F.rms_norm is RMSNorm's math in one fused op (fewer dispatches per token)
            h = F.rms_norm(residual, d, layer.norm.weight, layer.norm.eps)
            if lw is None:
                residual = residual + layer.mixer.decode_step_(h, st, A)
            else:
                residual = residual + layer.mixer.decode_step_(h, st, A, lw)
        h = F.rms_norm(residual, d, self.backbone.norm_f.weight, self.backbone.norm_f.eps)
        if weights is None:
            return F.linear(h, self.lm_head.weight)
        return weights.lm_head(h)

    # -- Hugging Face interop -------------------------------------------------------------
    def load_hf_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Load a Hugging Face ``*ForCausalLM`` state_dict (``backbone.embeddings`` -> ``embedding``).

        mamba-ssm checkpoints (``backbone.embedding``) load unchanged. The vocabulary must
        match this model's padded size.
        """
        mapped = {}
        for key, value in state_dict.items():
            new_key = key.replace("backbone.embeddings.", "backbone.embedding.")
            mapped[new_key] = value
        if self.tie_embeddings:
            mapped.setdefault("lm_head.weight", mapped.get("backbone.embedding.weight"))
        emb = mapped.get("backbone.embedding.weight")
        if emb is not None and tuple(emb.shape) != tuple(self.backbone.embedding.weight.shape):
            raise ValueError(f"embedding shape {tuple(emb.shape)} in the state_dict does not match this model's "
                             f"{tuple(self.backbone.embedding.weight.shape)} (vocab padded to {self.vocab_size})")
        self.load_state_dict(mapped, strict=strict)


class MambaLM(SSMLanguageModel):
    """Mamba language model with a tied head (mamba-ssm ``MambaLMHeadModel`` layout).

    Args:
        vocab_size: tokenizer size; padded up to a multiple of ``pad_vocab_size_multiple``.
        d_model, n_layer: width and depth. ``d_state``, ``d_conv``, ``expand``, ``d_inner``,
            ``dt_rank``, ``conv_bias``, ``bias``, the dt init arguments and ``backend`` go to every
            :class:`Mamba` layer.
        norm_eps: RMSNorm epsilon (1e-5 as in mamba-ssm and Hugging Face).
        residual_in_fp32: keep the residual stream in fp32 (mamba-ssm's and HF's default); False
            keeps it in the weights' dtype, as HF's ``residual_in_fp32=False`` does.
        rescale_prenorm_residual: scale ``out_proj`` by ``1/sqrt(n_layer)`` at init (mamba-ssm's init).

    ``forward(input_ids (B, L)) -> logits (B, L, V)``; ``scan``/``step`` carry a :class:`MambaLMState`
    (one :class:`MambaState` per layer); ``generate`` decodes greedily through ``step``.
    """

    state_class = MambaLMState
    decode_weight_dtypes = DECODE_WEIGHT_DTYPES

    def __init__(self, vocab_size: int, d_model: int, n_layer: int, d_state: int = 16, d_conv: int = 4,
                 expand: float = 2, dt_rank: int | str = "auto", conv_bias: bool = True, bias: bool = False,
                 norm_eps: float = 1e-5, pad_vocab_size_multiple: int = 8, tie_embeddings: bool = True,
                 backend: str = "auto", *, d_inner: int | None = None, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, dt_scale: float = 1.0, dt_init: str = "random",
                 residual_in_fp32: bool = True, rescale_prenorm_residual: bool = True) -> None:
        super().__init__()
        self._check_sizes(vocab_size=vocab_size, d_model=d_model, n_layer=n_layer,
                          pad_vocab_size_multiple=pad_vocab_size_multiple)
        if vocab_size % pad_vocab_size_multiple:
            vocab_size += pad_vocab_size_multiple - vocab_size % pad_vocab_size_multiple
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layer = n_layer
        self.residual_in_fp32 = bool(residual_in_fp32)
        self.backbone = MambaBackbone(vocab_size, d_model, n_layer, norm_eps, d_state=d_state, d_conv=d_conv,
                                      expand=expand, dt_rank=dt_rank, conv_bias=conv_bias, bias=bias,
                                      backend=backend, d_inner=d_inner, dt_min=dt_min, dt_max=dt_max,
                                      dt_init_floor=dt_init_floor, dt_scale=dt_scale, dt_init=dt_init)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self._init_weights(n_layer, rescale_prenorm_residual)
        self._tie_and_lay_out(tie_embeddings)

    @classmethod
    def from_hf(cls, model: nn.Module, **kwargs) -> MambaLM:
        """Build from a Hugging Face ``MambaForCausalLM``: its config, weights, dtype and device.

        Every field of ``MambaConfig`` is mapped (:data:`HF_MAMBA_CONFIG_FIELDS` says how); a
        value this class cannot honour raises ``ValueError`` naming the field. ``kwargs`` (e.g.
        ``backend``) go to the constructor.
        """
        ours = cls(**{**hf_mamba_config_kwargs(model.config), **kwargs})
        ours.load_hf_state_dict(model.state_dict())
        ref = next(model.parameters())
        return ours.to(device=ref.device, dtype=ref.dtype)

    @torch.no_grad()
    def prepare_decode(self, weight_dtype: str) -> MambaDecodeWeights:
        """Convert the weights that batch-1 decoding streams, once, for ``generate(decode_weights=...)``.

        ``weight_dtype``: ``"fp32"`` (the model's own weights, no copy), ``"bf16"`` or ``"int8"``
        (symmetric per-output-channel scales; see :class:`DecodeLinear`). Converted: every layer's
        ``in_proj`` and ``out_proj`` and the head, about 97% of the Mamba-130m weight stream.
        ``x_proj`` and ``dt_proj`` stay fp32: at their sizes (80 x 1536 and 1536 x 48 there) the
        reduced-precision kernels' fixed cost per call exceeded the bytes saved, and ``dt`` feeds
        ``exp``. The conv, ``A``, ``D``, the norms, the biases, the embedding lookup and the state
        stay fp32. The model must hold fp32 weights. The copy costs memory (bf16 about half the
        fp32 weights, int8 about a quarter) and is a snapshot of the weights as they are now.
        """
        if weight_dtype not in DECODE_WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype must be one of {DECODE_WEIGHT_DTYPES}, got {weight_dtype!r}")
        if self.lm_head.weight.dtype != torch.float32:
            raise ValueError(f"prepare_decode converts fp32 weights; this model holds {self.lm_head.weight.dtype}")
        layers = []
        nbytes = 0
        for layer in self.backbone.layers:
            m = layer.mixer
            lw = MambaLayerDecodeWeights(DecodeLinear(m.in_proj, weight_dtype), DecodeLinear(m.out_proj, weight_dtype))
            layers.append(lw)
            # everything else one decode step reads stays fp32 (x_proj and dt_proj with their bias included)
            small = [layer.norm.weight, m.conv1d.weight, m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight,
                     m.dt_proj.bias, m.A_log, m.D]
            nbytes += lw.in_proj.nbytes + lw.out_proj.nbytes + sum(t.numel() * 4 for t in small if t is not None)
        head = DecodeLinear(self.lm_head, weight_dtype)
        nbytes += head.nbytes + self.backbone.norm_f.weight.numel() * 4
        return MambaDecodeWeights(weight_dtype, layers, head, nbytes, id(self))


# How MambaLM.from_hf maps each field of transformers' MambaConfig (tests check the list is complete).
HF_SHARED_IGNORED_FIELDS: dict[str, str] = {
    "initializer_range": "ignored: init only, the loaded weights replace it",
    "pad_token_id": "ignored: a tokenizer id, no effect on the logits (generate has no stop token)",
    "bos_token_id": "ignored: a tokenizer id",
    "eos_token_id": "ignored: a tokenizer id (generate always produces max_new_tokens)",
}
"""Fields of transformers' Mamba and Mamba-2 configs that neither language model reads."""


def require_silu(cfg: object, config_name: str, block_name: str) -> None:
    """Refuse a transformers config whose ``hidden_act`` is not SiLU (the fused conv implements only SiLU)."""
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{config_name}.hidden_act={act!r} is not supported: neurostep's {block_name} applies SiLU "
                         "after the causal conv (the fused conv kernels implement only 'silu')")


HF_MAMBA_CONFIG_FIELDS: dict[str, str] = {
    "vocab_size": "vocab_size (pad_vocab_size_multiple=1: the table keeps HF's size)",
    "hidden_size": "d_model",
    "state_size": "d_state",
    "num_hidden_layers": "n_layer",
    "layer_norm_epsilon": "norm_eps (every RMSNorm)",
    "intermediate_size": "d_inner (the inner width; HF sets it from expand unless given)",
    "expand": "kept as information: d_inner (intermediate_size) sizes the layer; any positive expand",
    "conv_kernel": "d_conv",
    "use_bias": "bias (in_proj and out_proj)",
    "use_conv_bias": "conv_bias",
    "hidden_act": "the conv activation: only 'silu' (refused otherwise)",
    "time_step_rank": "dt_rank ('auto' is resolved by HF to ceil(hidden_size / 16))",
    "residual_in_fp32": "residual_in_fp32",
    "tie_word_embeddings": "tie_embeddings",
    "time_step_min": "dt_min (init only; the loaded weights replace it)",
    "time_step_max": "dt_max (init only)",
    "time_step_floor": "dt_init_floor (init only)",
    "time_step_scale": "dt_scale (init only)",
    "time_step_init_scheme": "dt_init ('random' or 'constant'; init only)",
    "rescale_prenorm_residual": "rescale_prenorm_residual (init only)",
    **HF_SHARED_IGNORED_FIELDS,
    "use_cache": "ignored: decoding always carries the explicit MambaLMState",
    "use_mambapy": "ignored: HF's choice of scan implementation (same math)",
    "use_associative_scan": "ignored: HF's choice of scan implementation (same math)",
}


def hf_mamba_config_kwargs(cfg: object) -> dict[str, object]:
    """:class:`MambaLM` keyword arguments for a transformers ``MambaConfig``.

    Raises ``ValueError`` naming the field for a value neurostep cannot honour.
    """
    require_silu(cfg, "MambaConfig", "Mamba")
    rank = cfg.time_step_rank
    if rank == "auto":
        rank = math.ceil(cfg.hidden_size / 16)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"MambaConfig.time_step_rank must be 'auto' or a positive int, got {cfg.time_step_rank!r}")
    d_inner = getattr(cfg, "intermediate_size", None)
    if d_inner is None:
        d_inner = inner_width(cfg.hidden_size, cfg.expand)
    if isinstance(d_inner, bool) or not isinstance(d_inner, int) or d_inner < 1:
        raise ValueError(f"MambaConfig.intermediate_size must be a positive int, got {d_inner!r}")
    return dict(vocab_size=cfg.vocab_size, d_model=cfg.hidden_size, n_layer=cfg.num_hidden_layers,
                d_state=cfg.state_size, d_conv=cfg.conv_kernel, d_inner=d_inner, dt_rank=rank,
                conv_bias=bool(cfg.use_conv_bias), bias=bool(cfg.use_bias), norm_eps=float(cfg.layer_norm_epsilon),
                pad_vocab_size_multiple=1, tie_embeddings=bool(getattr(cfg, "tie_word_embeddings", True)),
                residual_in_fp32=bool(getattr(cfg, "residual_in_fp32", True)),
                dt_min=float(getattr(cfg, "time_step_min", 0.001)), dt_max=float(getattr(cfg, "time_step_max", 0.1)),
                dt_init_floor=float(getattr(cfg, "time_step_floor", 1e-4)),
                dt_scale=float(getattr(cfg, "time_step_scale", 1.0)),
                dt_init="constant" if getattr(cfg, "time_step_init_scheme", "random") == "constant" else "random",
                rescale_prenorm_residual=bool(getattr(cfg, "rescale_prenorm_residual", False)))

__all__ = ["DECODE_WEIGHT_DTYPES", "HF_MAMBA_CONFIG_FIELDS", "DecodeLinear", "Mamba", "MambaBackbone", "MambaBlock",
           "MambaDecodeWeights", "MambaLM", "MambaLMState", "MambaLTI", "MambaLayerDecodeWeights", "MambaState",
           "SSMLanguageModel", "column_major_", "hf_mamba_config_kwargs", "inner_width"]
