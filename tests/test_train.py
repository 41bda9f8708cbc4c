"""`fit`, `evaluate` and `predict` on small synthetic multi-hot data."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from imdb_jax.config import ModelConfig
from imdb_jax.errors import ImdbJaxError
from imdb_jax.train.epochs import sum_over_batches, train_epoch
from imdb_jax.train.fit import evaluate, fit, predict

NUM_WORDS = 64
BATCH_SIZE = 64  # 300 training rows: four full batches and a shorter last one of 44
CONFIG = ModelConfig(num_words=NUM_WORDS, hidden_units=(8, 8), l2=0.001, learning_rate=0.01)


def _synthetic(rows: int, seed: int):
    """Multi-hot rows whose label is carried by words 0-7 (positive) against 8-15 (negative)."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((rows, NUM_WORDS)) < 0.15).astype(np.float32)
    labels = (dense[:, :8].sum(axis=1) > dense[:, 8:16].sum(axis=1)).astype(np.float32)
    return sp.csr_matrix(dense), labels


@pytest.fixture(scope="module")
def data():
    return {"train": _synthetic(300, 0), "val": _synthetic(100, 1)}


@pytest.fixture(scope="module")
def two_fits(data):
    """The same run fitted twice, 2 then 4 epochs, with compilation counts around each."""
    sizes = [(train_epoch._cache_size(), sum_over_batches._cache_size())]  # pyright: ignore[reportAttributeAccessIssue]
    first = fit(CONFIG, data["train"], data["val"], epochs=2, batch_size=BATCH_SIZE, seed=7, progress=False)
    sizes.append((train_epoch._cache_size(), sum_over_batches._cache_size()))  # pyright: ignore[reportAttributeAccessIssue]
    second = fit(CONFIG, data["train"], data["val"], epochs=4, batch_size=BATCH_SIZE, seed=7, progress=False)
    sizes.append((train_epoch._cache_size(), sum_over_batches._cache_size()))  # pyright: ignore[reportAttributeAccessIssue]
    return {"first": first, "second": second, "sizes": sizes}


def _numpy_logits(params, x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float64)
    for layer in ("hidden_0", "hidden_1"):
        h = np.maximum(
            h @ np.asarray(params[layer]["kernel"], np.float64) + np.asarray(params[layer]["bias"], np.float64), 0.0
        )
    return h @ np.asarray(params["output"]["kernel"], np.float64)[:, 0] + float(params["output"]["bias"][0])


def test_history_is_keras_shaped_and_learns(two_fits):
    _, history = two_fits["second"]
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy", "val_cross_entropy", "diverged"}
    assert all(len(values) == 4 for values in history.values())
    assert history["diverged"] == [False] * 4
    # CONFIG has an L2 penalty: the plain cross-entropy is below the penalised (Keras) loss.
    assert all(plain < penalised for plain, penalised in zip(history["val_cross_entropy"], history["val_loss"]))
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.8  # the label is learnable from words 0-15
    assert all(0.0 <= value <= 1.0 for value in history["accuracy"] + history["val_accuracy"])


def test_epochs_and_the_short_last_batch_share_one_compilation(two_fits):
    before, after_first, _ = two_fits["sizes"]
    # Two epochs, each with a padded shorter last batch: at most one new program per function.
    assert after_first[0] - before[0] <= 1
    assert after_first[1] - before[1] <= 1


def test_a_second_fit_of_the_same_shapes_does_not_recompile(two_fits):
    _, after_first, after_second = two_fits["sizes"]
    assert after_second == after_first


def test_a_fixed_seed_gives_identical_histories(two_fits, data):
    history_a, history_b = two_fits["first"][1], two_fits["second"][1]
    for key in history_a:
        assert history_b[key][:2] == history_a[key], key  # same seed: the first two epochs agree exactly
    # And identical weights: the 2-epoch run once more is the first one, bit for bit.
    again, _ = fit(CONFIG, data["train"], data["val"], epochs=2, batch_size=BATCH_SIZE, seed=7, progress=False)
    for mine, theirs in zip(jax.tree.leaves(again.params), jax.tree.leaves(two_fits["first"][0].params), strict=True):
        assert np.array_equal(np.asarray(mine), np.asarray(theirs))


def test_training_and_validation_losses_include_the_penalty(data, two_fits):
    state, history = two_fits["first"]
    x_val, y_val = data["val"]
    logits = _numpy_logits(state.params, x_val.toarray())
    bce = np.mean(np.logaddexp(0.0, logits) - y_val * logits)
    hidden = [np.asarray(state.params[layer]["kernel"], np.float64) for layer in ("hidden_0", "hidden_1")]
    penalty = CONFIG.l2 * sum((kernel**2).sum() for kernel in hidden)
    assert penalty > 1e-3
    # The last validation figure is measured with the final weights, like `evaluate`.
    metrics = evaluate(state, data["val"], batch_size=BATCH_SIZE)
    assert metrics["loss"] == pytest.approx(bce + penalty, rel=1e-5)
    assert history["val_loss"][-1] == pytest.approx(metrics["loss"], rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(np.mean((logits > 0) == (y_val > 0.5)))


def test_predict_gives_probabilities_of_the_model(data, two_fits):
    state, _ = two_fits["second"]
    x_val, _ = data["val"]
    probabilities = predict(state, x_val)
    assert probabilities.shape == (100,) and probabilities.dtype == np.float32
    expected = 1.0 / (1.0 + np.exp(-_numpy_logits(state.params, x_val.toarray())))
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)


def test_fit_rejects_bad_arguments(data):
    with pytest.raises(ImdbJaxError, match="num_words"):
        fit(ModelConfig(num_words=NUM_WORDS + 1), data["train"], epochs=1, progress=False)
    with pytest.raises(ImdbJaxError, match="epochs"):
        fit(CONFIG, data["train"], epochs=0, progress=False)
    with pytest.raises(ImdbJaxError, match="batch_size"):
        fit(CONFIG, data["train"], batch_size=0, progress=False)
    with pytest.raises(ImdbJaxError, match="first_layer"):
        fit(CONFIG, data["train"], first_layer="convolutional", progress=False)


def test_scoring_handles_empty_reviews_anywhere_and_shares_compilations():
    from imdb_jax.train.epochs import map_over_batches
    from imdb_jax.train.steps import create_train_state

    state = create_train_state(jax.random.key(0), ModelConfig(num_words=10, hidden_units=(4,)))
    last_row_empty = sp.csr_matrix(np.array([[1, 0, 1] + [0] * 7, [0] * 10], np.float32))
    probabilities = predict(state, last_row_empty)
    assert probabilities.shape == (2,)
    # An empty review meets only the (zero) initial biases: logit 0, probability one half.
    assert probabilities[1] == 0.5 and probabilities[0] != 0.5
    assert np.array_equal(predict(state, sp.csr_matrix(np.zeros((3, 10), np.float32))), np.full(3, 0.5, np.float32))
    labels = np.array([1.0, 0.0], np.float32)
    metrics = evaluate(state, (last_row_empty, labels))
    logits = np.log(probabilities / (1.0 - probabilities)).astype(np.float64)
    # Correct means logit > 0 for a positive review, logit <= 0 for a negative one.
    assert metrics["accuracy"] == np.mean((logits > 0) == (labels > 0.5))
    assert metrics["loss"] == pytest.approx(np.mean(np.logaddexp(0.0, logits) - labels * logits), rel=1e-5)
    before = map_over_batches._cache_size()  # pyright: ignore[reportAttributeAccessIssue]
    rng = np.random.default_rng(0)
    for rows in (3, 5, 6, 7, 50, 300):
        x = sp.csr_matrix((rng.random((rows, 10)) < 0.3).astype(np.float32))
        expected = jax.nn.sigmoid(state.apply_fn({"params": state.params}, x.toarray()))
        assert np.allclose(predict(state, x), expected, atol=1e-6)
    # 3-300 reviews: one or a few bucketed shapes, not one program per input size.
    assert map_over_batches._cache_size() - before <= 2  # pyright: ignore[reportAttributeAccessIssue]


def test_first_layer_choice_depends_on_data_and_backend_only_and_the_paths_agree(monkeypatch):
    from imdb_jax.models import dense_head
    from imdb_jax.models.dense_head import choose_dense_words

    rng = np.random.default_rng(1)
    # Column j appears in a share of reviews falling with j, like a frequency-ordered vocabulary.
    share = 0.5 / (1.0 + np.arange(400) / 10.0)
    x = sp.csr_matrix((rng.random((2000, 400)) < share).astype(np.float32))
    assert choose_dense_words("sparse", x) == 0
    assert choose_dense_words("dense", x) == 400
    assert choose_dense_words(37, x) == 37
    # "auto" is all-sparse (bitwise in any company) on a backend with no measured head...
    assert choose_dense_words("auto", x, "cpu") == 0
    # ...and on one with a head share, the columns held by more than that share of reviews.
    monkeypatch.setitem(dense_head.HEAD_SHARE, "gpu", 0.1)
    expected = int(np.argmax(np.append((np.bincount(x.indices, minlength=400) / 2000) <= 0.1, True)))
    assert 0 < choose_dense_words("auto", x, "gpu") == expected < 400
    with pytest.raises(ImdbJaxError):
        choose_dense_words("fast", x)
    with pytest.raises(ImdbJaxError):
        choose_dense_words(401, x)
    y = (x[:, :20].sum(axis=1).A1 > 2).astype(np.float32)
    config = ModelConfig(num_words=400, hidden_units=(8,))
    histories = [
        fit(config, (x, y), epochs=2, batch_size=256, first_layer=path, progress=False)[1]
        for path in ("sparse", 60, "dense")
    ]
    for history in histories[1:]:
        assert np.allclose(history["loss"], histories[0]["loss"], rtol=1e-5)


def test_weighted_features_and_repeated_columns_count_as_in_toarray():
    """tf-idf-like values and a column repeated within a row: every first-layer path (dense,
    sparse, hybrid; fused training and Flax scoring) computes `x.toarray() @ kernel`."""
    from imdb_jax.train.steps import create_train_state

    rng = np.random.default_rng(3)
    dense = np.where(rng.random((200, 30)) < 0.2, rng.random((200, 30)) * 3.0, 0.0).astype(np.float32)
    x = sp.csr_matrix(dense)
    # Each non-empty row's first entry stored twice (a CSR matrix keeps duplicates until summed).
    indices, values, indptr = [], [], [0]
    for row in range(x.shape[0]):  # pyright: ignore[reportOptionalSubscript]
        start, end = x.indptr[row], x.indptr[row + 1]
        repeat = [start] if end > start else []
        indices.extend(x.indices[list(range(start, end)) + repeat])
        values.extend(x.data[list(range(start, end)) + repeat])
        indptr.append(len(indices))
    x_dup = sp.csr_matrix((np.asarray(values, np.float32), np.asarray(indices), np.asarray(indptr)), shape=x.shape)
    assert x_dup.nnz > x.nnz and not np.array_equal(x_dup.toarray(), dense)
    state = create_train_state(jax.random.key(0), ModelConfig(num_words=30, hidden_units=(8,)))
    expected = jax.nn.sigmoid(state.apply_fn({"params": state.params}, x_dup.toarray()))
    for path in ("sparse", 10, "dense"):
        np.testing.assert_allclose(predict(state, x_dup, first_layer=path), expected, rtol=1e-5, atol=1e-6)
    y = (dense[:, :5].sum(axis=1) > dense[:, 5:10].sum(axis=1)).astype(np.float32)
    config = ModelConfig(num_words=30, hidden_units=(8,))
    summed = sp.csr_matrix(x_dup.toarray())
    reference = fit(config, (summed, y), epochs=2, batch_size=64, first_layer="dense", progress=False)[1]
    for path in ("sparse", 10, "dense"):
        history = fit(config, (x_dup, y), epochs=2, batch_size=64, first_layer=path, progress=False)[1]
        np.testing.assert_allclose(history["loss"], reference["loss"], rtol=1e-5)
    binary = fit(config, (sp.csr_matrix((dense > 0).astype(np.float32)), y), epochs=2, batch_size=64, progress=False)[1]
    assert not np.allclose(binary["loss"], reference["loss"], rtol=1e-3)  # the values are not ignored
