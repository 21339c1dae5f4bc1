"""The modules a NIR graph loads into, and the recurrent layer that exports as a NIR subgraph.

Every module takes time-first inputs ``(T, B, *features)`` for a sequence, and the stateful ones also
``(B, *features)`` for one step through ``step``. Stateless layers (affine maps, convolutions,
pooling) act on each step alike; the neurons and :class:`NIRNetwork` follow the recurrent-step
protocol (``init_state`` / ``step`` / ``scan``) with explicit state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neurostep.engine import Recurrent, check_tensor, compute_dtype, run_child, scan_by_steps
from neurostep.kernels.lif import LIFState, lif_scan
from neurostep.kernels.lif.reference import spike
from neurostep.neuro.cuba import CubaLIF, CubaLIFState, firing_threshold
from neurostep.neuro.surrogate import Sigmoid, SurrogateFunction, resolve_surrogate

__all__ = [
    "Flatten",
    "NIRCubaLIF",
    "NIRLIF",
    "NIRNetwork",
    "NetworkState",
    "RecurrentSpiking",
    "RecurrentSpikingState",
    "SampleWise",
    "Scale",
    "SumPool2d",
    "Threshold",
]


class SampleWise(nn.Module):
    """Apply a per-sample module (``nn.Conv2d`` on ``(N, C, H, W)``...) to inputs with any number of
    leading time/batch dims: ``(*lead, *sample)`` -> ``(*lead, *out_sample)``, where ``sample`` is the
    last ``sample_ndim`` dims."""

    def __init__(self, module: nn.Module, sample_ndim: int) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if not isinstance(sample_ndim, int) or sample_ndim < 1:
            raise ValueError(f"sample_ndim must be a positive int, got {sample_ndim!r}")
        self.module = module
        self.sample_ndim = sample_ndim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim <= self.sample_ndim:
            raise ValueError(f"{type(self.module).__name__} expects (*lead, *sample) with {self.sample_ndim} sample "
                             f"dims and at least one leading dim, got shape {tuple(x.shape)}")
        lead = x.shape[:-self.sample_ndim]
        y = self.module(x.reshape(-1, *x.shape[-self.sample_ndim:]))
        return y.reshape(*lead, *y.shape[1:])


class Flatten(nn.Module):
    """NIR's Flatten: ``start_dim``/``end_dim`` count within one sample (dim 0 = its first feature dim),
    so the module works for ``(T, B, *sample)`` sequences and ``(B, *sample)`` steps alike."""

    def __init__(self, start_dim: int, end_dim: int, sample_ndim: int) -> None:
        super().__init__()
        if not isinstance(sample_ndim, int) or sample_ndim < 1:
            raise ValueError(f"sample_ndim must be a positive int, got {sample_ndim!r}")
        for name, d in (("start_dim", start_dim), ("end_dim", end_dim)):
            if not -sample_ndim <= d < sample_ndim:
                raise ValueError(f"{name} must index one of the {sample_ndim} sample dims, got {d}")
        # negative dims count from the end, which is where the sample dims are whatever the lead
        self.start = start_dim - sample_ndim if start_dim >= 0 else start_dim
        self.end = end_dim - sample_ndim if end_dim >= 0 else end_dim
        self.start_dim, self.end_dim, self.sample_ndim = start_dim, end_dim, sample_ndim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.start, self.end)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}, sample_ndim={self.sample_ndim}"


class Scale(nn.Module):
    """NIR's Scale: ``y = x * scale``, ``scale`` of the sample's shape (or broadcastable to it)."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.get_default_dtype()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype)


class Threshold(nn.Module):
    """NIR's Threshold: ``z = x > threshold`` (0/1 in ``x``'s dtype), sigmoid surrogate gradient."""

    def __init__(self, threshold: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.get_default_dtype()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spike(x - self.threshold.to(x.dtype), "sigmoid", strict=True)


class SumPool2d(nn.Module):
    """Sum over each pooling window of ``(N, C, H, W)`` inputs (zero padding): NIR's SumPool2d."""

    def __init__(self, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), tuple(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a divisor of 1 turns the window mean into the window sum, padded entries counting as 0
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=True,
                            divisor_override=1)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def _optional_buffer(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    module.register_buffer(name, None if value is None else torch.as_tensor(value, dtype=torch.get_default_dtype()))


class NIRLIF(Recurrent):
    """NIR's LIF and IF neurons on the fused ``lif_scan`` kernel: fire on ``H > v_threshold`` (NIR's rule), or on
    ``H >= v_threshold`` with ``strict=False`` (a neurostep neuron that went through NIR).

    Per step, with ``X = gain * x + bias`` (per-neuron ``gain`` and ``bias`` of the sample's shape,
    None meaning 1 and 0): ``H = V + k (X - (V - v_reset))`` with ``decay_input``, else
    ``H = V - k (V - v_reset) + X``; fire ``H > v_threshold``; reset to ``v_reset``. ``k = dt / tau``
    (0 for IF). The loader folds NIR's ``r`` and ``v_leak`` into ``gain`` and ``bias``.
    Input/output ``(T, *lanes)``; state :class:`~neurostep.kernels.lif.LIFState`, ``v`` starts at
    ``v_reset``.
    """

    time_dim = 0

    def __init__(self, *, tau_inv: float, v_threshold: float, v_reset: float, decay_input: bool,
                 strict: bool = True, gain: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 surrogate: str | SurrogateFunction | None = None, backend: str = "auto") -> None:
        super().__init__()
        if not 0.0 <= tau_inv <= 1.0 or (decay_input and tau_inv == 1.0):
            raise ValueError(f"tau_inv must be in [0, 1] ([0, 1) with decay_input), got {tau_inv}")
        for name, value in (("v_threshold", v_threshold), ("v_reset", v_reset)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite float, got {value!r}")
        self.tau_inv, self.v_threshold, self.v_reset = float(tau_inv), float(v_threshold), float(v_reset)
        self.decay_input = bool(decay_input)
        self.strict = bool(strict)
        _optional_buffer(self, "gain", gain)
        _optional_buffer(self, "bias", bias)
        self.surrogate = resolve_surrogate(Sigmoid() if surrogate is None else surrogate)
        self.backend = backend

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> LIFState:
        """``v = v_reset`` for lanes of shape ``batch_shape``."""
        dtype = compute_dtype(dtype or torch.get_default_dtype())
        return LIFState(torch.full(tuple(batch_shape), self.v_reset, device=device, dtype=dtype))

    def scan(self, x: torch.Tensor, state: LIFState | None = None) -> tuple[torch.Tensor, LIFState]:
        """Spikes ``(T, *lanes)`` and the final state for input ``x (T, *lanes)``."""
        check_tensor("x", x, min_ndim=1)
        if state is not None and not isinstance(state, LIFState):
            raise TypeError(f"state must be a LIFState, got {type(state).__name__}")
        if self.gain is not None:
            x = x * self.gain.to(x.dtype)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)
        thr = firing_threshold(self.v_threshold, self.strict, x.dtype, x.device)
        return lif_scan(x, state, tau_inv=self.tau_inv, v_threshold=thr, v_reset=self.v_reset,
                        decay_input=self.decay_input, surrogate=self.surrogate.name, alpha=self.surrogate.alpha,
                        output_final_state=True, backend=self.backend)

    def step(self, x_t: torch.Tensor, state: LIFState | None) -> tuple[torch.Tensor, LIFState]:
        """One step: ``x_t (*lanes)`` -> spikes ``(*lanes)`` and the new state."""
        check_tensor("x_t", x_t)
        spikes, state = self.scan(x_t.unsqueeze(0), state)
        return spikes[0], state

    def extra_repr(self) -> str:
        rule = ">" if self.strict else ">="
        return (f"tau_inv={self.tau_inv:.6g}, fire on H {rule} {self.v_threshold:.8g}, v_reset={self.v_reset:.6g}, "
                f"decay_input={self.decay_input}, gain={'yes' if self.gain is not None else 'no'}, "
                f"bias={'yes' if self.bias is not None else 'no'}")


class NIRCubaLIF(Recurrent):
    """NIR's CubaLIF: a per-neuron input ``gain`` (None: 1), then :class:`~neurostep.neuro.CubaLIF` (with
    ``strict_threshold=True`` for NIR's ``v > v_threshold``). Input/output ``(T, *lanes)``; state
    :class:`~neurostep.neuro.CubaLIFState`."""

    time_dim = 0

    def __init__(self, neuron: CubaLIF, gain: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(neuron, CubaLIF):
            raise TypeError(f"neuron must be a CubaLIF, got {type(neuron).__name__}")
        self.neuron = neuron
        _optional_buffer(self, "gain", gain)

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> CubaLIFState:
        """The neuron's resting state for lanes ``batch_shape``."""
        return self.neuron.init_state(batch_shape, device, dtype)

    def scan(self, x: torch.Tensor, state: CubaLIFState | None = None) -> tuple[torch.Tensor, CubaLIFState]:
        """Spikes ``(T, *lanes)`` and the final state for input ``x (T, *lanes)``."""
        check_tensor("x", x, min_ndim=1)
        if self.gain is not None:
            x = x * self.gain.to(x.dtype)
        return self.neuron.scan(x, state)

    def step(self, x_t: torch.Tensor, state: CubaLIFState | None) -> tuple[torch.Tensor, CubaLIFState]:
        """One step: ``x_t (*lanes)`` -> spikes ``(*lanes)`` and the new state."""
        check_tensor("x_t", x_t)
        spikes, state = self.scan(x_t.unsqueeze(0), state)
        return spikes[0], state


@dataclass
class RecurrentSpikingState:
    """State of :class:`RecurrentSpiking`: the neuron's state and the last step's spikes ``(B, N)``
    (None before the first step)."""

    neuron: Any = None
    spikes: torch.Tensor | None = None


class RecurrentSpiking(Recurrent):
    """A spiking layer whose spikes feed back through an affine map: ``S[t] = neuron(x[t] + W S[t-1] + b)``.

    ``neuron`` is any neurostep neuron over ``(T, B, N)``; ``recurrent`` an ``nn.Linear(N, N)``.
    The first step has no feedback term at all (not even the bias), as a feedback edge of
    :class:`NIRNetwork`. The feedback needs each step's spikes before the next step, so ``scan``
    runs step by step. It exports as a NIR subgraph (input -> neuron -> output, neuron -> W -> neuron),
    the layout snntorch's ``RLeaky`` uses.
    """

    time_dim = 0

    def __init__(self, neuron: Recurrent, recurrent: nn.Linear) -> None:
        super().__init__()
        if not isinstance(neuron, Recurrent):
            raise TypeError(f"neuron must be a neurostep recurrent neuron, got {type(neuron).__name__}")
        if not isinstance(recurrent, nn.Linear) or recurrent.in_features != recurrent.out_features:
            raise TypeError("recurrent must be a square nn.Linear(N, N)")
        self.neuron = neuron
        self.recurrent = recurrent

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> RecurrentSpikingState:
        """A fresh state: the neuron's is created at the first step, no spikes yet."""
        return RecurrentSpikingState()

    def step(self, x_t: torch.Tensor, state: RecurrentSpikingState | None
             ) -> tuple[torch.Tensor, RecurrentSpikingState]:
        """One step: ``x_t (B, N)`` -> spikes ``(B, N)`` and the new state."""
        check_tensor("x_t", x_t, min_ndim=1)
        state = state if state is not None else RecurrentSpikingState()
        drive = x_t if state.spikes is None else x_t + self.recurrent(state.spikes)
        s, neuron_state = run_child(self.neuron, drive, state.neuron, True)
        return s, RecurrentSpikingState(neuron_state, s)

    def scan(self, x: torch.Tensor, state: RecurrentSpikingState | None = None
             ) -> tuple[torch.Tensor, RecurrentSpikingState]:
        """Spikes ``(T, B, N)`` and the final state for input ``x (T, B, N)``."""
        check_tensor("x", x, min_ndim=2)
        return scan_by_steps(self, x, state)


@dataclass
class NetworkState:
    """State of a :class:`NIRNetwork`: each stateful node's state by node name (absent: fresh), and the
    last step's output of every node read through a feedback edge (absent before the first step)."""

    nodes: dict[str, Any] = field(default_factory=dict)
    feedback: dict[str, torch.Tensor] = field(default_factory=dict)


class NIRNetwork(Recurrent):
    """A NIR graph run on neurostep modules: one input node, one output node, edges summed at their target.

    Nodes are evaluated in a topological order of the graph without its feedback edges (the edges that
    close a cycle, found by a depth-first walk from the input). A feedback edge carries its source's
    output of the previous step (nothing at the first step). A graph without feedback edges runs
    ``scan`` node by node, each neuron over the whole sequence in one kernel call; a graph with
    them steps all nodes once per time step. Input ``(T, B, *sample)``, output ``(T, B, *out)``.

    Args:
        modules: node name -> module (None for the input and output nodes, which pass values on).
        edges: ``(source, target)`` pairs.
        input_name, output_name: the input and output nodes.
        nir_nodes: node name -> the NIR node it was loaded from, kept for re-export.
    """

    time_dim = 0

    def __init__(self, modules: dict[str, nn.Module | None], edges: list[tuple[str, str]], input_name: str,
                 output_name: str, nir_nodes: dict[str, Any] | None = None) -> None:
        super().__init__()
        names = list(modules)
        for end in (input_name, output_name):
            if end not in modules:
                raise ValueError(f"node {end!r} is not among the graph's nodes {names}")
        for src, dst in edges:
            for n in (src, dst):
                if n not in modules:
                    raise ValueError(f"edge ({src!r}, {dst!r}) names node {n!r}, which the graph does not have")
        self.names = names
        self.edges = [(str(a), str(b)) for a, b in edges]
        self.input_name, self.output_name = input_name, output_name
        self.nir_nodes = dict(nir_nodes or {})
        # ModuleDict keys cannot hold dots, NIR names (module paths) often do
        self.keys_by_name: dict[str, str] = {}
        self.layers = nn.ModuleDict()
        for i, (name, module) in enumerate(modules.items()):
            if module is None:
                continue
            key = f"n{i}_" + "".join(c if c.isalnum() or c == "_" else "_" for c in name)
            self.keys_by_name[name] = key
            self.layers[key] = module
        self.order, self.feedback_edges = _evaluation_order(names, self.edges, input_name)
        if output_name not in self.order:
            raise ValueError(f"the output node {output_name!r} cannot be reached from the input {input_name!r}")
        self.preds: dict[str, list[str]] = {n: [] for n in names}
        for src, dst in self.edges:
            self.preds[dst].append(src)

    def module(self, name: str) -> nn.Module | None:
        """The module of node ``name`` (None for pass-through nodes)."""
        key = self.keys_by_name.get(name)
        return None if key is None else self.layers[key]

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> NetworkState:
        """A fresh state: node states are created at their first call."""
        return NetworkState()

    def _gather(self, name: str, x: torch.Tensor, outputs: dict[str, torch.Tensor],
                feedback: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if name == self.input_name:
            return x
        total = None
        for src in self.preds[name]:
            value = outputs.get(src)
            if value is None:
                value = feedback.get(src)   # a feedback edge: last step's output, nothing at step 0
            if value is None:
                continue
            total = value if total is None else total + value
        return total

    def _run(self, x: torch.Tensor, state: NetworkState | None, stepping: bool) -> tuple[torch.Tensor, NetworkState]:
        state = state if state is not None else NetworkState()
        if not isinstance(state, NetworkState):
            raise TypeError(f"state must be a NetworkState, got {type(state).__name__}")
        outputs: dict[str, torch.Tensor] = {}
        new_nodes = dict(state.nodes)
        for name in self.order:
            inp = self._gather(name, x, outputs, state.feedback)
            if inp is None:
                raise ValueError(f"node {name!r} receives nothing at this step (its only inputs are feedback edges)")
            module = self.module(name)
            if module is None:
                out = inp
            elif isinstance(module, Recurrent):
                out, new_nodes[name] = run_child(module, inp, state.nodes.get(name), stepping)
            else:
                out = module(inp)
            outputs[name] = out
        feedback = {src: outputs[src] for src, _ in self.feedback_edges}
        return outputs[self.output_name], NetworkState(new_nodes, feedback)

    def step(self, x_t: torch.Tensor, state: NetworkState | None) -> tuple[torch.Tensor, NetworkState]:
        """One step: ``x_t (B, *sample)`` -> ``(B, *out)`` and the new state."""
        check_tensor("x_t", x_t, min_ndim=1)
        return self._run(x_t, state, True)

    def scan(self, x: torch.Tensor, state: NetworkState | None = None) -> tuple[torch.Tensor, NetworkState]:
        """A whole sequence ``x (T, B, *sample)`` -> ``(T, B, *out)`` and the final state."""
        check_tensor("x", x, min_ndim=2)
        if self.feedback_edges:
            return scan_by_steps(self, x, state)
        return self._run(x, state, False)

    def extra_repr(self) -> str:
        return f"input={self.input_name!r}, output={self.output_name!r}, feedback_edges={self.feedback_edges}"


def _evaluation_order(names: list[str], edges: list[tuple[str, str]], start: str
                      ) -> tuple[list[str], list[tuple[str, str]]]:
    """Topological order of the nodes reachable from ``start`` once feedback edges are removed, and those
    feedback edges (an edge to a node still on the depth-first path closes a cycle)."""
    succ: dict[str, list[str]] = {n: [] for n in names}
    for src, dst in edges:
        succ[src].append(dst)
    feedback: list[tuple[str, str]] = []
    state: dict[str, int] = {}      # 1: on the current path, 2: finished
    finished: list[str] = []
    stack: list[tuple[str, int]] = [(start, 0)]
    state[start] = 1
    while stack:
        node, i = stack.pop()
        if i < len(succ[node]):
            stack.append((node, i + 1))
            nxt = succ[node][i]
            mark = state.get(nxt)
            if mark == 1:
                feedback.append((node, nxt))
            elif mark is None:
                state[nxt] = 1
                stack.append((nxt, 0))
        else:
            state[node] = 2
            finished.append(node)
    # reverse post-order of a DFS is a topological order of the graph without its feedback edges
    return finished[::-1], feedback
