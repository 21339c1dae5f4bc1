"""The lane-sum helpers of the numba kernels: the pairwise tree is exact to the order it documents."""

import numba
import numpy as np
import pytest

from neurostep.kernels.numba_sum import TREE_LANES, tree_sum16, vsum


@numba.njit
def _tree_rows(block):  # pragma: no cover - compiled
    out = np.empty(block.shape[0], dtype=block.dtype)
    for i in range(block.shape[0]):
        out[i] = tree_sum16(block[i])
    return out


def _tree_in_order(row: np.ndarray) -> np.generic:
    """The documented order, one numpy scalar add at a time (each rounded in the row's dtype)."""
    values = list(row[:TREE_LANES])
    while len(values) > 1:
        half = len(values) // 2
        values = [values[j] + values[j + half] for j in range(half)]
    return values[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tree_sum16_adds_in_the_documented_order(dtype):
    rng = np.random.default_rng(0)
    # magnitudes spread over six decades, so that another order of the adds rounds differently
    block = (rng.standard_normal((400, TREE_LANES)) * 10.0 ** rng.uniform(-3, 3, (400, TREE_LANES))).astype(dtype)
    got = _tree_rows(block)
    want = np.array([_tree_in_order(row) for row in block], dtype=dtype)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)
    # the order matters on these inputs: a plain left-to-right sum differs for some rows
    serial = np.array([_serial(row) for row in block], dtype=dtype)
    assert (serial != want).any()


def _serial(row: np.ndarray) -> np.generic:
    acc = row.dtype.type(0)
    for value in row:
        acc = acc + value
    return acc


def test_tree_sum16_reads_only_the_first_sixteen_of_a_longer_row():
    row = np.arange(20, dtype=np.float32)
    assert _tree_rows(row[None, :])[0] == np.float32(sum(range(16)))


def test_tree_sum16_refuses_rows_it_cannot_load_as_one_vector():
    @numba.njit
    def strided(a):  # pragma: no cover - compiled
        return tree_sum16(a[::2])

    with pytest.raises(numba.core.errors.TypingError):
        strided(np.zeros(32, dtype=np.float32))
    with pytest.raises(numba.core.errors.TypingError):
        _tree_rows(np.zeros((2, 16), dtype=np.int64))


def test_vsum_sums_a_prefix():
    x = np.arange(10, dtype=np.float32)
    assert vsum(x, 7) == np.float32(21)
