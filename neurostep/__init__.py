"""neurostep: spiking and attention-free architectures on one recurrent-step engine."""

__version__ = "0.1.0"

# Lazy re-exports: ``import neurostep`` stays light (no torch sub-packages, no family imports).
_LAZY = {
    "create_model": "neurostep.models",
    "list_models": "neurostep.models",
    "create_mixer": "neurostep.models",
    "list_mixers": "neurostep.models",
    "replace_attention": "neurostep.replace",
    "retain_freed_memory": "neurostep.memory",
}


def __getattr__(name: str):  # noqa: ANN202 - module-level lazy attribute
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'neurostep' has no attribute {name!r}")
