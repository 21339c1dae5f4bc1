"""SpikeGPT (Zhu et al. 2023): a spiking RWKV-4 language model on the fused WKV kernel.

Block (docs/reference.md, SpikeGPT)::

    x = x + LIF(TimeMix(LN1(x)))        TimeMix = W_o(sigmoid(r) * WKV(k, v)) after a token shift
    x = x + LIF(ChannelMix(LN2(x)))     ChannelMix = sigmoid(W_r x) * W_v(ReLU(W_k x)^2), hidden 4d

with ``LIF(tau=2, ATan(alpha=2), V_th=1)`` running over the token axis, an extra LayerNorm
``ln0`` before the first block, and a binarized embedding (Heaviside forward, ATan backward).
Tokens are ``(B, L)`` integers; activations ``(B, L, C)``.

Every recurrent piece follows the step/scan protocol with explicit state: ``scan`` runs a whole
sequence (fused WKV and LIF kernels), ``step`` one token (for decoding), and ``scan == step``
is tested. The per-layer state is the token-shift input of each mixer, the WKV state
``(aa, bb, pp)`` and the two LIF membranes.

Initialisation (``init=``): ``"paper"`` is the published training code's, PyTorch's default
Linear init (its ``RWKV_Init`` is not called by ``train.py``, and would zero the output
projections). With it the current into each LIF has a spread of about 0.1-0.2 against a
threshold of 1, so no neuron fires at step 0 and the layers learn to fire only through the
surrogate gradient (the initial commit of the code used ``v_threshold = 0.1``).
``"threshold"`` scales the projection that feeds each LIF so that its current has RMS
``v_threshold`` on unit-variance inputs (LSUV-style, computed once on a fixed Gaussian probe),
so neurons fire from the first step; the drop-in mixers use it.

Spikes and matrix multiplies: in the published architecture every projection reads a
LayerNorm output, never spikes; spikes enter only the residual additions. The energy counter
therefore counts MACs for every projection of SpikeGPT, and its savings are the additions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neurostep.engine import (
    Composite,
    Recurrent,
    check_nonempty,
    check_tensor,
    check_token_range,
    compute_dtype,
    run_child,
)
from neurostep.kernels.wkv import WKVState, wkv, wkv_step
from neurostep.kernels.wkv import init_state as wkv_init_state
from neurostep.neuro.neurons import LIF, LIFState
from neurostep.neuro.surrogate import ATan

INITS = ("paper", "threshold")


def _spikegpt_lif(backend: str) -> LIF:
    # SpikeGPT's MultiStepLIFNode: tau 2, hard reset to 0, V_th 1, ATan(alpha=2), no detach.
    return LIF(tau=2.0, v_threshold=1.0, v_reset=0.0, surrogate=ATan(alpha=2.0), backend=backend)


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")


@torch.no_grad()
def match_threshold_(linear: nn.Linear, current: Callable[[torch.Tensor], torch.Tensor], dim: int,
                     threshold: float) -> None:
    """Scale ``linear`` (the projection that feeds a LIF) so that ``current(x)`` has RMS
    ``threshold`` for a fixed unit-variance Gaussian probe ``x (8, 64, dim)``."""
    probe = torch.randn(8, 64, dim, generator=torch.Generator().manual_seed(0),
                        dtype=linear.weight.dtype).to(linear.weight.device)
    rms = float(current(probe).pow(2).mean().sqrt())
    if rms > 0:
        linear.weight.mul_(threshold / rms)


def _check_tokens_or_channels(name: str, x: object, dim: int, ndim: int) -> torch.Tensor:
    x = check_tensor(name, x, ndim=ndim)
    if x.shape[-1] != dim:
        raise ValueError(f"{name} must have {dim} channels in its last dim, got shape {tuple(x.shape)}")
    return x


def _shift_mix(x: torch.Tensor, x_prev: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """RWKV's token-shift interpolation ``x * mu + x_prev * (1 - mu)`` (per channel ``mu``)."""
    return x * mu + x_prev * (1 - mu)


@dataclass
class TimeMixState:
    """Time-mix state: last input ``shift (B, C)``, ``wkv`` (WKVState, each ``(B, C)``), ``lif`` (``v (B, C)``)."""

    shift: torch.Tensor
    wkv: WKVState
    lif: LIFState


@dataclass
class ChannelMixState:
    """Channel-mix state: last input ``shift (B, C)`` and ``lif`` (LIFState, ``v (B, C)``)."""

    shift: torch.Tensor
    lif: LIFState


class SpikingTimeMix(Recurrent):
    """Spiking RWKV-4 time-mix: ``LIF(W_o(sigmoid(r) * WKV(k, v)))`` over ``(B, L, C)``.

    ``k, v, r`` are projections of the token-shifted mixes ``x * mu + x_prev * (1 - mu)``.
    With ``spiking=False`` the LIF is left out (plain RWKV-4 time-mix). Also the drop-in mixer
    ``"spikegpt_timemix"``: ``forward(x (B, N, C), grid_size=None) -> (B, N, C)`` binary spikes.
    ``init``: ``"paper"`` or ``"threshold"`` (see the module docstring).
    """

    causal = True  # output at token t depends only on tokens <= t: it may replace causal attention

    time_dim = 1

    def __init__(self, dim: int, layer_id: int = 0, n_layer: int = 1, *, spiking: bool = True,
                 backend: str = "auto", lif_backend: str = "auto", init: str = "paper") -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not 0 <= layer_id < n_layer:
            raise ValueError(f"layer_id must be in [0, n_layer={n_layer}), got {layer_id}")
        _check_init(init)
        self.dim = dim
        self.backend = backend
        self.time_decay = nn.Parameter(torch.empty(dim))
        self.time_first = nn.Parameter(torch.empty(dim))
        self.time_mix_k = nn.Parameter(torch.empty(dim))
        self.time_mix_v = nn.Parameter(torch.empty(dim))
        self.time_mix_r = nn.Parameter(torch.empty(dim))
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim, bias=False)
        self.lif = _spikegpt_lif(lif_backend) if spiking else None
        self.reset_time_parameters(layer_id, n_layer)
        if init == "threshold" and self.lif is not None:
            match_threshold_(self.output, lambda x: self.current(x)[0], dim, self.lif.v_threshold)

    @torch.no_grad()
    def reset_time_parameters(self, layer_id: int, n_layer: int) -> None:
        """RWKV-4's initialisation of the decay, bonus and token-shift mixes (depends on depth)."""
        C = self.dim
        r01 = layer_id / max(n_layer - 1, 1)          # 0 at the first layer, 1 at the last
        r10 = 1.0 - layer_id / n_layer                # 1 at the first layer, towards 0
        h = torch.arange(C, dtype=torch.float64)
        self.time_decay.copy_(-5 + 8 * (h / max(C - 1, 1)) ** (0.7 + 1.3 * r01))
        zigzag = ((h + 1) % 3 - 1) * 0.5
        self.time_first.copy_(math.log(0.3) + zigzag)
        ramp = h / C
        self.time_mix_k.copy_(ramp ** r10)
        self.time_mix_v.copy_(ramp ** r10 + 0.3 * r01)
        self.time_mix_r.copy_(ramp ** (0.5 * r10))

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> TimeMixState:
        """Fresh state for per-token inputs of shape ``batch_shape = (B, C)``."""
        B = batch_shape[0]
        dtype = dtype or torch.get_default_dtype()
        return TimeMixState(torch.zeros(B, self.dim, device=device, dtype=dtype),
                            wkv_init_state(B, self.dim, device, dtype),
                            self._lif_state(B, device, dtype))

    def _lif_state(self, B: int, device, dtype) -> LIFState:
        if self.lif is None:
            return LIFState(torch.zeros(B, self.dim, device=device, dtype=compute_dtype(dtype)))
        return self.lif.init_state((B, self.dim), device=device, dtype=dtype)

    def _mix(self, x: torch.Tensor, xx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xk, xv, xr = (_shift_mix(x, xx, mu) for mu in (self.time_mix_k, self.time_mix_v, self.time_mix_r))
        return self.key(xk), self.value(xv), torch.sigmoid(self.receptance(xr))

    def current(self, x: torch.Tensor, state: TimeMixState | None = None) -> tuple[torch.Tensor, WKVState]:
        """The time-mix before the LIF: ``W_o(sigmoid(r) * WKV)`` for ``x (B, L, C)``, and the WKV state."""
        B = x.shape[0]
        shift = state.shift.to(x.dtype) if state is not None else x.new_zeros(B, self.dim)
        wkv_state = state.wkv if state is not None else wkv_init_state(B, self.dim, x.device, x.dtype)
        xx = torch.cat([shift.unsqueeze(1), x[:, :-1]], dim=1)
        k, v, r = self._mix(x, xx)
        att, wkv_state = wkv(self.time_decay, self.time_first, k, v, wkv_state, output_final_state=True,
                             backend=self.backend)
        return self.output(r * att), wkv_state

    def scan(self, x: torch.Tensor, state: TimeMixState | None = None) -> tuple[torch.Tensor, TimeMixState]:
        """``x (B, L, C)`` -> ``(y (B, L, C), state)``; ``y`` is spikes when ``spiking``."""
        x = _check_tokens_or_channels("x", x, self.dim, 3)
        check_nonempty("x", x, 1, "tokens")
        B = x.shape[0]
        if state is None:
            state = self.init_state((B, self.dim), x.device, x.dtype)
        out, wkv_state = self.current(x, state)
        lif_state = state.lif
        if self.lif is not None:
            spikes, lif_state = self.lif.scan(out.transpose(0, 1), state.lif)
            out = spikes.transpose(0, 1)
        return out, TimeMixState(x[:, -1], wkv_state, lif_state)

    def step(self, x_t: torch.Tensor, state: TimeMixState | None) -> tuple[torch.Tensor, TimeMixState]:
        """One token ``x_t (B, C)`` -> ``(y_t (B, C), state)``."""
        x_t = _check_tokens_or_channels("x_t", x_t, self.dim, 2)
        if state is None:
            state = self.init_state(tuple(x_t.shape), x_t.device, x_t.dtype)
        k, v, r = self._mix(x_t, state.shift.to(x_t.dtype))
        att, wkv_state = wkv_step(self.time_decay, self.time_first, k, v, state.wkv)
        out = self.output(r * att)
        lif_state = state.lif
        if self.lif is not None:
            out, lif_state = self.lif.step(out, state.lif)
        return out, TimeMixState(x_t, wkv_state, lif_state)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Drop-in mixer call: ``(B, N, C) -> (B, N, C)`` from a fresh state (``grid_size`` unused)."""
        return self.scan(x)[0]


class SpikingChannelMix(Recurrent):
    """Spiking RWKV-4 channel-mix (SRFFN): ``LIF(sigmoid(W_r x_r) * W_v(ReLU(W_k x_k)^2))``, hidden ``4 * dim``."""

    time_dim = 1

    def __init__(self, dim: int, layer_id: int = 0, n_layer: int = 1, *, hidden_ratio: int = 4,
                 spiking: bool = True, lif_backend: str = "auto", init: str = "paper") -> None:
        super().__init__()
        if not 0 <= layer_id < n_layer:
            raise ValueError(f"layer_id must be in [0, n_layer={n_layer}), got {layer_id}")
        _check_init(init)
        self.dim = dim
        self.time_mix_k = nn.Parameter(torch.empty(dim))
        self.time_mix_r = nn.Parameter(torch.empty(dim))
        self.key = nn.Linear(dim, hidden_ratio * dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(hidden_ratio * dim, dim, bias=False)
        self.lif = _spikegpt_lif(lif_backend) if spiking else None
        with torch.no_grad():
            ramp = torch.arange(dim, dtype=torch.float64) / dim
            r10 = 1.0 - layer_id / n_layer
            self.time_mix_k.copy_(ramp ** r10)
            self.time_mix_r.copy_(ramp ** r10)
        if init == "threshold" and self.lif is not None:
            match_threshold_(self.value, lambda x: self._ffn(x, torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)),
                             dim, self.lif.v_threshold)

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> ChannelMixState:
        B = batch_shape[0]
        dtype = dtype or torch.get_default_dtype()
        shift = torch.zeros(B, self.dim, device=device, dtype=dtype)
        if self.lif is None:
            return ChannelMixState(shift, LIFState(torch.zeros_like(shift, dtype=compute_dtype(dtype))))
        return ChannelMixState(shift, self.lif.init_state((B, self.dim), device=device, dtype=dtype))

    def _ffn(self, x: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        xk, xr = _shift_mix(x, xx, self.time_mix_k), _shift_mix(x, xx, self.time_mix_r)
        return torch.sigmoid(self.receptance(xr)) * self.value(torch.square(F.relu(self.key(xk))))

    def scan(self, x: torch.Tensor, state: ChannelMixState | None = None) -> tuple[torch.Tensor, ChannelMixState]:
        """``x (B, L, C)`` -> ``(y (B, L, C), state)``."""
        x = _check_tokens_or_channels("x", x, self.dim, 3)
        check_nonempty("x", x, 1, "tokens")
        B = x.shape[0]
        if state is None:
            state = self.init_state((B, self.dim), x.device, x.dtype)
        xx = torch.cat([state.shift.to(x.dtype).unsqueeze(1), x[:, :-1]], dim=1)
        out = self._ffn(x, xx)
        lif_state = state.lif
        if self.lif is not None:
            spikes, lif_state = self.lif.scan(out.transpose(0, 1), state.lif)
            out = spikes.transpose(0, 1)
        return out, ChannelMixState(x[:, -1], lif_state)

    def step(self, x_t: torch.Tensor, state: ChannelMixState | None) -> tuple[torch.Tensor, ChannelMixState]:
        """One token ``x_t (B, C)`` -> ``(y_t (B, C), state)``."""
        x_t = _check_tokens_or_channels("x_t", x_t, self.dim, 2)
        if state is None:
            state = self.init_state(tuple(x_t.shape), x_t.device, x_t.dtype)
        out = self._ffn(x_t, state.shift.to(x_t.dtype))
        lif_state = state.lif
        if self.lif is not None:
            out, lif_state = self.lif.step(out, state.lif)
        return out, ChannelMixState(x_t, lif_state)


@dataclass
class BlockState:
    """State of a SpikeGPT block: its time-mix ``att`` and channel-mix ``ffn`` states (tensors ``(B, C)``)."""

    att: TimeMixState
    ffn: ChannelMixState


@dataclass
class SpikeGPTState:
    """State of a SpikeGPT model: one :class:`BlockState` per layer in ``blocks`` (tensors ``(B, n_embd)``)."""

    blocks: list[BlockState]


class SpikeGPTBlock(Composite):
    """``x += LIF(TimeMix(LN1 x)); x += LIF(ChannelMix(LN2 x))`` on ``(B, L, C)`` or one token ``(B, C)``
    (plus ``ln0`` in layer 0)."""

    time_dim = 1

    def __init__(self, dim: int, layer_id: int, n_layer: int, *, backend: str = "auto",
                 lif_backend: str = "auto", dropout: float = 0.0, init: str = "paper") -> None:
        super().__init__()
        self.ln0 = nn.LayerNorm(dim) if layer_id == 0 else None
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.att = SpikingTimeMix(dim, layer_id, n_layer, backend=backend, lif_backend=lif_backend, init=init)
        self.ffn = SpikingChannelMix(dim, layer_id, n_layer, lif_backend=lif_backend, init=init)
        self.drop = nn.Dropout(dropout)

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> BlockState:
        return BlockState(self.att.init_state(batch_shape, device, dtype),
                          self.ffn.init_state(batch_shape, device, dtype))

    def advance(self, x: torch.Tensor, state: BlockState | None, stepping: bool) -> tuple[torch.Tensor, BlockState]:
        if state is None:
            state = self.init_state((x.shape[0], x.shape[-1]), x.device, x.dtype)
        if self.ln0 is not None:
            x = self.ln0(x)
        a, att_state = run_child(self.att, self.ln1(x), state.att, stepping)
        x = x + a
        f, ffn_state = run_child(self.ffn, self.ln2(x), state.ffn, stepping)
        return self.drop(x + f), BlockState(att_state, ffn_state)


class SpikeGPT(Composite):
    """SpikeGPT language model: tokens ``(B, L)`` -> logits ``(B, L, vocab_size)``.

    ``scan(idx, state)`` runs a sequence (fused kernels) and returns the per-layer state
    (a :class:`SpikeGPTState`);
    ``step(idx_t (B,), state)`` decodes one token and gives the same logits as ``scan``.
    ``binary_embedding`` spikes the embedding (``emb >= 0``, ATan(2) surrogate gradient).
    ``init``: ``"paper"`` (default, the published code's) or ``"threshold"`` (see the module docstring).
    """

    time_dim = 1

    def __init__(self, vocab_size: int, n_embd: int, n_layer: int, *, backend: str = "auto",
                 lif_backend: str = "auto", binary_embedding: bool = True, dropout: float = 0.0,
                 init: str = "paper") -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("n_embd", n_embd), ("n_layer", n_layer)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.vocab_size = vocab_size
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.emb = nn.Embedding(vocab_size, n_embd)
        self.spike_embedding = ATan(alpha=2.0) if binary_embedding else None
        self.blocks = nn.ModuleList(SpikeGPTBlock(n_embd, i, n_layer, backend=backend, lif_backend=lif_backend,
                                                  dropout=dropout, init=init) for i in range(n_layer))
        self.ln_out = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"idx must hold integer token ids (int64/int32), got {idx.dtype}")
        check_token_range("idx", idx, self.vocab_size)
        x = self.emb(idx)
        return self.spike_embedding(x) if self.spike_embedding is not None else x

    def init_state(self, batch_shape: tuple[int, ...], device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> SpikeGPTState:
        """Fresh per-layer state for token batches of shape ``batch_shape = (B,)``."""
        dtype = dtype if dtype is not None and dtype.is_floating_point else self.emb.weight.dtype
        device = device if device is not None else self.emb.weight.device
        per_token = (batch_shape[0], self.n_embd)
        return SpikeGPTState([block.init_state(per_token, device, dtype) for block in self.blocks])

    def _check_state(self, state: object) -> None:
        if not isinstance(state, SpikeGPTState):
            raise TypeError(f"state must be a SpikeGPTState (from init_state or scan), got {type(state).__name__}")
        if len(state.blocks) != self.n_layer:
            raise ValueError(f"state must hold {self.n_layer} BlockState (one per layer), got {len(state.blocks)}")

    def check_input(self, idx: torch.Tensor, stepping: bool) -> None:
        if stepping:
            check_tensor("idx_t", idx, ndim=1, dtypes=None)
        else:
            check_tensor("idx", idx, ndim=2, dtypes=None)
            check_nonempty("idx", idx, 1, "tokens")

    def advance(self, idx: torch.Tensor, state: SpikeGPTState | None, stepping: bool
                ) -> tuple[torch.Tensor, SpikeGPTState]:
        """``idx (B, L)`` -> ``(logits (B, L, V), state)``; one token ``idx_t (B,)`` -> ``(logits (B, V), state)``."""
        x = self._embed(idx)
        if state is None:
            state = self.init_state((idx.shape[0],), idx.device, x.dtype)
        self._check_state(state)
        new_state = []
        for block, s in zip(self.blocks, state.blocks):
            x, s = run_child(block, x, s, stepping)
            new_state.append(s)
        return self.head(self.ln_out(x)), SpikeGPTState(new_state)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, V)`` for tokens ``idx (B, L)`` from a fresh state."""
        return self.scan(idx)[0]

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` after ``prompt (B, L)`` by stepping the recurrent state."""
        logits, state = self.scan(prompt)
        last = logits[:, -1]
        out = [prompt]
        for _ in range(max_new_tokens):
            if temperature <= 0:
                nxt = last.argmax(-1)
            else:
                nxt = torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=generator)[:, 0]
            out.append(nxt[:, None])
            last, state = self.step(nxt, state)
        return torch.cat(out, dim=1)


# --------------------------------------------------------------------------------------------
# character-level language modelling on the Python standard library's own source (no downloads)


def stdlib_text(max_chars: int = 2_000_000) -> str:
    """Concatenated ``.py`` sources of this interpreter's standard library (sorted, deterministic)."""
    import sysconfig
    from pathlib import Path

    if max_chars < 2:
        raise ValueError(f"max_chars must be >= 2, got {max_chars}")
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not parts:
        raise RuntimeError(f"no readable .py files under the standard library path {root}")
    return "".join(parts)[:max_chars]


def train_char_lm(model: SpikeGPT | None = None, *, text: str | None = None, steps: int = 200,
                  batch_size: int = 16, ctx_len: int = 64, lr: float = 3e-3, n_embd: int = 64, n_layer: int = 2,
                  max_chars: int = 500_000, seed: int = 0, log_every: int = 0,
                  device: str | torch.device = "cpu") -> dict:
    """Train a SpikeGPT on next-character prediction; return losses, vocabulary and the model.

    ``text`` defaults to :func:`stdlib_text`; the first 90% trains, the rest is held out. The
    vocabulary is the sorted set of characters of ``text``. Returns a dict with ``losses`` (train
    loss per step), ``val_loss_before``/``val_loss_after`` (mean cross-entropy in nats on fixed
    held-out windows), ``vocab`` and ``model``.
    """
    if steps < 1 or batch_size < 1 or ctx_len < 1:
        raise ValueError(f"steps, batch_size and ctx_len must be >= 1, got {steps}, {batch_size}, {ctx_len}")
    text = stdlib_text(max_chars) if text is None else text
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    data = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    if len(train) <= ctx_len + 1 or len(val) <= ctx_len + 1:
        raise ValueError(f"text of {len(text)} chars is too short for ctx_len={ctx_len}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if model is None:
        model = SpikeGPT(len(vocab), n_embd, n_layer)
    elif model.vocab_size < len(vocab):
        raise ValueError(f"model.vocab_size={model.vocab_size} is smaller than the text's {len(vocab)} characters")
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))

    def batch(source: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        offs = starts[:, None] + torch.arange(ctx_len + 1)
        chunk = source[offs].to(device)
        return chunk[:, :-1], chunk[:, 1:]

    val_starts = torch.randint(0, len(val) - ctx_len - 1, (batch_size,), generator=gen)

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        x, y = batch(val, val_starts)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
        model.train()
        return loss

    before = val_loss()
    losses = []
    for i in range(steps):
        x, y = batch(train, torch.randint(0, len(train) - ctx_len - 1, (batch_size,), generator=gen))
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log_every and (i + 1) % log_every == 0:
            print(f"step {i + 1:5d}  loss {losses[-1]:.4f}  ({losses[-1] / math.log(2):.3f} bits/char)", flush=True)
    return {"losses": losses, "val_loss_before": before, "val_loss_after": val_loss(), "vocab": vocab,
            "model": model}
