"""One registry for complete models and for drop-in token mixers (timm's ``create_model`` style).

Where it sits: this module imports only torch and :mod:`neurostep.layers` (whose size checks it
applies), so it lies below every block package: ``engine < layers < registry < neuro, ssm, mixers
< models``. Anything may import it without a cycle, and it imports no block. It is not in
``engine`` because the engine holds what runs (ops, kernels, the step protocol); a catalogue of
names and declared facts is not that.

Where registrations live (one rule): blocks never register themselves. Every name is declared in
``neurostep/models/``: each drop-in mixer in ``neurostep/models/mixers.py`` (one table of every
mixer with its facts), each complete model in its family module ``neurostep/models/<family>.py``.
``neurostep.models`` imports those modules on first use and is the public API
(``create_model``, ``create_mixer``, ``list_models``, ``list_mixers``, ...).

Entries declare the facts that callers need before building anything:

- mixers: ``causal`` (``"always"``, ``"option"``, ``"never"``) and ``needs_grid`` (the mixer
  works on a 2D token grid ``(H, W)``);
- models: ``paper_params`` (the paper's parameter count, checked by the registry test) and
  ``paper_params_fused`` (that count is the fused, deploy-time form: ``model.fuse()`` first).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from neurostep.layers.helpers import check_size, to_2tuple

CAUSALITY = ("always", "option", "never")


@dataclass(frozen=True)
class ModelEntry:
    """A complete model and its declared facts.

    ``paper_params``: parameter count reported by the paper (absolute number), or ``None``.
    ``params_rtol``: accepted relative deviation from ``paper_params``.
    ``paper_params_fused``: the paper counts the fused (deploy) form; call ``model.fuse()`` before counting.
    ``small_kwargs``: overrides for a tiny test instance.
    ``example_input``: ``fn(model, batch) -> input(s)`` for a smoke run.
    """

    name: str
    factory: Callable[..., nn.Module]
    family: str
    paper_params: float | None = None
    params_rtol: float = 0.01
    small_kwargs: dict[str, Any] = field(default_factory=dict)
    example_input: Callable[..., Any] | None = None
    note: str = ""
    paper_params_fused: bool = False


@dataclass(frozen=True)
class MixerEntry:
    """A drop-in mixer and the facts callers need before building it.

    ``causal``: ``"always"`` (output at token t depends only on tokens <= t, e.g. a recurrence),
    ``"option"`` (the factory takes ``causal=True``, e.g. masked attention) or ``"never"``
    (every output sees the whole sequence, e.g. a 2D scan or a token MLP).
    ``needs_grid``: the mixer lays the tokens out on a 2D grid ``(H, W)`` (from ``grid_size``, the
    construction-time grid or a square ``N``); a 1D sequence of non-square length cannot feed it.
    """

    name: str
    factory: Callable[..., nn.Module]
    family: str
    causal: str = "never"
    needs_grid: bool = False
    note: str = ""


def _check_context(name: str, dim: Any, num_heads: Any, seq_len: Any, grid_size: Any) -> None:
    """The mixer contract's sizes, checked once for every factory (``ValueError`` naming the argument)."""
    where = f"create_mixer({name!r}): "
    try:
        check_size("dim", dim)
        if num_heads is not None:
            check_size("num_heads", num_heads)
        if seq_len is not None:
            check_size("seq_len", seq_len)
        if grid_size is not None:
            to_2tuple(grid_size, "grid_size")
    except ValueError as err:
        raise ValueError(where + str(err)) from None


class Registry:
    """Models and mixers by name.

    Mixer contract: ``create_mixer(name, dim, num_heads=..., seq_len=..., grid_size=...)``
    returns a module whose ``forward(x, grid_size=None)`` maps ``(B, N, C) -> (B, N, C)``.
    Every mixer factory accepts the context keywords ``num_heads``, ``seq_len`` and
    ``grid_size`` (it may ignore them) plus its own options; the registry checks ``dim`` and the
    context keywords before calling it. Each mixer declares whether it can be causal
    (:data:`CAUSALITY`); ``create_mixer(..., causal=True)`` builds the causal form or raises for a
    mixer that has none.
    """

    def __init__(self) -> None:
        self._models: dict[str, ModelEntry] = {}
        self._mixers: dict[str, MixerEntry] = {}

    # models ---------------------------------------------------------------------------
    def register_model(self, name: str, *, family: str, paper_params: float | None = None,
                       params_rtol: float = 0.01, small_kwargs: dict[str, Any] | None = None,
                       example_input: Callable[..., Any] | None = None, note: str = "",
                       paper_params_fused: bool = False
                       ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
        """Decorator that registers ``factory(**config_overrides) -> nn.Module`` as model ``name``."""
        def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            if name in self._models:
                raise ValueError(f"model {name!r} is already registered")
            self._models[name] = ModelEntry(name, factory, family, paper_params, params_rtol,
                                            dict(small_kwargs or {}), example_input, note, paper_params_fused)
            return factory

        return decorate

    def register_config(self, name: str, build: Callable[..., nn.Module], config: dict[str, Any], *, doc: str,
                        **facts: Any) -> Callable[..., nn.Module]:
        """Register model ``name`` as ``build(**config)``, whose keyword arguments override the config.

        For families that register one class under several named configurations (the papers' sizes);
        ``facts`` are :meth:`register_model`'s keywords. Returns the factory.
        """
        config = dict(config)

        def factory(**overrides: Any) -> nn.Module:
            return build(**{**config, **overrides})

        factory.__name__ = factory.__qualname__ = name
        factory.__doc__ = doc
        return self.register_model(name, **facts)(factory)

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
    def register_mixer(self, name: str, *, family: str, causal: str = "never", needs_grid: bool = False,
                       note: str = "") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
        """Decorator that registers ``factory(dim, *, num_heads, seq_len, grid_size, **options)`` as mixer ``name``."""
        if causal not in CAUSALITY:
            raise ValueError(f"causal must be one of {CAUSALITY}, got {causal!r}")

        def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            if name in self._mixers:
                raise ValueError(f"mixer {name!r} is already registered")
            self._mixers[name] = MixerEntry(name, factory, family, causal, bool(needs_grid), note)
            return factory

        return decorate

    def create_mixer(self, name: str, dim: int, *, causal: bool = False, num_heads: int | None = None,
                     seq_len: int | None = None, grid_size: int | Sequence[int] | None = None,
                     **kwargs: Any) -> nn.Module:
        """Build mixer ``name``; ``causal=True`` asks for its causal form (``ValueError`` if it has none).

        Raises:
            KeyError: ``name`` is not registered.
            ValueError: a non-positive or non-integer ``dim``, ``num_heads``, ``seq_len`` or
                ``grid_size``, or ``causal=True`` for a mixer without a causal form.
        """
        entry = self.mixer_entry(name)
        _check_context(name, dim, num_heads, seq_len, grid_size)
        if causal:
            if entry.causal == "never":
                raise ValueError(f"mixer {name!r} cannot be causal: every output sees the whole sequence")
            if entry.causal == "option":
                kwargs["causal"] = True
        return entry.factory(dim, num_heads=num_heads, seq_len=seq_len, grid_size=grid_size, **kwargs)

    def mixer_entry(self, name: str) -> MixerEntry:
        if name not in self._mixers:
            raise KeyError(f"unknown mixer {name!r}; registered mixers: {sorted(self._mixers)}")
        return self._mixers[name]

    def list_mixers(self, pattern: str = "*") -> list[str]:
        return sorted(fnmatch.filter(self._mixers, pattern))


REGISTRY = Registry()
register_model = REGISTRY.register_model
register_config = REGISTRY.register_config
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
