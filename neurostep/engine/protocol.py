"""The recurrent-step protocol shared by every block with time or sequence state.

A block implements ``init_state``, ``step`` and ``scan``; ``forward`` is the drop-in call
(``scan`` from a fresh state, output only). State is explicit: passed in and returned, so
two networks never share it and no reset is needed between sequences.

``step`` and ``scan`` are hookable entry points, as ``forward`` is for ``nn.Module``: blocks
call each other's ``step``/``scan`` directly (a layer scans its neurons), which skips module
hooks, so :meth:`Recurrent.register_step_hook` gives monitors (spike counters, the operation
counter, :func:`detect_anomalies`) a hook on exactly those calls, on any block, without
touching its methods. A hook sees each call once: a ``scan`` that calls its base class's
``scan``, or ``forward`` that calls ``scan``, runs the hooks only on the outermost call.

Blocks made of recurrent children (a conv, a norm and a neuron; attention over spiking Q, K,
V) subclass :class:`Composite` and write their computation once, for one step and for a
whole sequence: ``advance(x, state, stepping)`` with :func:`run_child` for each child.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

State = Any  # a tensor, a tuple of tensors or a small dataclass of tensors

HOOKED = ("step", "scan")

# pre(module, method, args, kwargs) and post(module, method, args, kwargs, output); ``output``
# is None when the call raised (hooks registered with ``always_call``).
PreHook = Callable[[nn.Module, str, tuple, dict], None]
PostHook = Callable[[nn.Module, str, tuple, dict, Any], None]


def _hookable(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a ``step``/``scan`` implementation so the instance's step hooks see its calls."""

    @functools.wraps(method)
    def call(self: Recurrent, *args: Any, **kwargs: Any) -> Any:
        hooks = self.__dict__.get("_step_hooks")
        if not hooks or self.__dict__.get("_step_depth", 0):
            return method(self, *args, **kwargs)   # no hooks, or an inner call of a hooked one
        for pre, _, _ in list(hooks.values()):
            if pre is not None:
                pre(self, name, args, kwargs)
        self.__dict__["_step_depth"] = 1
        try:
            out = method(self, *args, **kwargs)
        except BaseException:
            self.__dict__["_step_depth"] = 0
            for _, post, always in list(hooks.values()):
                if post is not None and always:
                    post(self, name, args, kwargs, None)
            raise
        self.__dict__["_step_depth"] = 0
        for _, post, _ in list(hooks.values()):
            if post is not None:
                post(self, name, args, kwargs, out)
        return out

    call.__hookable__ = True
    return call


class Recurrent(nn.Module):
    """Base class of step/scan blocks.

    Subclasses set ``time_dim`` (0 for spiking ``(T, B, ...)`` inputs, 1 for token sequences
    ``(B, L, C)``) and override ``init_state`` and ``step``; they override ``scan`` with a fused
    kernel. The default ``scan`` loops over ``step`` and is what ``scan`` is tested against.
    Every ``step``/``scan`` a subclass defines is wrapped so that step hooks see it.
    """

    time_dim: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in HOOKED:
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "__hookable__", False):
                setattr(cls, name, _hookable(name, method))

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> State:
        """A fresh state for inputs whose non-time, per-step shape is ``batch_shape``."""
        raise NotImplementedError(f"{type(self).__name__} does not define init_state")

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Advance one timestep/token: ``x_t`` has the input shape without the time axis."""
        raise NotImplementedError(f"{type(self).__name__} does not define step")

    def scan(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Run a whole sequence; returns ``(y, final_state)``."""
        return scan_by_steps(self, x, state)

    # The base definitions are entry points too (a block that inherits the default scan).
    step = _hookable("step", step)
    scan = _hookable("scan", scan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scan(x)[0]

    def register_step_hook(self, pre: PreHook | None = None, post: PostHook | None = None, *,
                           always_call: bool = False) -> RemovableHandle:
        """Call ``pre(module, method, args, kwargs)`` before and ``post(module, method, args,
        kwargs, output)`` after each outermost ``step``/``scan`` call of this block.

        ``method`` is ``"step"`` or ``"scan"``; ``output`` is ``(y, state)``. With
        ``always_call`` the post hook also runs, with ``output=None``, when the call raises.
        Returns a handle whose ``remove()`` unregisters both.
        """
        if pre is None and post is None:
            raise ValueError("register_step_hook needs a pre hook, a post hook or both")
        # an OrderedDict, not a dict: RemovableHandle keeps a weak reference to it
        hooks = self.__dict__.setdefault("_step_hooks", OrderedDict())
        handle = RemovableHandle(hooks)
        hooks[handle.id] = (pre, post, always_call)
        return handle


class Composite(Recurrent):
    """A block of recurrent children, written once for one step and for a whole sequence.

    Subclasses define ``advance(x, state, stepping) -> (y, state)``, calling each child through
    :func:`run_child`, and may override ``check_input(x, stepping)`` to validate ``x`` (one
    step when ``stepping``, else a sequence). ``step`` and ``scan`` are that pair of calls.
    ``state=None`` means a fresh state, for the block and for each child.
    """

    def check_input(self, x: torch.Tensor, stepping: bool) -> None:
        """Validate an input (``stepping``: one step, else a sequence); nothing by default."""

    def advance(self, x: torch.Tensor, state: State | None, stepping: bool) -> tuple[torch.Tensor, State]:
        """One step (``stepping``) or a whole sequence of the block; subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} does not define advance")

    def step(self, x_t: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        self.check_input(x_t, True)
        return self.advance(x_t, state, True)

    def scan(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        self.check_input(x, False)
        return self.advance(x, state, False)


def run_child(child: Recurrent, x: torch.Tensor, state: State | None, stepping: bool
              ) -> tuple[torch.Tensor, State]:
    """Run ``child`` on ``x`` as one step (``stepping``) or as a scan; ``state=None`` is fresh.

    A fresh step of a leaf block starts from ``child.init_state`` for ``x``'s shape; a
    :class:`Composite` child takes ``None`` itself and creates its children's states as it goes.
    """
    if not stepping:
        return child.scan(x, state)
    if state is None and not isinstance(child, Composite):
        state = child.init_state(tuple(x.shape), device=x.device, dtype=x.dtype)
    return child.step(x, state)


def step_shape(x: torch.Tensor, time_dim: int) -> tuple[int, ...]:
    """Shape of one step of ``x`` (``x.shape`` without ``time_dim``)."""
    shape = list(x.shape)
    del shape[time_dim]
    return tuple(shape)


def scan_by_steps(block: Recurrent, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
    """Run ``block.step`` over the time axis of ``x``: the definition ``scan`` must equal."""
    dim = block.time_dim
    if x.shape[dim] == 0:
        raise ValueError(f"input has 0 steps along dim {dim} (shape {tuple(x.shape)}); sequences must be non-empty")
    if state is None:
        state = block.init_state(step_shape(x, dim), device=x.device, dtype=x.dtype)
    outputs = []
    for t in range(x.shape[dim]):
        y_t, state = block.step(x.select(dim, t), state)
        outputs.append(y_t)
    return torch.stack(outputs, dim=dim), state


# ----------------------------------------------------------------------------- monitors
def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside ``obj`` (tensors, tuples, lists, dicts, dataclasses, NamedTuples)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from iter_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from iter_tensors(item)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from iter_tensors(getattr(obj, f.name))


class detect_anomalies:  # noqa: N801 - used as a context manager, like torch.autograd.detect_anomaly
    """Raise at the first non-finite output or state of any recurrent block of ``model``.

    ``with detect_anomalies(model): model(x)`` hooks every :class:`Recurrent` submodule; after
    each ``step``/``scan`` it checks the outputs and the returned state (membranes, scan states,
    WKV states) and raises ``FloatingPointError`` naming the block's path and the method. Each
    check reads the tensors back to the host, so it costs a device sync per call: a debugging
    mode, off by default.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> detect_anomalies:
        for path, module in self.model.named_modules():
            if isinstance(module, Recurrent):
                self._handles.append(module.register_step_hook(post=self._check(path or "<model>")))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @staticmethod
    def _check(path: str) -> PostHook:
        def post(module: nn.Module, method: str, args: tuple, kwargs: dict, output: Any) -> None:
            y, state = output if isinstance(output, tuple) and len(output) == 2 else (output, None)
            for what, value in (("output", y), ("state", state)):
                bad = next((t for t in iter_tensors(value) if not _finite(t)), None)
                if bad is not None:
                    source = "finite" if all(_finite(t) for t in iter_tensors(args)) else "already non-finite"
                    raise FloatingPointError(f"{path} ({type(module).__name__}).{method} produced a non-finite "
                                             f"{what} of shape {tuple(bad.shape)}; its input was {source}")

        return post


def _finite(t: torch.Tensor) -> bool:
    return not t.is_floating_point() or bool(torch.isfinite(t).all())
