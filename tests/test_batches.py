"""The host-side batch iterator."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from imdb_jax import iterate_batches
from imdb_jax.batches import num_batches


@pytest.fixture()
def xy() -> tuple[sp.csr_matrix, np.ndarray]:
    x = sp.random(50, 13, density=0.3, format="csr", dtype=np.float32, random_state=0)
    x.data[:] = 1.0
    y = np.arange(50, dtype=np.float32)  # y holds the row number, to check rows and labels stay paired
    return x, y


class _NoFullDensify:
    """Wraps a CSR matrix and fails if more than `limit` rows are ever densified at once."""

    def __init__(self, x: sp.csr_matrix, limit: int):
        self.x, self.limit, self.shape = x, limit, x.shape
        self.requests = 0

    def __getitem__(self, rows):
        part = self.x[rows]
        assert part.shape[0] <= self.limit, f"asked for {part.shape[0]} rows at once"
        self.requests += 1
        return part

    def toarray(self):
        raise AssertionError("the whole matrix was densified")


def test_batches_in_order_equal_the_dense_rows(xy):
    x, y = xy
    batches = list(iterate_batches(x, y, batch_size=16))
    assert [len(y_batch) for _, y_batch in batches] == [16, 16, 16, 2]  # last short batch kept
    assert len(batches) == num_batches(50, 16)
    for index, (x_batch, y_batch) in enumerate(batches):
        rows = slice(16 * index, 16 * index + 16)
        assert x_batch.dtype == np.float32 and y_batch.dtype == np.float32
        np.testing.assert_array_equal(x_batch, x[rows].toarray())
        np.testing.assert_array_equal(y_batch, y[rows])


def test_without_labels_yields_x_only(xy):
    x, _ = xy
    batches = list(iterate_batches(x, batch_size=20))
    assert all(isinstance(batch, np.ndarray) for batch in batches)
    np.testing.assert_array_equal(np.concatenate(batches), x.toarray())


def test_dense_and_other_sparse_formats_work_too(xy):
    x, y = xy
    expected = np.concatenate([b for b, _ in iterate_batches(x, y, batch_size=7)])
    for other in (x.toarray().astype(np.float64), x.tocoo(), x.tocsc()):
        got = np.concatenate([b for b, _ in iterate_batches(other, y, batch_size=7)])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("seed", [3, jax.random.key(3), jax.random.PRNGKey(3)])
def test_shuffle_is_a_permutation_deterministic_per_seed(xy, seed):
    x, y = xy
    first = list(iterate_batches(x, y, batch_size=16, shuffle=True, seed=seed))
    again = list(iterate_batches(x, y, batch_size=16, shuffle=True, seed=seed))
    order = np.concatenate([y_batch for _, y_batch in first]).astype(int)
    assert sorted(order) == list(range(50))
    assert not np.array_equal(order, np.arange(50))
    assert [len(y_batch) for _, y_batch in first] == [16, 16, 16, 2]
    for (x_batch, y_batch), (x_again, y_again) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x_batch, x_again)
        np.testing.assert_array_equal(y_batch, y_again)
        np.testing.assert_array_equal(x_batch, x[y_batch.astype(int)].toarray())  # rows follow labels


def test_numpy_generator_seed(xy):
    x, y = xy
    orders = [
        np.concatenate([labels for _, labels in iterate_batches(x, y, 16, shuffle=True, seed=np.random.default_rng(5))])
        for _ in range(2)
    ]
    np.testing.assert_array_equal(*orders)
    np.testing.assert_array_equal(orders[0], np.random.default_rng(5).permutation(50))


def test_different_seeds_give_different_orders(xy):
    x, y = xy
    orders = [
        np.concatenate([y_batch for _, y_batch in iterate_batches(x, y, 10, shuffle=True, seed=seed)])
        for seed in (0, 1)
    ]
    assert not np.array_equal(*orders)


def test_shuffle_without_seed_is_a_clear_error(xy):
    x, y = xy
    with pytest.raises(ValueError, match="shuffle=True needs a seed"):
        iterate_batches(x, y, shuffle=True)  # raises at the call, before any iteration


@pytest.mark.parametrize("batch_size", [0, -4, 2.0])
def test_bad_batch_size(xy, batch_size):
    x, y = xy
    with pytest.raises(ValueError, match="batch_size"):
        iterate_batches(x, y, batch_size=batch_size)


def test_label_count_must_match_rows(xy):
    x, y = xy
    with pytest.raises(ValueError, match="49 labels"):
        iterate_batches(x, y[:-1])


@pytest.mark.parametrize("shuffle", [False, True])
def test_never_densifies_more_than_one_batch(xy, shuffle):
    x, y = xy
    wrapped = _NoFullDensify(x, limit=8)
    batches = list(iterate_batches(wrapped, y, batch_size=8, shuffle=shuffle, seed=0))
    assert wrapped.requests == len(batches) == 7
    got = np.concatenate([b for b, _ in batches])
    rows = np.concatenate([labels for _, labels in batches]).astype(int)
    np.testing.assert_array_equal(got, x[rows].toarray())
