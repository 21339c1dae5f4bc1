"""Channel MLPs ``Linear -> act -> Linear``, sized at construction or, lazily, on the first input."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter, is_lazy

from neurostep.layers.create import resolve_act
from neurostep.layers.helpers import check_size


class MLP(nn.Module):
    """``Linear_{C->H} -> act -> Linear_{H->C}`` over the last dim, ``(..., C) -> (..., C)``.

    Args:
        dim: width ``C`` of input and output.
        hidden: hidden width ``H``; or give ``mlp_ratio`` instead.
        act_layer: activation (a name in ``neurostep.layers.ACT_LAYERS`` or a class).
        mlp_ratio: ``H = max(1, round(ratio * C))``.
    """

    def __init__(self, dim: int, hidden: int | None = None, act_layer: str | type[nn.Module] = "gelu", *,
                 mlp_ratio: float | None = None) -> None:
        super().__init__()
        dim = check_size("dim", dim)
        if (hidden is None) == (mlp_ratio is None):
            raise ValueError(f"MLP takes exactly one of hidden and mlp_ratio, got hidden={hidden!r}, "
                             f"mlp_ratio={mlp_ratio!r}")
        hidden = check_size("hidden", hidden if hidden is not None else max(1, round(dim * mlp_ratio)))
        self.fc1 = nn.Linear(dim, hidden)
        self.act = resolve_act(act_layer)()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _DeferredLinear(LazyModuleMixin, nn.Linear):
    """``nn.Linear`` whose sizes its owner sets (:meth:`materialize`) before the first forward.

    Unlike ``nn.LazyLinear`` it need not learn a size from its own input: the second layer of a
    lazy MLP outputs the width that only the first layer's input shows. Becomes a plain
    ``nn.Linear`` on its first forward, as torch's lazy modules do.
    """

    cls_to_become = nn.Linear
    weight: UninitializedParameter
    bias: UninitializedParameter

    def __init__(self) -> None:
        super().__init__(0, 0, False)
        self.weight = UninitializedParameter()
        self.bias = UninitializedParameter()

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.in_features:
            super().reset_parameters()

    def materialize(self, in_features: int, out_features: int) -> None:
        """Allocate and initialize ``weight (out, in)`` and ``bias (out,)`` as ``nn.Linear`` would."""
        with torch.no_grad():
            self.in_features, self.out_features = in_features, out_features
            self.weight.materialize((out_features, in_features))
            self.bias.materialize((out_features,))
            self.reset_parameters()

    def initialize_parameters(self, input: torch.Tensor) -> None:  # noqa: A002 - torch's hook signature
        if self.has_uninitialized_params():
            raise RuntimeError("this layer of a LazyMLP is sized by the MLP's first forward; call the MLP")
        self.out_features, self.in_features = self.weight.shape  # also right after load_state_dict


class LazyMLP(LazyModuleMixin, nn.Module):
    """:class:`MLP` whose width ``C`` (input and output) is read from the last dim of its first input.

    Like ``torch.nn.LazyLinear``: until the first forward (or a ``load_state_dict``) the weights are
    ``UninitializedParameter``; then they are allocated on the module's device and dtype, initialized
    as :class:`MLP` initializes them, and the module becomes an :class:`MLP` with the same
    ``state_dict`` keys. An optimizer may be built before that first call (the parameter objects
    stay the same); the draws of its initialization come after those of modules built before it.

    Args:
        hidden: hidden width ``H``.
        act_layer: activation (a name or a class).
    """

    cls_to_become = MLP

    def __init__(self, hidden: int, act_layer: str | type[nn.Module] = "gelu") -> None:
        super().__init__()
        self.hidden = check_size("hidden", hidden)
        self.fc1 = _DeferredLinear()
        self.act = resolve_act(act_layer)()
        self.fc2 = _DeferredLinear()

    forward = MLP.forward

    def has_uninitialized_params(self) -> bool:
        return any(is_lazy(p) for p in self.parameters())

    def initialize_parameters(self, x: torch.Tensor) -> None:
        """Size both layers for ``x (..., C)``: ``fc1 (H, C)``, ``fc2 (C, H)``."""
        if self.has_uninitialized_params():
            width = x.shape[-1]
            if width == 0:
                raise ValueError(f"LazyMLP cannot size itself on an input with an empty last dim, got {tuple(x.shape)}")
            self.fc1.materialize(width, self.hidden)
            self.fc2.materialize(self.hidden, width)
