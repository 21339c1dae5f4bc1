"""Embedded tasks (no downloads): the synthetic sequence tasks of the Mamba and Zoology papers,
scikit-learn's digits, next-character prediction on the Python standard library, and the
concept-shift stream.

Every builder returns a :class:`TaskData`. Inputs are float features ``(N, L, F)``
(``input_kind="features"``) or token ids ``(N, L)`` (``input_kind="tokens"``). Targets are
class ids ``(N,)`` for ``readout="mean"`` (one label per sequence) or ``(N, L)`` for
``readout="all"`` (one label per position, :data:`IGNORE` where nothing is scored).

Sequence tasks draw fresh training samples every step (``num_train = 0``, the Mamba paper's
setting) from a stream seeded by the run's seed; ``num_train > 0`` fixes a finite training set
instead. Validation sets (for the learning curve and early stopping) and test sets (for the
reported metric) are drawn once from ``data_seed``, so every block and seed is scored on the
same samples, and no decision during training looks at the test set. Each task states its
chance level: the accuracy and the loss of the best predictor that ignores the input
(``chance``, ``chance_loss``).
"""

from __future__ import annotations

import importlib.util
import math
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

IGNORE = -100  # target of a position that is not scored (torch's cross_entropy ignore_index)

Sampler = Callable[[int, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TaskData:
    """One task's tensors and the facts the backbone and the report need.

    x_train/x_test: ``(N, L, F)`` float32 features or ``(N, L)`` int64 tokens.
    y_train/y_test: ``(N,)`` (readout ``mean``) or ``(N, L)`` (readout ``all``) int64 class ids in
    ``[0, num_classes)``, or :data:`IGNORE`.
    ``sampler(n, rng) -> (x, y)`` draws fresh training samples; when it is set and
    ``x_train`` is None, training streams new samples every step.
    """

    name: str
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    input_kind: str                    # "features" | "tokens"
    chance: float                      # accuracy of the best input-independent guess
    chance_loss: float                 # cross-entropy (nats) of the best input-independent guess
    causal: bool = False               # the papers run this task with causal models only
    x_train: torch.Tensor | None = None
    y_train: torch.Tensor | None = None
    sampler: Sampler | None = None
    in_features: int | None = None     # features per token
    vocab_size: int | None = None      # token vocabulary
    # Sequence tasks are one-row images (1, L): 2D mixers (depthwise convs, 2D scans) then
    # run along the sequence; mixers that ignore the grid are unaffected.
    grid_size: tuple[int, int] | None = None
    readout: str = "mean"              # "mean" | "all"
    metric: str = "accuracy"           # "accuracy" | "bpc"
    # Positions that hold an answer in every sample (selective copying's copied tokens): their
    # accuracy is also reported one position at a time, which shows what a block copies by
    # position alone (the first and the last token) and what needs content.
    answer_positions: tuple[int, ...] | None = None

    @property
    def seq_len(self) -> int:
        return int(self.x_test.shape[1])

    @property
    def streaming(self) -> bool:
        """True when training draws fresh samples every step (no fixed training set)."""
        return self.x_train is None

    def train_size(self) -> int | None:
        return None if self.x_train is None else int(self.x_train.shape[0])


# ----------------------------------------------------------------------------- helpers
def _rng(*seed: int) -> np.random.Generator:
    return np.random.default_rng(list(seed))


def _sorted_positions(rng: np.random.Generator, n: int, length: int, k: int) -> np.ndarray:
    """``(n, k)`` distinct positions in ``[0, length)`` per row, ascending."""
    return np.sort(np.argsort(rng.random((n, length)), axis=1)[:, :k], axis=1)


def _distinct(rng: np.random.Generator, n: int, low: int, high: int, k: int) -> np.ndarray:
    """``(n, k)`` distinct integers from ``[low, high)`` per row, in random order."""
    return np.argsort(rng.random((n, high - low)), axis=1)[:, :k] + low


def _held_out(sampler: Sampler, options: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Test and validation sets drawn once from ``data_seed`` (streams 0 and 3)."""
    x_te, y_te = sampler(options["num_test"], _rng(options["data_seed"], 0))
    x_va, y_va = sampler(options["num_val"], _rng(options["data_seed"], 3))
    return {"x_test": x_te, "y_test": y_te, "x_val": x_va, "y_val": y_va}


def _finite_or_stream(task: TaskData, sampler: Sampler, options: dict[str, Any]) -> TaskData:
    """Training set fixed (``num_train > 0``, drawn from ``data_seed``) or streamed."""
    task.sampler = sampler
    if options["num_train"] > 0:
        task.x_train, task.y_train = sampler(options["num_train"], _rng(options["data_seed"], 1))
    return task


def _check_positive(task: str, options: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if options[key] < 1:
            raise ValueError(f"[tasks] {task} {key} must be >= 1, got {options[key]}")


# ----------------------------------------------------------------------------- selective copying
def selective_copy_sampler(seq_len: int, num_tokens: int, vocab: int) -> Sampler:
    """Selective copying (Mamba paper, section 4.1; the S4 repository's ``torch_copying_data``).

    ``num_tokens`` data tokens from ``1..vocab`` sit at random, ordered positions among blanks
    (0) in the first ``seq_len - num_tokens`` positions; the last ``num_tokens`` positions hold
    a marker (``vocab + 1``), where the model must output the data tokens in order. Inputs
    ``(n, seq_len)``, targets ``(n, seq_len)`` with the data tokens (``0..vocab-1``) at the
    marker positions and :data:`IGNORE` elsewhere.
    """
    region = seq_len - num_tokens

    def sample(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        data = rng.integers(0, vocab, size=(n, num_tokens))
        pos = _sorted_positions(rng, n, region, num_tokens)
        x = np.zeros((n, seq_len), dtype=np.int64)
        np.put_along_axis(x, pos, data + 1, axis=1)
        x[:, region:] = vocab + 1
        y = np.full((n, seq_len), IGNORE, dtype=np.int64)
        y[:, region:] = data
        return torch.from_numpy(x), torch.from_numpy(y)

    return sample


def selective_copy_task(options: dict[str, Any]) -> TaskData:
    length, k, vocab = options["seq_len"], options["num_tokens"], options["vocab"]
    _check_positive("selective_copy", options, "seq_len", "num_tokens", "vocab", "num_test", "num_val")
    if 2 * k > length:
        raise ValueError(f"[tasks] selective_copy needs seq_len >= 2 * num_tokens (data region plus markers), "
                         f"got seq_len={length}, num_tokens={k}")
    sample = selective_copy_sampler(length, k, vocab)
    task = TaskData(
        name="selective_copy", **_held_out(sample, options), num_classes=vocab, input_kind="tokens",
        chance=1.0 / vocab, chance_loss=math.log(vocab), causal=options["causal"], vocab_size=vocab + 2,
        grid_size=(1, length), readout="all", answer_positions=tuple(range(length - k, length)),
    )
    return _finite_or_stream(task, sample, options)


# ----------------------------------------------------------------------------- MQAR
def mqar_gap_probabilities(space: int, power_a: float) -> np.ndarray:
    """Zoology's power law over query gaps ``0..space-1``: ``p(g) ~ a * (g + 1)^(a - 1)``."""
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1.0)
    return p / p.sum()


def mqar_sampler(seq_len: int, num_pairs: int, vocab: int, power_a: float, random_non_queries: bool) -> Sampler:
    """Multi-query associative recall (Zoology, Arora et al. 2023, ``multiquery_ar``).

    The first ``2 * num_pairs`` tokens are key-value pairs: distinct keys from ``[1, vocab/2)``,
    distinct values from ``[vocab/2, vocab)``. Every key is queried once more in the rest of the
    sequence, at even offsets ``2 * g`` after the pairs, with the gaps ``g`` drawn without
    replacement by the power law of :func:`mqar_gap_probabilities`. The target at a query
    position is the key's value; every other position is :data:`IGNORE`. The remaining
    positions hold random tokens (``random_non_queries``) or 0.
    """
    context = 2 * num_pairs
    space = (seq_len - context) // 2
    probs = mqar_gap_probabilities(space, power_a)
    half = vocab // 2

    def sample(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        keys = _distinct(rng, n, 1, half, num_pairs)
        values = _distinct(rng, n, half, vocab, num_pairs)
        # Gaps without replacement, weighted: the Gumbel top-k trick draws them in one shot.
        scores = np.log(probs)[None, :] - np.log(-np.log(rng.random((n, space))))
        gaps = np.argsort(-scores, axis=1)[:, :num_pairs]
        x = np.zeros((n, seq_len), dtype=np.int64)
        x[:, 0:context:2] = keys
        x[:, 1:context:2] = values
        query_pos = context + 2 * gaps
        np.put_along_axis(x, query_pos, keys, axis=1)
        y = np.full((n, seq_len), IGNORE, dtype=np.int64)
        np.put_along_axis(y, query_pos, values, axis=1)
        if random_non_queries:
            filler = rng.integers(0, vocab, size=(n, seq_len))
            x = np.where(x == 0, filler, x)
        return torch.from_numpy(x), torch.from_numpy(y)

    return sample


def mqar_task(options: dict[str, Any]) -> TaskData:
    length, pairs, vocab = options["seq_len"], options["num_pairs"], options["vocab"]
    _check_positive("mqar", options, "seq_len", "num_pairs", "num_test", "num_val")
    if length % 2:
        raise ValueError(f"[tasks] mqar seq_len must be even (queries sit at even offsets), got {length}")
    if 4 * pairs > length:
        raise ValueError(f"[tasks] mqar needs seq_len >= 4 * num_pairs (pairs plus query slots), "
                         f"got seq_len={length}, num_pairs={pairs}")
    if vocab // 2 - 1 < pairs or vocab <= length:
        raise ValueError(f"[tasks] mqar needs vocab > seq_len and vocab/2 - 1 >= num_pairs distinct keys, "
                         f"got vocab={vocab}, seq_len={length}, num_pairs={pairs}")
    if not 0.0 < options["power_a"] <= 1.0:
        raise ValueError(f"[tasks] mqar power_a must be in (0, 1], got {options['power_a']}")
    sample = mqar_sampler(length, pairs, vocab, options["power_a"], options["random_non_queries"])
    n_values = vocab - vocab // 2
    task = TaskData(
        name="mqar", **_held_out(sample, options), num_classes=vocab, input_kind="tokens", chance=1.0 / n_values,
        chance_loss=math.log(n_values), causal=options["causal"], vocab_size=vocab, grid_size=(1, length),
        readout="all",
    )
    return _finite_or_stream(task, sample, options)


# ----------------------------------------------------------------------------- induction heads
def induction_heads_sampler(seq_len: int, vocab: int) -> Sampler:
    """Induction heads (Mamba paper, section 4.1.2): random tokens from ``0..vocab-1``; a special
    token (``vocab``) appears once at a random position followed by the token to recall, and
    again as the last token, where the model must output that token.

    Inputs ``(n, seq_len)``; targets :data:`IGNORE` except the last position.
    """

    def sample(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = rng.integers(0, vocab, size=(n, seq_len))
        pos = rng.integers(0, seq_len - 2, size=n)   # trigger at pos, answer at pos + 1 <= seq_len - 2
        rows = np.arange(n)
        x[rows, pos] = vocab
        x[:, -1] = vocab
        y = np.full((n, seq_len), IGNORE, dtype=np.int64)
        y[:, -1] = x[rows, pos + 1]
        return torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y)

    return sample


def induction_heads_task(options: dict[str, Any]) -> TaskData:
    length, vocab = options["seq_len"], options["vocab"]
    _check_positive("induction_heads", options, "vocab", "num_test", "num_val")
    if length < 3:
        raise ValueError(f"[tasks] induction_heads seq_len must be >= 3 (trigger, answer, trigger), got {length}")
    sample = induction_heads_sampler(length, vocab)
    task = TaskData(
        name="induction_heads", **_held_out(sample, options), num_classes=vocab, input_kind="tokens",
        chance=1.0 / vocab, chance_loss=math.log(vocab), causal=options["causal"], vocab_size=vocab + 1,
        grid_size=(1, length), readout="all",
    )
    return _finite_or_stream(task, sample, options)


# ----------------------------------------------------------------------------- digits
def _digits_csv() -> Path | None:
    """The digits table that scikit-learn ships (1797 rows of 64 pixels and the label), found without
    importing scikit-learn; None where it is not installed or keeps the file elsewhere."""
    spec = importlib.util.find_spec("sklearn")
    roots = spec.submodule_search_locations if spec is not None else None
    paths = (Path(root) / "datasets" / "data" / "digits.csv.gz" for root in roots or ())
    return next((path for path in paths if path.is_file()), None)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: images ``(1797, 8, 8)`` in [0, 1], labels ``(1797,)``.

    Read from the file scikit-learn ships, as its ``load_digits`` reads it, without importing
    scikit-learn: that import takes about 1 s, which every experiment process with a digits task paid
    before its first run (0.1 s for the file alone; 2-core AMD EPYC, 2026-12-05). ``load_digits`` itself
    where the file is not found."""
    path = _digits_csv()
    if path is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, labels = bunch.images, bunch.target
    else:
        table = np.loadtxt(path, delimiter=",")
        images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    return (images / 16.0).astype(np.float32), labels.astype(np.int64)


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


def _prior(labels: np.ndarray, num_classes: int) -> tuple[float, float]:
    """Chance accuracy (majority class) and loss (entropy of the class prior) of ``labels``."""
    freq = np.bincount(labels, minlength=num_classes) / len(labels)
    nz = freq[freq > 0]
    return float(freq.max()), float(-(nz * np.log(nz)).sum())


def digits_task(options: dict[str, Any]) -> TaskData:
    """Digits as patch tokens: patch ``p`` gives ``(8/p)^2`` tokens on an ``(8/p, 8/p)`` grid.

    Stratified splits: ``test_fraction`` of the images for the test set, then ``val_fraction``
    of the rest for validation.
    """
    patch = options["patch"]
    if patch not in (1, 2, 4, 8):
        raise ValueError(f"[tasks] digits patch must divide 8 (1, 2, 4 or 8), got {patch}")
    images, labels = load_digits_arrays()
    rest_idx, test_idx = split_indices(labels, options["test_fraction"], options["data_seed"])
    train_pos, val_pos = split_indices(labels[rest_idx], options["val_fraction"], options["data_seed"] + 1)
    train_idx, val_idx = rest_idx[train_pos], rest_idx[val_pos]
    channels = encode_digits(torch.from_numpy(images), options["encoding"], options["num_steps"], options["data_seed"])
    tokens = _patchify(channels, patch)
    grid = 8 // patch
    y = torch.from_numpy(labels)
    chance, chance_loss = _prior(labels[train_idx], 10)
    return TaskData(
        name="digits", x_train=tokens[train_idx], y_train=y[train_idx], x_test=tokens[test_idx], y_test=y[test_idx],
        x_val=tokens[val_idx], y_val=y[val_idx], num_classes=10, input_kind="features", chance=chance,
        chance_loss=chance_loss, causal=options["causal"],
        in_features=tokens.shape[-1], grid_size=(grid, grid), readout="mean",
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


def stdlib_chars_sampler(ids: torch.Tensor, context: int, causal: bool) -> Sampler:
    """Windows of ``context`` characters from ``ids``. Causal: the target of every position is
    the next character; otherwise only the last position is scored (a bidirectional model
    would see every other target in its input)."""

    def sample(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.from_numpy(rng.integers(0, len(ids) - context - 1, size=n))
        windows = ids[starts.unsqueeze(1) + torch.arange(context + 1)]
        x, y = windows[:, :context], windows[:, 1:].clone()
        if not causal:
            y[:, :-1] = IGNORE
        return x, y

    return sample


def stdlib_chars_task(options: dict[str, Any]) -> TaskData:
    """Next-character prediction on standard-library source; the metric is bits per character."""
    ctx = options["context"]
    _check_positive("stdlib_chars", options, "context", "num_test", "num_val")
    train_ids = encode_chars(stdlib_text(options["max_chars"], split="train"))
    test_ids = encode_chars(stdlib_text(options["max_chars"], split="test"))
    if min(len(train_ids), len(test_ids)) <= ctx + 1:
        raise ValueError(f"[tasks] stdlib_chars context ({ctx}) is longer than the text "
                         f"({min(len(train_ids), len(test_ids))} chars)")
    held_out = _held_out(stdlib_chars_sampler(test_ids, ctx, options["causal"]), options)
    chance, chance_loss = _prior(train_ids.numpy(), CHAR_VOCAB)
    task = TaskData(
        name="stdlib_chars", **held_out, num_classes=CHAR_VOCAB, input_kind="tokens", chance=chance,
        chance_loss=chance_loss, causal=options["causal"], vocab_size=CHAR_VOCAB, grid_size=(1, ctx),
        readout="all", metric="bpc",
    )
    return _finite_or_stream(task, stdlib_chars_sampler(train_ids, ctx, options["causal"]), options)


# ----------------------------------------------------------------------------- concept shift
def swap_two_classes(mapping: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """Swap the labels of two random distinct classes in ``mapping`` (in place)."""
    a, b = rng.choice(len(mapping), size=2, replace=False)
    mapping[a], mapping[b] = mapping[b], mapping[a]
    return int(a), int(b)


def concept_shift_segments(num_minibatches: int, swaps_per_epoch: int) -> list[int]:
    """First minibatch of each label-mapping segment of one epoch (ascending, starting at 0).

    ``swaps_per_epoch`` swaps split the epoch into that many segments of (nearly) equal length;
    the swap happens *before* a segment's first minibatch, so the last segment of every epoch
    trains on its mapping before the end-of-epoch test. ``0`` swaps gives one segment and no swap.
    """
    if swaps_per_epoch < 0:
        raise ValueError(f"swaps_per_epoch must be >= 0, got {swaps_per_epoch}")
    if swaps_per_epoch > num_minibatches:
        raise ValueError(f"swaps_per_epoch ({swaps_per_epoch}) exceeds the minibatches per epoch ({num_minibatches})")
    segments = max(1, swaps_per_epoch)
    return [int(round(k * num_minibatches / segments)) for k in range(segments)]


# ----------------------------------------------------------------------------- registry
_COMMON = {"data_seed": 0}
_STREAM = {"num_train": 0, "num_val": 256, "num_test": 512, "causal": True}

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {**_COMMON, "patch": 2, "encoding": "none", "num_steps": 4, "test_fraction": 0.2, "val_fraction": 0.1,
               "causal": False},
    "selective_copy": {**_COMMON, **_STREAM, "seq_len": 128, "num_tokens": 8, "vocab": 8},
    "mqar": {**_COMMON, **_STREAM, "seq_len": 64, "num_pairs": 8, "vocab": 128, "power_a": 0.01,
             "random_non_queries": True},
    "induction_heads": {**_COMMON, **_STREAM, "seq_len": 64, "vocab": 16},
    "stdlib_chars": {**_COMMON, **_STREAM, "context": 64, "num_val": 128, "num_test": 256, "max_chars": 400_000},
}

TASKS: dict[str, Callable[[dict[str, Any]], TaskData]] = {
    "digits": digits_task,
    "selective_copy": selective_copy_task,
    "mqar": mqar_task,
    "induction_heads": induction_heads_task,
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
