"""Example inputs that model entries give the registry (``example_input(model, batch)``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def image_input(size: int | None = None) -> Callable[[nn.Module, int], torch.Tensor]:
    """``example_input`` for an image classifier: a random batch ``(batch, model.in_chans, S, S)``
    with ``S = size``, or the model's own ``img_size`` when ``size`` is ``None``."""

    def make(model: nn.Module, batch: int) -> torch.Tensor:
        side = size if size is not None else model.img_size
        return torch.randn(batch, model.in_chans, side, side)

    return make
