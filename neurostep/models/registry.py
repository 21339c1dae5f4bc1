"""One registry for complete models and for drop-in token mixers (timm's create_model style).

Families register themselves when their module is imported (``neurostep.models`` imports
them all). A model entry may carry the paper's parameter count, which the registry test
checks.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    family: str
    paper_params: float | None = None   # parameter count reported by the paper (absolute number)
    params_rtol: float = 0.01           # accepted relative deviation from paper_params
    small_kwargs: dict[str, Any] = field(default_factory=dict)  # overrides for a tiny test instance
    example_input: Callable[..., Any] | None = None  # fn(model, batch) -> input(s) for a smoke run
    note: str = ""


CAUSALITY = ("always", "option", "never")


@dataclass(frozen=True)
class MixerEntry:
    """A drop-in mixer and the facts callers need before building it.

    ``causal``: ``"always"`` (output at token t depends only on tokens <= t, e.g. a recurrence),
    ``"option"`` (the factory takes ``causal=True``, e.g. masked attention) or ``"never"``
    (every output sees the whole sequence, e.g. a 2D scan or a token MLP).
    """

    name: str
    factory: Callable[..., nn.Module]
    family: str
    causal: str = "never"
    note: str = ""


class Registry:
    """Models and mixers by name.

    Mixer contract: ``create_mixer(name, dim, num_heads=..., seq_len=..., grid_size=...)``
    returns a module whose ``forward(x, grid_size=None)`` maps ``(B, N, C) -> (B, N, C)``.
    Every mixer factory accepts the context keywords ``num_heads``, ``seq_len`` and
    ``grid_size`` (it may ignore them) plus its own options. Each mixer declares whether it can
    be causal (:data:`CAUSALITY`); ``create_mixer(..., causal=True)`` builds the causal form or
    raises for a mixer that has none.
    """

    def __init__(self) -> None:
        self._models: dict[str, ModelEntry] = {}
        self._mixers: dict[str, MixerEntry] = {}

    # models ---------------------------------------------------------------------------
    def register_model(self, name: str, *, family: str, paper_params: float | None = None,
                       params_rtol: float = 0.01, small_kwargs: dict[str, Any] | None = None,
                       example_input: Callable[..., Any] | None = None, note: str = ""
                       ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
        def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            if name in self._models:
                raise ValueError(f"model {name!r} is already registered")
            self._models[name] = ModelEntry(name, factory, family, paper_params, params_rtol,
                                            dict(small_kwargs or {}), example_input, note)
            return factory

        return decorate

    def unregister_model(self, name: str) -> None:
        """Remove a model entry (for tests and notebooks that register throwaway models)."""
        self._models.pop(name, None)

    def create_model(self, name: str, **kwargs: Any) -> nn.Module:
        return self.model_entry(name).factory(**kwargs)

    def model_entry(self, name: str) -> ModelEntry:
        if name not in self._models:
            close = fnmatch.filter(self._models, f"*{name.split('_')[0]}*")
            raise KeyError(f"unknown model {name!r}; similar: {close or sorted(self._models)}")
        return self._models[name]

    def list_models(self, pattern: str = "*") -> list[str]:
        return sorted(fnmatch.filter(self._models, pattern))

    # mixers ---------------------------------------------------------------------------
    def register_mixer(self, name: str, *, family: str, causal: str = "never", note: str = ""
                       ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
        if causal not in CAUSALITY:
            raise ValueError(f"causal must be one of {CAUSALITY}, got {causal!r}")

        def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            if name in self._mixers:
                raise ValueError(f"mixer {name!r} is already registered")
            self._mixers[name] = MixerEntry(name, factory, family, causal, note)
            return factory

        return decorate

    def create_mixer(self, name: str, dim: int, *, causal: bool = False, **kwargs: Any) -> nn.Module:
        """Build mixer ``name``; ``causal=True`` asks for its causal form (``ValueError`` if it has none)."""
        entry = self.mixer_entry(name)
        if causal:
            if entry.causal == "never":
                raise ValueError(f"mixer {name!r} cannot be causal: every output sees the whole sequence")
            if entry.causal == "option":
                kwargs["causal"] = True
        return entry.factory(dim, **kwargs)

    def mixer_entry(self, name: str) -> MixerEntry:
        if name not in self._mixers:
            raise KeyError(f"unknown mixer {name!r}; registered mixers: {sorted(self._mixers)}")
        return self._mixers[name]

    def list_mixers(self, pattern: str = "*") -> list[str]:
        return sorted(fnmatch.filter(self._mixers, pattern))


REGISTRY = Registry()
register_model = REGISTRY.register_model
register_mixer = REGISTRY.register_mixer


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
