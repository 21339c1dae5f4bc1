"""neurostep <-> NIR conversion: :func:`export` a module to a ``nir.NIRGraph``, :func:`load` one back.

NIR describes neurons in continuous time; neurostep steps them. Both directions use the
forward-Euler step of length ``dt`` that spikingjelly 2.0 and snntorch 1.0 use for their NIR
exchange: for NIR's LIF ``tau dv/dt = (v_leak - v) + r I``,

``v[t] = v[t-1] + (dt / tau) * (v_leak - v[t-1] + r * I[t])``, then fire ``v[t] > v_threshold``
and reset to ``v_reset``; CubaLIF updates its current first and charges the membrane with the new
current. ``docs/nir.md`` has the table of node mappings and every refused case.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from neurostep.engine import Recurrent
from neurostep.layers.norm import BatchNormTokens
from neurostep.neuro.cuba import CubaLIF
from neurostep.neuro.neurons import IF, LIF, AdaptiveLIF, ParametricLIF, SpikingNeuron
from neurostep.neuro.surrogate import SurrogateFunction
from neurostep.nir.modules import (
    NIRLIF,
    Flatten,
    NIRCubaLIF,
    NIRNetwork,
    RecurrentSpiking,
    SampleWise,
    Scale,
    SumPool2d,
    Threshold,
)

if TYPE_CHECKING:
    import nir

__all__ = ["DEFAULT_DT", "NIRUnsupportedError", "export", "load"]

DEFAULT_DT = 1e-4
"""The step, in seconds, that spikingjelly's and snntorch's NIR exchange assume."""

THRESHOLD_RULE = "neurostep_threshold_rule"
ORIGINAL_THRESHOLD = "neurostep_v_threshold"


def _nir() -> Any:
    try:
        import nir
    except ImportError as exc:  # pragma: no cover - the extra is part of the tested environment
        raise ImportError("neurostep.nir needs the `nir` package: pip install 'neurostep[nir]'") from exc
    return nir


class NIRUnsupportedError(ValueError):
    """A node or module that NIR (or neurostep) cannot express exactly: ``node`` names it, ``reason`` says why."""

    def __init__(self, node: str, kind: str, reason: str) -> None:
        self.node, self.kind, self.reason = node, kind, reason
        super().__init__(f"{node or '<model>'} ({kind}): {reason}")


def _check_dt(dt: float) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a positive finite number of seconds, got {dt!r}")
    return float(dt)


# ============================================================================= export
def _below(value: float) -> float:
    """The float32 just below ``value``: ``H >= value`` and ``H > below`` agree for every float32 ``H``."""
    return float(np.nextafter(np.float32(value), np.float32(-np.inf)))


def _threshold(v_threshold: float, strict: bool) -> tuple[float, dict[str, Any]]:
    """NIR's ``v_threshold`` for a neuron firing on ``H > v_threshold`` (``strict``) or ``H >= v_threshold``,
    and the node metadata that lets :func:`load` restore a ``>=`` rule in every dtype, not only float32."""
    if strict:
        return v_threshold, {}
    return _below(v_threshold), {THRESHOLD_RULE: ">=", ORIGINAL_THRESHOLD: v_threshold}


def _full(shape: tuple[int, ...], value: float) -> np.ndarray:
    # neuron parameters travel in float64 so that dt * tau / dt round-trips to the same float32 leak
    return np.full(shape, value, dtype=np.float64)


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


class _Exporter:
    """Builds the node dict and edge list of one graph while walking a module tree."""

    def __init__(self, dt: float, approximate: bool, shapes: dict[nn.Module, tuple[tuple, tuple]]) -> None:
        self.nir = _nir()
        self.dt, self.approximate, self.shapes = dt, approximate, shapes
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.notes: list[str] = []

    # --- helpers ---------------------------------------------------------------------------
    def add(self, name: str, node: Any, srcs: list[str]) -> list[str]:
        if name in self.nodes:
            name = f"{name}#{len(self.nodes)}"
        self.nodes[name] = node
        self.edges.extend((s, name) for s in srcs)
        return [name]

    def refuse(self, path: str, module: nn.Module, reason: str) -> None:
        raise NIRUnsupportedError(path, type(module).__name__, reason)

    def inexact(self, path: str, module: nn.Module, what: str) -> None:
        """Refuse, or with ``approximate=True`` record what the graph leaves out."""
        if not self.approximate:
            self.refuse(path, module, f"{what}; pass approximate=True to export without it (it is recorded in "
                                      f"graph.metadata['approximations'])")
        self.notes.append(f"{path or '<model>'} ({type(module).__name__}): {what}")

    def in_shape(self, module: nn.Module, path: str) -> tuple[int, ...]:
        if module not in self.shapes:
            self.refuse(path, module, "the sample never reached this module, so its input shape is unknown")
        return self.shapes[module][0]

    # --- the walk --------------------------------------------------------------------------
    def convert(self, module: nn.Module, path: str, srcs: list[str], typ: tuple[int, ...] | None
                ) -> tuple[list[str], tuple[int, ...] | None]:
        """Add ``module`` fed by ``srcs`` (summed) whose per-sample input shape is ``typ``; returns its
        output node names and per-sample output shape."""
        for cls, handler in self.handlers():
            if isinstance(module, cls):
                return handler(module, path, srcs, typ)
        reason = _INEXPRESSIBLE.get(type(module).__name__, "NIR has no node for this module")
        self.refuse(path, module, reason)
        raise AssertionError("unreachable")

    def handlers(self) -> list[tuple[type | tuple[type, ...], Callable]]:
        from neurostep.neuro.spikegpt import SpikeGPT
        from neurostep.neuro.spikformer import ConvBNLIF, Spikformer, SpikformerBlock, SpikingMLP, SpikingPatchStem

        return [
            (NIRNetwork, self.network),
            (RecurrentSpiking, self.recurrent),
            ((nn.Sequential, nn.ModuleList), self.sequence),
            (Spikformer, self.children_in_order("patch_embed", "blocks", "head")),
            (SpikformerBlock, self.children_in_order("attn", "mlp")),
            (SpikeGPT, self.children_in_order("emb", "blocks", "head")),
            (SpikingMLP, self.children_in_order("fc1", "norm1", "lif1", "fc2", "norm2", "lif2")),
            (ConvBNLIF, self.conv_bn_lif),
            (SpikingPatchStem, self.patch_stem),
            ((nn.Identity, nn.Dropout), lambda m, p, s, t: (s, t)),
            (SampleWise, lambda m, p, s, t: self.convert(m.module, p, s, t)),
            (nn.Linear, self.linear),
            ((nn.BatchNorm1d, nn.BatchNorm2d, BatchNormTokens), self.batchnorm),
            ((nn.Conv1d, nn.Conv2d), self.conv),
            (nn.AvgPool2d, self.avgpool),
            (SumPool2d, self.sumpool),
            ((nn.Flatten, Flatten), self.flatten),
            (Scale, lambda m, p, s, t: (self.add(p, self.nir.Scale(scale=_array(m.scale)), s), t)),
            (Threshold, lambda m, p, s, t: (self.add(p, self.nir.Threshold(threshold=_array(m.threshold)), s), t)),
            ((SpikingNeuron, CubaLIF, NIRLIF, NIRCubaLIF), self.neuron),
        ]

    def sequence(self, module: nn.Module, path: str, srcs: list[str], typ):
        for name, child in module.named_children():
            srcs, typ = self.convert(child, f"{path}.{name}" if path else name, srcs, typ)
        return srcs, typ

    def children_in_order(self, *names: str):
        def handler(module: nn.Module, path: str, srcs: list[str], typ):
            for name in names:
                srcs, typ = self.convert(getattr(module, name), f"{path}.{name}" if path else name, srcs, typ)
            return srcs, typ
        return handler

    def conv_bn_lif(self, module: nn.Module, path: str, srcs: list[str], typ):
        p = f"{path}." if path else ""
        srcs, typ = self.convert(module.conv, p + "conv", srcs, typ)
        srcs, typ = self.convert(module.bn, p + "bn", srcs, typ)
        if module.pool is not None:
            self.refuse(p + "pool", module.pool, _INEXPRESSIBLE["MaxPool2d"])
        return self.convert(module.lif, p + "lif", srcs, typ)

    def patch_stem(self, module: nn.Module, path: str, srcs: list[str], typ):
        p = f"{path}." if path else ""
        for i, stage in enumerate(module.stages):
            srcs, typ = self.convert(stage, f"{p}stages.{i}", srcs, typ)
        self.convert(module.rpe, p + "rpe", srcs, typ)
        self.refuse(path, module, "its output is the feature map turned into tokens (N, D) by a transpose, and NIR "
                                  "has no transpose node; the stages and the position embedding above it convert")

    def network(self, module: NIRNetwork, path: str, srcs: list[str], typ):
        """Inline a loaded graph: its nodes under ``path``, its input's edges fed by ``srcs``.

        Nodes are re-created from the modules (so fine-tuned weights export), in evaluation order so
        that each neuron takes the per-sample shape of what feeds it.
        """
        p = f"{path}." if path else ""
        renamed: dict[str, str] = {}
        types: dict[str, tuple[int, ...] | None] = {module.input_name: typ}
        for name in module.order:
            if name == module.input_name:
                continue
            in_t = next((types[q] for q in module.preds[name] if types.get(q) is not None), None)
            if name == module.output_name:
                types[name] = in_t
                continue
            sub = module.module(name)
            if isinstance(sub, NIRNetwork):
                node = _subgraph(self, sub, p + name, in_t)
            elif isinstance(sub, (NIRLIF, NIRCubaLIF)):
                original = module.nir_nodes.get(name)
                shape = in_t or (np.shape(original.v_threshold) if original is not None else None) or _gain_shape(sub)
                if shape is None:
                    self.refuse(p + name, sub, "its neuron count is unknown")
                node = _NodeOf(self, sub, p + name).neuron(shape)
            elif isinstance(sub, (Flatten, nn.Flatten)) and in_t is not None:
                (renamed[name],), types[name] = self.flatten(sub, p + name, [], in_t)
                continue
            else:
                node = _NodeOf(self, sub, p + name).node()
            renamed[name] = self.add(p + name, node, [])[0]
            out_t = _node_output_type(node)
            if out_t is None and sub in self.shapes and isinstance(sub, SampleWise):
                out_t = self.shapes[sub][1][-sub.sample_ndim:]
            types[name] = out_t if out_t is not None else in_t
        outs: list[str] = []
        for src, dst in module.edges:
            if src == module.input_name:
                if dst == module.output_name:
                    outs.extend(srcs)
                else:
                    self.edges.extend((s, renamed[dst]) for s in srcs)
            elif dst == module.output_name:
                outs.append(renamed[src])
            else:
                self.edges.append((renamed[src], renamed[dst]))
        return outs, types.get(module.output_name, typ)

    def recurrent(self, module: RecurrentSpiking, path: str, srcs: list[str], typ):
        n = module.recurrent.in_features
        nir = self.nir
        neuron_node = _NodeOf(self, module.neuron, f"{path}.neuron").neuron((n,))
        w = module.recurrent
        w_node = (nir.Affine(weight=_array(w.weight), bias=_array(w.bias)) if w.bias is not None
                  else nir.Linear(weight=_array(w.weight)))
        sub = nir.NIRGraph(
            nodes={"input": nir.Input(input_type={"input": np.array([n])}), "neuron": neuron_node,
                   "w_rec": w_node, "output": nir.Output(output_type={"output": np.array([n])})},
            edges=[("input", "neuron"), ("neuron", "w_rec"), ("w_rec", "neuron"), ("neuron", "output")],
            type_check=False,
        )
        return self.add(path, sub, srcs), (n,)

    def linear(self, module: nn.Linear, path: str, srcs: list[str], typ):
        if srcs == ["input"] and typ is not None and len(typ) > 1:
            typ = typ[-1:]   # a first Linear maps the last dim: the dims before it (tokens) travel as batch
        if typ is not None and len(typ) != 1:
            self.refuse(path, module, f"it acts on the last of the per-sample dims {typ}, and NIR's Affine maps "
                                      "vectors; flatten the sample first")
        node = _NodeOf(self, module, path).node()
        return self.add(path, node, srcs), (module.out_features,)

    def batchnorm(self, module: nn.Module, path: str, srcs: list[str], typ):
        bn = module.bn if isinstance(module, BatchNormTokens) else module
        if bn.training:
            self.refuse(path, module, "in training mode it normalises with batch statistics; call model.eval() "
                                      "so it is a fixed affine map, folded into the layer before it")
        prev = srcs[0] if len(srcs) == 1 else None
        node = self.nodes.get(prev) if prev is not None else None
        nir = self.nir
        if not isinstance(node, (nir.Affine, nir.Linear, nir.Conv1d, nir.Conv2d)) or any(
                src == prev for src, _ in self.edges):
            self.refuse(path, module, "NIR has no normalisation node; it is folded into the Linear/Conv right "
                                      "before it, and there is none here")
        mean = bn.running_mean.detach().double()
        var = bn.running_var.detach().double()
        gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
        beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + bn.eps)
        weight = torch.as_tensor(node.weight, dtype=torch.float64)
        bias = torch.as_tensor(getattr(node, "bias", np.zeros(weight.shape[0])), dtype=torch.float64)
        new_w = (weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))).to(torch.float32).numpy()
        new_b = ((bias - mean) * scale + beta).to(torch.float32).numpy()
        if isinstance(node, nir.Linear):
            self.nodes[prev] = nir.Affine(weight=new_w, bias=new_b)
        elif isinstance(node, nir.Affine):
            self.nodes[prev] = nir.Affine(weight=new_w, bias=new_b)
        else:
            cls = type(node)
            self.nodes[prev] = cls(input_shape=node.input_shape, weight=new_w, stride=node.stride,
                                   padding=node.padding, dilation=node.dilation, groups=node.groups, bias=new_b)
        return srcs, typ

    def conv(self, module: nn.Module, path: str, srcs: list[str], typ):
        node = _NodeOf(self, module, path).node()
        return self.add(path, node, srcs), tuple(int(d) for d in node.output_type["output"])

    def avgpool(self, module: nn.AvgPool2d, path: str, srcs: list[str], typ):
        if module.ceil_mode or module.divisor_override is not None or (
                _pair(module.padding) != (0, 0) and not module.count_include_pad):
            self.refuse(path, module, "NIR's AvgPool2d divides by the window size with zero padding counted and "
                                      "floor rounding; ceil_mode, divisor_override and count_include_pad=False "
                                      "have no NIR form")
        node = _NodeOf(self, module, path).node()
        return self.add(path, node, srcs), self.shapes[module][1][-3:] if module in self.shapes else None

    def sumpool(self, module: SumPool2d, path: str, srcs: list[str], typ):
        node = self.nir.SumPool2d(kernel_size=np.array(module.kernel_size), stride=np.array(module.stride),
                                  padding=np.array(module.padding))
        return self.add(path, node, srcs), self.shapes[module][1][-3:] if module in self.shapes else None

    def flatten(self, module: nn.Module, path: str, srcs: list[str], typ):
        if typ is None:
            self.refuse(path, module, "the per-sample shape before it is unknown")
        if isinstance(module, Flatten):
            start, end = module.start_dim, module.end_dim
        else:
            # a plain nn.Flatten sees (T, B, *sample): its dims 0 and 1 are time and batch
            start, end = module.start_dim, module.end_dim
            full = len(typ) + 2
            start, end = start % full, end % full
            if start < 2:
                self.refuse(path, module, f"start_dim={module.start_dim} flattens the time or batch dim of "
                                          "(T, B, *sample) inputs; NIR's Flatten works within one sample")
            start, end = start - 2, end - 2
        node = self.nir.Flatten(input_type={"input": np.array(typ)}, start_dim=start, end_dim=end)
        return self.add(path, node, srcs), tuple(int(d) for d in node.output_type["output"])

    def neuron(self, module: nn.Module, path: str, srcs: list[str], typ):
        if typ is None:
            self.refuse(path, module, "the per-sample shape before it is unknown")
        node = _NodeOf(self, module, path).neuron(typ)
        return self.add(path, node, srcs), typ


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(i) for i in np.asarray(v).reshape(-1))
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _node_output_type(node: Any) -> tuple[int, ...] | None:
    out = getattr(node, "output_type", None) or {}
    value = out.get("output") if isinstance(out, dict) else None
    return None if value is None else tuple(int(d) for d in np.asarray(value).reshape(-1))


def _subgraph(ex: _Exporter, net: NIRNetwork, path: str, typ: tuple[int, ...] | None) -> Any:
    """A loaded nested graph exported back as a NIR subgraph node (per-sample input shape ``typ``)."""
    inner = _Exporter(ex.dt, ex.approximate, ex.shapes)
    nir = ex.nir
    outs, out_t = inner.network(net, "", ["input"], typ)
    in_t = typ if typ is not None else _node_output_type(net.nir_nodes.get(net.input_name))
    inner.nodes = {"input": nir.Input(input_type={"input": None if in_t is None else np.array(in_t)}), **inner.nodes}
    inner.nodes["output"] = nir.Output(output_type={"output": None if out_t is None else np.array(out_t)})
    inner.edges.extend((o, "output") for o in outs)
    ex.notes.extend(f"{path}.{n}" for n in inner.notes)
    return nir.NIRGraph(nodes=inner.nodes, edges=inner.edges, type_check=False)


class _NodeOf:
    """The NIR node of one leaf module (layers and neurons)."""

    def __init__(self, ex: _Exporter, module: nn.Module, path: str) -> None:
        self.ex, self.module, self.path, self.nir, self.dt = ex, module, path, ex.nir, ex.dt

    def node(self) -> Any:
        m, nir = self.module, self.nir
        if isinstance(m, nn.Linear):
            if m.bias is None:
                return nir.Linear(weight=_array(m.weight))
            return nir.Affine(weight=_array(m.weight), bias=_array(m.bias))
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            if m.padding_mode != "zeros":
                self.ex.refuse(self.path, m, f"padding_mode={m.padding_mode!r}; NIR convolutions pad with zeros")
            shape = self.ex.in_shape(m, self.path)
            bias = _array(m.bias) if m.bias is not None else np.zeros(m.out_channels, dtype=np.float32)
            if isinstance(m, nn.Conv1d):
                padding = m.padding if isinstance(m.padding, str) else int(m.padding[0])
                return nir.Conv1d(input_shape=int(shape[-1]), weight=_array(m.weight), stride=int(m.stride[0]),
                                  padding=padding, dilation=int(m.dilation[0]), groups=m.groups, bias=bias)
            padding = m.padding if isinstance(m.padding, str) else tuple(int(p) for p in m.padding)
            return nir.Conv2d(input_shape=(int(shape[-2]), int(shape[-1])), weight=_array(m.weight),
                              stride=tuple(int(s) for s in m.stride), padding=padding,
                              dilation=tuple(int(d) for d in m.dilation), groups=m.groups, bias=bias)
        if isinstance(m, nn.AvgPool2d):
            return nir.AvgPool2d(kernel_size=np.array(_pair(m.kernel_size)),
                                 stride=np.array(_pair(m.stride if m.stride is not None else m.kernel_size)),
                                 padding=np.array(_pair(m.padding)))
        if isinstance(m, SampleWise):
            return _NodeOf(self.ex, m.module, self.path).node()
        if isinstance(m, SumPool2d):
            return nir.SumPool2d(kernel_size=np.array(m.kernel_size), stride=np.array(m.stride),
                                 padding=np.array(m.padding))
        if isinstance(m, Flatten):
            return nir.Flatten(input_type={"input": None}, start_dim=m.start_dim, end_dim=m.end_dim)
        if isinstance(m, Scale):
            return nir.Scale(scale=_array(m.scale))
        if isinstance(m, Threshold):
            return nir.Threshold(threshold=_array(m.threshold))
        if isinstance(m, (NIRLIF, NIRCubaLIF)):
            shape = _gain_shape(m)
            if shape is None:
                self.ex.refuse(self.path, m, "its neuron count is unknown (no per-neuron parameter); export the "
                                             "model that contains it with a sample instead")
            return self.neuron(shape)
        self.ex.refuse(self.path, m, _INEXPRESSIBLE.get(type(m).__name__, "NIR has no node for this module"))
        raise AssertionError("unreachable")

    def neuron(self, shape: tuple[int, ...]) -> Any:
        """The NIR neuron node for neurons of per-sample shape ``shape``."""
        m, nir, dt, path = self.module, self.nir, self.dt, self.path
        shape = tuple(int(s) for s in shape)
        if isinstance(m, NIRLIF):
            return self._nir_lif(m, shape)
        if isinstance(m, NIRCubaLIF):
            return self._nir_cuba(m, shape)
        if isinstance(m, AdaptiveLIF):
            self.ex.refuse(path, m, "its threshold adapts with every spike, and NIR has no adaptive-threshold neuron")
        if isinstance(m, CubaLIF):
            return self._cuba(m, shape)
        if not isinstance(m, (IF, LIF, ParametricLIF)):
            self.ex.refuse(path, m, "only IF, LIF, ParametricLIF and CubaLIF neurons have NIR nodes")
        self._check_reset(m)
        vth = float(m.v_threshold.detach()) if isinstance(m.v_threshold, torch.Tensor) else float(m.v_threshold)
        k = m.tau_inv()
        k = float(k.detach()) if isinstance(k, torch.Tensor) else float(k)
        if m.convention == "snntorch":
            # snntorch's Leaky: H = beta V + X with beta = 1 - k, fire H > thr; a zero reset one step late
            # leaves the same spikes as NIR's immediate reset to 0 (only the reported membrane differs)
            if k == 0.0:
                return nir.IF(r=_full(shape, 1.0 / dt), v_threshold=_full(shape, vth), v_reset=_full(shape, 0.0))
            return nir.LIF(tau=_full(shape, dt / k), r=_full(shape, 1.0 / k), v_leak=_full(shape, 0.0),
                           v_threshold=_full(shape, vth), v_reset=_full(shape, 0.0))
        # spikingjelly convention: fire H >= thr, which NIR (H > thr) states with the float32 just below thr
        vr = float(m.v_reset)
        thr, meta = _threshold(vth, False)
        if k == 0.0:
            if m.decay_input and not isinstance(m, IF):
                self.ex.refuse(path, m, "tau=inf with decay_input=True never charges (k*X = 0); NIR has no such "
                                        "neuron")
            return nir.IF(r=_full(shape, 1.0 / dt), v_threshold=_full(shape, thr), v_reset=_full(shape, vr),
                          metadata=meta)
        r = 1.0 if m.decay_input else 1.0 / k
        return nir.LIF(tau=_full(shape, dt / k), r=_full(shape, r), v_leak=_full(shape, vr),
                       v_threshold=_full(shape, thr), v_reset=_full(shape, vr), metadata=meta)

    def _check_reset(self, m: SpikingNeuron) -> None:
        if m.convention == "snntorch":
            if m.snn_reset != "zero":
                what = ("subtracts the threshold one step late (snntorch's reset_delay), which neither NIR's reset "
                        "nor an immediate subtraction reproduces" if m.snn_reset == "subtract"
                        else "never resets, and NIR's LIF always resets")
                self.ex.refuse(self.path, m, f"snn_reset={m.snn_reset!r} {what}; snn_reset='zero' exports exactly")
            return
        if m.v_reset is None:
            self.ex.refuse(self.path, m, "soft reset (v_reset=None) subtracts the threshold, and NIR's neurons reset "
                                         "to v_reset")
        if m.detach_reset:
            self.ex.inexact(self.path, m, "detach_reset=True cuts the gradient through the reset, which NIR (forward "
                                          "dynamics only) does not record; a network trained after loading would "
                                          "learn differently")

    def _cuba(self, m: CubaLIF, shape: tuple[int, ...]) -> Any:
        if m.v_reset is None:
            self.ex.refuse(self.path, m, "soft reset (v_reset=None) subtracts the threshold, and NIR's CubaLIF "
                                         "resets to v_reset")
        if math.isinf(m.tau_syn) or math.isinf(m.tau_mem):
            self.ex.refuse(self.path, m, "an infinite time constant needs an infinite input weight in NIR's CubaLIF")
        if m.detach_reset:
            self.ex.inexact(self.path, m, "detach_reset=True cuts the gradient through the reset, which NIR does not "
                                          "record")
        dt = self.dt
        thr, meta = _threshold(m.v_threshold, m.strict_threshold)
        # I = (1 - 1/tau_syn) I + X is Euler with tau = tau_syn dt and w_in = tau_syn; the membrane likewise
        return self.nir.CubaLIF(tau_syn=_full(shape, m.tau_syn * dt), tau_mem=_full(shape, m.tau_mem * dt),
                                r=_full(shape, m.tau_mem), v_leak=_full(shape, m.v_leak),
                                v_threshold=_full(shape, thr), v_reset=_full(shape, m.v_reset),
                                w_in=_full(shape, m.tau_syn), metadata=meta)

    def _nir_lif(self, m: NIRLIF, shape: tuple[int, ...]) -> Any:
        dt, k = self.dt, m.tau_inv
        thr, meta = _threshold(m.v_threshold, m.strict)
        gain = np.broadcast_to(_array(m.gain).astype(np.float64), shape) if m.gain is not None else _full(shape, 1.0)
        bias = np.broadcast_to(_array(m.bias).astype(np.float64), shape) if m.bias is not None else _full(shape, 0.0)
        if k == 0.0:
            if m.bias is not None:
                self.ex.refuse(self.path, m, "an IF neuron with a constant input has no NIR node")
            return self.nir.IF(r=np.array(gain / dt), v_threshold=_full(shape, thr),
                               v_reset=_full(shape, m.v_reset), metadata=meta)
        r = gain if m.decay_input else gain / k
        v_leak = m.v_reset + (bias if m.decay_input else bias / k)
        return self.nir.LIF(tau=_full(shape, dt / k), r=np.array(r), v_leak=np.array(v_leak),
                            v_threshold=_full(shape, thr), v_reset=_full(shape, m.v_reset), metadata=meta)

    def _nir_cuba(self, m: NIRCubaLIF, shape: tuple[int, ...]) -> Any:
        n = m.neuron
        gain = np.broadcast_to(_array(m.gain).astype(np.float64), shape) if m.gain is not None else _full(shape, 1.0)
        dt = self.dt
        thr, meta = _threshold(n.v_threshold, n.strict_threshold)
        return self.nir.CubaLIF(tau_syn=_full(shape, n.tau_syn * dt), tau_mem=_full(shape, n.tau_mem * dt),
                                r=_full(shape, n.tau_mem), v_leak=_full(shape, n.v_leak),
                                v_threshold=_full(shape, thr), v_reset=_full(shape, n.v_reset),
                                w_in=np.array(gain * n.tau_syn), metadata=meta)


def _gain_shape(m: nn.Module) -> tuple[int, ...] | None:
    for name in ("gain", "bias"):
        t = getattr(m, name, None)
        if t is not None and t.ndim > 0:
            return tuple(t.shape)
    return None


# why a module type has no NIR form, for the error that names it (read-only)
_INEXPRESSIBLE = MappingProxyType({
    "SpikingSelfAttention": "attention multiplies spike tensors (Q K^T V), and NIR has no node for a product of "
                            "two signals; the stem and the spiking MLPs around it convert",
    "SpikingSelfAttentionMixer": "attention multiplies spike tensors (Q K^T V), and NIR has no node for a product "
                                 "of two signals",
    "SpikformerBlock": "its first part is spiking self-attention (a product of spike tensors, no NIR node); its "
                       "SpikingMLP converts on its own",
    "SpikingTimeMix": "RWKV time mixing divides two exponentially weighted sums and gates with a sigmoid; NIR has "
                      "neither division nor a product of signals",
    "SpikingChannelMix": "the channel mix gates one signal with another (a product) after a token shift; NIR has "
                         "no node for either",
    "SpikeGPTBlock": "its time mixing (RWKV attention) has no NIR node",
    "Embedding": "a table lookup by token index has no NIR node",
    "MaxPool2d": "NIR has sum and average pooling only, no max pooling",
    "MaxPool1d": "NIR has sum and average pooling only, no max pooling",
    "LayerNorm": "normalising by each sample's own statistics is not a fixed affine map, and NIR has no norm node",
    "AdaptiveLIF": "its threshold adapts with every spike, and NIR has no adaptive-threshold neuron",
})


def _record_shapes(model: nn.Module, sample: torch.Tensor) -> dict[nn.Module, tuple[tuple, tuple]]:
    """Run ``model`` on ``sample`` once and record each submodule's first input and output shapes."""
    shapes: dict[nn.Module, tuple[tuple, tuple]] = {}
    handles = []

    def record(module: nn.Module, args: tuple, out: Any) -> None:
        if module in shapes or not args or not isinstance(args[0], torch.Tensor):
            return
        y = out[0] if isinstance(out, tuple) else out
        shapes[module] = (tuple(args[0].shape), tuple(y.shape) if isinstance(y, torch.Tensor) else ())

    for module in model.modules():
        if isinstance(module, Recurrent):
            handles.append(module.register_step_hook(
                post=lambda m, method, args, kwargs, out: record(m, args, out)))
        handles.append(module.register_forward_hook(record))
    # eval mode for the shape run, so that it leaves no trace on the model (batch norms in training mode
    # would update their running statistics); each module's own flag is restored afterwards
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return shapes


def export(model: nn.Module, sample: torch.Tensor, *, dt: float = DEFAULT_DT, approximate: bool = False,
           path: str | Path | None = None) -> nir.NIRGraph:
    """Convert a neurostep network to a ``nir.NIRGraph`` (and write it to ``path`` as HDF5 if given).

    Args:
        model: the network: ``nn.Sequential`` chains, neurons (``IF``, ``LIF``, ``ParametricLIF``,
            ``CubaLIF``), ``nn.Linear``, convolutions and pooling (in :class:`SampleWise` or inside
            ``ConvBNLIF``), ``nn.Flatten``, eval-mode batch norms (folded into the layer before them),
            :class:`RecurrentSpiking` (a NIR subgraph), Spikformer's ``SpikingMLP``, and networks
            returned by :func:`load`. Anything else raises :class:`NIRUnsupportedError` naming the first
            module that has no exact NIR form, and why.
        sample: an input ``(T, B, *sample)`` the model accepts; it is run once (no gradient) to learn the
            shapes convolutions and flattening need. The graph describes one sample: per-neuron
            parameters have the per-sample shape, and a ``Linear`` first layer takes the last dim
            (extra per-sample dims, such as tokens, travel as batch entries).
        dt: the step length in seconds that turns step counts into NIR's time constants
            (``tau = tau_steps * dt``); importers must use the same value (spikingjelly and snntorch
            assume ``1e-4``). Recorded in ``graph.metadata["dt"]``.
        approximate: export a neuron with ``detach_reset=True`` anyway; each such change is listed in
            ``graph.metadata["approximations"]``. Without it they are refused.
        path: also write the graph to this HDF5 file with ``nir.write``.

    Returns:
        The ``nir.NIRGraph``, with nodes named by module path plus ``"input"`` and ``"output"``.
    """
    nir = _nir()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(sample, torch.Tensor) or sample.ndim < 2:
        raise ValueError("sample must be a tensor (T, B, *sample) the model accepts, got "
                         f"{tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__}")
    dt = _check_dt(dt)
    if not isinstance(approximate, bool):
        raise TypeError(f"approximate must be a bool, got {type(approximate).__name__}")
    shapes = _record_shapes(model, sample)
    ex = _Exporter(dt, approximate, shapes)
    outs, out_type = ex.convert(model, "", ["input"], tuple(int(d) for d in sample.shape[2:]))
    first = [dst for src, dst in ex.edges if src == "input"]
    in_type = tuple(int(d) for d in sample.shape[2:])
    if first:
        node_in = getattr(ex.nodes[first[0]], "input_type", None) or {}
        declared = node_in.get("input") if isinstance(node_in, dict) else None
        if declared is not None and np.asarray(declared).size:
            in_type = tuple(int(d) for d in np.asarray(declared).reshape(-1))
    nodes = {"input": nir.Input(input_type={"input": np.array(in_type)}), **ex.nodes}
    if out_type is None:
        out_type = in_type
    nodes["output"] = nir.Output(output_type={"output": np.array(out_type)})
    edges = ex.edges + [(o, "output") for o in outs]
    metadata: dict[str, Any] = {"dt": dt, "source": "neurostep"}
    if ex.notes:
        metadata["approximations"] = "; ".join(ex.notes)
    try:
        graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=True)
    except ValueError as exc:
        raise ValueError(f"the exported graph fails NIR's type check ({exc}); every node's input shape should "
                         "match the output shape before it") from exc
    if path is not None:
        nir.write(path, graph)
    return graph


# ============================================================================= load
def _values(name: str, node: Any, field: str) -> np.ndarray:
    value = getattr(node, field, None)
    if value is None:
        raise NIRUnsupportedError(name, type(node).__name__, f"it has no {field}")
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise NIRUnsupportedError(name, type(node).__name__, f"{field} has non-finite values")
    return arr


def _uniform(name: str, node: Any, field: str) -> float:
    arr = _values(name, node, field)
    if arr.size == 0:
        raise NIRUnsupportedError(name, type(node).__name__, f"{field} is empty")
    if not np.all(arr == arr.reshape(-1)[0]):
        raise NIRUnsupportedError(name, type(node).__name__,
                                  f"{field} differs across neurons ({arr.min():.6g} to {arr.max():.6g}); neurostep's "
                                  "fused neuron kernel takes one value per layer")
    return float(arr.reshape(-1)[0])


def _threshold_of(name: str, node: Any) -> tuple[float, bool]:
    """``(v_threshold, strict)`` of a neuron node: NIR's ``v > v_threshold``, or the ``>=`` rule and the original
    threshold a neurostep export recorded in the node's metadata (used only while it still agrees with
    ``v_threshold``, so a graph edited elsewhere keeps NIR's meaning)."""
    thr = _uniform(name, node, "v_threshold")
    meta = node.metadata if isinstance(getattr(node, "metadata", None), dict) else {}
    if str(meta.get(THRESHOLD_RULE, "")) == ">=" and ORIGINAL_THRESHOLD in meta:
        original = float(np.asarray(meta[ORIGINAL_THRESHOLD]))
        if _below(original) == thr:
            return original, False
    return thr, True


def _per_neuron(arr: np.ndarray, neutral: float) -> torch.Tensor | None:
    """A per-neuron factor or offset as a float32 tensor, or None when it is ``neutral`` everywhere in float32
    (skipping it then changes nothing)."""
    f32 = arr.astype(np.float32)
    if np.all(f32 == np.float32(neutral)):
        return None
    if np.all(f32 == f32.reshape(-1)[0]):
        return torch.tensor(float(f32.reshape(-1)[0]))
    return torch.from_numpy(f32.copy())


def _ints(value: Any, n: int) -> tuple[int, ...]:
    arr = np.asarray(value).reshape(-1)
    if arr.size == 1:
        return tuple([int(arr[0])] * n)
    return tuple(int(v) for v in arr)


class _Loader:
    def __init__(self, dt: float, surrogate: Any, backend: str) -> None:
        self.nir = _nir()
        self.dt, self.surrogate, self.backend = dt, surrogate, backend

    def graph(self, graph: Any, prefix: str = "") -> NIRNetwork:
        nir = self.nir
        inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
        outputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise NIRUnsupportedError(prefix or "<graph>", "NIRGraph",
                                      f"it has {len(inputs)} Input and {len(outputs)} Output nodes; neurostep runs "
                                      "graphs with exactly one of each")
        modules = {name: self.node(f"{prefix}{name}", node) for name, node in graph.nodes.items()}
        return NIRNetwork(modules, list(graph.edges), inputs[0], outputs[0], nir_nodes=dict(graph.nodes))

    def node(self, name: str, node: Any) -> nn.Module | None:
        nir, dt = self.nir, self.dt
        kind = type(node).__name__
        if isinstance(node, (nir.Input, nir.Output)):
            return None
        if isinstance(node, nir.NIRGraph):
            return self.graph(node, prefix=f"{name}.")
        if isinstance(node, (nir.Affine, nir.Linear)):
            w = np.asarray(node.weight)
            if w.ndim != 2:
                raise NIRUnsupportedError(name, kind, f"weight has shape {w.shape}; only 2-D weights load")
            layer = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(w.astype(np.float32)))
                if isinstance(node, nir.Affine):
                    layer.bias.copy_(torch.from_numpy(np.asarray(node.bias, dtype=np.float32)))
            return layer
        if isinstance(node, (nir.Conv1d, nir.Conv2d)):
            return self.conv(name, node)
        if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
            k, s, p = _ints(node.kernel_size, 2), _ints(node.stride, 2), _ints(node.padding, 2)
            pool = nn.AvgPool2d(k, s, p) if isinstance(node, nir.AvgPool2d) else SumPool2d(k, s, p)
            return SampleWise(pool, 3)
        if isinstance(node, nir.Flatten):
            typ = node.input_type.get("input") if isinstance(node.input_type, dict) else None
            start, end = int(node.start_dim), int(node.end_dim)
            if typ is None:
                if start >= 0 or end >= 0:
                    raise NIRUnsupportedError(name, kind, "its input shape is unknown, so its non-negative dims "
                                                          "cannot be placed; give the graph typed nodes")
                return Flatten(start, end, max(-start, -end))
            return Flatten(start, end, int(np.asarray(typ).size))
        if isinstance(node, nir.Scale):
            return Scale(torch.from_numpy(np.asarray(node.scale, dtype=np.float32)))
        if isinstance(node, nir.Threshold):
            return Threshold(torch.from_numpy(np.asarray(node.threshold, dtype=np.float32)))
        if isinstance(node, nir.IF):
            thr, strict = _threshold_of(name, node)
            return NIRLIF(tau_inv=0.0, v_threshold=thr, strict=strict, v_reset=_uniform(name, node, "v_reset"),
                          decay_input=False,
                          gain=_per_neuron(_values(name, node, "r") * dt, 1.0), surrogate=self.surrogate,
                          backend=self.backend)
        if isinstance(node, nir.LIF):
            return self.lif(name, node)
        if isinstance(node, nir.CubaLIF):
            return self.cuba(name, node)
        reasons = {
            "LI": "a leaky integrator without spikes has no neurostep module yet",
            "I": "a pure integrator without spikes has no neurostep module yet",
            "CubaLI": "a current-based integrator without spikes has no neurostep module yet",
            "Delay": "per-connection delays have no neurostep module",
        }
        raise NIRUnsupportedError(name, kind, reasons.get(kind, "neurostep has no module for this NIR node"))

    def conv(self, name: str, node: Any) -> nn.Module:
        nir = self.nir
        w = np.asarray(node.weight, dtype=np.float32)
        two = isinstance(node, nir.Conv2d)
        n = 2 if two else 1
        padding = node.padding if isinstance(node.padding, str) else _ints(node.padding, n)
        groups = int(np.asarray(node.groups))
        cls = nn.Conv2d if two else nn.Conv1d
        layer = cls(w.shape[1] * groups, w.shape[0], w.shape[2:], stride=_ints(node.stride, n), padding=padding,
                    dilation=_ints(node.dilation, n), groups=groups, bias=True)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w))
            bias = np.asarray(node.bias, dtype=np.float32) if node.bias is not None else np.zeros(w.shape[0])
            layer.bias.copy_(torch.from_numpy(np.broadcast_to(bias, (w.shape[0],)).astype(np.float32)))
        return SampleWise(layer, 3 if two else 2)

    def _tau_inv(self, name: str, node: Any, field: str) -> float:
        tau = _uniform(name, node, field)
        k = self.dt / tau if tau > 0 else math.inf
        if not 0.0 < k <= 1.0:
            raise NIRUnsupportedError(name, type(node).__name__,
                                      f"{field}={tau:.6g} s is shorter than dt={self.dt:.6g} s: the Euler step "
                                      f"would overshoot (dt/{field} = {k:.6g} > 1); load with a smaller dt")
        return k

    def lif(self, name: str, node: Any) -> NIRLIF:
        k = self._tau_inv(name, node, "tau")
        v_reset = _uniform(name, node, "v_reset")
        r = _values(name, node, "r")
        shift = _values(name, node, "v_leak") - v_reset
        if np.all(r == 1.0) and k < 1.0:
            # r = 1: the charge is spikingjelly's decay_input form, H = V + k (X - (V - v_reset))
            gain, bias, decay_input = None, _per_neuron(shift, 0.0), True
        else:
            gain, bias, decay_input = _per_neuron(k * r, 1.0), _per_neuron(k * shift, 0.0), False
        thr, strict = _threshold_of(name, node)
        return NIRLIF(tau_inv=k, v_threshold=thr, strict=strict, v_reset=v_reset, decay_input=decay_input,
                      gain=gain, bias=bias, surrogate=self.surrogate, backend=self.backend)

    def cuba(self, name: str, node: Any) -> NIRCubaLIF:
        k_syn = self._tau_inv(name, node, "tau_syn")
        k_mem = self._tau_inv(name, node, "tau_mem")
        # the membrane's input gain k_mem * r scales the current linearly, so it moves to the current's input
        gain = _per_neuron(k_syn * _values(name, node, "w_in") * k_mem * _values(name, node, "r"), 1.0)
        thr, strict = _threshold_of(name, node)
        neuron = CubaLIF(tau_syn=1.0 / k_syn, tau_mem=1.0 / k_mem, v_threshold=thr,
                         v_reset=_uniform(name, node, "v_reset"), v_leak=_uniform(name, node, "v_leak"),
                         strict_threshold=strict, surrogate=self.surrogate, backend=self.backend)
        return NIRCubaLIF(neuron, gain)


def load(graph_or_path: nir.NIRGraph | str | Path, *, dt: float | None = None,
         surrogate: str | SurrogateFunction | None = None, backend: str = "auto") -> NIRNetwork:
    """Build a neurostep network from a ``nir.NIRGraph`` or a NIR HDF5 file (read with ``nir.read``).

    Args:
        graph_or_path: a ``nir.NIRGraph``, or the path of a file ``nir.write`` wrote.
        dt: the step length in seconds (``k = dt / tau`` per step). None: the graph's ``metadata["dt"]``
            when it has one (neurostep's exports do), else ``1e-4``, the value spikingjelly's and
            snntorch's exporters use.
        surrogate: surrogate gradient of the loaded neurons (NIR does not carry one): a name or a
            ``SurrogateFunction``; None is sigmoid.
        backend: kernel backend of the neurons.

    Returns:
        A :class:`NIRNetwork`: ``(T, B, *sample)`` -> ``(T, B, *out)``, with ``step``/``scan`` and explicit
        :class:`NetworkState`. Neurons run on the fused ``lif_scan`` kernel (and ``linear_scan`` for the
        CubaLIF current), fire on ``v > v_threshold`` as NIR defines, and start at ``v_reset``.

    Raises:
        NIRUnsupportedError: a node neurostep cannot run exactly (named, with the reason): per-neuron
            time constants, thresholds or resets that differ across a layer, ``tau < dt``, LI/I/CubaLI/Delay
            nodes, graphs without exactly one input and one output.
    """
    nir = _nir()
    if isinstance(graph_or_path, (str, Path)):
        graph = nir.read(graph_or_path)
    elif isinstance(graph_or_path, nir.NIRGraph):
        graph = graph_or_path
    else:
        raise TypeError(f"graph_or_path must be a nir.NIRGraph or a file path, got {type(graph_or_path).__name__}")
    if dt is None:
        meta = graph.metadata if isinstance(graph.metadata, dict) else {}
        dt = float(np.asarray(meta["dt"])) if "dt" in meta else DEFAULT_DT
    return _Loader(_check_dt(dt), surrogate, backend).graph(graph)
