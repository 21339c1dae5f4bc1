"""Spike encoders: turn static or time-varying data into spike trains ``(T, ...)``.

- :func:`rate`: Bernoulli spikes with probability ``clamp(x * gain, 0, 1)`` per step.
- :func:`latency`: one spike per element, earlier for larger intensities.
- :func:`delta`: a spike where the signal changes by at least ``threshold`` between steps.
"""

from __future__ import annotations

import math

import torch

from neurostep.engine.checks import check_nonempty, check_tensor


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")


def rate(x: torch.Tensor, num_steps: int, *, gain: float = 1.0,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Rate code. ``x (...)`` -> spikes ``(num_steps, ...)`` with P(spike) = clamp(gain*x, 0, 1).

    NaN intensities give NaN outputs (they are not silently turned into spikes).
    """
    check_tensor("x", x)
    _check_steps(num_steps)
    p = (x * gain).clamp(0.0, 1.0)
    u = torch.rand((num_steps, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    spikes = (u < p).to(x.dtype)
    return torch.where(torch.isnan(p), p, spikes)


def latency(x: torch.Tensor, num_steps: int, *, tau: float = 5.0, threshold: float = 0.01,
            linear: bool = False, normalize: bool = False) -> torch.Tensor:
    """Latency code: each element fires once, at a time that decreases with its intensity.

    ``x (...)`` holds intensities in [0, 1] -> spikes ``(num_steps, ...)``.
    - ``linear=False`` (RC-circuit charging time): ``t = tau * ln(x / (x - threshold))`` for
      ``x > threshold``; elements at or below ``threshold`` never fire.
    - ``linear=True``: ``t = tau * (1 - x)`` for ``x > threshold``.
    - ``normalize=True`` rescales times so that the weakest firing element (x just above
      threshold, or x = 0 for linear) lands on the last step ``num_steps - 1``.
    Times are rounded to the nearest step; times past the window do not fire.
    """
    check_tensor("x", x)
    _check_steps(num_steps)
    if tau <= 0 or threshold < 0 or threshold >= 1:
        raise ValueError(f"need tau > 0 and 0 <= threshold < 1, got tau={tau}, threshold={threshold}")
    fires = x > threshold
    safe = torch.where(fires, x, torch.ones_like(x))
    if linear:
        t = tau * (1.0 - safe)
        t_max = tau * (1.0 - threshold)
    else:
        t = tau * torch.log(safe / (safe - threshold).clamp_min(1e-12))
        # Slowest representable firing: x one float step above threshold would be ~inf, so use
        # the time of x = threshold + 1% of the remaining range as the normalisation anchor.
        anchor = threshold + 0.01 * (1.0 - threshold)
        t_max = tau * math.log(anchor / (anchor - threshold))
    if normalize:
        t = t * (num_steps - 1) / t_max
    step = torch.round(t).long()
    fires = fires & (step >= 0) & (step < num_steps)
    steps = torch.arange(num_steps, device=x.device).view(num_steps, *([1] * x.dim()))
    spikes = ((steps == step.unsqueeze(0)) & fires.unsqueeze(0)).to(x.dtype)
    return torch.where(torch.isnan(x).unsqueeze(0), x.unsqueeze(0).expand_as(spikes), spikes)


def delta(x: torch.Tensor, threshold: float = 0.1, *, off_spikes: bool = False,
          pad_with_first: bool = False) -> torch.Tensor:
    """Delta modulation of a time-varying ``x (T, ...)`` -> spikes ``(T, ...)``.

    An on-spike (+1) where ``x[t] - x[t-1] >= threshold``; with ``off_spikes`` an off-spike
    (-1) where the change is ``<= -threshold``. The step before ``t = 0`` is zero, or ``x[0]``
    itself with ``pad_with_first`` (so the first step never fires).
    """
    check_tensor("x", x, min_ndim=1)
    check_nonempty("x", x, 0)
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    previous = torch.cat([x[:1] if pad_with_first else torch.zeros_like(x[:1]), x[:-1]])
    change = x - previous
    spikes = (change >= threshold).to(x.dtype)
    if off_spikes:
        spikes = spikes - (change <= -threshold).to(x.dtype)
    return torch.where(torch.isnan(change), change, spikes)
