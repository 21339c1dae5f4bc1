"""Linear time-invariant (LTI) diagonal state-space models computed as one long convolution.

:func:`lti_convolution` is the S4 way of running a diagonal SSM whose ``delta``, ``B`` and ``C``
do not depend on the input: the recurrence is then a fixed causal convolution, computed through
an FFT (or, for short sequences, as one product with the convolution's Toeplitz matrix).
:class:`~neurostep.ssm.MambaLTI` (the Mamba block with S4 inside) and :class:`S4D` (the bare
layer, the "no gate" row of the Mamba paper's selective-copying table) share it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neurostep.engine import check_nonempty, check_tensor, compute_dtype
from neurostep.layers import inverse_softplus, log_uniform_steps, s4d_real_log_A

# Up to this many tokens the convolution is one batched product with its (L, L) Toeplitz matrix
# rather than an FFT: O(L^2) multiply-adds, but a forward+backward of (32, 64, 48) (the main
# experiment's Mamba-with-S4 layer on selective copying) took 1.6-2.1 ms against 3.6-4.3 ms through
# the FFT, and (32, 64, 64) 1.9-2.4 against 5.4 ms, while at 128 tokens the FFT was 3x faster
# (2-core AMD EPYC, one and two threads, 2026-12-04).
DIRECT_MAX_LENGTH = 64


def causal_convolution(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``y[b, d, t] = sum_{s <= t} kernel[d, t - s] u[b, d, s]``: a per-channel causal convolution.

    u: ``(batch, Di, L)``; kernel: ``(Di, L)``. Returns ``(batch, Di, L)``. Up to
    :data:`DIRECT_MAX_LENGTH` tokens a product with the Toeplitz matrix ``T[d, t, s] = kernel[d, t - s]``
    (zero above the diagonal); longer sequences go through an FFT of twice the length (zero padding
    makes it linear, not circular). Both are plain torch autograd and agree to rounding.
    """
    length = u.shape[-1]
    if length <= DIRECT_MAX_LENGTH:
        # with L-1 zeros in front of the kernel, window t of the padded kernel holds k[t - s] at L-1-s:
        # reversed, it is row t of T
        toeplitz = F.pad(kernel, (length - 1, 0)).unfold(-1, length, 1).flip(-1)   # (Di, L, L)
        return torch.matmul(u.transpose(0, 1), toeplitz.transpose(-1, -2)).transpose(0, 1)
    size = 2 * length
    return torch.fft.irfft(torch.fft.rfft(u, n=size) * torch.fft.rfft(kernel, n=size), n=size)[..., :length]


def lti_convolution(u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    D: torch.Tensor, init_h: torch.Tensor | None = None, *, output_final_state: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``h_l = exp(dt A) h_{l-1} + dt B u_l``, ``y_l = <h_l, C> + D u_l`` over a whole sequence.

    u: ``(batch, Di, L)``; dt: ``(Di,)`` positive step sizes; A: ``(Di, N)`` (negative for a
    stable model); B, C: ``(Di, N)``; D: ``(Di,)``; init_h: ``(batch, Di, N)`` or None (zeros).
    Returns ``y (batch, Di, L)`` and the state after the last token ``(batch, Di, N)``, or None without
    ``output_final_state`` (it costs a product over the whole sequence that a drop-in mixer would drop).

    The kernel ``K[d, t] = sum_n C[d, n] exp(t dt_d A[d, n]) dt_d B[d, n]`` is convolved with
    ``u`` by :func:`causal_convolution` (through an FFT, ``O(L log L)`` per channel, or directly for
    short sequences), plain torch autograd.
    """
    length = u.shape[-1]
    dA = dt[:, None] * A                                                    # (Di, N)
    t = torch.arange(length, dtype=u.dtype, device=u.device)
    decay = torch.exp(dA[..., None] * t)                                    # (Di, N, L): exp(t dt A)
    dtB = dt[:, None] * B
    kernel = torch.einsum("dn,dnt->dt", C * dtB, decay)                     # (Di, L)
    y = causal_convolution(u, kernel) + D[:, None] * u
    if init_h is not None:   # h_0 reaches y_l as exp((l+1) dt A) h_0
        y = y + torch.einsum("dn,dnt,bdn->bdt", C, decay * torch.exp(dA)[..., None], init_h)
    if not output_final_state:
        return y, None
    # h_L = sum_s exp((L-1-s) dt A) dt B u_s (+ exp(L dt A) h_0)
    last = torch.einsum("dnt,bdt->bdn", decay.flip(-1) * dtB[..., None], u)
    if init_h is not None:
        last = last + torch.exp(dA * length) * init_h
    return y, last


class S4D(nn.Module):
    """The bare LTI diagonal SSM layer (S4D-Real) with no gate: ``SSM -> GELU -> Linear``.

    The Mamba paper's selective-copying table starts with this architecture ("No gate", with S4
    inside, against S6 inside): what an LTI state-space layer does on its own, without the
    multiplicative branch that lets the Mamba block with S4 count its way to a partial solution.
    Per channel ``d`` of the input (no input projection, as in S4)::

        delta_d = softplus(dt_bias_d)                       dt log-uniform in [dt_min, dt_max]
        h_l = exp(delta A) h_{l-1} + delta B x_l ;  y_l = <h_l, C> + D x_l
        out = out_proj(gelu(y))

    ``A = -(1..N)`` per channel (S4D-Real), ``B = 1``, ``C ~ N(0, 1)``, ``D = 1``, as
    :class:`~neurostep.ssm.MambaLTI`. The whole sequence is one convolution (:func:`lti_convolution`:
    an FFT, or a Toeplitz product for short sequences), causal: output ``l`` reads tokens ``<= l`` only.
    """

    causal = True

    def __init__(self, d_model: int, d_state: int = 16, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, bias: bool = True) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.d_model = d_model
        self.d_state = d_state
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.A_log = nn.Parameter(s4d_real_log_A(d_model, d_state))
        self.dt_bias = nn.Parameter(inverse_softplus(log_uniform_steps(d_model, dt_min, dt_max, dt_init_floor)))
        self.B = nn.Parameter(torch.ones(d_model, d_state))
        self.C = nn.Parameter(torch.randn(d_model, d_state))
        self.D = nn.Parameter(torch.ones(d_model))
        for p in (self.A_log, self.dt_bias, self.D):
            p._no_weight_decay = True
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def init_state(self, batch: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
        """Zero state ``(batch, d_model, d_state)``."""
        device = self.A_log.device if device is None else device
        return torch.zeros(batch, self.d_model, self.d_state, device=device,
                           dtype=compute_dtype(dtype or self.A_log.dtype))

    def scan(self, x: torch.Tensor, state: torch.Tensor | None = None, *, output_final_state: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: ``(B, L, d_model)``; state: ``(B, d_model, d_state)`` to resume from (None = zeros).

        Returns ``y (B, L, d_model)`` and the state after the last token, so scanning two halves
        with the carried state equals scanning the whole; without ``output_final_state`` the state
        is None and is not computed (the drop-in ``forward``).
        """
        x = check_tensor("x", x, ndim=3)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, L, d_model) with d_model={self.d_model}, got {tuple(x.shape)}")
        check_nonempty("x", x, 1, "tokens")
        if state is not None:
            check_tensor("state", state, shape=(x.shape[0], self.d_model, self.d_state), device=x.device)
        cdtype = compute_dtype(x.dtype)
        u = x.transpose(1, 2).to(cdtype)
        y, last = lti_convolution(u, F.softplus(self.dt_bias.to(cdtype)), -torch.exp(self.A_log.to(cdtype)),
                                  self.B.to(cdtype), self.C.to(cdtype), self.D.to(cdtype),
                                  None if state is None else state.to(cdtype), output_final_state=output_final_state)
        return self.out_proj(F.gelu(y).transpose(1, 2).to(x.dtype)), last

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Drop-in mixer: ``(B, N, C) -> (B, N, C)``, causal over the N tokens (grid_size unused). :meth:`scan`
        without the final state, which is then not computed."""
        return self.scan(x, output_final_state=False)[0]

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, gate=False"
