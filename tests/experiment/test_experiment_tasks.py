import pytest
import torch

from neurostep.experiment.tasks import (
    CHAR_VOCAB,
    build_task,
    concept_shift_swap_points,
    encode_chars,
    split_indices,
)


def test_digits_patches_and_split():
    t = build_task("digits", {"patch": 2})
    assert t.x_train.shape[1:] == (16, 4) and t.grid_size == (4, 4) and t.in_features == 4
    assert t.x_train.shape[0] + t.x_test.shape[0] == 1797
    assert 0.0 <= float(t.x_train.min()) and float(t.x_train.max()) <= 1.0
    # The first patch token holds pixels (0,0), (0,1), (1,0), (1,1) of the image.
    from neurostep.experiment.tasks import load_digits_arrays, split_indices

    images, labels = load_digits_arrays()
    train_idx, _ = split_indices(labels, 0.2, 0)
    img = torch.from_numpy(images[train_idx[0]])
    assert torch.equal(t.x_train[0, 0], torch.stack([img[0, 0], img[0, 1], img[1, 0], img[1, 1]]))
    # Same data seed, same data.
    assert torch.equal(build_task("digits", {"patch": 2}).x_test, t.x_test)


def test_split_is_stratified_and_disjoint():
    import numpy as np

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


def test_selective_copy_targets_are_the_data_tokens_in_order():
    t = build_task("selective_copy", {"seq_len": 20, "num_tokens": 3, "vocab": 5, "num_train": 50, "num_test": 10})
    assert t.x_train.shape == (50, 23) and t.y_train.shape == (50, 3) and t.readout == "last_k"
    for x, y in zip(t.x_train, t.y_train):
        data = x[:20][x[:20] > 0] - 1
        assert torch.equal(data, y)
        assert torch.all(x[20:] == 6)
    assert t.vocab_size == 7 and t.num_classes == 5


def test_associative_recall_answer_follows_the_query_key():
    t = build_task("associative_recall", {"num_pairs": 4, "num_keys": 6, "num_values": 3, "num_train": 40,
                                          "num_test": 5})
    assert t.x_train.shape == (40, 9)
    for x, y in zip(t.x_train, t.y_train):
        keys, values = x[0:8:2], x[1:8:2] - 6
        assert len(set(keys.tolist())) == 4
        assert int(values[(keys == x[-1]).nonzero()[0, 0]]) == int(y)


def test_stdlib_chars_next_character():
    t = build_task("stdlib_chars", {"context": 16, "num_train": 30, "num_test": 10, "max_chars": 20000})
    assert t.x_train.shape == (30, 16) and t.y_train.shape == (30,) and t.metric == "bpc"
    assert int(t.x_train.max()) < CHAR_VOCAB and t.vocab_size == CHAR_VOCAB
    assert encode_chars("a\n").tolist() == [ord("a") - 32 + 1, 0]


def test_bad_task_options():
    with pytest.raises(ValueError, match="unknown task"):
        build_task("mnist")
    with pytest.raises(ValueError, match="unknown option 'len'.*allowed"):
        build_task("selective_copy", {"len": 3})
    with pytest.raises(ValueError, match="patch must divide 8"):
        build_task("digits", {"patch": 3})
    with pytest.raises(ValueError, match="encoding must be one of"):
        build_task("digits", {"encoding": "poisson"})


def test_swap_points_spread_evenly():
    assert concept_shift_swap_points(100, 0) == set()
    assert concept_shift_swap_points(100, 4) == {24, 49, 74, 99}
    assert len(concept_shift_swap_points(134, 32)) == 32
    with pytest.raises(ValueError):
        concept_shift_swap_points(10, 11)
