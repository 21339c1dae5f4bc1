"""Whole training steps of the papers' models: neurostep against each peer's own model with the same weights.

One training step is forward, loss, backward and an SGD update. Each row times three models in the
same run, interleaved round by round (so a change in machine load hits all three alike):

- **neurostep**: the registered model (fused kernels);
- **peer**: the peer library's own implementation holding the same weights;
- **floor**: neurostep's model with its neurons and scans replaced by identity, so that what is
  left is its GEMMs, convolutions, norms and pooling: the time a perfect neuron or scan kernel
  would leave. neurostep / floor says how much the neurons and scans still cost. With identity
  neurons nothing is sparse, so Spikformer's spike-input layers (``SpikeLinear``, ``SpikeConv2d``)
  take their dense product in the floor: there the floor is the dense layers' time, and neurostep's
  step, whose layers sum only the spikes, can run below it (a ratio under 1).

Rows (sizes chosen so one step takes about a second on a 2-core machine):

- Spikformer, CIFAR config (T=4, 32x32 images, patch 4, 384 dims, depth 4, 12 heads), batch 8,
  against spikingjelly 2.0's ``Spikformer`` (multi-step mode, its torch LIF); ours is converted
  from it by ``Spikformer.from_spikingjelly``.
- SpikeGPT-46M shape (512 dims, 12 layers, vocab 5455), 2 x 128 tokens, against transformers'
  ``RwkvForCausalLM`` of the same shape: with spikes off (the same RWKV-4 function: outputs are
  checked equal before timing) and with spikes on (SpikeGPT's LIFs after each mixer).
- Mamba-130M (768 dims, 24 layers), 1 x 256 tokens, against transformers' ``MambaForCausalLM``
  (its CPU path); ours is loaded by ``MambaLM.from_hf`` and checked equal before timing.
- Mamba-2-130M's shape (768 dims, 24 layers, 24 heads of 64, state 128, one B/C group as in the
  released checkpoints), 1 x 256 tokens, against transformers' ``Mamba2ForCausalLM`` (its torch path, at
  its default chunk size 256); ours is loaded by ``Mamba2LM.from_hf`` and checked equal before timing.
- Vim-Ti (192 dims, depth 24, bidirectional), 112x112 images (49 patches and a class token),
  batch 4, against the same model whose selective scans run on mambapy's parallel scan.

The ratio to the peer is that of the two medians; the table and the summary also give the smallest and
largest of the per-round ratios (the two steps of one round ran back to back), because on a shared
machine one run's ratio can differ from the next by several percent.

A profile of two neurostep steps splits its time into parts (GEMM, convolution, norm, neuron,
scan, pooling, other); it is printed and stored with the timings.

Every contender runs under the OpenMP wait policy of the process: torch's default (threads spin a
while after each parallel region) unless ``OMP_WAIT_POLICY`` is set, and the policy is stored with the
results. The script does not choose passive waiting for everyone, as the ``neurostep`` command does:
the peers are pure torch, and their many small ops pay a thread wake-up each under it. On the 2-core
AMD EPYC (2026-12-04, 22:26-22:49 UTC, load 1.3-2.0 at the starts, runs each way) passive waiting made
spikingjelly's Spikformer step 1.38 s instead of 1.23-1.27 s, transformers' RWKV-4 step 1.69 s instead
of 1.18 s (spikes off), its Mamba step 36.4 s instead of 21.3 s and the mambapy Vim step 1.81 s instead of
0.98 s; neurostep's steps moved by -7% (Mamba) to +14% (SpikeGPT with spikes on), and by +133% for Vim
(648 ms against 278 ms).

    .venv/bin/python benchmarks/models.py                   # every row
    .venv/bin/python benchmarks/models.py --only spikformer # rows whose name starts with this
    .venv/bin/python benchmarks/models.py --quick           # fewer rounds
    .venv/bin/python benchmarks/models.py --malloc-tuned --out benchmarks/results/models_malloc_tuned.json
        # neurostep.retain_freed_memory(large_blocks=True) first, for every contender
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, omp_wait_policy, ratio, summary_row, table, write_result  # noqa: E402

from neurostep.engine import Recurrent  # noqa: E402
from neurostep.memory import retain_freed_memory  # noqa: E402
from neurostep.neuro.neurons import SpikingNeuron  # noqa: E402

Step = Callable[[], None]


@dataclass
class Row:
    """One benchmark row: three training steps to time and what they are."""

    name: str
    workload: str
    peer_name: str
    ours: Step
    peer: Step
    floor: Step
    notes: list[str] = field(default_factory=list)


# -- identity stand-ins for the floor --------------------------------------------------------------

class PassThrough(Recurrent):
    """A neuron replaced by identity: ``scan(x, state) -> (x, state)``, ``step`` the same.

    The output is materialised (``contiguous``): a neuron's output is a new tensor, and an
    expanded input (a static image repeated over T) passed on as a view would let the next
    convolution see repeated frames and run once instead of T times, which no spiking layer allows.
    """

    def __init__(self, time_dim: int) -> None:
        super().__init__()
        self.time_dim = time_dim

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> None:
        return None

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return x_t.contiguous(), state

    def scan(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        return x.contiguous(), state


def neurons_to_identity(model: nn.Module) -> int:
    """Replace every spiking neuron module of ``model`` by :class:`PassThrough`; returns how many."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, SpikingNeuron)]
    for name, neuron in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PassThrough(neuron.time_dim))
    return len(targets)


def scan_free_class(cls: type) -> type:
    """A subclass of a Mamba variant whose selective scan is identity (``y = xc * silu(z)``)."""

    def _ssm_core(self, xc, z, suffix, init_h, output_final_state=True):
        return xc * F.silu(z), init_h

    return type(f"ScanFree{cls.__name__}", (cls,), {"_ssm_core": _ssm_core})


def ssd_free_class(cls: type) -> type:
    """A subclass of :class:`~neurostep.ssm.mamba2.Mamba2` whose SSD is identity (``o = x * dt``, state 0)."""

    def _ssd_core(self, xs, dt, Bm, Cm, ssm_state):
        batch, _, heads, headdim = xs.shape
        return xs * dt[..., None], xs.new_zeros(batch, heads, Bm.shape[-1], headdim)

    return type(f"SSDFree{cls.__name__}", (cls,), {"_ssd_core": _ssd_core})


def mambapy_scan_class(cls: type) -> type:
    """A subclass of a Mamba variant whose selective scan runs on mambapy's parallel scan."""
    from mambapy.mamba import MambaBlock

    def _ssm_core(self, xc, z, suffix, init_h, output_final_state=True):
        _, x_proj, dt_proj, A_log, D = self._direction(suffix)
        delta, Bm, Cm, delta_bias = self._scan_coefficients(xc, suffix)
        # mambapy's layout is (B, L, channels); its scan starts from zeros and returns no state
        dt = F.softplus(delta.transpose(1, 2) + delta_bias)
        y = MambaBlock.selective_scan(None, xc.transpose(1, 2), dt, -torch.exp(A_log), Bm.transpose(1, 2),
                                      Cm.transpose(1, 2), D)
        return (y * F.silu(z.transpose(1, 2))).transpose(1, 2), init_h

    return type(f"Mambapy{cls.__name__}", (cls,), {"_ssm_core": _ssm_core})


def swap_class(model: nn.Module, cls: type, make: Callable[[type], type]) -> int:
    """Give every module of exact type ``cls`` the subclass ``make(cls)``; returns how many."""
    sub = make(cls)
    count = 0
    for m in model.modules():
        if type(m) is cls:
            m.__class__ = sub
            count += 1
    return count


def train_step(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]) -> Step:
    """Forward, loss, backward and an SGD update of ``model``, as a zero-argument call."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        opt.step()

    return step


# -- rows ------------------------------------------------------------------------------------------

def _spikingjelly_spikformer_module() -> types.ModuleType:
    # spikingjelly 2.0's model package imports h5py at the top for checkpoint tooling the model never
    # uses; h5py is not a dependency here, so an empty module stands in during that import only.
    placeholder = None
    try:
        import h5py  # noqa: F401
    except ImportError:
        placeholder = sys.modules["h5py"] = types.ModuleType("h5py")
    try:
        from spikingjelly.activation_based.model import spikformer
    finally:
        if placeholder is not None and sys.modules.get("h5py") is placeholder:
            del sys.modules["h5py"]
    return spikformer


def spikformer_row(batch: int) -> Row:
    from spikingjelly.activation_based import functional

    from neurostep.neuro.spikformer import Spikformer

    sj = _spikingjelly_spikformer_module()
    torch.manual_seed(0)
    theirs = sj.Spikformer(T=4, in_channels=3, img_size_h=32, img_size_w=32, patch_size=4, num_classes=10,
                           embed_dims=384, num_heads=12, mlp_ratio=4.0, depths=4)
    ours = Spikformer.from_spikingjelly(theirs, backend="cpu")
    floor = copy.deepcopy(ours)
    replaced = neurons_to_identity(floor)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def their_loss(model: nn.Module) -> torch.Tensor:
        functional.reset_net(model)  # spikingjelly keeps membranes in the modules between calls
        return F.cross_entropy(model(x).mean(0), y)

    def our_loss(model: nn.Module) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    ours_step = train_step(ours, our_loss)
    return Row("spikformer", f"CIFAR config T=4 384d depth 4, batch {batch}, one training step",
               "spikingjelly", ours_step, train_step(theirs, their_loss), train_step(floor, our_loss),
               notes=[f"floor: {replaced} LIF layers replaced by identity"])


def _hf_rwkv(dim: int, layers: int, vocab: int) -> nn.Module:
    import transformers

    cfg = transformers.RwkvConfig(vocab_size=vocab, context_length=1024, hidden_size=dim, num_hidden_layers=layers,
                                  attention_hidden_size=dim, intermediate_size=4 * dim, rescale_every=0)
    return transformers.RwkvForCausalLM(cfg)


def load_rwkv_into_spikegpt(ours: nn.Module, hf: nn.Module) -> None:
    """Copy a transformers ``RwkvForCausalLM``'s weights into a SpikeGPT of the same shape."""
    with torch.no_grad():
        ours.emb.weight.copy_(hf.rwkv.embeddings.weight)
        for blk, hb in zip(ours.blocks, hf.rwkv.blocks, strict=True):
            if blk.ln0 is not None:
                blk.ln0.load_state_dict(hb.pre_ln.state_dict())
            blk.ln1.load_state_dict(hb.ln1.state_dict())
            blk.ln2.load_state_dict(hb.ln2.state_dict())
            att, ha = blk.att, hb.attention
            att.time_decay.copy_(ha.time_decay.reshape(-1))
            att.time_first.copy_(ha.time_first.reshape(-1))
            att.time_mix_k.copy_(ha.time_mix_key.reshape(-1))
            att.time_mix_v.copy_(ha.time_mix_value.reshape(-1))
            att.time_mix_r.copy_(ha.time_mix_receptance.reshape(-1))
            for name in ("key", "value", "receptance", "output"):
                getattr(att, name).weight.copy_(getattr(ha, name).weight)
            ffn, hf_ffn = blk.ffn, hb.feed_forward
            ffn.time_mix_k.copy_(hf_ffn.time_mix_key.reshape(-1))
            ffn.time_mix_r.copy_(hf_ffn.time_mix_receptance.reshape(-1))
            for name in ("key", "value", "receptance"):
                getattr(ffn, name).weight.copy_(getattr(hf_ffn, name).weight)
        ours.ln_out.load_state_dict(hf.rwkv.ln_out.state_dict())
        ours.head.weight.copy_(hf.head.weight)


def spikes_off(model: nn.Module) -> None:
    """Turn a SpikeGPT into plain RWKV-4: no LIF after the mixers, no binary embedding."""
    model.spike_embedding = None
    for blk in model.blocks:
        blk.att.lif = None
        blk.ffn.lif = None


def wkv_free_class(cls: type) -> type:
    """A subclass of SpikingTimeMix whose WKV is identity (the time-mix output is ``W_o(sigmoid(r) * v)``)."""

    def current(self, x, state=None):
        B = x.shape[0]
        shift = state.shift.to(x.dtype) if state is not None else x.new_zeros(B, self.dim)
        xx = torch.cat([shift.unsqueeze(1), x[:, :-1]], dim=1)
        _, v, r = self._mix(x, xx)
        return self.output(r * v), state.wkv if state is not None else None

    return type(f"WKVFree{cls.__name__}", (cls,), {"current": current})


def spikegpt_rows(batch: int, length: int) -> list[Row]:
    from neurostep.models import create_model
    from neurostep.neuro.spikegpt import SpikingTimeMix

    dim, layers, vocab = 512, 12, 5455
    torch.manual_seed(0)
    hf = _hf_rwkv(dim, layers, vocab)
    idx = torch.randint(0, vocab, (batch, length))
    target = torch.randint(0, vocab, (batch, length))

    def our_loss(model: nn.Module) -> torch.Tensor:
        return F.cross_entropy(model(idx).flatten(0, 1), target.flatten())

    def hf_loss(model: nn.Module) -> torch.Tensor:
        return F.cross_entropy(model(idx, use_cache=False).logits.flatten(0, 1), target.flatten())

    rows = []
    for spiking in (False, True):
        ours = create_model("spikegpt_46m", backend="cpu", lif_backend="cpu")
        load_rwkv_into_spikegpt(ours, hf)
        if not spiking:
            spikes_off(ours)
            with torch.no_grad():
                torch.testing.assert_close(ours(idx[:, :16]), hf(idx[:, :16], use_cache=False).logits,
                                           rtol=1e-4, atol=1e-4)
        floor = copy.deepcopy(ours)
        spikes_off(floor)
        swap_class(floor, SpikingTimeMix, wkv_free_class)
        ours_step = train_step(ours, our_loss)
        label = "spikes on" if spiking else "spikes off"
        rows.append(Row(f"spikegpt ({label})", f"SpikeGPT-46M shape, {batch}x{length} tokens, {label}",
                        "transformers RWKV-4", ours_step, train_step(hf, hf_loss), train_step(floor, our_loss),
                        notes=["floor: no LIF, WKV replaced by identity"]))
    return rows


def lm_row(name: str, workload: str, peer_name: str, hf: nn.Module, ours: nn.Module, idx: torch.Tensor,
           layer_cls: type, make_floor: Callable[[type], type], notes: list[str]) -> Row:
    """A language model's row: ``ours`` holds the weights of the Hugging Face model ``hf`` (their logits are
    checked on a prefix of ``idx``), the floor is ``ours`` with every ``layer_cls`` given ``make_floor``'s
    subclass, and the loss is next-token cross-entropy on ``idx (B, L)``."""
    with torch.no_grad():
        # 24 layers in two summation orders: logits of spread ~1 agree to a few 1e-3
        torch.testing.assert_close(ours(idx[:, :32]), hf(idx[:, :32]).logits, rtol=1e-3, atol=1e-2)
    floor = copy.deepcopy(ours)
    swap_class(floor, layer_cls, make_floor)

    def our_loss(model: nn.Module) -> torch.Tensor:
        return F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())

    def hf_loss(model: nn.Module) -> torch.Tensor:
        return F.cross_entropy(model(idx[:, :-1]).logits.flatten(0, 1), idx[:, 1:].flatten())

    return Row(name, workload, peer_name, train_step(ours, our_loss), train_step(hf, hf_loss),
               train_step(floor, our_loss), notes=notes)


def mamba_row(batch: int, length: int) -> Row:
    import transformers

    from neurostep.ssm import MambaLM
    from neurostep.ssm.mamba import Mamba

    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16,
                                   expand=2, conv_kernel=4, use_cache=False)
    hf = transformers.MambaForCausalLM(cfg)
    ours = MambaLM.from_hf(hf, backend="cpu")
    idx = torch.randint(0, cfg.vocab_size, (batch, length))
    return lm_row("mamba", f"Mamba-130M, {batch}x{length} tokens, one training step", "transformers Mamba", hf,
                  ours, idx, Mamba, scan_free_class,
                  notes=["floor: selective scan replaced by identity (y = x * silu(z))"])


def mamba2_row(batch: int, length: int) -> Row:
    import transformers

    from neurostep.ssm.mamba2 import Mamba2, Mamba2LM

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    # Mamba-2-130m's shape (benchmarks/mamba2.py): one B and C group, as in the released checkpoints
    cfg = transformers.Mamba2Config(num_heads=24, head_dim=64, hidden_size=768, state_size=128, n_groups=1,
                                    num_hidden_layers=24, vocab_size=50288, tie_word_embeddings=True,
                                    chunk_size=256, pad_token_id=0, eos_token_id=0, use_cache=False)
    hf = transformers.Mamba2ForCausalLM(cfg)
    ours = Mamba2LM.from_hf(hf, backend="cpu")
    idx = torch.randint(1, cfg.vocab_size, (batch, length))
    return lm_row("mamba2", f"Mamba-2-130M (one B/C group), {batch}x{length} tokens, one training step",
                  "transformers Mamba-2", hf, ours, idx, Mamba2, ssd_free_class,
                  notes=["floor: SSD replaced by identity (o = x * dt)",
                         "transformers at its default chunk size 256, torch path"])


def vim_row(batch: int, img: int) -> Row:
    from neurostep.models import create_model
    from neurostep.ssm.vision_mamba import BidirectionalMamba

    torch.manual_seed(0)
    ours = create_model("vim_tiny", img_size=img, num_classes=100, backend="cpu")
    peer = copy.deepcopy(ours)
    swap_class(peer, BidirectionalMamba, mambapy_scan_class)
    floor = copy.deepcopy(ours)
    swap_class(floor, BidirectionalMamba, scan_free_class)
    x = torch.randn(batch, 3, img, img)
    y = torch.randint(0, 100, (batch,))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peer(x), rtol=1e-3, atol=1e-3)

    def loss(model: nn.Module) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    ours_step = train_step(ours, loss)
    return Row("vim", f"Vim-Ti, {img}x{img} images, batch {batch}, one training step", "same model, mambapy scan",
               ours_step, train_step(peer, loss), train_step(floor, loss),
               notes=["floor: selective scans replaced by identity (y = x * silu(z))"])


# -- timing and profile ----------------------------------------------------------------------------

def interleaved(steps: dict[str, Step], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Wall seconds of each step over ``rounds`` rounds, the order rotating each round."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def round_ratios(slower: list[float], faster: list[float]) -> list[float]:
    """``slower[r] / faster[r]`` for every round ``r`` of :func:`interleaved`: two contenders timed within one
    round saw the same machine, so each round gives one paired ratio. Their spread shows how far a single
    round (or a single run) can stray from the ratio of the medians."""
    if len(slower) != len(faster) or not slower:
        raise ValueError(f"need the same non-zero number of rounds, got {len(slower)} and {len(faster)}")
    return [a / b for a, b in zip(slower, faster)]


def ratio_range(ratios: list[float]) -> str:
    """The smallest and largest of ``ratios`` as text: ``1.41-1.58x``."""
    return f"{ratio(min(ratios)).removesuffix('x')}-{ratio(max(ratios))}"


PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("neuron", ("neurostep::lif",)),
    ("scan", ("neurostep::selective_scan", "neurostep::wkv", "neurostep::linear_scan",
              "neurostep::decayed_linear_attention", "neurostep::causal_conv1d")),
    ("GEMM", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation")),
    ("convolution", ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d",
                     "aten::thnn_conv2d", "aten::_convolution")),
    ("norm", ("aten::native_batch_norm", "aten::native_layer_norm", "aten::_batch_norm",
              "aten::native_group_norm")),
    ("pooling", ("aten::max_pool", "aten::avg_pool", "aten::adaptive_avg_pool")),
)


def part_of(op: str) -> str:
    for part, prefixes in PARTS:
        if any(op.startswith(p) for p in prefixes):
            return part
    return "other"


def breakdown(step: Step, steps: int = 2) -> dict[str, float]:
    """Self CPU seconds per part over ``steps`` training steps (``torch.profiler``), per step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    parts: dict[str, float] = {}
    for event in prof.key_averages():
        part = part_of(event.key)
        parts[part] = parts.get(part, 0.0) + event.self_cpu_time_total / 1e6 / steps
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the rows whose name starts with this")
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--malloc-tuned", action="store_true",
                        help="call neurostep.retain_freed_memory(large_blocks=True) first, so that glibc reuses "
                             "freed blocks of any size (for all contenders alike)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "models.json"))
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    malloc_tuned = args.malloc_tuned and retain_freed_memory(large_blocks=True)
    load_before = load_average()
    builders: dict[str, Callable[[], list[Row]]] = {
        "spikformer": lambda: [spikformer_row(8)],
        "spikegpt": lambda: spikegpt_rows(2, 128),
        "mamba": lambda: [mamba_row(1, 256)],
        "mamba2": lambda: [mamba2_row(1, 256)],
        "vim": lambda: [vim_row(4, 112)],
    }
    results: dict[str, Any] = {}
    rows_out, summary, part_rows = [], [], []
    for key, build in builders.items():
        if not key.startswith(args.only):
            continue
        for row in build():
            times = interleaved({"neurostep": row.ours, "peer": row.peer, "floor": row.floor}, rounds, warmup=2)
            med = {k: statistics.median(v) for k, v in times.items()}
            parts = breakdown(row.ours)
            total = sum(parts.values())
            per_round = round_ratios(times["peer"], times["neurostep"])
            results[row.name] = {"workload": row.workload, "peer": row.peer_name, "seconds": times,
                                 "median": med, "round_ratios": per_round, "parts_seconds": parts,
                                 "notes": row.notes}
            speedup, over_floor = med["peer"] / med["neurostep"], med["neurostep"] / med["floor"]
            rows_out.append([row.name, row.workload, f"{med['neurostep'] * 1e3:.0f}", row.peer_name,
                             f"{med['peer'] * 1e3:.0f}", ratio(speedup), ratio_range(per_round),
                             f"{med['floor'] * 1e3:.0f}", ratio(over_floor)])
            part_rows.append([row.name] + [f"{100 * parts.get(p, 0.0) / total:.0f}%"
                                           for p in [name for name, _ in PARTS] + ["other"]])
            summary.append(summary_row(f"{row.name} training step", row.workload,
                                       f"{med['neurostep'] * 1e3:.0f} ms ({ratio(over_floor)} its GEMM/conv floor)",
                                       f"{row.peer_name} {ratio(speedup)} (rounds {ratio_range(per_round)})"))
            print("  ".join(rows_out[-1]), flush=True)
            print("    parts: " + "  ".join(f"{p} {v * 1e3:.0f} ms" for p, v in sorted(parts.items(),
                                                                                    key=lambda kv: -kv[1])),
                  flush=True)
    columns = ["model", "workload", "neurostep ms", "peer", "peer ms", "peer / neurostep", "per round",
               "floor ms", "neurostep / floor"]
    policy = omp_wait_policy()
    memory = "; freed blocks of any size reused (retain_freed_memory(large_blocks=True))" if malloc_tuned else ""
    tables = [table(f"One training step, median of {rounds} interleaved rounds; OpenMP wait policy {policy}{memory}",
                    columns, rows_out),
              table("Where neurostep's step spends its time (profiler, self CPU time)",
                    ["model"] + [name for name, _ in PARTS] + ["other"], part_rows)]
    if args.only or args.rounds:
        return  # partial runs are for looking, not for the stored result
    write_result(args.out, {"rounds": rounds, "omp_wait_policy": policy, "malloc_tuned": malloc_tuned,
                            "rows": results},
                 load_before=load_before, tables=tables, summary=summary)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
