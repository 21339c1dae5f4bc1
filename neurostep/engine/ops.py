"""One definition of a fused op: its custom ops, fake, autograd, backends and cost, declared once.

An op package describes its op with :func:`define_op` and keeps only its math (``reference.py``,
``cpu.py``, ``triton.py``) and a public function that validates the call once and lays the tensors
out. From that description the engine builds, for an op named ``name``:

- the custom op ``neurostep::{name}_forward``: its schema is read from the type hints of the
  ``forward`` adapter (tensor arguments first, then plain scalars) with ``str backend`` appended;
- the custom op ``neurostep::{name}_backward``, one schema for every op::

      (Tensor?[] grads, Tensor?[] saved, bool[] needs_input_grad, <the forward's scalars>, str backend) -> Tensor[]

  ``grads`` holds the gradients of the differentiable outputs (None where no gradient flows),
  ``saved`` what the ``save`` rule kept, and the result one gradient per tensor input;
- fake implementations of both (``torch.compile`` and the meta device use them);
- an autograd formula, registered on the forward op itself, so that the op is differentiable wherever
  it is called from (the public function, ``torch.ops.neurostep``, a compiled graph);
- the backend choice (:data:`neurostep.engine.KERNELS`) and the cost formula the counter reads.

Adapters receive the chosen backend module as ``impl``. A forward adapter returns None for an output
the call does not produce, and a backward adapter None for a gradient it does not form. Custom ops
cannot return None, so where the call goes through the dispatcher the engine puts an empty tensor
there (of the first tensor argument's dtype and device, which the op's fakes must match) and turns the
gradients of inputs that need none back into None; on the direct path (:meth:`FusedOp.__call__`) the
None stays, and no empty tensor is made.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from neurostep.engine.backends import KERNELS
from neurostep.engine.checks import check_backend_name
from neurostep.engine.costs import COSTS, CostFormula, CountAs, register_cost

NAMESPACE = "neurostep"

SaveRule = Callable[[dict[str, Any], tuple[torch.Tensor, ...]], Sequence[torch.Tensor | None]]
"""``save(args, outputs) -> tensors``: what the backward needs, from the forward's arguments by name
(tensors and scalars, ``backend`` included, plus ``needs_input_grad``) and its outputs."""


@dataclass
class BackwardCall:
    """What a ``backward`` adapter (and its fake) receives.

    grads: gradients of the differentiable outputs, in output order (None where none flows).
    saved: the tensors the op's ``save`` rule kept (None where it kept none).
    needs_input_grad: per tensor input, whether its gradient is wanted.
    attrs: the forward's scalar arguments by name (``backend`` excluded).
    """

    grads: list[torch.Tensor | None]
    saved: list[torch.Tensor | None]
    needs_input_grad: list[bool]
    attrs: dict[str, Any] = field(default_factory=dict)


def _like_or_empty(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0) if t is None else t


def _tensors_or_empty(output: Any, like: torch.Tensor) -> Any:
    """A forward adapter's ``output`` as the custom op returns it: an empty tensor for each None."""
    if isinstance(output, tuple):
        return tuple(_like_or_empty(t, like) for t in output)
    return _like_or_empty(output, like)


def differentiated(*args: Any) -> bool:
    """Whether a call on ``args`` is recorded for autograd: grad mode is on and one of the tensors among
    them requires a gradient (None and other non-tensors are skipped). Ops decide with it whether to save
    what their backward reads; SPMD code decides with it whether gradient links cross ranks, the same way
    on every rank."""
    if not torch.is_grad_enabled():
        return False
    for t in args:   # a loop, not any() over a generator: this runs on every call of a small op
        if isinstance(t, torch.Tensor) and t.requires_grad:
            return True
    return False


def _first_tensor(items: Sequence[Any]) -> torch.Tensor:
    for t in items:
        if isinstance(t, torch.Tensor):
            return t
    raise ValueError("a fused op needs at least one tensor argument")


class FusedOp:
    """A fused op built by :func:`define_op`; call it through :meth:`__call__`.

    Attributes: ``name``; ``forward_op`` and ``backward_op`` (the ``torch.ops.neurostep`` overloads);
    ``tensor_names`` and ``attr_names`` (the forward's arguments, in schema order, ``backend``
    excluded); ``backends`` (the names it registered).
    """

    def __init__(
        self,
        name: str,
        *,
        backends: Mapping[str, str],
        forward: Callable[..., Any],
        forward_fake: Callable[..., Any],
        backward: Callable[[ModuleType, BackwardCall], Sequence[torch.Tensor | None]],
        backward_fake: Callable[[BackwardCall], Sequence[torch.Tensor | None]],
        save: SaveRule,
        internal_outputs: tuple[int, ...] = (),
        cost: CostFormula | CountAs | None = None,
        backend_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.backends = tuple(backends)
        for backend, module in backends.items():
            KERNELS.register(name, backend, module, **dict((backend_options or {}).get(backend, {})))

        params = list(inspect.signature(forward, eval_str=True).parameters.values())[1:]  # drop impl
        self.tensor_names = tuple(p.name for p in params if _is_tensor_annotation(p.annotation))
        self.attr_names = tuple(p.name for p in params if not _is_tensor_annotation(p.annotation))
        order = [p.name for p in params]
        if order != [*self.tensor_names, *self.attr_names]:
            raise TypeError(f"op {name!r}: the forward adapter must take its tensors before its scalars, got {order}")
        self._n_tensors = len(self.tensor_names)
        self._internal = tuple(internal_outputs)
        self._forward, self._forward_fake = forward, forward_fake
        self._backward, self._backward_fake = backward, backward_fake
        self._save = save

        library = torch.library.Library(NAMESPACE, "FRAGMENT")
        self._library = library  # the registrations live as long as the op does
        backend_param = inspect.Parameter("backend", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str)
        forward_sig = inspect.signature(forward, eval_str=True)
        forward_sig = forward_sig.replace(parameters=[*params, backend_param],
                                          return_annotation=_dispatched_return(forward_sig.return_annotation))
        forward_schema = _schema_of(forward_sig)
        attr_params = [p for p in params if p.name in self.attr_names]
        backward_sig = inspect.Signature(
            [
                inspect.Parameter("grads", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  annotation=list[torch.Tensor | None]),
                inspect.Parameter("saved", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  annotation=list[torch.Tensor | None]),
                inspect.Parameter("needs_input_grad", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=list[bool]),
                *attr_params,
                backend_param,
            ],
            return_annotation=list[torch.Tensor],
        )
        library.define(f"{name}_forward{forward_schema}")
        library.define(f"{name}_backward{_schema_of(backward_sig)}")
        library.impl(f"{name}_forward", self._dispatched_forward, "CompositeExplicitAutograd")
        library.impl(f"{name}_backward", self._dispatched_backward, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{NAMESPACE}::{name}_forward", self._fake_forward, lib=library)
        torch.library.register_fake(f"{NAMESPACE}::{name}_backward", self._fake_backward, lib=library)
        self.forward_op = getattr(getattr(torch.ops, NAMESPACE), f"{name}_forward").default
        self.backward_op = getattr(getattr(torch.ops, NAMESPACE), f"{name}_backward").default
        self._function = _autograd_function(self, direct=False)
        self._direct_function = _autograd_function(self, direct=True)
        library.impl(f"{name}_forward", self._function.apply, "Autograd")
        if isinstance(cost, CountAs):
            COSTS.register_alias(f"{NAMESPACE}::{name}_forward", cost)
        elif cost is not None:
            register_cost(f"{NAMESPACE}::{name}_forward")(cost)

    # -- the public entry -------------------------------------------------------------------

    def choose_backend(self, backend: str, device: torch.device) -> str:
        """Check ``backend`` and return the one that runs on ``device`` (``"auto"`` resolved)."""
        check_backend_name(backend, self.backends)
        return KERNELS.choose(self.name, backend, device)

    def resolve_backend(self, backend: str, device: torch.device) -> ModuleType:
        """Check ``backend`` and return the module of the one that runs on ``device`` (its kernels are imported
        on first use): for a public op that asks its backend something (such as whether it saves a tensor)."""
        check_backend_name(backend, self.backends)
        return KERNELS.resolve(self.name, backend, device)

    def __call__(self, *args: Any, backend: str = "auto") -> Any:
        """Run the op on already validated, laid-out arguments (schema order, ``backend`` excluded).

        The backend is resolved here, once, from the first tensor's device. Whenever something may
        watch or transform the call (a dispatch or function mode such as the op counter, fake tensors,
        ``torch.compile``, ``torch.jit.trace``, functorch transforms, the profiler, tensor subclasses),
        it goes through the dispatcher, so that it sees one ``neurostep`` op. Otherwise it runs the same
        adapters directly (:func:`dispatch_is_unobserved`): the dispatcher's Python boxing of the
        arguments costs a small op 20-30 us per call (``docs/design.md``).
        """
        tensors = args[:self._n_tensors]   # the others are the schema's scalars
        device = _first_tensor(tensors).device
        name = self.choose_backend(backend, device)
        if not dispatch_is_unobserved(tensors):
            return self.forward_op(*args, name)
        # the module is resolved once per call (the choice above is remembered, so this is a lookup) and the
        # backward reuses it: the direct path's adapters get it without looking it up again
        impl = KERNELS.resolve(self.name, name, device)
        if differentiated(*tensors):
            # the scalars as one argument: autograd's apply handles each argument and output on its own, which
            # for an op with a dozen scalars was a tenth of its cost around the kernels (cold caches)
            return self._direct_function.apply(*tensors, (args[self._n_tensors:], name, impl))
        return self._forward(impl, *args)

    # -- dispatcher kernels -----------------------------------------------------------------

    def _split(self, args: Sequence[Any]) -> tuple[Sequence[Any], str]:
        return args[:-1], args[-1]

    def _run_forward(self, *args: Any) -> Any:
        """The forward adapter's outputs on the forward op's arguments, None where it produces none."""
        values, backend = self._split(args)
        impl = KERNELS.resolve(self.name, backend, _first_tensor(values).device)
        return self._forward(impl, *values)

    def _dispatched_forward(self, *args: Any) -> Any:
        return _tensors_or_empty(self._run_forward(*args), _first_tensor(args))

    def _fake_forward(self, *args: Any) -> Any:
        values, backend = self._split(args)
        return self._forward_fake(*values, backend=backend)

    def _backward_call(self, args: Sequence[Any]) -> tuple[BackwardCall, str]:
        grads, saved, needs, *attrs = args
        values, backend = self._split(attrs)
        return BackwardCall(list(grads), list(saved), list(needs), dict(zip(self.attr_names, values))), backend

    def _run_backward(self, *args: Any) -> Sequence[torch.Tensor | None]:
        """The backward adapter's gradients on the backward op's arguments, None where it forms none."""
        call, backend = self._backward_call(args)
        impl = KERNELS.resolve(self.name, backend, _first_tensor([*call.saved, *call.grads]).device)
        return self._backward(impl, call)

    def _dispatched_backward(self, *args: Any) -> list[torch.Tensor]:
        like = _first_tensor([*args[1], *args[0]])   # saved, then grads
        return [_like_or_empty(g, like) for g in self._run_backward(*args)]

    def _fake_backward(self, *args: Any) -> list[torch.Tensor]:
        call, _ = self._backward_call(args)
        like = _first_tensor([*call.saved, *call.grads])
        return [_like_or_empty(g, like) for g in self._backward_fake(call)]


_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def dispatch_is_unobserved(args: Sequence[Any]) -> bool:
    """Whether nothing would see a fused op's call through the dispatcher that does not see its adapters
    run directly: no dispatch or function mode is active (the op counter, fake tensors, sequence
    parallelism's routing), nothing traces or compiles, no functorch transform and no profiler is on,
    and every tensor argument is a plain tensor or parameter (no subclass with its own dispatch) that holds
    values (not on the meta device, where the op's fake runs instead)."""
    if torch.compiler.is_compiling():  # first: torch.compile traces this function and must not see the rest
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
        return False
    if torch._C._get_tracing_state() is not None:
        return False
    if torch._C._are_functorch_transforms_active() or torch.autograd._profiler_enabled():
        return False
    for a in args:   # a loop, not all() over a generator: this runs twice per call of a small op
        if isinstance(a, torch.Tensor) and (type(a) not in _PLAIN_TENSOR_TYPES or a.is_meta):
            return False
    return True


def _autograd_function(op: FusedOp, direct: bool) -> type[torch.autograd.Function]:
    """The autograd formula of ``op``: its forward op below autograd, its backward op for gradients.

    ``direct``: the formula of :meth:`FusedOp.__call__`'s direct path, which runs the forward adapter
    itself, and the backward adapter itself unless something observes the dispatcher by the time the
    backward runs (:func:`dispatch_is_unobserved`); it takes the tensors, then one tuple ``(scalars, backend
    name, backend module)``. Otherwise the arguments are the forward op's."""
    n_tensors = op._n_tensors
    internal = op._internal
    arg_names = (*op.tensor_names, *op.attr_names, "backend")

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, *args: Any) -> Any:
            if direct:
                scalars, backend, ctx.impl = args[n_tensors]
                values = (*args[:n_tensors], *scalars)
                output = op._forward(ctx.impl, *values)
                args = (*values, backend)
            else:
                with torch._C._AutoDispatchBelowAutograd():
                    output = op.forward_op(*args)
            outputs = output if isinstance(output, tuple) else (output,)
            named = dict(zip(arg_names, args))
            named["needs_input_grad"] = ctx.needs_input_grad[:n_tensors]
            ctx.save_for_backward(*op._save(named, outputs))
            ctx.attrs = args[n_tensors:]
            if internal:
                ctx.mark_non_differentiable(*(outputs[i] for i in internal if outputs[i] is not None))
            # missing gradients stay None: the backends treat None as zero without reading a zero tensor
            ctx.set_materialize_grads(False)
            return output

        @staticmethod
        def backward(ctx: Any, *grads: Any) -> tuple[Any, ...]:
            needs = list(ctx.needs_input_grad[:n_tensors])
            none = (None,) if direct else (None,) * len(ctx.attrs)
            if not any(needs):
                return (None,) * n_tensors + none
            flowing = [g for i, g in enumerate(grads) if i not in internal]
            saved = list(ctx.saved_tensors)
            if direct and dispatch_is_unobserved([*flowing, *saved]):
                attrs = dict(zip(op.attr_names, ctx.attrs))   # ctx.attrs ends with the backend's name
                result = op._backward(ctx.impl, BackwardCall(flowing, saved, needs, attrs))
            else:
                result = op.backward_op(flowing, saved, needs, *ctx.attrs)
            return tuple(g if need else None for g, need in zip(result, needs)) + none

    # named at creation, so that the autograd graph names its nodes after the op ("lif_functionBackward")
    name = f"{op.name}_{'direct_' if direct else ''}function"
    return type(name, (Function,), {"__qualname__": name})


def _dispatched_return(annotation: Any) -> Any:
    """The custom op's return type for an adapter's: ``Tensor`` where the adapter may return None (the
    dispatcher path returns an empty tensor there)."""
    if annotation == torch.Tensor | None:
        return torch.Tensor
    if typing.get_origin(annotation) is tuple:
        return tuple[tuple(_dispatched_return(a) for a in typing.get_args(annotation))]
    return annotation


def _is_tensor_annotation(annotation: Any) -> bool:
    return annotation in (torch.Tensor, torch.Tensor | None)


def _schema_of(signature: inspect.Signature) -> str:
    def prototype(*args: Any) -> Any:  # pragma: no cover - only its signature is read
        raise NotImplementedError

    prototype.__signature__ = signature  # type: ignore[attr-defined]
    return torch.library.infer_schema(prototype, mutates_args=())


def define_op(
    name: str,
    *,
    backends: Mapping[str, str],
    forward: Callable[..., Any],
    forward_fake: Callable[..., Any],
    backward: Callable[[ModuleType, BackwardCall], Sequence[torch.Tensor | None]],
    backward_fake: Callable[[BackwardCall], Sequence[torch.Tensor | None]],
    save: SaveRule,
    internal_outputs: tuple[int, ...] = (),
    cost: CostFormula | CountAs | None = None,
    backend_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> FusedOp:
    """Declare a fused op once; see the module docstring for what is built.

    Args:
        name: the op's name (``"lif"``); its custom ops are ``neurostep::{name}_forward`` / ``_backward``.
        backends: backend name -> module (``{"cpu": "neurostep.kernels.lif.cpu", ...}``).
        forward: ``forward(impl, *tensors, *scalars) -> Tensor | tuple[Tensor, ...]``; its type hints
            give the schema (``Tensor``, ``Tensor | None``, ``bool``, ``int``, ``float``, ``str``).
        forward_fake: ``forward_fake(*tensors, *scalars, backend=...)``: outputs of the right shapes.
        backward: ``backward(impl, call: BackwardCall) -> one gradient (or None) per tensor input``.
        backward_fake: ``backward_fake(call)`` -> the backward's results as empty tensors of the right shapes.
        save: ``save(args, outputs)`` -> the tensors the backward reads (see :data:`SaveRule`).
        internal_outputs: indices of outputs that only carry saved values to the backward (not
            differentiable; the backward gets no gradient for them).
        cost: the counter's cost formula for the forward op; or :class:`~neurostep.engine.costs.CountAs`,
            the aten op it computes, whose counter rule then counts it; or None.
        backend_options: per backend, extra arguments of :meth:`KernelRegistry.register`
            (``devices=``, ``missing=``).
    """
    return FusedOp(name, backends=backends, forward=forward, forward_fake=forward_fake, backward=backward,
                   backward_fake=backward_fake, save=save, internal_outputs=internal_outputs, cost=cost,
                   backend_options=backend_options)


__all__ = ["BackwardCall", "FusedOp", "SaveRule", "define_op", "dispatch_is_unobserved"]
