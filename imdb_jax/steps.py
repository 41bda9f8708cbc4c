"""Pure train and eval steps: logits become a loss, the loss becomes an update.

Everything here takes and returns pytrees, so callers may `jax.jit`, `jax.vmap` or `jax.grad`
through it. Metrics are sums with a count (`loss_sum`, `correct`, `count`), which combine exactly
across batches of different sizes and are divided on the host.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from imdb_jax.config import ModelConfig
from imdb_jax.models import MLP, SparseMultiHot
from imdb_jax.optim import init_opt_state, kernel_penalty, rmsprop

Batch = Mapping[str, Any]  # {"inputs": float32[B, V] | SparseMultiHot, "labels": float32[B], "weights"?: float32[B]}


class TrainState(train_state.TrainState):
    """Flax `TrainState` plus the per-model settings that are traced, not compiled in.

    Attributes:
      hparams: {"dropout_rate", "l1", "l2"} float32 scalars (the learning rate and weight decay
        sit in `opt_state.hyperparams`).
    """

    hparams: dict[str, jax.Array] = struct.field(default_factory=dict)


@functools.cache
def _shared_model(num_words: int, hidden_units: tuple[int, ...]) -> MLP:
    """The Flax module of one shape, one shared instance per shape.

    A train state keeps the module's bound `apply` as a static field, and bound methods compare
    their `self` by identity: sharing the instance keeps the states of equal shapes equal as
    static structure, so a second `fit` of the same shapes reuses the compiled epoch.
    """
    return MLP(num_words=num_words, hidden_units=hidden_units)


def create_train_state(rng: jax.Array, config: ModelConfig) -> TrainState:
    """Initial parameters (glorot-uniform kernels, zero biases) and rmsprop state.

    Args:
      rng: PRNG key for the initial weights.
      config: the model; its numeric settings become arrays in the state.
    """
    numbers = {name: jnp.asarray(value, jnp.float32) for name, value in config.hyperparams.items()}
    return _create_train_state(rng, numbers, config.num_words, config.hidden_units)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _create_train_state(rng: jax.Array, numbers: dict[str, jax.Array], num_words: int, hidden_units: tuple[int, ...]):
    # One compiled program per shape (not one small program per eager op, nor one per setting).
    model = _shared_model(num_words, hidden_units)
    params = model.init(rng, jnp.zeros((1, num_words), jnp.float32))["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=rmsprop(),
        opt_state=init_opt_state(params, numbers["learning_rate"], numbers["weight_decay"]),
        hparams={name: numbers[name] for name in ("dropout_rate", "l1", "l2")},
    )


def train_state_from_params(params: Any, config: ModelConfig, *, nu: Any = None, step: int = 0) -> TrainState:
    """A `TrainState` around known weights (a saved model, a variant cut out of a study), built
    without compiling anything: the optimiser state's structure comes from `jax.eval_shape`, its
    arrays from NumPy.

    Args:
      params: Flax params {"hidden_0": {"kernel", "bias"}, ..., "output": ...}.
      config: the model's settings (its numbers go into the state as arrays).
      nu: rmsprop's running mean of squared gradients, like `params` (default zeros: a fresh
        optimiser).
      step: updates already done.
    """
    # jax.device_put, not jnp.asarray: the latter compiles a small copy program per shape.
    params = jax.device_put(jax.tree_util.tree_map(np.asarray, params))
    shapes = jax.eval_shape(rmsprop().init, params)
    opt_state = jax.device_put(jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes))
    hyperparams = dict(opt_state.hyperparams)
    hyperparams["learning_rate"] = jax.device_put(np.float32(config.learning_rate))
    hyperparams["weight_decay"] = jax.device_put(np.float32(config.weight_decay))
    inner = list(opt_state.inner_state)
    if nu is not None:
        inner[0] = inner[0]._replace(nu=jax.device_put(jax.tree_util.tree_map(np.asarray, nu)))
    step = jax.device_put(np.int32(step))
    opt_state = opt_state._replace(hyperparams=hyperparams, inner_state=tuple(inner), count=step)
    model = _shared_model(config.num_words, config.hidden_units)
    return TrainState(
        step=step,
        apply_fn=model.apply,
        params=params,
        tx=rmsprop(),
        opt_state=opt_state,
        hparams={name: jax.device_put(np.float32(getattr(config, name))) for name in ("dropout_rate", "l1", "l2")},
    )


def _weights(batch: Batch) -> jax.Array:
    weights = batch.get("weights")
    return jnp.ones_like(batch["labels"]) if weights is None else weights


def _metrics(logits: jax.Array, labels: jax.Array, weights: jax.Array, penalty: jax.Array) -> dict[str, jax.Array]:
    per_example = optax.sigmoid_binary_cross_entropy(logits, labels)
    count = jnp.sum(weights)
    correct = (logits > 0) == (labels > 0.5)
    return {
        # Keras reports the penalised loss, averaged over examples: sum(bce) + n * penalty.
        "loss_sum": jnp.sum(per_example * weights) + count * penalty,
        "correct": jnp.sum(correct * weights),
        "count": count,
    }


def loss_and_metrics(params: Any, state: TrainState, batch: Batch, dropout_rng: jax.Array | None):
    """Mean binary cross-entropy from logits (numerically stable) plus the kernel penalty."""
    logits = state.apply_fn(
        {"params": params},
        batch["inputs"],
        dropout_rate=state.hparams["dropout_rate"],
        dropout_rng=dropout_rng,
    )
    weights = _weights(batch)
    penalty = kernel_penalty(params, state.hparams["l1"], state.hparams["l2"])
    metrics = _metrics(logits, batch["labels"], weights, penalty)
    loss = metrics["loss_sum"] / jnp.maximum(metrics["count"], 1.0)
    return loss, metrics


def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One rmsprop update on one batch.

    Args:
      state: the model and optimiser state.
      batch: {"inputs": float32[B, num_words] or SparseMultiHot, "labels": float32[B] of 0/1,
        optional "weights": float32[B] (0 marks padding rows, which add nothing)}.
      rng: PRNG key for dropout at this step (e.g. `jax.random.fold_in(key, state.step)`).

    Returns:
      The updated state and {"loss_sum", "correct", "count"} for the batch, the loss measured
      before the update (as Keras reports it).
    """
    grad_fn = jax.grad(loss_and_metrics, has_aux=True)
    grads, metrics = grad_fn(state.params, state, batch, rng)
    return state.apply_gradients(grads=grads), metrics


def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    """{"loss_sum", "correct", "count"} on a batch, without dropout; the loss includes the
    kernel penalty, as Keras' `evaluate` and `val_loss` do."""
    _, metrics = loss_and_metrics(state.params, state, batch, None)
    return metrics


def predict_logits(state: TrainState, inputs: jax.Array | SparseMultiHot) -> jax.Array:
    """float32[batch] logits, no dropout."""
    return state.apply_fn({"params": state.params}, inputs)


def summarize(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Sums with a count → {"loss", "accuracy"} (host side)."""
    count = float(metrics["count"])
    return {"loss": float(metrics["loss_sum"]) / count, "accuracy": float(metrics["correct"]) / count}
