"""The embedding bag's C++ kernel (imdb_jax/models/bag_kernel.cc) against XLA's loop: the same bits."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest

from imdb_jax.models import bag_kernel
from imdb_jax.models.layers import bag_chunk, embedding_bag

NUM_WORDS = 300
BATCH = 24


def _batch(rng, capacity=4096):
    """Occurrences in review order, words repeating within and across reviews, padded to
    `capacity` with row `BATCH` (dropped) and word 0."""
    lengths = rng.integers(0, 200, BATCH)
    lengths[3] = 0  # an empty review
    rows = np.repeat(np.arange(BATCH), lengths)[:capacity]
    words = rng.integers(0, NUM_WORDS, len(rows))
    padding = capacity - len(rows)
    words = np.concatenate([words, np.zeros(padding, np.int64)]).astype(np.int32)
    rows = np.concatenate([rows, np.full(padding, BATCH)]).astype(np.int32)
    return words, rows


def _bag_and_gradient(kernel, words, rows, grad):
    chunk = bag_chunk(len(words))

    def bag(k):
        return embedding_bag(k, words, rows, None, BATCH, chunk)

    summed, pullback = jax.vjp(bag, kernel)
    return summed, pullback(grad)[0]


def _xla_loop(fn, *args):
    """`fn(*args)` traced afresh with the kernel off (a new function: JAX caches traces by function)."""
    with bag_kernel.turned_off():
        jitted = jax.jit(lambda *a: fn(*a))
        assert bag_kernel.TARGET not in jitted.lower(*args).as_text()
        return [np.asarray(out) for out in jitted(*args)]


needs_kernel = pytest.mark.skipif(
    bag_kernel._compiler() is None, reason="no C++ compiler here: the kernel cannot be built"
)


@needs_kernel
def test_the_kernel_builds_and_is_used_on_the_cpu():
    assert bag_kernel.available(), bag_kernel.why_not()
    assert bag_kernel.in_use()
    lowered = jax.jit(lambda k, w, r: embedding_bag(k, w, r, None, BATCH, 1024)).lower(
        np.zeros((NUM_WORDS, 4), np.float32), *_batch(np.random.default_rng(0))
    )
    assert bag_kernel.TARGET in lowered.as_text()


@needs_kernel
@pytest.mark.parametrize("width", [1, 7, 16, 33, 300])
def test_forward_and_kernel_gradient_are_bitwise_xlas(width):
    rng = np.random.default_rng(width)
    words, rows = _batch(rng)
    kernel = rng.standard_normal((NUM_WORDS, width)).astype(np.float32)
    grad = rng.standard_normal((BATCH, width)).astype(np.float32)
    summed, kernel_grad = map(np.asarray, jax.jit(_bag_and_gradient)(kernel, words, rows, grad))
    want_summed, want_grad = _xla_loop(_bag_and_gradient, kernel, words, rows, grad)
    np.testing.assert_array_equal(summed, want_summed)
    np.testing.assert_array_equal(kernel_grad, want_grad)
    # Not vacuous: the sums are real (the empty review's row is zero, others are not).
    assert np.all(summed[3] == 0) and np.count_nonzero(summed) > summed.size // 2
    assert np.count_nonzero(kernel_grad) > 0


@needs_kernel
def test_a_gradient_too_big_for_the_caches_is_bitwise_xlas():
    """10,000 words x 256 columns (a 10 MB gradient) is past the kernel's 8 MB threshold, where the
    backward pass buckets the occurrences by word before adding: each word's sum must keep its
    order. Words out of range and padding must still be skipped."""
    rng = np.random.default_rng(11)
    num_words, width = 10_000, 256
    lengths = rng.integers(50, 250, BATCH)
    rows = np.repeat(np.arange(BATCH), lengths)
    # Zipf-like words: frequent ones recur across reviews, so buckets hold many adds.
    words = np.minimum(rng.zipf(1.3, len(rows)) - 1, num_words - 1)
    words[::97] = num_words + 5  # out of range: skipped
    padding = 8192 - len(rows)
    words = np.concatenate([words, np.zeros(padding, np.int64)]).astype(np.int32)
    rows = np.concatenate([rows, np.full(padding, BATCH)]).astype(np.int32)
    grad = rng.standard_normal((BATCH, width)).astype(np.float32)
    got = np.asarray(bag_kernel.add_rows(grad, rows, words, rows, BATCH, num_words))
    want = np.zeros((num_words, width), np.float32)
    for i in range(len(rows)):  # the definition: each occurrence in order
        if rows[i] < BATCH and words[i] < num_words:
            want[words[i]] += grad[rows[i]]
    np.testing.assert_array_equal(got, want)
    assert np.count_nonzero(got[0]) == width and np.all(got[num_words - 1 :] == want[num_words - 1 :])

    kernel = rng.standard_normal((num_words, width)).astype(np.float32)
    in_range = np.where(words < num_words, words, 0).astype(np.int32)
    summed, kernel_grad = map(np.asarray, jax.jit(_bag_and_gradient)(kernel, in_range, rows, grad))
    want_summed, want_grad = _xla_loop(_bag_and_gradient, kernel, in_range, rows, grad)
    np.testing.assert_array_equal(summed, want_summed)
    np.testing.assert_array_equal(kernel_grad, want_grad)


@needs_kernel
@pytest.mark.parametrize("sorted_reviews", [True, False])
def test_a_kernel_too_big_for_the_caches_is_bitwise_xlas_forward(sorted_reviews):
    """A 50,000 x 768 kernel (154 MB) outgrows any L3, where the forward pass adds word by word if
    each review's words ascend (sorted CSR); unsorted reviews keep review order. Either way each
    review's sum must be its words' rows in occurrence order."""
    rng = np.random.default_rng(12)
    num_words, width = 50_000, 768
    lengths = rng.integers(50, 250, BATCH)
    lengths[3] = 0
    rows = np.repeat(np.arange(BATCH), lengths)
    words = np.minimum(rng.zipf(1.3, len(rows)) - 1, num_words - 1)
    if sorted_reviews:
        starts = np.concatenate([[0], np.cumsum(lengths)])
        words = np.concatenate([np.sort(words[a:b]) for a, b in zip(starts[:-1], starts[1:])])
    words[::89] = num_words + 3  # out of range: skipped
    padding = 8192 - len(rows)
    words = np.concatenate([words, np.zeros(padding, np.int64)]).astype(np.int32)
    rows = np.concatenate([rows, np.full(padding, BATCH)]).astype(np.int32)
    kernel = rng.standard_normal((num_words, width)).astype(np.float32)
    got = np.asarray(bag_kernel.add_rows(kernel, words, rows, rows, BATCH, BATCH))
    want = np.zeros((BATCH, width), np.float32)
    for i in range(len(rows)):  # the definition: each occurrence in order
        if rows[i] < BATCH and words[i] < num_words:
            want[rows[i]] += kernel[words[i]]
    np.testing.assert_array_equal(got, want)
    assert np.all(got[3] == 0) and np.count_nonzero(got) > got.size // 2


@needs_kernel
def test_a_column_does_not_depend_on_its_neighbours():
    rng = np.random.default_rng(5)
    words, rows = _batch(rng)
    wide = rng.standard_normal((NUM_WORDS, 40)).astype(np.float32)
    grad = rng.standard_normal((BATCH, 40)).astype(np.float32)
    summed, kernel_grad = map(np.asarray, jax.jit(_bag_and_gradient)(wide, words, rows, grad))
    alone, alone_grad = jax.jit(_bag_and_gradient)(wide[:, 11:13].copy(), words, rows, grad[:, 11:13].copy())
    np.testing.assert_array_equal(summed[:, 11:13], alone)
    np.testing.assert_array_equal(kernel_grad[:, 11:13], alone_grad)


@needs_kernel
def test_under_vmap_each_variant_is_its_own_call():
    rng = np.random.default_rng(2)
    words, rows = _batch(rng)
    kernels = rng.standard_normal((3, NUM_WORDS, 8)).astype(np.float32)
    grads = rng.standard_normal((3, BATCH, 8)).astype(np.float32)
    stacked = jax.jit(jax.vmap(_bag_and_gradient, in_axes=(0, None, None, 0)))(kernels, words, rows, grads)
    for variant in range(3):
        one = jax.jit(_bag_and_gradient)(kernels[variant], words, rows, grads[variant])
        np.testing.assert_array_equal(stacked[0][variant], one[0])
        np.testing.assert_array_equal(stacked[1][variant], one[1])


@needs_kernel
def test_ids_out_of_range_are_skipped_not_read():
    words, rows = _batch(np.random.default_rng(3))
    words[5], rows[6] = NUM_WORDS + 1000, -7  # a word past the kernel, a negative row
    out = bag_kernel.add_rows(np.ones((NUM_WORDS, 2), np.float32), words, rows, rows, BATCH, BATCH)
    counts = np.bincount(np.delete(rows, [5, 6]), minlength=BATCH + 1)[:BATCH]
    np.testing.assert_array_equal(np.asarray(out)[:, 0], counts.astype(np.float32))


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(bag_kernel.ENVIRONMENT, "off")
    assert not bag_kernel.in_use()
    assert bag_kernel.why_not() == f"{bag_kernel.ENVIRONMENT}=off"
    lowered = jax.jit(lambda k, w, r: embedding_bag(k, w, r, None, BATCH, 1024)).lower(
        np.zeros((NUM_WORDS, 4), np.float32), *_batch(np.random.default_rng(0))
    )
    assert bag_kernel.TARGET not in lowered.as_text()


def test_no_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        bag_kernel._build(tmp_path)


def test_a_failed_build_falls_back_to_xla_with_the_reason_logged(monkeypatch, tmp_path, caplog):
    def broken(folder):
        raise RuntimeError("c++ said no")

    monkeypatch.setattr(bag_kernel, "_build", broken)
    monkeypatch.setattr(bag_kernel, "_why_not", None)
    with caplog.at_level(logging.WARNING, logger=bag_kernel.__name__):
        assert bag_kernel._load.__wrapped__() is False
    assert "c++ said no" in (bag_kernel.why_not() or "")
    assert "using XLA's loop" in caplog.text


@needs_kernel
def test_a_broken_source_reports_the_compilers_message(monkeypatch, tmp_path):
    source = tmp_path / "bag_kernel.cc"
    source.write_text("this is not C++\n")
    monkeypatch.setattr(bag_kernel, "SOURCE", source)
    with pytest.raises(RuntimeError, match="failed"):
        bag_kernel._build(tmp_path / "kernels")
    assert not list((tmp_path / "kernels").glob("*.so*"))  # no partial library left behind


def _random_split(rng, weighted):
    """A small split on the device: empty rows among full ones, sometimes bucket-padded."""
    import scipy.sparse as sp

    from imdb_jax.train import device_data

    rows, words = int(rng.integers(1, 40)), int(rng.integers(1, 30))
    x = sp.random(rows, words, density=float(rng.uniform(0, 0.6)), format="csr", rng=rng, dtype=np.float32)
    if not weighted:
        x.data[:] = 1.0
    labels = (rng.random(rows) < 0.5).astype(np.float32)
    dense_words, bucket_sizes = int(rng.integers(0, words + 1)), int(rng.integers(0, 3))
    return device_data.to_device((x, labels), dense_words=dense_words, bucket_sizes=bucket_sizes)


@needs_kernel
@pytest.mark.parametrize("weighted", [False, True])
def test_a_batch_cut_by_the_kernel_is_xlas_cut(weighted):
    """gather_batch's pairs (and head, labels, weights) from `batch_pairs` equal XLA's: rows in
    any order, padding rows, bucket-padded splits, and capacities too small for the batch."""
    from imdb_jax.train import device_data

    rng = np.random.default_rng(11 + weighted)
    cut = 0
    for _ in range(25):
        data = _random_split(rng, weighted)
        rows = rng.integers(0, data.num_rows + 1, size=int(rng.integers(1, 12))).astype(np.int32)
        capacity = (int(rng.integers(1, 80)), int(rng.integers(1, 80)))
        jitted = jax.jit(lambda d, r, capacity=capacity: device_data.gather_batch(d, r, capacity))
        assert bag_kernel.PAIRS_TARGET in jitted.lower(data, rows).as_text()
        ours = jax.tree_util.tree_leaves(jax.device_get(jitted(data, rows)))
        xlas = _xla_loop(
            lambda d, r, capacity=capacity: jax.tree_util.tree_leaves(device_data.gather_batch(d, r, capacity)),
            data,
            rows,
        )
        assert len(ours) == len(xlas)
        for mine, want in zip(ours, xlas):
            np.testing.assert_array_equal(mine, want)
        cut += int(np.count_nonzero(np.asarray(ours[-1])))  # real rows cut
    assert cut > 0


@needs_kernel
@pytest.mark.parametrize("size", [0, 1, 2, 100, 4097, 25000, 100000])
def test_the_kernels_permutation_is_jaxs(size):
    for key in (jax.random.key(size), jax.random.fold_in(jax.random.key(7), size), jax.random.PRNGKey(size)):
        jitted = jax.jit(bag_kernel.permutation, static_argnums=1)
        if size > 1:  # one element needs no sort (no rounds)
            assert bag_kernel.SORT_TARGET in jitted.lower(key, size).as_text()
        ours = np.asarray(jitted(key, size))
        np.testing.assert_array_equal(ours, np.asarray(jax.random.permutation(key, size)))
        assert ours.dtype == np.int32 and np.array_equal(np.sort(ours), np.arange(size))


@needs_kernel
def test_the_sort_is_stable():
    keys = np.array([5, 1, 5, 0, 1, 5, 2**32 - 1, 0], np.uint32)
    values = np.arange(8, dtype=np.int32)
    np.testing.assert_array_equal(np.asarray(bag_kernel.sort_values(keys, values)), np.argsort(keys, kind="stable"))
