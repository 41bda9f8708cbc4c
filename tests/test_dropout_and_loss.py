"""Dropout is inverted, drops about `rate` of the units and is off at evaluation; the loss stays
finite and exact where the sigmoid saturates (|logit| > 16)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from imdb_jax.config import ModelConfig
from imdb_jax.data.imdb import Split
from imdb_jax.models.layers import column_dropout
from imdb_jax.train.fit import evaluate
from imdb_jax.train.steps import create_train_state, eval_step, predict_logits, train_step

NUM_WORDS = 12
# Compiled once for all the tests (the states differ only in numbers).
eval_step = jax.jit(eval_step)
train_step = jax.jit(train_step)
predict_logits = jax.jit(predict_logits)


def _batch(rows: int = 8, seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    inputs = (rng.random((rows, NUM_WORDS)) < 0.4).astype(np.float32)
    return {"inputs": jnp.asarray(inputs), "labels": jnp.asarray(rng.integers(0, 2, rows).astype(np.float32))}


def _with_dropout(state, rate: float):
    """The same weights with another dropout rate (a traced number, as in training)."""
    return state.replace(hparams={**state.hparams, "dropout_rate": jnp.asarray(rate, jnp.float32)})


# ---------------------------------------------------------------------------------------------
# Dropout.


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_is_inverted_and_drops_about_rate_of_the_units(rate):
    x = jnp.full((2048, 64), 3.0, jnp.float32)
    out = np.asarray(column_dropout(x, rate, jax.random.key(7), layer=0))
    kept = out != 0
    # Kept units are scaled by 1 / (1 - rate), so the expected activation is unchanged.
    np.testing.assert_allclose(out[kept], 3.0 / (1.0 - rate), rtol=1e-6)
    dropped = 1.0 - kept.mean()
    sd = np.sqrt(rate * (1 - rate) / kept.size)
    assert abs(dropped - rate) < 5 * sd, (dropped, rate)
    assert out.mean() == pytest.approx(3.0, rel=10 * sd / (1 - rate))
    # Each unit and each row is dropped independently: no column or row is all kept or all dropped.
    assert 0 < kept.mean(axis=0).min() and kept.mean(axis=0).max() < 1
    assert np.abs(kept.mean(axis=1) - (1 - rate)).max() < 0.35


def test_dropout_masks_differ_by_layer_and_key_and_rate_zero_keeps_everything():
    x = jnp.ones((256, 32), jnp.float32)
    masks = [
        np.asarray(column_dropout(x, 0.5, key, layer) != 0)
        for key, layer in ((jax.random.key(0), 0), (jax.random.key(0), 1), (jax.random.key(1), 0))
    ]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], masks[2])
    np.testing.assert_array_equal(column_dropout(x, 0.0, jax.random.key(0), 0), x)


def test_a_units_mask_does_not_depend_on_the_layer_width():
    """Unit j's mask depends on (key, layer, j) only: 16 units see the first 16 of 512's masks."""
    narrow = np.asarray(column_dropout(jnp.ones((64, 16)), 0.5, jax.random.key(3), 1))
    wide = np.asarray(column_dropout(jnp.ones((64, 512)), 0.5, jax.random.key(3), 1))
    np.testing.assert_array_equal(narrow, wide[:, :16])


def test_dropout_is_on_in_training_and_off_at_evaluation():
    config = ModelConfig(num_words=NUM_WORDS, hidden_units=(16, 8))
    state = create_train_state(jax.random.key(0), config)
    batch = _batch()
    plain, heavy = _with_dropout(state, 0.0), _with_dropout(state, 0.9)
    # Evaluation and prediction ignore the rate entirely: identical bits.
    for got, expected in zip(
        jax.tree_util.tree_leaves(eval_step(heavy, batch)), jax.tree_util.tree_leaves(eval_step(plain, batch))
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    np.testing.assert_array_equal(predict_logits(heavy, batch["inputs"]), predict_logits(plain, batch["inputs"]))
    split = Split(sp.csr_matrix(np.asarray(batch["inputs"])), np.asarray(batch["labels"]))
    assert evaluate(heavy, split, batch_size=4) == evaluate(plain, split, batch_size=4)
    # Training does use it (else the test above would prove nothing).
    _, with_dropout = train_step(heavy, batch, jax.random.key(1))
    _, without = train_step(plain, batch, jax.random.key(1))
    assert float(with_dropout["loss_sum"]) != float(without["loss_sum"])


# ---------------------------------------------------------------------------------------------
# The loss where the sigmoid saturates.


def _reference_bce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Binary cross-entropy from logits in float64, the stable way: max(z, 0) - z y + log1p(exp(-|z|))."""
    z = logits.astype(np.float64)
    return np.maximum(z, 0) - z * labels + np.log1p(np.exp(-np.abs(z)))


@pytest.mark.parametrize("logit", [-100.0, -40.0, -17.0, 16.5, 20.0, 40.0, 100.0])
def test_the_loss_at_large_logits_is_finite_and_exact(logit):
    """Every review gets logit `logit` (zero kernels, the output bias set): a naive
    -log(sigmoid) would give inf for the wrong label once float32's sigmoid rounds to 0 or 1."""
    config = ModelConfig(num_words=NUM_WORDS, hidden_units=(4,))
    state = create_train_state(jax.random.key(0), config)
    params = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    params["output"]["bias"] = jnp.full_like(params["output"]["bias"], logit)
    state = state.replace(params=params)
    batch = {"inputs": _batch()["inputs"][:2], "labels": jnp.asarray([1.0, 0.0])}
    np.testing.assert_array_equal(predict_logits(state, batch["inputs"]), [logit, logit])
    metrics = eval_step(state, batch)
    expected = _reference_bce(np.array([logit, logit]), np.array([1.0, 0.0])).sum()
    assert np.isfinite(float(metrics["loss_sum"]))
    assert float(metrics["loss_sum"]) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert float(metrics["correct"]) == 1.0  # one label on each side of the threshold
    # The gradient is finite too: a training step from here keeps every weight finite.
    updated, train_metrics = train_step(state, batch, jax.random.key(0))
    assert float(train_metrics["loss_sum"]) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(updated.params))


def test_the_loss_of_a_confident_right_answer_is_tiny_not_zero_or_negative():
    config = dataclasses.replace(ModelConfig(num_words=NUM_WORDS, hidden_units=(4,)))
    state = create_train_state(jax.random.key(0), config)
    params = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    params["output"]["bias"] = jnp.full_like(params["output"]["bias"], 30.0)
    metrics = eval_step(state.replace(params=params), {"inputs": _batch()["inputs"][:1], "labels": jnp.asarray([1.0])})
    assert 0.0 <= float(metrics["loss_sum"]) == pytest.approx(np.log1p(np.exp(-30.0)), abs=1e-12)
