"""One registry that maps (op, backend name) to an implementation module.

Every fused op registers its backends here once, at import of its package. The public op
asks :meth:`KernelRegistry.resolve` for an implementation by the input's device and an
explicit ``backend=`` argument. Nothing is probed at import: availability is checked when an
op is first called, and an explicit request that cannot be met raises instead of falling back.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import torch

BACKEND_NAMES = ("reference", "cpu", "triton")


class BackendUnavailableError(RuntimeError):
    """Raised when a requested backend cannot run the call (missing package, wrong device)."""


def _numba_missing() -> str | None:
    try:
        import numba  # noqa: F401
    except ImportError as exc:  # pragma: no cover - numba is a core dependency
        return f"numba is not importable ({exc}); install it with `pip install numba`"
    return None


def _triton_missing_for(device: torch.device) -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not importable ({exc}); install it with `pip install neurostep[triton]`"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        # Triton's interpreter runs kernels on CPU tensors (slowly): used by the tests.
        return None
    return (
        f"triton kernels need CUDA tensors (got device {device}); on CPU they run only under "
        "Triton's interpreter (set TRITON_INTERPRET=1 before importing triton)"
    )


@dataclass(frozen=True)
class BackendSpec:
    """How to load one backend of one op and on which devices it may run.

    ``settled(device)``: whether ``missing(device)`` gives the same answer on every call, so that the registry
    may remember a choice that consulted it (False where it reads the environment at the time of the call)."""

    module: str
    devices: tuple[str, ...]
    missing: Callable[[torch.device], str | None] = field(default=lambda device: None)
    settled: Callable[[torch.device], bool] = field(default=lambda device: True)


# per backend: the devices it may run on, why it cannot run on one (None: it can), whether that answer is settled
_DEFAULT_SPECS: dict[str, tuple[tuple[str, ...], Callable[[torch.device], str | None],
                                Callable[[torch.device], bool]]] = {
    # reference is plain torch: it runs wherever torch runs.
    "reference": (("cpu", "cuda", "mps", "xpu", "meta"), lambda device: None, lambda device: True),
    "cpu": (("cpu",), lambda device: _numba_missing(), lambda device: True),
    # on the CPU, triton's interpreter depends on TRITON_INTERPRET at the time of the call
    "triton": (("cuda", "cpu"), _triton_missing_for, lambda device: device.type != "cpu"),
}


# Preference order of backend="auto" per device type; the first available one is used.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu", "reference"),
    "cuda": ("triton", "reference"),
}


class KernelRegistry:
    """Registry of fused ops and their backends.

    >>> from neurostep.engine import KERNELS
    >>> impl = KERNELS.resolve("lif", "auto", torch.device("cpu"))   # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._ops: dict[str, dict[str, BackendSpec]] = {}
        self._loaded: dict[tuple[str, str], ModuleType] = {}
        # (op, backend asked for, device) -> the backend that runs: an op resolves its backend up to four times
        # per forward and backward, and the checks behind a choice cost more than a lookup
        self._chosen: dict[tuple[str, str, torch.device], str] = {}

    def register(
        self,
        op: str,
        backend: str,
        module: str,
        devices: tuple[str, ...] | None = None,
        missing: Callable[[torch.device], str | None] | None = None,
    ) -> None:
        """Register ``module`` (a dotted import path) as backend ``backend`` of ``op``."""
        self._chosen.clear()
        if backend in _DEFAULT_SPECS:
            default_devices, default_missing, settled = _DEFAULT_SPECS[backend]
        else:
            default_devices, default_missing, settled = ("cuda",), (lambda device: None), (lambda device: True)
        self._ops.setdefault(op, {})[backend] = BackendSpec(
            module=module,
            devices=devices if devices is not None else default_devices,
            missing=missing if missing is not None else default_missing,
            settled=settled if missing is None else (lambda device: True),
        )

    def ops(self) -> list[str]:
        return sorted(self._ops)

    def backends(self, op: str) -> list[str]:
        return list(self._op(op))

    def _op(self, op: str) -> dict[str, BackendSpec]:
        if op not in self._ops:
            raise KeyError(f"unknown op {op!r}; registered ops: {self.ops()}")
        return self._ops[op]

    def why_unavailable(self, op: str, backend: str, device: torch.device) -> str | None:
        """Return a message saying why ``backend`` cannot run ``op`` on ``device``, or None."""
        specs = self._op(op)
        if backend not in specs:
            return f"op {op!r} has no backend {backend!r} (it has {sorted(specs)})"
        spec = specs[backend]
        if device.type not in spec.devices:
            return f"backend {backend!r} of op {op!r} does not run on device {device.type!r} (runs on {spec.devices})"
        return spec.missing(device)

    def choose(self, op: str, backend: str, device: torch.device) -> str:
        """Name of the backend that will run: ``backend`` itself, or the auto choice.

        A choice is made once per op, backend and device and then looked up, unless a backend it consulted is
        not settled on the device (:class:`BackendSpec`: triton on the CPU, whose interpreter depends on
        ``TRITON_INTERPRET`` at the time of the call); registering a backend forgets the choices made so far. A
        request that cannot be met raises every time."""
        key = (op, backend, device)
        name = self._chosen.get(key)
        if name is None:
            name, settled = self._choose(op, backend, device)
            if settled:
                self._chosen[key] = name
        return name

    def _choose(self, op: str, backend: str, device: torch.device) -> tuple[str, bool]:
        """The backend that runs, and whether every backend consulted to choose it is settled on ``device``."""
        specs = self._op(op)
        if backend == "auto":
            reasons, settled = [], True
            for name in AUTO_ORDER.get(device.type, ("reference",)):
                if name not in specs:
                    continue
                reason = self.why_unavailable(op, name, device)
                settled = settled and specs[name].settled(device)
                if reason is None:
                    return name, settled
                reasons.append(reason)
            raise BackendUnavailableError(
                f"no backend of op {op!r} can run on {device}: " + "; ".join(reasons)
            )
        reason = self.why_unavailable(op, backend, device)
        if reason is not None:
            raise BackendUnavailableError(reason)
        return backend, specs[backend].settled(device)

    def resolve(self, op: str, backend: str, device: torch.device) -> ModuleType:
        """Import and return the implementation module chosen for ``op`` on ``device`` (:meth:`choose`)."""
        key = (op, self.choose(op, backend, device))
        impl = self._loaded.get(key)
        if impl is None:
            impl = self._loaded[key] = importlib.import_module(self._ops[op][key[1]].module)
        return impl


KERNELS = KernelRegistry()
