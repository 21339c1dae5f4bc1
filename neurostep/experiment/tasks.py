"""Embedded tasks (no downloads): digits images and spike trains, synthetic sequence tasks,
character-level language modelling on the Python standard library, and a concept-shift stream.

Every builder returns a :class:`TaskData` whose inputs are either float features
``(N, L, F)`` (``input_kind="features"``) or token ids ``(N, L)`` (``input_kind="tokens"``),
with integer targets ``(N,)`` or ``(N, K)`` for ``readout="last_k"``. Data are generated
from a fixed data seed (``data_seed``), so every model and run seed sees the same split.
"""

from __future__ import annotations

import math
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class TaskData:
    """One task's tensors and the facts the backbone needs.

    x_train/x_test: ``(N, L, F)`` float32 features or ``(N, L)`` int64 tokens.
    y_train/y_test: ``(N,)`` or ``(N, K)`` int64 class ids in ``[0, num_classes)``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_kind: str                  # "features" | "tokens"
    in_features: int | None = None   # features per token
    vocab_size: int | None = None    # token vocabulary
    # Sequence tasks are one-row images (1, L): 2D mixers (depthwise convs, 2D scans) then
    # run along the sequence; mixers that ignore the grid are unaffected.
    grid_size: tuple[int, int] | None = None
    readout: str = "mean"            # "mean" | "last" | "last_k"
    readout_k: int = 1
    metric: str = "accuracy"         # "accuracy" | "bpc"

    @property
    def seq_len(self) -> int:
        return int(self.x_train.shape[1])


# ----------------------------------------------------------------------------- digits
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: images ``(1797, 8, 8)`` in [0, 1], labels ``(1797,)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified train/test split (each class split in the same proportion)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = max(1, int(round(len(idx) * test_fraction)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``(N, C, H, W)`` -> tokens ``(N, (H/p)*(W/p), C*p*p)`` in row-major patch order."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, (h // patch) * (w // patch), c * patch * patch)


def encode_digits(images: torch.Tensor, encoding: str, num_steps: int, seed: int) -> torch.Tensor:
    """Images ``(N, 8, 8)`` in [0, 1] -> channels ``(N, C, 8, 8)`` for patching.

    - ``none``: the intensities (C = 1).
    - ``rate`` / ``latency``: spike trains from :mod:`neurostep.neuro.encoders`, time steps as
      channels (C = num_steps), so each patch token carries its pixels' spike trains.
    - ``delta``: the image is scanned as a signal over its rows (8 steps of 8 pixels) and
      delta-modulated with on and off spikes (C = 2): a spiking edge map.
    """
    from neurostep.neuro import encoders

    if encoding == "none":
        return images.unsqueeze(1)
    if encoding == "rate":
        gen = torch.Generator().manual_seed(seed)
        spikes = encoders.rate(images, num_steps, generator=gen)  # (T, N, 8, 8)
        return spikes.permute(1, 0, 2, 3).contiguous()
    if encoding == "latency":
        spikes = encoders.latency(images, num_steps, tau=5.0, threshold=0.01, normalize=True)
        return spikes.permute(1, 0, 2, 3).contiguous()
    if encoding == "delta":
        rows = images.permute(1, 0, 2)  # (8 rows as time, N, 8)
        spikes = encoders.delta(rows, threshold=0.25, off_spikes=True)  # (8, N, 8) in {-1, 0, 1}
        on, off = (spikes > 0).float(), (spikes < 0).float()
        return torch.stack([on, off], dim=1).permute(2, 1, 0, 3).contiguous()  # (N, 2, 8, 8)
    raise ValueError(f"encoding must be one of ('none', 'rate', 'latency', 'delta'), got {encoding!r}")


def digits_task(options: dict[str, Any]) -> TaskData:
    """Digits as patch tokens: patch ``p`` gives ``(8/p)^2`` tokens on an ``(8/p, 8/p)`` grid."""
    patch = options["patch"]
    if patch not in (1, 2, 4, 8):
        raise ValueError(f"[tasks] digits patch must divide 8 (1, 2, 4 or 8), got {patch}")
    images, labels = load_digits_arrays()
    train_idx, test_idx = split_indices(labels, options["test_fraction"], options["data_seed"])
    channels = encode_digits(torch.from_numpy(images), options["encoding"], options["num_steps"], options["data_seed"])
    tokens = _patchify(channels, patch)
    grid = 8 // patch
    y = torch.from_numpy(labels)
    return TaskData(
        name="digits", x_train=tokens[train_idx], y_train=y[train_idx], x_test=tokens[test_idx], y_test=y[test_idx],
        num_classes=10, input_kind="features", in_features=tokens.shape[-1], grid_size=(grid, grid), readout="mean",
    )


# ----------------------------------------------------------------------------- sequence tasks
def selective_copy_task(options: dict[str, Any]) -> TaskData:
    """Selective copying: ``num_tokens`` data tokens scattered among ``seq_len`` noise positions;
    after them come ``num_tokens`` marker positions where the model must emit the data tokens in order.

    Tokens: 0 = blank, 1..vocab = data, vocab+1 = marker. Inputs ``(N, seq_len + K)``, targets ``(N, K)``.
    """
    n_data, vocab, length = options["num_tokens"], options["vocab"], options["seq_len"]
    if n_data > length:
        raise ValueError(f"[tasks] selective_copy num_tokens ({n_data}) must be <= seq_len ({length})")
    rng = np.random.default_rng(options["data_seed"])

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = rng.integers(0, vocab, size=(n, n_data))
        x = np.zeros((n, length + n_data), dtype=np.int64)
        for i in range(n):
            pos = np.sort(rng.choice(length, size=n_data, replace=False))
            x[i, pos] = data[i] + 1
        x[:, length:] = vocab + 1
        return torch.from_numpy(x), torch.from_numpy(data.astype(np.int64))

    x_tr, y_tr = make(options["num_train"])
    x_te, y_te = make(options["num_test"])
    return TaskData(
        name="selective_copy", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, num_classes=vocab,
        input_kind="tokens", vocab_size=vocab + 2, grid_size=(1, length + n_data), readout="last_k", readout_k=n_data,
    )


def associative_recall_task(options: dict[str, Any]) -> TaskData:
    """Associative recall: ``num_pairs`` (key, value) pairs, then a query key; predict its value.

    Keys are distinct within a sequence. Tokens: keys 0..K-1, values K..K+V-1.
    Inputs ``(N, 2*num_pairs + 1)``, targets ``(N,)`` in ``[0, V)``.
    """
    pairs, n_keys, n_values = options["num_pairs"], options["num_keys"], options["num_values"]
    if pairs > n_keys:
        raise ValueError(f"[tasks] associative_recall num_pairs ({pairs}) must be <= num_keys ({n_keys})")
    rng = np.random.default_rng(options["data_seed"])

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.zeros((n, 2 * pairs + 1), dtype=np.int64)
        y = np.zeros(n, dtype=np.int64)
        for i in range(n):
            keys = rng.choice(n_keys, size=pairs, replace=False)
            values = rng.integers(0, n_values, size=pairs)
            x[i, 0:2 * pairs:2] = keys
            x[i, 1:2 * pairs:2] = values + n_keys
            q = rng.integers(pairs)
            x[i, -1] = keys[q]
            y[i] = values[q]
        return torch.from_numpy(x), torch.from_numpy(y)

    x_tr, y_tr = make(options["num_train"])
    x_te, y_te = make(options["num_test"])
    return TaskData(
        name="associative_recall", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, num_classes=n_values,
        input_kind="tokens", vocab_size=n_keys + n_values, grid_size=(1, 2 * pairs + 1), readout="last",
    )


# ----------------------------------------------------------------------------- stdlib characters
# Printable ASCII plus newline; everything else maps to one "other" id.
_CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
_CHAR_IDS = {c: i for i, c in enumerate(_CHARS)}
CHAR_VOCAB = len(_CHARS) + 1


def stdlib_text(max_chars: int, *, split: str) -> str:
    """Text of the Python standard library's own top-level ``*.py`` files (sorted by name).

    ``split="train"`` takes files from the front, ``"test"`` from the back, so the two never
    share a file; each is cut at ``max_chars``.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if len(files) < 4:
        raise RuntimeError(f"found only {len(files)} standard-library sources under {root}")
    files = files if split == "train" else files[::-1]
    parts, total = [], 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace").replace("\t", "    ")
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]


def encode_chars(text: str) -> torch.Tensor:
    other = len(_CHARS)
    return torch.tensor([_CHAR_IDS.get(c, other) for c in text], dtype=torch.int64)


def stdlib_chars_task(options: dict[str, Any]) -> TaskData:
    """Next-character prediction on standard-library source: a window of ``context`` characters,
    target the character that follows it; the metric is bits per character.

    Each window has one target (at its end), so any mixer, causal or bidirectional, can be
    trained without seeing the answer.
    """
    ctx = options["context"]
    rng = np.random.default_rng(options["data_seed"])
    out = []
    for split, n in (("train", options["num_train"]), ("test", options["num_test"])):
        ids = encode_chars(stdlib_text(options["max_chars"], split=split))
        if len(ids) <= ctx + 1:
            raise ValueError(f"[tasks] stdlib_chars context ({ctx}) is longer than the text ({len(ids)} chars)")
        starts = torch.from_numpy(rng.integers(0, len(ids) - ctx - 1, size=n))
        windows = ids[starts.unsqueeze(1) + torch.arange(ctx + 1)]
        out.append((windows[:, :ctx], windows[:, ctx]))
    (x_tr, y_tr), (x_te, y_te) = out
    return TaskData(
        name="stdlib_chars", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, num_classes=CHAR_VOCAB,
        input_kind="tokens", vocab_size=CHAR_VOCAB, grid_size=(1, ctx), readout="last", metric="bpc",
    )


# ----------------------------------------------------------------------------- concept shift
def swap_two_classes(mapping: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """Swap the labels of two random distinct classes in ``mapping`` (in place)."""
    a, b = rng.choice(len(mapping), size=2, replace=False)
    mapping[a], mapping[b] = mapping[b], mapping[a]
    return int(a), int(b)


def concept_shift_swap_points(num_minibatches: int, swaps_per_epoch: int) -> set[int]:
    """Minibatch indices (within one epoch) after which the labels of two classes swap.

    Swaps are spread evenly over the epoch; ``0`` swaps gives none.
    """
    if swaps_per_epoch <= 0:
        return set()
    if swaps_per_epoch > num_minibatches:
        raise ValueError(f"swaps_per_epoch ({swaps_per_epoch}) exceeds the minibatches per epoch ({num_minibatches})")
    every = num_minibatches / swaps_per_epoch
    return {int(math.ceil((k + 1) * every)) - 1 for k in range(swaps_per_epoch)}


# ----------------------------------------------------------------------------- registry
_COMMON = {"data_seed": 0}

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {**_COMMON, "patch": 2, "encoding": "none", "num_steps": 4, "test_fraction": 0.2},
    "selective_copy": {**_COMMON, "seq_len": 256, "num_tokens": 4, "vocab": 8, "num_train": 2000, "num_test": 500},
    "associative_recall": {**_COMMON, "num_pairs": 16, "num_keys": 32, "num_values": 16, "num_train": 2000,
                           "num_test": 500},
    "stdlib_chars": {**_COMMON, "context": 128, "num_train": 4000, "num_test": 1000, "max_chars": 400_000},
}

TASKS: dict[str, Callable[[dict[str, Any]], TaskData]] = {
    "digits": digits_task,
    "selective_copy": selective_copy_task,
    "associative_recall": associative_recall_task,
    "stdlib_chars": stdlib_chars_task,
}


def task_defaults(name: str) -> dict[str, Any]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: {sorted(TASKS)}")
    return dict(TASK_DEFAULTS[name])


def build_task(name: str, options: dict[str, Any] | None = None) -> TaskData:
    """Build task ``name`` with ``options`` (missing ones take the defaults; unknown ones raise)."""
    defaults = task_defaults(name)
    options = dict(options or {})
    options.pop("task", None)
    for key in options:
        if key not in defaults:
            raise ValueError(f"unknown option {key!r} for task {name!r}; allowed: {sorted(defaults)}")
    return TASKS[name]({**defaults, **options})
