"""The repository's scripts (``benchmarks/``, ``docs/hooks/``) loaded as modules, so that tests can call their
functions. ``tests/`` is on ``sys.path`` during the tests (pytest puts the directory of the root
``conftest.py`` there), so any test imports this as ``from repo_scripts import load_script``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, name: str) -> ModuleType:
    """Executes ``ROOT / relative_path`` as the module ``name`` and returns it.

    The module is registered in ``sys.modules`` first (dataclasses look their module up there), and its
    folder is put on ``sys.path`` (the benchmarks import their sibling ``_results``)."""
    path = ROOT / relative_path
    if not path.is_file():
        raise FileNotFoundError(f"no script at {path}")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
