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
