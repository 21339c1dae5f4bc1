"""Current-based leaky integrate-and-fire neuron (``CubaLIF``) on the fused scan kernels.

A synaptic current filters the input before it charges the membrane:

* current: ``I[t] = (1 - 1/tau_syn) * I[t-1] + X[t]``
* charge: ``H[t] = V[t-1] - (V[t-1] - v_leak) / tau_mem + I[t]``
* fire: ``S[t] = H[t] >= v_threshold`` (``H[t] > v_threshold`` with ``strict_threshold=True``)
* reset: ``V[t] = v_reset`` where it fired (hard), or ``H[t] - v_threshold`` (``v_reset=None``, soft)

Time constants are counted in steps. The current does not depend on the spikes, so it is one
diagonal linear recurrence (:func:`~neurostep.kernels.linear_scan.linear_scan`) over the whole
sequence, and the membrane is then one :func:`~neurostep.kernels.lif.lif_scan` call: the same
equations as a step-by-step loop, at two fused kernel calls per sequence.

With ``v_leak = 0`` this is spikingjelly 2.0's ``CUBALIFNode(c_decay, v_decay)`` with
``c_decay = 1 - 1/tau_syn`` and ``v_decay = 1 - 1/tau_mem`` (see :meth:`CubaLIF.from_decays`), and
snntorch 1.0's ``Synaptic(alpha, beta, reset_mechanism="zero")`` spike for spike with
``strict_threshold=True`` and ``v_reset=0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from neurostep.engine import Recurrent, check_tensor, compute_dtype
from neurostep.kernels.lif import LIFState, lif_scan
from neurostep.kernels.linear_scan import linear_scan
from neurostep.neuro.surrogate import Sigmoid, SurrogateFunction, resolve_surrogate

__all__ = ["CubaLIF", "CubaLIFState", "firing_threshold"]


@dataclass
class CubaLIFState:
    """State of a :class:`CubaLIF`: membrane ``v (*lanes)`` and synaptic current ``i (*lanes)``."""

    v: torch.Tensor
    i: torch.Tensor


def firing_threshold(v_threshold: float, strict: bool, dtype: torch.dtype, device: torch.device | None
                     ) -> torch.Tensor:
    """The threshold to hand to ``lif_scan`` (which fires on ``H >= threshold``), as a 0-d tensor.

    ``strict`` asks for ``H > v_threshold``: for floating-point ``H`` that is the same predicate as
    ``H >= nextafter(v_threshold, +inf)`` when both are computed in ``dtype``, so the threshold is
    moved up by one unit in the last place of the dtype the kernel computes in (``compute_dtype``).
    """
    cdtype = compute_dtype(dtype)
    thr = torch.tensor(float(v_threshold), dtype=cdtype, device=device)
    if strict:
        thr = torch.nextafter(thr, torch.tensor(math.inf, dtype=cdtype, device=device))
    return thr


class CubaLIF(Recurrent):
    """Current-based LIF neuron: input/output ``(T, *lanes)``, state :class:`CubaLIFState`.

    Args:
        tau_syn: synaptic time constant in steps (``>= 1``; 1 passes the input through, ``inf``
            integrates it without decay).
        tau_mem: membrane time constant in steps (``>= 1``; ``inf``: no leak).
        v_threshold: firing threshold.
        v_reset: hard-reset potential, or None for a soft reset (subtract the threshold).
        v_leak: the potential the membrane decays towards.
        strict_threshold: fire on ``H > v_threshold`` (NIR, snntorch) instead of ``H >= v_threshold``
            (spikingjelly).
        surrogate: surrogate gradient of the spike (default sigmoid).
        detach_reset: stop the gradient through the reset, as spikingjelly's flag.
        backend: kernel backend for both scans (``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"``).
    """

    time_dim = 0

    def __init__(self, tau_syn: float = 2.0, tau_mem: float = 2.0, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, v_leak: float = 0.0, strict_threshold: bool = False,
                 surrogate: str | SurrogateFunction | None = None, detach_reset: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        for name, tau in (("tau_syn", tau_syn), ("tau_mem", tau_mem)):
            if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau >= 1.0:
                raise ValueError(f"{name} must be a number >= 1 (steps; inf allowed), got {tau!r}")
        for name, value in (("v_threshold", v_threshold), ("v_leak", v_leak)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite float, got {value!r}")
        if v_reset is not None and (not isinstance(v_reset, (int, float)) or not math.isfinite(v_reset)):
            raise ValueError(f"v_reset must be a finite float or None (soft reset), got {v_reset!r}")
        self.tau_syn, self.tau_mem = float(tau_syn), float(tau_mem)
        self.v_threshold, self.v_leak = float(v_threshold), float(v_leak)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.strict_threshold = bool(strict_threshold)
        self.surrogate = resolve_surrogate(Sigmoid() if surrogate is None else surrogate)
        self.detach_reset = bool(detach_reset)
        self.backend = backend

    @classmethod
    def from_decays(cls, c_decay: float, v_decay: float, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                    **kwargs) -> CubaLIF:
        """spikingjelly ``CUBALIFNode(c_decay, v_decay)`` / snntorch ``Synaptic(alpha, beta)`` decays:
        ``I = c_decay * I + X``, ``H = v_decay * V + I``. Decays must be in ``[0, 1]``."""
        for name, d in (("c_decay", c_decay), ("v_decay", v_decay)):
            if not 0.0 <= d <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {d}")
        tau_syn = math.inf if c_decay == 1.0 else 1.0 / (1.0 - c_decay)
        tau_mem = math.inf if v_decay == 1.0 else 1.0 / (1.0 - v_decay)
        return cls(tau_syn=tau_syn, tau_mem=tau_mem, v_threshold=v_threshold, v_reset=v_reset, **kwargs)

    @property
    def current_decay(self) -> float:
        """``1 - 1/tau_syn``: the current's factor per step."""
        return 1.0 if math.isinf(self.tau_syn) else 1.0 - 1.0 / self.tau_syn

    @property
    def tau_inv(self) -> float:
        """``1/tau_mem``: the membrane's leak per step (0 for ``tau_mem = inf``)."""
        return 0.0 if math.isinf(self.tau_mem) else 1.0 / self.tau_mem

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> CubaLIFState:
        """Resting state for lanes ``batch_shape``: ``v = v_reset`` (0 for a soft reset), ``i = 0``."""
        dtype = compute_dtype(dtype or torch.get_default_dtype())
        v0 = self.v_reset if self.v_reset is not None else 0.0
        return CubaLIFState(torch.full(tuple(batch_shape), v0, device=device, dtype=dtype),
                            torch.zeros(tuple(batch_shape), device=device, dtype=dtype))

    def scan(self, x: torch.Tensor, state: CubaLIFState | None = None) -> tuple[torch.Tensor, CubaLIFState]:
        """Spikes ``(T, *lanes)`` and the final state for input ``x (T, *lanes)``."""
        check_tensor("x", x, min_ndim=1)
        if x.shape[0] == 0:
            raise ValueError(f"x has 0 steps (shape {tuple(x.shape)}); sequences must be non-empty")
        if state is not None and not isinstance(state, CubaLIFState):
            raise TypeError(f"state must be a CubaLIFState (init_state or a previous scan), got {type(state).__name__}")
        if state is None:
            state = self.init_state(tuple(x.shape[1:]), device=x.device, dtype=x.dtype)
        lanes = tuple(x.shape[1:])
        for name, t in (("state.v", state.v), ("state.i", state.i)):
            if tuple(t.shape) != lanes:
                raise ValueError(f"{name} must have shape x.shape[1:] = {lanes}, got {tuple(t.shape)}")
        # linear_scan runs over dim 1 of (batch, L, *lanes): the sequence is one batch entry
        b = x.unsqueeze(0)
        a = torch.full_like(b, self.current_decay)
        current, i_last = linear_scan(a, b, state.i.unsqueeze(0).to(b.dtype), output_final_state=True,
                                      backend=self.backend)
        current = current[0]
        # lif_scan without decay_input leaks towards v_reset (0 for a soft reset); moving that target
        # to v_leak adds the constant k * (v_leak - v_reset) to the input
        k = self.tau_inv
        leak_shift = k * (self.v_leak - (self.v_reset if self.v_reset is not None else 0.0))
        if leak_shift != 0.0:
            current = current + leak_shift
        thr = firing_threshold(self.v_threshold, self.strict_threshold, x.dtype, x.device)
        spikes, final = lif_scan(
            current, LIFState(state.v), tau_inv=k, v_threshold=thr, v_reset=self.v_reset, decay_input=False,
            detach_reset=self.detach_reset, surrogate=self.surrogate.name, alpha=self.surrogate.alpha,
            output_final_state=True, backend=self.backend,
        )
        return spikes, CubaLIFState(final.v, i_last[0].to(final.v.dtype))

    def step(self, x_t: torch.Tensor, state: CubaLIFState | None) -> tuple[torch.Tensor, CubaLIFState]:
        """One timestep: ``x_t (*lanes)`` -> spikes ``(*lanes)`` and the new state."""
        check_tensor("x_t", x_t)
        spikes, state = self.scan(x_t.unsqueeze(0), state)
        return spikes[0], state

    def extra_repr(self) -> str:
        rule = ">" if self.strict_threshold else ">="
        return (f"tau_syn={self.tau_syn:.4g}, tau_mem={self.tau_mem:.4g}, v_threshold={self.v_threshold:.4g} "
                f"(fire on H {rule} v_threshold), v_reset={self.v_reset}, v_leak={self.v_leak:.4g}")
