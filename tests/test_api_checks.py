"""`fit`, `fit_variants`, `evaluate`, `predict`, `VariantsResult.logits` and `make_batch` take
only what they can use: 0/1 labels, CSR rows finite in float32, CSR matrices when checkpointed,
the model's own feature columns; each refusal is one line naming the problem, before any work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from imdb_jax import (
    ModelConfig,
    Split,
    VariantSpec,
    create_train_state,
    eval_step,
    evaluate,
    fit,
    fit_variants,
    make_batch,
    predict,
)
from imdb_jax.errors import ImdbJaxError
from imdb_jax.train.variants import VariantsResult

NUM_WORDS = 16


def reviews(rows: int = 12, seed: int = 0, values: bool = False) -> Split:
    rng = np.random.default_rng(seed)
    x = sp.random(rows, NUM_WORDS, density=0.3, format="csr", rng=seed, dtype=np.float32)
    x.data[:] = rng.uniform(0.5, 2.0, x.nnz) if values else 1.0
    return Split(x, rng.integers(0, 2, rows).astype(np.float32))


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


TRAIN = reviews()
SPECS = [VariantSpec((4,), seed=0)]
CONFIG = ModelConfig(num_words=NUM_WORDS, hidden_units=(4,))


def train_both(train, validation=None, **options):
    """Each call must be refused by fit_variants and by fit alike."""
    messages = []
    for call in (
        lambda: fit_variants(SPECS, train, validation, epochs=1, progress=False, **options),
        lambda: fit(CONFIG, train, validation, epochs=1, progress=False, **options),
    ):
        with pytest.raises(ImdbJaxError) as error:
            call()
        messages.append(one_line(error))
    return messages


@pytest.mark.parametrize("bad", [np.nan, 2.0, -1.0, 0.5])
def test_labels_other_than_0_1_are_refused_by_name(bad):
    labels = TRAIN.y.copy()
    labels[3] = bad
    for message in train_both(Split(TRAIN.x, labels)):
        assert "train labels must be 0 or 1" in message and "row 3" in message
    for message in train_both(TRAIN, Split(TRAIN.x, labels)):
        assert "validation labels must be 0 or 1" in message


def test_wrong_label_count_is_refused():
    for message in train_both((TRAIN.x, TRAIN.y[:-1])):
        assert "12 reviews but 11 train labels" in message


def test_values_beyond_float32_are_refused():
    x = TRAIN.x.astype(np.float64)
    x.data[0] = 1e39  # finite in float64, infinity in float32
    for message in train_both(Split(x, TRAIN.y)):
        assert "beyond float32's range" in message
    x.data[0] = 1e30  # large but representable: accepted by the check
    from imdb_jax.data.csr import checked_csr

    assert checked_csr(x).shape == x.shape


def test_non_finite_values_are_refused():
    x = TRAIN.x.copy()
    x.data[1] = np.inf
    for message in train_both(Split(x, TRAIN.y)):
        assert "non-finite" in message


def test_non_csr_input_with_checkpoint_dir_is_refused(tmp_path):
    for message in train_both(Split(TRAIN.x.tocoo(), TRAIN.y), checkpoint_dir=tmp_path / "run"):
        assert "checkpoint_dir needs the train data as a SciPy CSR matrix" in message and "coo" in message
    for message in train_both(TRAIN, Split(TRAIN.x.tocsc(), TRAIN.y), checkpoint_dir=tmp_path / "run"):
        assert "the validation data" in message
    assert not (tmp_path / "run").exists()


def test_dense_input_is_refused():
    for message in train_both(Split(TRAIN.x.toarray(), TRAIN.y)):
        assert "expected a scipy.sparse" in message


def test_different_feature_columns_are_refused():
    other = reviews(seed=1)
    wider = Split(sp.hstack([other.x, other.x], format="csr"), other.y)
    for message in train_both(TRAIN, wider):
        assert f"train has {NUM_WORDS} word columns but validation has {2 * NUM_WORDS}" in message
    state = create_train_state(jax.random.key(0), CONFIG)
    for call in (lambda: evaluate(state, wider), lambda: predict(state, wider.x)):
        with pytest.raises(ImdbJaxError) as error:
            call()
        assert one_line(error).startswith(
            f"the data has {2 * NUM_WORDS} feature columns but the model trained on {NUM_WORDS}"
        )
    # `logits` checks the columns before it touches the trained state.
    result = VariantsResult(SPECS, [], fused=None, slot_of=[0], num_words=NUM_WORDS, dense_words=0)  # type: ignore[arg-type]
    with pytest.raises(ImdbJaxError) as error:
        result.logits(wider)
    assert "but the variants trained on 16" in one_line(error)


@pytest.mark.parametrize("values", [False, True])
def test_make_batch_scores_as_the_dense_rows_do(values):
    """The all-sparse batch gives the dense batch's loss and accuracy (multi-hot and weighted)."""
    split = reviews(values=values)
    state = create_train_state(jax.random.key(0), CONFIG)
    weights = np.linspace(0.0, 1.0, split.x.shape[0]).astype(np.float32)
    sparse_batch = make_batch(split.x, split.y, weights)
    assert sparse_batch["inputs"].head is None
    assert (sparse_batch["inputs"].tail.values is None) == (not values)
    dense_batch = {
        "inputs": jnp.asarray(split.x.toarray()),
        "labels": jnp.asarray(split.y),
        "weights": jnp.asarray(weights),
    }
    got, want = eval_step(state, sparse_batch), eval_step(state, dense_batch)
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-6)
    assert float(got["count"]) == pytest.approx(float(weights.sum()))


def test_make_batch_refuses_what_steps_cannot_use():
    with pytest.raises(ImdbJaxError, match="labels must be 0 or 1; row 0 holds 2.0"):
        make_batch(TRAIN.x, np.full(TRAIN.x.shape[0], 2.0))
    with pytest.raises(ImdbJaxError, match="weights must be 12 finite numbers"):
        make_batch(TRAIN.x, TRAIN.y, np.ones(3))
    with pytest.raises(ImdbJaxError, match="expected a scipy.sparse"):
        make_batch(TRAIN.x.toarray(), TRAIN.y)


def test_make_batch_padding_counts_for_nothing():
    """Rows and non-zeros padded to a fixed shape give the unpadded batch's counts exactly and
    its loss to rounding (a sum over 20 rows groups its terms otherwise than one over 12)."""
    state = create_train_state(jax.random.key(0), CONFIG)
    exact = eval_step(state, make_batch(TRAIN.x, TRAIN.y))
    padded_batch = make_batch(TRAIN.x, TRAIN.y, batch_size=20, capacity=TRAIN.x.nnz + 7)
    assert padded_batch["labels"].shape == (20,) and padded_batch["inputs"].tail.word_ids.shape == (TRAIN.x.nnz + 7,)
    padded = eval_step(state, padded_batch)
    for name in ("correct", "count"):
        assert np.array_equal(np.asarray(padded[name]), np.asarray(exact[name])), name
    np.testing.assert_allclose(np.asarray(padded["loss_sum"]), np.asarray(exact["loss_sum"]), rtol=1e-6)
    with pytest.raises(ImdbJaxError, match="do not fit batch_size=11"):
        make_batch(TRAIN.x, TRAIN.y, batch_size=11)
