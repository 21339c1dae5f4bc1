"""The recurrent-step protocol shared by every block with time or sequence state.

A block implements ``init_state``, ``step`` and ``scan``; ``forward`` is the drop-in call
(``scan`` from a fresh state, output only). State is explicit: passed in and returned, so
two networks never share it and no reset is needed between sequences.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

State = Any  # a tensor, a tuple of tensors or a small dataclass of tensors


class Recurrent(nn.Module):
    """Base class of step/scan blocks.

    Subclasses set ``time_dim`` (0 for spiking ``(T, B, ...)`` inputs, 1 for token sequences
    ``(B, L, C)``) and override ``init_state`` and ``step``; they override ``scan`` with a fused
    kernel. The default ``scan`` loops over ``step`` and is what ``scan`` is tested against.
    """

    time_dim: int = 0

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> State:
        """A fresh state for inputs whose non-time, per-step shape is ``batch_shape``."""
        raise NotImplementedError

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Advance one timestep/token: ``x_t`` has the input shape without the time axis."""
        raise NotImplementedError

    def scan(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Run a whole sequence; returns ``(y, final_state)``."""
        return scan_by_steps(self, x, state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scan(x)[0]


def step_shape(x: torch.Tensor, time_dim: int) -> tuple[int, ...]:
    """Shape of one step of ``x`` (``x.shape`` without ``time_dim``)."""
    shape = list(x.shape)
    del shape[time_dim]
    return tuple(shape)


def scan_by_steps(block: Recurrent, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
    """Run ``block.step`` over the time axis of ``x``: the definition ``scan`` must equal."""
    dim = block.time_dim
    if x.shape[dim] == 0:
        raise ValueError(f"input has 0 steps along dim {dim} (shape {tuple(x.shape)}); sequences must be non-empty")
    if state is None:
        state = block.init_state(step_shape(x, dim), device=x.device, dtype=x.dtype)
    outputs = []
    for t in range(x.shape[dim]):
        y_t, state = block.step(x.select(dim, t), state)
        outputs.append(y_t)
    return torch.stack(outputs, dim=dim), state
