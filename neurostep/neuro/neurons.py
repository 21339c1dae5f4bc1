"""Spiking neurons on the fused multi-step kernel: ``IF``, ``LIF``, ``ParametricLIF``, ``AdaptiveLIF``.

Every neuron follows the recurrent-step protocol on time-first inputs ``(T, *lanes)``:
``scan(x, state) -> (spikes, state)`` runs the whole sequence through one fused kernel call,
``step(x_t, state)`` one timestep, ``forward(x)`` is ``scan`` from a fresh state. State is an
explicit :class:`LIFState`; nothing is kept between calls, so no ``reset_net`` is needed.

``convention="spikingjelly"`` reproduces spikingjelly 2.0's ``IFNode``/``LIFNode``/
``ParametricLIFNode`` (charge, fire with ``>=``, then reset); ``convention="snntorch"``
reproduces snntorch 1.0's ``Leaky`` (reset from the previous step's membrane, fire with ``>``,
the returned membrane is the pre-reset one): see :meth:`LIF.from_snntorch`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from neurostep.engine import Recurrent, check_tensor, compute_dtype
from neurostep.kernels.lif import CONVENTIONS, SNN_RESETS, LIFState, lif_scan
from neurostep.neuro.surrogate import ATan, Sigmoid, SurrogateFunction, resolve_surrogate


class SpikingNeuron(Recurrent):
    """Shared machinery of the neurons: parameters, state and the call into ``lif_scan``."""

    time_dim = 0

    def __init__(
        self,
        *,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate: str | SurrogateFunction | None = None,
        detach_reset: bool = False,
        decay_input: bool = True,
        convention: str = "spikingjelly",
        snn_reset: str = "subtract",
        learn_threshold: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        if snn_reset not in SNN_RESETS:
            raise ValueError(f"snn_reset must be one of {SNN_RESETS}, got {snn_reset!r}")
        if not math.isfinite(v_threshold):
            raise ValueError(f"v_threshold must be finite, got {v_threshold}")
        if surrogate is None:
            surrogate = ATan() if convention == "snntorch" else Sigmoid()
        self.surrogate = resolve_surrogate(surrogate)
        self.v_reset = None if convention == "snntorch" else v_reset
        self.detach_reset = detach_reset
        self.decay_input = decay_input
        self.convention = convention
        self.snn_reset = snn_reset
        self.backend = backend
        if learn_threshold:
            self.v_threshold = nn.Parameter(torch.tensor(float(v_threshold)))
        else:
            self.v_threshold = float(v_threshold)

    # --- what subclasses choose -------------------------------------------------------
    def tau_inv(self) -> float | torch.Tensor:
        """Leak per step ``k = 1/tau`` (a float, or a 0-d tensor when learnable)."""
        raise NotImplementedError

    adapt_rho: float = 0.0
    adapt_beta: float = 0.0

    @property
    def adaptive(self) -> bool:
        return self.adapt_beta != 0.0

    # --- protocol ----------------------------------------------------------------------
    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> LIFState:
        """Resting state for lanes of shape ``batch_shape``: ``v = v_reset`` (0 for a soft reset)."""
        dtype = compute_dtype(dtype or torch.get_default_dtype())
        v_rest = self.v_reset if self.v_reset is not None else 0.0
        v = torch.full(tuple(batch_shape), float(v_rest), device=device, dtype=dtype)
        a = torch.zeros(tuple(batch_shape), device=device, dtype=dtype) if self.adaptive else None
        return LIFState(v, a)

    def _run(self, x: torch.Tensor, state: LIFState | None, return_v_seq: bool):
        check_tensor("x", x, min_ndim=1)
        if state is not None and not isinstance(state, LIFState):
            raise TypeError(f"state must be a LIFState (init_state or a previous scan), got {type(state).__name__}")
        if state is not None and not self.adaptive and state.a is not None:
            state = LIFState(state.v)  # a non-adaptive neuron ignores an adaptation it was handed
        return lif_scan(
            x, state, tau_inv=self.tau_inv(), v_threshold=self.v_threshold, v_reset=self.v_reset,
            decay_input=self.decay_input, detach_reset=self.detach_reset, surrogate=self.surrogate.name,
            alpha=self.surrogate.alpha, convention=self.convention, snn_reset=self.snn_reset,
            adapt_rho=self.adapt_rho, adapt_beta=self.adapt_beta, return_v_seq=return_v_seq,
            output_final_state=True, backend=self.backend,
        )

    def scan(self, x: torch.Tensor, state: LIFState | None = None) -> tuple[torch.Tensor, LIFState]:
        """Spikes ``(T, *lanes)`` and the final state for input current ``x (T, *lanes)``."""
        return self._run(x, state, return_v_seq=False)

    def step(self, x_t: torch.Tensor, state: LIFState | None) -> tuple[torch.Tensor, LIFState]:
        """One timestep: ``x_t (*lanes)`` -> spikes ``(*lanes)`` and the new state."""
        check_tensor("x_t", x_t)
        spikes, state = self.scan(x_t.unsqueeze(0), state)
        return spikes[0], state

    def trace(self, x: torch.Tensor, state: LIFState | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, LIFState]:
        """Like :meth:`scan` but also returns the membrane at every step ``(T, *lanes)``
        (after reset for spikingjelly, before reset for snntorch) for dynamics analysis."""
        (spikes, v_seq), final = self._run(x, state, return_v_seq=True)
        return spikes, v_seq, final

    def extra_repr(self) -> str:
        k = self.tau_inv()
        k = float(k.detach()) if isinstance(k, torch.Tensor) else k
        parts = [f"tau_inv={k:.4g}", f"v_threshold={float(self.v_threshold):.4g}", f"v_reset={self.v_reset}",
                 f"surrogate={self.surrogate!r}", f"convention={self.convention!r}"]
        if self.detach_reset:
            parts.append("detach_reset=True")
        if self.adaptive:
            parts.append(f"adapt_rho={self.adapt_rho:.4g}, adapt_beta={self.adapt_beta:.4g}")
        return ", ".join(parts)


class IF(SpikingNeuron):
    """Integrate-and-fire: ``H = V + X`` (spikingjelly ``IFNode``). Input/output ``(T, *lanes)``."""

    def __init__(self, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 surrogate: str | SurrogateFunction | None = None, detach_reset: bool = False,
                 learn_threshold: bool = False, backend: str = "auto") -> None:
        super().__init__(v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate, detach_reset=detach_reset,
                         decay_input=False, learn_threshold=learn_threshold, backend=backend)

    def tau_inv(self) -> float:
        return 0.0


class LIF(SpikingNeuron):
    """Leaky integrate-and-fire (spikingjelly ``LIFNode``; snntorch ``Leaky`` with ``convention="snntorch"``).

    Charge with ``decay_input``: ``H = V + (X - (V - V_r)) / tau``; without:
    ``H = V - (V - V_r) / tau + X``. Fire ``S = H >= V_th``; hard reset to ``v_reset`` or soft
    reset (``v_reset=None``) by subtracting ``V_th``. Input/output ``(T, *lanes)``.
    For ``convention="snntorch"``, ``tau`` means ``1 / (1 - beta)``; prefer :meth:`from_snntorch`.
    """

    def __init__(self, tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, surrogate: str | SurrogateFunction | None = None,
                 detach_reset: bool = False, convention: str = "spikingjelly", snn_reset: str = "subtract",
                 learn_threshold: bool = False, backend: str = "auto") -> None:
        if convention == "spikingjelly" and decay_input and not tau > 1.0:
            raise ValueError(f"tau must be > 1 for a LIF neuron with decay_input=True (spikingjelly), got {tau}")
        if not tau >= 1.0:
            raise ValueError(f"tau must be >= 1, got {tau}")
        super().__init__(v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate, detach_reset=detach_reset,
                         decay_input=decay_input, convention=convention, snn_reset=snn_reset,
                         learn_threshold=learn_threshold, backend=backend)
        self.tau = float(tau)

    @classmethod
    def from_snntorch(cls, beta: float, threshold: float = 1.0, reset_mechanism: str = "subtract",
                      surrogate: str | SurrogateFunction | None = None, learn_threshold: bool = False,
                      backend: str = "auto") -> LIF:
        """snntorch 1.0 ``Leaky(beta, threshold, reset_mechanism=..., reset_delay=True)`` semantics."""
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        tau = math.inf if beta == 1.0 else 1.0 / (1.0 - beta)
        return cls(tau=tau, v_threshold=threshold, surrogate=surrogate, convention="snntorch",
                   snn_reset=reset_mechanism, learn_threshold=learn_threshold, backend=backend)

    def tau_inv(self) -> float:
        return 0.0 if math.isinf(self.tau) else 1.0 / self.tau


class ParametricLIF(SpikingNeuron):
    """LIF with a learnable time constant (spikingjelly ``ParametricLIFNode``, Fang et al. 2021).

    ``1/tau = sigmoid(w)`` with ``w`` initialised to ``-ln(init_tau - 1)``. Input/output ``(T, *lanes)``.
    """

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, surrogate: str | SurrogateFunction | None = None,
                 detach_reset: bool = False, learn_threshold: bool = False, backend: str = "auto") -> None:
        if not init_tau > 1.0:
            raise ValueError(f"init_tau must be > 1, got {init_tau}")
        super().__init__(v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate, detach_reset=detach_reset,
                         decay_input=decay_input, learn_threshold=learn_threshold, backend=backend)
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    def tau_inv(self) -> torch.Tensor:
        return torch.sigmoid(self.w)


class AdaptiveLIF(SpikingNeuron):
    """LIF with a homeostatic adaptive threshold (LSNN-style, norse's discretisation in steps).

    ``theta[t] = V_th + rho * a[t-1]``; fire ``H >= theta``; ``a[t] = rho * a[t-1] + beta_adapt * S[t]``
    with ``rho = 1 - 1/tau_adapt``: every spike raises the threshold, which relaxes back with
    time constant ``tau_adapt`` steps, holding the firing rate down. Soft reset subtracts ``theta``.
    Input/output ``(T, *lanes)``; the state carries ``a``.
    """

    def __init__(self, tau: float = 2.0, tau_adapt: float = 200.0, beta_adapt: float = 1.8,
                 decay_input: bool = True, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 surrogate: str | SurrogateFunction | None = None, detach_reset: bool = False,
                 learn_threshold: bool = False, backend: str = "auto") -> None:
        if not tau > 1.0:
            raise ValueError(f"tau must be > 1, got {tau}")
        if not tau_adapt >= 1.0:
            raise ValueError(f"tau_adapt must be >= 1 (in steps), got {tau_adapt}")
        if beta_adapt == 0.0:
            raise ValueError("beta_adapt must be non-zero for an adaptive neuron (use LIF otherwise)")
        super().__init__(v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate, detach_reset=detach_reset,
                         decay_input=decay_input, learn_threshold=learn_threshold, backend=backend)
        self.tau = float(tau)
        self.adapt_rho = 1.0 - 1.0 / float(tau_adapt)
        self.adapt_beta = float(beta_adapt)

    def tau_inv(self) -> float:
        return 1.0 / self.tau
