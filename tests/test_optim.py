"""The optimiser pinned against a hand-written NumPy reference of Keras' rmsprop and penalties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imdb_jax.config import ModelConfig
from imdb_jax.train.optim import init_opt_state, kernel_penalty
from imdb_jax.train.steps import create_train_state, train_step

CONFIG = ModelConfig(num_words=12, hidden_units=(6, 5))
LAYERS = ("hidden_0", "hidden_1", "output")


def _numpy_params(params) -> dict[str, dict[str, np.ndarray]]:
    return {layer: {name: np.asarray(value, np.float64) for name, value in params[layer].items()} for layer in LAYERS}


def _reference_gradients(params, x, y, l1, l2):
    """Gradient of mean BCE(sigmoid logits) + l1 Σ|w| + l2 Σw² over hidden kernels, by hand."""
    activations = [x]
    for layer in LAYERS[:-1]:
        activations.append(np.maximum(activations[-1] @ params[layer]["kernel"] + params[layer]["bias"], 0.0))
    logits = activations[-1] @ params["output"]["kernel"][:, 0] + params["output"]["bias"][0]
    upstream = ((1.0 / (1.0 + np.exp(-logits))) - y)[:, None] / len(y)  # d loss / d logits
    grads = {}
    for index in range(len(LAYERS) - 1, -1, -1):
        layer = LAYERS[index]
        grads[layer] = {"kernel": activations[index].T @ upstream, "bias": upstream.sum(axis=0)}
        if index > 0:
            upstream = (upstream @ params[layer]["kernel"].T) * (activations[index] > 0)
    for layer in LAYERS[:-1]:  # Keras' kernel_regularizer: hidden kernels only
        kernel = params[layer]["kernel"]
        grads[layer]["kernel"] = grads[layer]["kernel"] + l1 * np.sign(kernel) + 2.0 * l2 * kernel
    return grads


def _reference_rmsprop(params, x, y, *, steps, learning_rate, weight_decay, l1, l2):
    """Keras: v = .9 v + .1 g²; w -= lr g / sqrt(v + 1e-7) + lr wd w (v starts at zero)."""
    params = {layer: dict(values) for layer, values in params.items()}
    velocity = {
        layer: {name: np.zeros_like(value) for name, value in values.items()} for layer, values in params.items()
    }
    for _ in range(steps):
        grads = _reference_gradients(params, x, y, l1, l2)
        for layer in LAYERS:
            for name in ("kernel", "bias"):
                g, w = grads[layer][name], params[layer][name]
                velocity[layer][name] = 0.9 * velocity[layer][name] + 0.1 * g**2
                params[layer][name] = (
                    w - learning_rate * g / np.sqrt(velocity[layer][name] + 1e-7) - learning_rate * weight_decay * w
                )
    return params


@pytest.fixture(scope="module")
def base_state():
    return create_train_state(jax.random.key(3), CONFIG)


@pytest.fixture(scope="module")
def jitted_train_step():
    return jax.jit(train_step)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = (rng.random((10, CONFIG.num_words)) < 0.4).astype(np.float32)
    y = (rng.random(10) < 0.5).astype(np.float32)
    return x, y


@pytest.mark.parametrize(
    "settings",
    [
        dict(learning_rate=0.01, weight_decay=0.1, l1=0.0, l2=0.02),
        dict(learning_rate=0.003, weight_decay=0.0, l1=0.01, l2=0.0),
        dict(learning_rate=0.001, weight_decay=0.0, l1=0.0, l2=0.0),
    ],
    ids=["l2+weight_decay", "l1", "plain"],
)
def test_rmsprop_updates_equal_the_keras_formula(base_state, jitted_train_step, batch, settings):
    x, y = batch
    # The settings are traced arrays of the state: every case runs the one compiled step.
    state = base_state.replace(
        opt_state=init_opt_state(base_state.params, settings["learning_rate"], settings["weight_decay"]),
        hparams={**base_state.hparams, "l1": jnp.float32(settings["l1"]), "l2": jnp.float32(settings["l2"])},
    )
    initial = _numpy_params(state.params)
    step = jitted_train_step
    inputs = {"inputs": jnp.asarray(x), "labels": jnp.asarray(y)}
    for index in range(3):  # three steps, so the running average of g² matters
        state, _ = step(state, inputs, jax.random.key(index))
    expected = _reference_rmsprop(initial, x.astype(np.float64), y.astype(np.float64), steps=3, **settings)
    for layer in LAYERS:
        for name in ("kernel", "bias"):
            np.testing.assert_allclose(
                np.asarray(state.params[layer][name]),
                expected[layer][name],
                rtol=0,
                atol=1e-6,
                err_msg=f"{layer}/{name}",
            )
    moved = max(np.abs(expected[layer]["kernel"] - initial[layer]["kernel"]).max() for layer in LAYERS)
    assert moved > 1e-3  # the comparison is not between two unchanged models


def test_kernel_penalty_covers_hidden_kernels_only():
    params = create_train_state(jax.random.key(4), CONFIG).params
    numpy_params = _numpy_params(params)
    hidden = [numpy_params[layer]["kernel"] for layer in ("hidden_0", "hidden_1")]
    expected = 0.01 * sum(np.abs(k).sum() for k in hidden) + 0.002 * sum((k**2).sum() for k in hidden)
    assert float(kernel_penalty(params, 0.01, 0.002)) == pytest.approx(expected, rel=1e-6)
    # Neither the output kernel nor any bias is penalised.
    changed = {**params, "output": {"kernel": params["output"]["kernel"] * 100, "bias": params["output"]["bias"] + 5}}  # pyright: ignore[reportOperatorIssue]
    changed["hidden_0"] = {**params["hidden_0"], "bias": params["hidden_0"]["bias"] + 5}  # pyright: ignore[reportOperatorIssue]
    assert float(kernel_penalty(changed, 0.01, 0.002)) == pytest.approx(expected, rel=1e-6)
