"""Placeholders for upstream classes that neurostep.compat does not offer (importable, refuse on use)."""

from __future__ import annotations


def unsupported(name: str, why: str) -> type:
    """A class named ``name`` whose construction raises ``NotImplementedError(why)``."""

    def __init__(self: object, *args: object, **kwargs: object) -> None:
        raise NotImplementedError(f"neurostep.compat does not offer mamba_ssm's {name}: {why} "
                                  "(see docs/compat.md for what is covered)")

    return type(name, (), {"__init__": __init__, "__doc__": f"Not offered by neurostep.compat: {why}"})
