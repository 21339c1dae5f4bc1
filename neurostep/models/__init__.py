"""Registry of complete models with the papers' configs, and of drop-in mixers.

Importing this package imports every family module so that its entries register.
Family modules live beside this file (``spikformer.py``, ``mamba.py``, ...).
"""

from neurostep.models.registry import (
    REGISTRY,
    count_params,
    register_mixer,
    register_model,
)


def create_model(name: str, **kwargs):  # noqa: ANN201 - returns an nn.Module
    """Build a registered model by name: ``create_model("spikformer_8_384")``."""
    _load_families()
    return REGISTRY.create_model(name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    _load_families()
    return REGISTRY.list_models(pattern)


def create_mixer(name: str, dim: int, *, causal: bool = False, **kwargs):  # noqa: ANN201 - returns an nn.Module
    """Build a registered drop-in token mixer ``(B, N, C) -> (B, N, C)`` by name.

    ``causal=True`` builds its causal form and raises ``ValueError`` for a mixer that has none.
    """
    _load_families()
    return REGISTRY.create_mixer(name, dim, causal=causal, **kwargs)


def mixer_causality(name: str) -> str:
    """``"always"``, ``"option"`` or ``"never"``: whether mixer ``name`` is, can be or cannot be causal."""
    _load_families()
    return REGISTRY.mixer_entry(name).causal


def list_mixers(pattern: str = "*") -> list[str]:
    _load_families()
    return REGISTRY.list_mixers(pattern)


# Modules that register models or mixers; each family adds itself here.
FAMILY_MODULES: tuple[str, ...] = (
    "neurostep.mixers.attention",
    "neurostep.models.ffnet",
    "neurostep.models.ninformer",
    "neurostep.models.efficientmod",
    "neurostep.models.crate",
    "neurostep.models.spikformer",
    "neurostep.models.mamba",
    "neurostep.models.spikegpt",
)


def _load_families() -> None:
    import importlib

    for module in FAMILY_MODULES:
        importlib.import_module(module)


__all__ = [
    "FAMILY_MODULES",
    "REGISTRY",
    "count_params",
    "create_mixer",
    "create_model",
    "list_mixers",
    "mixer_causality",
    "list_models",
    "register_mixer",
    "register_model",
]
