"""Launching numba's parallel kernels from several Python threads without aborting the process.

numba runs ``prange`` loops on one of three threading layers, picked at the first parallel
launch: TBB, then OpenMP, then its own ``workqueue`` when neither is installed (or when the
user asks for it with ``NUMBA_THREADING_LAYER``). OpenMP and TBB accept launches from several
Python threads at once; ``workqueue`` does not and terminates the process. :data:`serialized`
decorates every CPU kernel entry point: under ``workqueue`` it lets one launch run at a time,
under the other layers it adds one attribute read per call and nothing else.

The first launch also registers a :class:`CompileNotice` with numba's event API, so that a kernel
compiling on its first use (up to about 8 seconds each on a fresh machine; numba's disk cache serves
every later process) says so instead of leaving the user at a silent prompt, and starts numba's thread
pool without changing torch's thread count (:func:`start_threads`).

:func:`launch_ranges` runs a serial kernel over ranges of work items on the same threading layer as
``prange``, for kernels whose ``prange`` body takes too long to compile. :func:`as_array` and
:func:`stand_in` make the kernels' array arguments.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO, TypeVar

import numba
import numpy as np
import torch
from numba.core import cgutils, types
from numba.core import event as numba_event
from numba.core.compiler import Compiler
from numba.core.typing.templates import Signature
from numba.extending import intrinsic, typeof_impl

F = TypeVar("F", bound=Callable[..., Any])


class CompileNotice(numba_event.Listener):
    """Reports the compilation of a kernel whose module starts with ``prefix``: one line when it starts
    and one when it ends, with the seconds it took.

    A kernel compiles on its first call in a process whose numba cache lacks it (a fresh clone, a new
    dtype or layout); a large one takes up to about 8 s, during which nothing else happens. The lines go
    to ``stream`` when it is a terminal and to the ``neurostep.kernels`` logger (INFO) otherwise, so
    logs and batch jobs stay quiet unless logging asks for them. Only the outermost compilation is
    reported: helpers compiled on the way belong to it.

    Args:
        prefix: module prefix of the functions to report (``"neurostep."``).
        stream: where the lines go when it is a terminal (None: ``sys.stderr`` at the time of the event).
    """

    def __init__(self, prefix: str = "neurostep.", stream: TextIO | None = None) -> None:
        self.prefix = prefix
        self.stream = stream
        self._depth = 0
        self._reported: tuple[str, float] | None = None   # name and start time of the reported compile

    def _emit(self, message: str) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        if getattr(stream, "isatty", lambda: False)():
            print(message, file=stream, flush=True)
        else:
            logging.getLogger("neurostep.kernels").info(message)

    def on_start(self, event: numba_event.Event) -> None:
        self._depth += 1
        if self._depth != 1:
            return
        fn = getattr(event.data.get("dispatcher"), "py_func", None)
        module = getattr(fn, "__module__", "") or ""
        if fn is None or not module.startswith(self.prefix):
            return
        name = f"{module.removeprefix(self.prefix)}.{fn.__name__}"
        types = ", ".join(sorted({str(t.dtype) for t in event.data.get("args", ()) if hasattr(t, "ndim")}))
        self._reported = (name, time.perf_counter())
        self._emit(f"neurostep: compiling {name}" + (f" ({types})" if types else "")
                   + " on its first use; numba caches it on disk for later runs ...")

    def on_end(self, event: numba_event.Event) -> None:
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0 and self._reported is not None:
            name, start = self._reported
            self._reported = None
            self._emit(f"neurostep: compiled {name} in {time.perf_counter() - start:.1f} s")


def start_threads() -> None:
    """Start numba's thread pool, if it has not started, and keep torch's intra-op thread count.

    numba starts its pool at its first parallel launch or thread query (``numba.get_num_threads``,
    ``numba.set_num_threads``). Its OpenMP layer then sets the OpenMP thread count of the calling
    thread to ``NUMBA_NUM_THREADS``, and torch reads its own count from that same setting: left alone,
    a process that asked torch for one thread would get two after its first neurostep kernel, and of
    several training runs in one process the first would sum its BatchNorm statistics over two threads'
    partial sums and round differently from the others (measured without this function: a Spikformer
    run on digits stopped at 700 steps with accuracy 0.9526 as a process's first run, at 600 steps with
    0.9499 after another run). So the count torch had before is set back; numba's kernels keep numba's
    own count.
    """
    before = torch.get_num_threads()
    numba.get_num_threads()
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


def set_threads(count: int) -> None:
    """Run torch's ops on ``count`` threads and numba's kernels on as many (at most ``NUMBA_NUM_THREADS``).

    numba's pool is started first (:func:`start_threads`): started after ``torch.set_num_threads``, it would
    set torch's count to ``NUMBA_NUM_THREADS``."""
    start_threads()
    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(count)


@contextlib.contextmanager
def use_threads(count: int) -> Iterator[None]:
    """:func:`set_threads` for the duration of a ``with`` block, then both counts as they were."""
    start_threads()   # before numba's count is read: reading it starts the pool, which changes torch's
    before = torch.get_num_threads(), numba.get_num_threads()
    set_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(before[1])
        torch.set_num_threads(before[0])


class LaunchGuard:
    """Serializes kernel launches when numba's threading layer is ``workqueue``; at the first launch,
    starts numba's thread pool (:func:`start_threads`) and registers a :class:`CompileNotice`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layer: str | None = None
        self._notice: CompileNotice | None = None
        self._notice_lock = threading.Lock()

    def first_launch(self) -> None:
        """Start numba's threads keeping torch's count, and register the compile notice with numba (once,
        even when several threads launch first; at the first launch, not at import)."""
        with self._notice_lock:
            if self._notice is None:
                start_threads()
                self._notice = CompileNotice()
                numba_event.register("numba:compile", self._notice)

    def needs_lock(self) -> bool:
        if self._layer is None:
            try:
                self._layer = numba.threading_layer()
            except ValueError:   # no parallel launch yet: the first one chooses the layer
                return True
        return self._layer == "workqueue"

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def launch(*args: Any, **kwargs: Any) -> Any:
            if self._notice is None:
                self.first_launch()
            if not self.needs_lock():
                return fn(*args, **kwargs)
            with self._lock:
                return fn(*args, **kwargs)

        return launch  # type: ignore[return-value]


# One guard for the process: the workqueue pool it protects is one per process too.
serialized = LaunchGuard()


@numba.njit(inline="always")
def span_of(slot, n_slots, n_items):
    """Items ``lo <= i < hi`` of range ``slot`` when ``n_items`` are cut into ``n_slots`` contiguous ranges
    whose sizes differ by at most one (the static schedule ``prange`` uses)."""
    base, extra = n_items // n_slots, n_items % n_slots
    lo = slot * base + min(slot, extra)
    return lo, lo + base + (1 if slot < extra else 0)


def range_slots(n_items: int) -> int:
    """How many ranges a kernel's ``n_items`` are cut into in this thread: ``numba.get_num_threads()`` (so
    ``numba.set_num_threads`` and ``NUMBA_NUM_THREADS`` apply as to ``prange``), at most one per item, at
    least one. Per-range output buffers are sized by it."""
    return max(1, min(numba.get_num_threads(), n_items))


def numba_type(kind: str, dtype: str) -> types.Type:
    """The numba type of one kernel argument: ``"i"`` int64, ``"b"`` bool, ``"f"`` a ``dtype`` scalar,
    ``"fR"`` a C-contiguous ``dtype`` array of rank R, ``"i8"`` a C-contiguous int8 vector, ``"d1"`` a
    C-contiguous float64 vector whatever ``dtype`` is (sums kept in double precision), ``"none"`` None."""
    fixed = {"i": types.int64, "b": types.boolean, "i8": types.int8[::1], "d1": types.float64[::1],
             "none": types.none}
    if kind in fixed:
        return fixed[kind]
    scalar = numba.from_dtype(np.dtype(dtype))
    if kind == "f":
        return scalar
    if kind[:1] == "f" and kind[1:].isdigit():
        return types.Array(scalar, int(kind[1:]), "C")
    raise ValueError(f"unknown argument kind {kind!r} (one of i, b, f, fR, i8, d1, none)")


def as_array(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's memory as a NumPy array (no copy), for a kernel argument.

    It detaches only where ``numpy()`` would refuse: grad mode on and a tensor that requires a gradient. A
    fused op's backends run with grad mode off (inside its autograd function, or for tensors that need no
    gradient), and a detach is a dispatched torch op: several microseconds per array with cold caches, for
    ops that pass a dozen arrays per call."""
    return t.detach().numpy() if t.requires_grad and torch.is_grad_enabled() else t.numpy()


def stand_in(kind: str, dtype: str | np.dtype) -> Any:
    """A value of ``kind`` (:func:`numba_type`) for a kernel argument that this call of the kernel does not read.

    A kernel that takes an optional array compiles once when every call passes an array of the same type:
    ``None``, or a strided view such as ``out[:, :, 0]``, would be typed differently and compile a second
    variant (the decayed linear attention's first forward spent 2.5 s compiling its gathers with such a view
    as the stand-in, against 1.5 s; 2-core AMD EPYC, 2026-12-05). The value is one per kind and dtype for the
    process, shared by every caller: kernels must never write it. Arrays have one element per dimension.
    """
    return _stand_in_for(kind, dtype)


@functools.cache
def _stand_in_for(kind: str, dtype: str | np.dtype | type) -> Any:
    # keyed on the dtype as the caller spells it: ``np.dtype(...).name`` costs about 3 us, and an op such
    # as the selective scan asks for thirty stand-ins per call (a tenth of a small call's time)
    return _stand_in(kind, np.dtype(dtype).name)


@functools.cache
def _stand_in(kind: str, dtype: str) -> Any:
    # a value numba types as numba_type(kind, dtype): the kind is read in one place only
    numba_t = numba_type(kind, dtype)
    if isinstance(numba_t, types.Array):
        return np.empty((1,) * numba_t.ndim, dtype=numba.np.numpy_support.as_dtype(numba_t.dtype))
    if numba_t == types.none:
        return None
    return numba.np.numpy_support.as_dtype(numba_t).type(0)


def range_kernel_signature(kinds: tuple[str, ...], dtype: str, variant: str) -> Signature:
    """``void(lo, hi, slot, variant, args)``: ``variant`` of kind ``"none"`` or ``"i8"``, ``args`` a tuple of
    arguments of these kinds (:func:`numba_type`)."""
    return types.void(types.int64, types.int64, types.int64, numba_type(variant, dtype),
                      types.Tuple(tuple(numba_type(k, dtype) for k in kinds)))


class CompiledFunction(types.WrapperAddressProtocol):
    """A numba function compiled for one signature, passed to another numba function by address (numba's
    wrapper address protocol), as an argument of first-class function type.

    The callee is then neither compiled into the caller nor optimised again with it, and one compilation of
    the caller serves every function of that signature: a range kernel called by its launcher, one
    surrogate's row function called by the LIF backward. Typed exactly as the caller's parameter, so a call
    from Python skips the conversion numba would otherwise look up on every call with a dispatcher
    argument (a launch took about 70 us that way, about 9 us this way)."""

    def __init__(self, dispatcher: Any, signature: Signature) -> None:
        self.dispatcher = dispatcher
        self._signature = signature
        self.numba_type = types.FunctionType(signature)
        result = dispatcher.get_compile_result(signature)
        self._address = result.library.get_pointer_to_function(result.fndesc.llvm_cfunc_wrapper_name)

    def __wrapper_address__(self) -> int:
        return self._address

    @property
    def address(self) -> int:
        """The address of the compiled function's C wrapper, which :func:`range_launcher`'s launchers take."""
        return self._address

    def signature(self) -> Signature:
        return self._signature


def compiled_function(fn: Callable[..., Any], signature: Signature, **options: Any) -> CompiledFunction:
    """``fn`` compiled with ``numba.njit(signature, cache=True, nogil=True, **options)`` (or loaded from
    numba's disk cache), as an argument of first-class function type (:class:`CompiledFunction`)."""
    return CompiledFunction(numba.njit(signature, cache=True, nogil=True, **options)(fn), signature)


class NoAliasCompiler(Compiler):
    """numba's default nopython pipeline, lowering the function with ``noalias`` on its array arguments: the
    promise numba itself makes for a ``prange`` body when it finds no aliasing among the arrays, so a
    range kernel is compiled under the same assumption as the ``prange`` body it replaces. (It did not
    measurably change the selective scan's run time, which stays 0-13% behind its ``prange`` version;
    ``docs/design.md``, "First call".)"""

    def define_pipelines(self):
        self.state.flags.noalias = True
        return super().define_pipelines()


@typeof_impl.register(CompiledFunction)
def _typeof_compiled_function(val: CompiledFunction, c: Any) -> types.Type:
    # the type made once, not on every call from the signature (numba's default for this protocol)
    return val.numba_type


@functools.cache
def range_kernel(kernel: Callable[..., None], kinds: tuple[str, ...], dtype: str, variant: str) -> CompiledFunction:
    """``kernel`` compiled (or loaded from numba's disk cache) for one signature, kept for the process.
    See :func:`launch_ranges`."""
    return compiled_function(kernel, range_kernel_signature(kinds, dtype, variant), error_model="numpy",
                             pipeline_class=NoAliasCompiler)


@intrinsic
def run_time(typingctx, value):
    """``value`` typed as a run-time value of its type, not as a compile-time literal.

    numba types a constant argument of a call between compiled functions (``f(x, False)``) as a literal and
    compiles the callee once per literal value. A helper called with ``True`` from one kernel and ``False``
    from another then compiles twice, where ``f(x, run_time(False))`` compiles once for both (the selective
    scan's chunk preparation, about 0.7 s of its first backward)."""
    unliteral = types.unliteral(value)

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[0], value, unliteral)

    return unliteral(value), codegen


@intrinsic
def _address_of(typingctx, value):
    """The address of a copy of ``value`` in the calling function's stack frame (an ``intp``), valid until
    that function returns."""
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, args[0].type)
        builder.store(args[0], slot)
        return builder.ptrtoint(slot, context.get_value_type(types.intp))

    return types.intp(value), codegen


@intrinsic
def _kernel_args_at(typingctx, address, kernel):
    """The argument tuple of ``kernel`` (a first-class function whose fifth parameter is a tuple) stored at
    ``address`` by :func:`_address_of`; returned as a new reference, as a call's result is."""
    tuple_type = kernel.signature.args[4]

    def codegen(context, builder, signature, args):
        pointer = builder.inttoptr(args[0], context.get_value_type(tuple_type).as_pointer())
        value = builder.load(pointer)
        context.nrt.incref(builder, tuple_type, value)
        return value

    return tuple_type(address, kernel), codegen


def function_at(context: Any, builder: Any, function_type: types.FunctionType, address: Any) -> Any:
    """For an intrinsic's code generation: the first-class function value of ``function_type`` whose C wrapper is
    at ``address`` (an LLVM ``intp``, such as :attr:`CompiledFunction.address` passed in as an integer).

    A numba function that takes the function itself as an argument unboxes it on every call through two calls
    back into Python (numba's ``_get_wrapper_address`` and ``_get_jit_address``), each unpickling the
    signature: with cold caches about 90 us per call, more than all its other arguments. Given the address
    instead, the value is made here, with no Python object and no numba-convention entry, so calls go to the
    C wrapper, as they do for a function unboxed from a :class:`CompiledFunction`."""
    function = cgutils.create_struct_proxy(function_type)(context, builder)
    pointer = context.get_value_type(types.voidptr)
    function.c_addr = builder.inttoptr(address, pointer)
    function.py_addr = cgutils.get_null_value(pointer)
    function.jit_addr = cgutils.get_null_value(pointer)
    return function._getvalue()


@intrinsic
def _range_kernel_at(typingctx, address, variant, args):
    """The range kernel whose C wrapper is at ``address`` (an ``intp``, :attr:`CompiledFunction.address`), as a
    first-class function of the signature that ``variant`` and ``args`` have (:func:`range_kernel_signature`),
    made without calling back into Python (:func:`function_at`)."""
    function_type = types.FunctionType(types.void(types.int64, types.int64, types.int64, variant, args))

    def codegen(context, builder, signature, llargs):
        return function_at(context, builder, function_type, llargs[0])

    return function_type(address, variant, args), codegen


def _launch(kernel_address, n_slots, n_items, variant, args):
    kernel = _range_kernel_at(kernel_address, variant, args)
    # The loop body gets the arguments' address, not the tuple: numba turns a ``prange`` body into a
    # function that takes every variable the body reads as a parameter of its own, and compiling that
    # function took 1.9 s with the selective scan backward's 28 arrays and scalars against 1.0 s this way
    # (2-core AMD EPYC, 2026-12-05, a process's second launcher).
    address = _address_of(args)
    for slot in numba.prange(n_slots):
        s = np.int64(slot)
        lo, hi = span_of(s, n_slots, n_items)
        kernel(lo, hi, s, variant, _kernel_args_at(address, kernel))


@functools.cache
def range_launcher(kinds: tuple[str, ...], dtype: str, variant: str) -> Any:
    """The parallel launcher of every kernel of this signature: a ``prange`` over the slots whose body calls
    ``kernel(lo, hi, slot, variant, args)`` on the span (:func:`span_of`) of each. The launcher takes the
    kernel's address (:attr:`CompiledFunction.address`) and calls it there: the kernel is not compiled into
    the launcher."""
    signature = range_kernel_signature(kinds, dtype, variant)
    launch_types = types.void(types.intp, types.int64, types.int64, *signature.args[3:])
    return numba.njit(launch_types, parallel=True, cache=True)(_launch)


def _float_dtype(kinds: tuple[str, ...], args: tuple) -> str:
    """The dtype of the ``"f..."`` arguments, read from the first of them (float64 when there is none); the
    others must match it, or the call is refused."""
    for kind, arg in zip(kinds, args):
        if kind[:1] == "f":
            return _dtype_name(np.asarray(arg).dtype)
    return "float64"


@functools.cache
def _dtype_name(dtype: np.dtype) -> str:
    return dtype.name


def launch_ranges(kernel: Callable[..., None], kinds: tuple[str, ...], n_slots: int, n_items: int,
                  variant: np.ndarray | None, args: tuple) -> None:
    """Run ``kernel(lo, hi, slot, variant, args)`` over ``n_items`` work items cut into ``n_slots`` ranges,
    the ranges in parallel on numba's threading layer, as a ``prange`` loop's iterations are.

    ``kernel`` is a plain Python function, compiled here on first use as a serial ``nogil`` numba function
    (cached on disk): it processes the items ``lo <= i < hi`` of range ``slot`` (below ``n_slots``; a
    per-range output buffer may be indexed by it) and unpacks ``args``, a tuple of arrays and scalars
    written in place. It is compiled with its arrays declared not to overlap (:class:`NoAliasCompiler`):
    an array the kernel writes must share no memory with any other array in ``args``. ``variant`` is None
    or an int8 array: the kernel tests ``variant is None`` and numba compiles only the branch taken, one
    compilation per case.

    Why not a ``prange`` over the items inside the kernel: numba compiles a ``prange`` loop by copying its
    body into a generated function, and LLVM optimizes that function's code again inside the kernel
    around it. For the selective scan that took 2.5 times as long as compiling the same loop as a serial
    function (13 s and 25 s for its forward and backward from a cold cache, 2-core AMD EPYC, 2026-12-04).
    Here the launcher is one small ``prange`` loop shared by all kernels of a signature, calling the
    kernel through its address, and it runs on the same threads as any ``prange`` loop (a pool of Python
    threads instead made a Mamba training step up to 1.33x slower where torch's OpenMP threads spin).

    Args:
        kernel: the Python function ``(lo, hi, slot, variant, args)``.
        kinds: one entry per element of ``args`` (:func:`numba_type`). The ``"f..."`` arguments share one
            float dtype, that of the first of them; arrays must have exactly these types: anything else
            raises TypeError.
        n_slots: number of ranges (:func:`range_slots`); n_items: number of work items.
        variant: None or an int8 array (selects the compiled variant); args: the kernel's arguments.
    """
    variant_kind = "none" if variant is None else "i8"
    dtype = _float_dtype(kinds, args)
    compiled = range_kernel(kernel, kinds, dtype, variant_kind)
    range_launcher(kinds, dtype, variant_kind)(compiled.address, n_slots, n_items, variant, args)
