"""Task generators against hand-checked examples and the papers' definitions."""

import math

import numpy as np
import pytest
import torch

from neurostep.experiment.tasks import (
    CHAR_VOCAB,
    IGNORE,
    build_task,
    concept_shift_segments,
    encode_chars,
    induction_heads_sampler,
    mqar_gap_probabilities,
    mqar_sampler,
    selective_copy_sampler,
    split_indices,
)
from neurostep.experiment.train import train_batches


def test_selective_copy_hand_checked():
    # Data region of 2 positions holding 2 data tokens: both positions are data, in order.
    x, y = selective_copy_sampler(seq_len=4, num_tokens=2, vocab=1)(3, np.random.default_rng(0))
    assert x.tolist() == [[1, 1, 2, 2]] * 3
    assert y.tolist() == [[IGNORE, IGNORE, 0, 0]] * 3


def test_selective_copy_targets_are_the_data_tokens_in_order():
    x, y = selective_copy_sampler(seq_len=20, num_tokens=3, vocab=5)(200, np.random.default_rng(1))
    assert x.shape == y.shape == (200, 20)
    for xi, yi in zip(x, y):
        region = xi[:17]
        data = region[region > 0] - 1
        assert len(data) == 3 and torch.all(xi[17:] == 6)        # markers
        assert torch.equal(yi[17:], data) and torch.all(yi[:17] == IGNORE)
    # Positions are uniform over the region: every position is used across samples.
    assert set(torch.nonzero(x[:, :17])[:, 1].tolist()) == set(range(17))


def test_selective_copy_task_facts_and_streams():
    t = build_task("selective_copy", {"seq_len": 16, "num_tokens": 4, "vocab": 8, "num_test": 20, "num_val": 10})
    assert t.streaming and t.causal and t.readout == "all"
    assert t.vocab_size == 10 and t.num_classes == 8
    assert t.chance == pytest.approx(1 / 8) and t.chance_loss == pytest.approx(math.log(8))
    assert t.x_test.shape == (20, 16) and t.x_val.shape == (10, 16)
    assert not torch.equal(t.x_test[:10], t.x_val)            # separate draws
    again = build_task("selective_copy", {"seq_len": 16, "num_tokens": 4, "vocab": 8, "num_test": 20, "num_val": 10})
    assert torch.equal(again.x_test, t.x_test)                  # the test set depends on data_seed only
    a = next(train_batches(t, 8, seed=0))[0]
    b = next(train_batches(t, 8, seed=0))[0]
    c = next(train_batches(t, 8, seed=1))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    fixed = build_task("selective_copy", {"seq_len": 16, "num_tokens": 4, "num_train": 40})
    assert not fixed.streaming and fixed.x_train.shape == (40, 16)
    with pytest.raises(ValueError, match="seq_len >= 2 \\* num_tokens"):
        build_task("selective_copy", {"seq_len": 6, "num_tokens": 4})


def test_mqar_hand_checked():
    # 2 pairs in 8 tokens: pairs at 0..3, the two query slots at 4 and 6 (gaps 0 and 1).
    x, y = mqar_sampler(seq_len=8, num_pairs=2, vocab=10, power_a=0.01, random_non_queries=False)(
        50, np.random.default_rng(0))
    for xi, yi in zip(x.tolist(), y.tolist()):
        keys, values = xi[0:4:2], xi[1:4:2]
        assert all(1 <= k < 5 for k in keys) and all(5 <= v < 10 for v in values)
        assert len(set(keys)) == 2 and len(set(values)) == 2
        assert sorted([xi[4], xi[6]]) == sorted(keys) and xi[5] == xi[7] == 0
        value_of = dict(zip(keys, values))
        assert yi == [IGNORE] * 4 + [value_of[xi[4]], IGNORE, value_of[xi[6]], IGNORE]


def test_mqar_random_fill_and_power_law():
    x, y = mqar_sampler(seq_len=16, num_pairs=2, vocab=32, power_a=0.01, random_non_queries=True)(
        400, np.random.default_rng(3))
    assert int((x == 0).sum()) < 400          # zeros are replaced by random tokens (0 itself may be drawn)
    assert torch.all((y == IGNORE) | ((y >= 16) & (y < 32)))
    # One pair: the query gap follows p(g) ~ a (g+1)^(a-1), heavily favouring the first slots.
    x, y = mqar_sampler(seq_len=40, num_pairs=1, vocab=64, power_a=0.5, random_non_queries=False)(
        20000, np.random.default_rng(4))
    gaps = ((torch.nonzero(y != IGNORE)[:, 1] - 2) // 2).numpy()
    p = mqar_gap_probabilities(19, 0.5)
    freq = np.bincount(gaps, minlength=19) / len(gaps)
    assert np.allclose(freq, p, atol=0.01)
    assert p[0] == pytest.approx(1 / np.sum(np.arange(1, 20) ** -0.5))


def test_mqar_task_facts_and_errors():
    t = build_task("mqar", {"seq_len": 32, "num_pairs": 4, "vocab": 64, "num_test": 10, "num_val": 10})
    assert t.chance == pytest.approx(1 / 32) and t.num_classes == 64 and t.vocab_size == 64 and t.causal
    assert int((t.y_test != IGNORE).sum(1).max()) == 4
    with pytest.raises(ValueError, match="seq_len >= 4 \\* num_pairs"):
        build_task("mqar", {"seq_len": 12, "num_pairs": 4})
    with pytest.raises(ValueError, match="vocab > seq_len"):
        build_task("mqar", {"seq_len": 64, "vocab": 32})


def test_induction_heads_hand_checked():
    x, y = induction_heads_sampler(seq_len=6, vocab=3)(300, np.random.default_rng(0))
    for xi, yi in zip(x.tolist(), y.tolist()):
        assert xi[-1] == 3 and xi.count(3) == 2           # the special token: once inside, once at the end
        p = xi.index(3)
        assert p <= 3 and yi == [IGNORE] * 5 + [xi[p + 1]]
    t = build_task("induction_heads", {"seq_len": 32, "vocab": 8, "num_test": 4, "num_val": 4})
    assert t.vocab_size == 9 and t.num_classes == 8 and t.chance == pytest.approx(1 / 8)


def test_digits_patches_and_splits():
    t = build_task("digits", {"patch": 2})
    assert t.x_train.shape[1:] == (16, 4) and t.grid_size == (4, 4) and t.in_features == 4
    assert t.x_train.shape[0] + t.x_val.shape[0] + t.x_test.shape[0] == 1797
    assert not t.causal and t.readout == "mean" and 0.09 < t.chance < 0.12
    assert 0.0 <= float(t.x_train.min()) and float(t.x_train.max()) <= 1.0
    # The first patch token holds pixels (0,0), (0,1), (1,0), (1,1) of the image.
    from neurostep.experiment.tasks import load_digits_arrays

    images, labels = load_digits_arrays()
    rest, test = split_indices(labels, 0.2, 0)
    train_pos, _ = split_indices(labels[rest], 0.1, 1)
    img = torch.from_numpy(images[rest[train_pos[0]]])
    assert torch.equal(t.x_train[0, 0], torch.stack([img[0, 0], img[0, 1], img[1, 0], img[1, 1]]))
    assert torch.equal(build_task("digits", {"patch": 2}).x_test, t.x_test)


def test_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(5), 20)
    tr, te = split_indices(labels, 0.25, 3)
    assert set(tr).isdisjoint(te) and len(tr) + len(te) == 100
    assert np.bincount(labels[te]).tolist() == [5] * 5


@pytest.mark.parametrize("encoding,channels", [("rate", 3), ("latency", 3), ("delta", 2)])
def test_digits_spike_encodings(encoding, channels):
    t = build_task("digits", {"encoding": encoding, "num_steps": 3, "patch": 4})
    assert t.x_train.shape[1:] == (4, channels * 16)
    values = torch.unique(t.x_train)
    assert set(values.tolist()) <= {0.0, 1.0} and len(values) == 2
    if encoding == "latency":  # one spike per pixel above threshold at most
        per_pixel = t.x_train.reshape(-1, 4, channels, 16).sum(2)
        assert float(per_pixel.max()) == 1.0


def test_stdlib_chars_next_character():
    t = build_task("stdlib_chars", {"context": 16, "num_test": 10, "num_val": 5, "max_chars": 20000})
    x, y = next(train_batches(t, 4, seed=0))
    assert x.shape == y.shape == (4, 16) and t.metric == "bpc" and t.causal
    assert torch.equal(x[:, 1:], y[:, :-1])                     # every target is the next character
    assert int(t.x_test.max()) < CHAR_VOCAB and t.vocab_size == CHAR_VOCAB
    assert encode_chars("a\n").tolist() == [ord("a") - 32 + 1, 0]
    nc = build_task("stdlib_chars", {"context": 16, "num_test": 10, "num_val": 5, "max_chars": 20000,
                                     "causal": False})
    assert torch.all(nc.y_test[:, :-1] == IGNORE)               # bidirectional: only the last char is scored


def test_bad_task_options():
    with pytest.raises(ValueError, match="unknown task"):
        build_task("mnist")
    with pytest.raises(ValueError, match="unknown option 'len'.*allowed"):
        build_task("selective_copy", {"len": 3})
    with pytest.raises(ValueError, match="patch must divide 8"):
        build_task("digits", {"patch": 3})
    with pytest.raises(ValueError, match="encoding must be one of"):
        build_task("digits", {"encoding": "poisson"})


def test_concept_shift_segments_never_end_an_epoch_with_a_swap():
    assert concept_shift_segments(100, 0) == [0]
    assert concept_shift_segments(100, 4) == [0, 25, 50, 75]
    seg = concept_shift_segments(134, 8)
    assert len(seg) == 8 and seg[0] == 0 and max(seg) < 134 - 134 // 8 + 1
    with pytest.raises(ValueError):
        concept_shift_segments(10, 11)


def test_digits_are_read_as_scikit_learn_loads_them(monkeypatch):
    """The digits come from scikit-learn's file without importing scikit-learn, equal to what its
    ``load_digits`` gives; where the file is not found, ``load_digits`` itself is called."""
    from sklearn.datasets import load_digits

    from neurostep.experiment import tasks

    assert tasks._digits_csv() is not None
    bunch = load_digits()
    expected = ((bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64))
    images, labels = tasks.load_digits_arrays()
    assert images.dtype == np.float32 and labels.dtype == np.int64
    assert np.array_equal(images, expected[0]) and np.array_equal(labels, expected[1])
    monkeypatch.setattr(tasks, "_digits_csv", lambda: None)
    images, labels = tasks.load_digits_arrays()
    assert np.array_equal(images, expected[0]) and np.array_equal(labels, expected[1])


def test_building_the_digits_task_does_not_import_scikit_learn():
    import subprocess
    import sys

    code = ("import sys; from neurostep.experiment.tasks import build_task; build_task('digits', {'patch': 2}); "
            "print(any(m == 'sklearn' or m.startswith('sklearn.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
