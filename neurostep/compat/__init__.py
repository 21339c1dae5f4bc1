"""Drop-in stand-ins for ``mamba_ssm`` and ``causal_conv1d`` that run on neurostep's kernels.

``neurostep.compat.mamba_ssm`` and ``neurostep.compat.causal_conv1d`` mirror the two CUDA-only
packages module by module (same import paths below the package name, same signatures, same
in-place state updates), so code written against them (the Vision Mamba model code, for
example) runs on a CPU, and on a GPU through neurostep's Triton kernels. Nothing changes until
:func:`install` is called:

```python
import neurostep.compat
neurostep.compat.install()          # `import mamba_ssm` now gives neurostep.compat.mamba_ssm
from mamba_ssm import Mamba
```

:func:`install` puts an import finder first on ``sys.meta_path`` that maps ``mamba_ssm`` and
``causal_conv1d`` (and every submodule) onto the modules here: ``sys.modules["mamba_ssm"] is
neurostep.compat.mamba_ssm``. It refuses when the real package is already imported, because two
copies of the same classes in one process would mix silently. :func:`uninstall` undoes it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType, ModuleType

__all__ = ["PACKAGES", "install", "installed", "uninstall"]

PACKAGES: Mapping[str, str] = MappingProxyType({
    "mamba_ssm": "neurostep.compat.mamba_ssm",
    "causal_conv1d": "neurostep.compat.causal_conv1d",
})
"""Upstream package name -> the neurostep module that stands in for it."""


def _target(fullname: str, aliases: Iterable[str]) -> str | None:
    for alias in aliases:
        if fullname == alias or fullname.startswith(alias + "."):
            return PACKAGES[alias] + fullname[len(alias):]
    return None


class _AliasLoader(importlib.abc.Loader):
    """Imports the neurostep module and makes it the one bound under the upstream name."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a throwaway module; exec_module swaps in the real one

    def exec_module(self, module: ModuleType) -> None:
        real = importlib.import_module(self.target)
        # importlib returns whatever sys.modules holds under the name once exec_module is done, so
        # `import mamba_ssm.x` yields the neurostep module itself (its __name__ and __spec__ untouched).
        sys.modules[module.__name__] = real


class _AliasFinder(importlib.abc.MetaPathFinder):
    def __init__(self, aliases: tuple[str, ...]) -> None:
        self.aliases = aliases

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        name = _target(fullname, self.aliases)
        if name is None:
            return None
        real_spec = importlib.util.find_spec(name)
        if real_spec is None:
            return None  # no such module here: the import fails as it would upstream
        return importlib.util.spec_from_loader(
            fullname, _AliasLoader(name), is_package=real_spec.submodule_search_locations is not None)


def _installed_finder() -> _AliasFinder | None:
    """The finder :func:`install` put on ``sys.meta_path`` (the import system holds the only reference)."""
    return next((f for f in sys.meta_path if isinstance(f, _AliasFinder)), None)


def _foreign_modules(alias: str) -> list[str]:
    """Names under ``alias`` in ``sys.modules`` that are not neurostep's stand-ins."""
    found = []
    for name, module in list(sys.modules.items()):
        if name == alias or name.startswith(alias + "."):
            if not getattr(module, "__name__", "").startswith("neurostep.compat."):
                found.append(name)
    return found


def install(packages: Iterable[str] = ("mamba_ssm", "causal_conv1d")) -> None:
    """Make ``import mamba_ssm`` / ``import causal_conv1d`` (and their submodules) load neurostep's stand-ins.

    Args:
        packages: which upstream packages to stand in for; both by default.

    Raises:
        RuntimeError: the real package (or one of its submodules) is already imported in this
            process; install() must run before anything imports it.
        ValueError: an unknown package name.

    Calling it again is a no-op (packages are added to the ones already installed). The real
    packages, if installed in the environment, are shadowed until :func:`uninstall`.
    """
    wanted = tuple(dict.fromkeys(packages))
    for name in wanted:
        if name not in PACKAGES:
            raise ValueError(f"unknown package {name!r}; neurostep.compat stands in for {sorted(PACKAGES)}")
    for name in wanted:
        foreign = _foreign_modules(name)
        if foreign:
            origin = getattr(sys.modules[foreign[0]], "__file__", None) or "an unknown location"
            raise RuntimeError(
                f"the real {name!r} is already imported ({foreign[0]} from {origin}); "
                f"neurostep.compat.install() must run before anything imports {name}. Call it at the top "
                "of your entry point, or use the real package (it needs CUDA) and skip install().")
    previous = _installed_finder()
    aliases = tuple(dict.fromkeys(installed() + wanted))
    if previous is not None:
        sys.meta_path[:] = [f for f in sys.meta_path if f is not previous]
    # First on the path: the stand-ins win over a real installation, and a submodule is never
    # loaded a second time from the stand-in package's directory under the upstream name.
    sys.meta_path.insert(0, _AliasFinder(aliases))


def uninstall() -> None:
    """Undo :func:`install`: remove the finder and the ``mamba_ssm`` / ``causal_conv1d`` aliases.

    Modules already imported through the aliases keep working (they are neurostep modules); a
    later ``import mamba_ssm`` finds the real package again, if there is one.
    """
    finder = _installed_finder()
    if finder is None:
        return
    sys.meta_path[:] = [f for f in sys.meta_path if f is not finder]
    for alias in finder.aliases:
        for name, module in list(sys.modules.items()):
            if (name == alias or name.startswith(alias + ".")) and \
                    getattr(module, "__name__", "").startswith("neurostep.compat."):
                del sys.modules[name]


def installed() -> tuple[str, ...]:
    """The upstream package names currently stood in for (empty before :func:`install`)."""
    finder = _installed_finder()
    return () if finder is None else finder.aliases
