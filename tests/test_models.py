"""The Flax MLP: shapes, parameter count, Keras initialisation, sparse and dense first layers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imdb_jax.config import ModelConfig
from imdb_jax.models.inputs import SparseMultiHot
from imdb_jax.models.mlp import MLP, param_count
from imdb_jax.train.steps import create_train_state


@pytest.fixture(scope="module")
def default_params():
    return create_train_state(jax.random.key(0), ModelConfig()).params


def test_default_model_shapes_and_parameter_count(default_params):
    shapes = jax.tree_util.tree_map(lambda leaf: leaf.shape, default_params)
    assert shapes == {
        "hidden_0": {"kernel": (10000, 16), "bias": (16,)},
        "hidden_1": {"kernel": (16, 16), "bias": (16,)},
        "output": {"kernel": (16, 1), "bias": (1,)},
    }
    assert param_count(default_params) == 10000 * 16 + 16 + 16 * 16 + 16 + 16 + 1 == 160_305
    inputs = jnp.zeros((3, 10000), jnp.float32).at[:, :5].set(1.0)
    logits = MLP(num_words=10000, hidden_units=(16, 16)).apply({"params": default_params}, inputs)
    assert logits.shape == (3,) and logits.dtype == jnp.float32  # pyright: ignore[reportAttributeAccessIssue]


def test_kernels_are_glorot_uniform_and_biases_zero(default_params):
    for name, layer in default_params.items():
        kernel = np.asarray(layer["kernel"])
        fan_in, fan_out = kernel.shape
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        assert np.abs(kernel).max() <= limit, name
        if kernel.size >= 256:  # enough draws to see the whole range and the uniform spread
            assert np.abs(kernel).max() >= 0.95 * limit, name
            assert kernel.std() == pytest.approx(limit / math.sqrt(3.0), rel=0.1), name
            assert abs(kernel.mean()) < 0.1 * limit, name
        np.testing.assert_array_equal(np.asarray(layer["bias"]), 0.0)
    # The big first kernel pins the spread tightly: 160,000 draws.
    first = np.asarray(default_params["hidden_0"]["kernel"])
    assert first.std() == pytest.approx(math.sqrt(6.0 / 10016) / math.sqrt(3.0), rel=0.01)


def _sparse_from_dense(dense: np.ndarray, capacity: int) -> SparseMultiHot:
    rows, words = np.nonzero(dense)
    padding = capacity - rows.size
    return SparseMultiHot(
        word_ids=jnp.asarray(np.concatenate([words, np.zeros(padding, np.int64)]), jnp.int32),
        row_ids=jnp.asarray(np.concatenate([rows, np.full(padding, dense.shape[0])]), jnp.int32),
        batch_size=dense.shape[0],
    )


def test_sparse_and_dense_first_layers_give_the_same_logits():
    num_words = 40
    model = MLP(num_words=num_words, hidden_units=(8, 4))
    params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, num_words)))["params"]
    params = jax.tree_util.tree_map(lambda leaf: leaf + 0.1, params)  # non-zero biases too
    dense = (np.random.default_rng(0).random((6, num_words)) < 0.3).astype(np.float32)
    dense[5] = 0.0  # an empty review
    sparse = _sparse_from_dense(dense, capacity=dense.sum().astype(int) + 7)  # with padding slots

    apply = jax.jit(model.apply)
    dense_logits = np.asarray(apply({"params": params}, jnp.asarray(dense)))
    sparse_logits = np.asarray(apply({"params": params}, sparse))
    np.testing.assert_allclose(sparse_logits, dense_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(sparse.todense(num_words)), dense)
    assert np.unique(dense_logits).size == 6  # the rows really differ
