"""Registry of complete models with the papers' configs, and of drop-in mixers: the public API.

The registry itself is :mod:`neurostep.registry` (below the blocks). Every registration lives in
this package: each mixer in ``neurostep/models/mixers.py``, each model in its family module
(``spikformer.py``, ``mamba.py``, ...). Those modules are imported on first use, so
``import neurostep.models`` stays light until a name is looked up.
"""

from neurostep.registry import (
    REGISTRY,
    MixerEntry,
    ModelEntry,
    count_params,
    register_mixer,
    register_model,
)


def create_model(name: str, **kwargs):  # noqa: ANN201 - returns an nn.Module
    """Build a registered model by name: ``create_model("spikformer_8_384")``; kwargs override its config."""
    _load_families()
    return REGISTRY.create_model(name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the glob ``pattern``, sorted."""
    _load_families()
    return REGISTRY.list_models(pattern)


def model_entry(name: str) -> ModelEntry:
    """The declared facts of model ``name`` (family, ``paper_params``, ``paper_params_fused``, ...)."""
    _load_families()
    return REGISTRY.model_entry(name)


def create_mixer(name: str, dim: int, *, causal: bool = False, **kwargs):  # noqa: ANN201 - returns an nn.Module
    """Build a registered drop-in token mixer ``(B, N, C) -> (B, N, C)`` by name.

    ``causal=True`` builds its causal form and raises ``ValueError`` for a mixer that has none.
    A non-positive or non-integer ``dim``, ``num_heads``, ``seq_len`` or ``grid_size`` raises
    ``ValueError`` naming the argument.
    """
    _load_families()
    return REGISTRY.create_mixer(name, dim, causal=causal, **kwargs)


def mixer_causality(name: str) -> str:
    """``"always"``, ``"option"`` or ``"never"``: whether mixer ``name`` is, can be or cannot be causal."""
    _load_families()
    return REGISTRY.mixer_entry(name).causal


def mixer_entry(name: str) -> MixerEntry:
    """The declared facts of mixer ``name``: ``causal``, ``needs_grid`` (a 2D token grid), family, note."""
    _load_families()
    return REGISTRY.mixer_entry(name)


def list_mixers(pattern: str = "*") -> list[str]:
    """Registered mixer names matching the glob ``pattern``, sorted."""
    _load_families()
    return REGISTRY.list_mixers(pattern)


# Modules that register mixers or models: every mixer is in ``mixers``; each model family adds its module.
FAMILY_MODULES: tuple[str, ...] = (
    "neurostep.models.mixers",
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
    "MixerEntry",
    "ModelEntry",
    "count_params",
    "create_mixer",
    "create_model",
    "list_mixers",
    "list_models",
    "mixer_causality",
    "mixer_entry",
    "model_entry",
    "register_mixer",
    "register_model",
]
