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
from imdb_jax.models.inputs import MultiHot, SparseMultiHot
from imdb_jax.models.layers import tree_sum
from imdb_jax.models.layout import Layout
from imdb_jax.models.mlp import MLP, apply
from imdb_jax.train.optim import RMS_DECAY, RMS_EPSILON, init_opt_state, kernel_penalty, penalties, rmsprop

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


HYPERPARAMS = ("learning_rate", "weight_decay", "l1", "l2", "dropout_rate")


@struct.dataclass
class FusedState:
    """Every variant's weights, rmsprop state and settings, in the fused layout.

    Attributes:
      params: {"first": {"kernel": [num_words, width], "bias": [width]}, "blocks": per block
        {"hidden": ({"kernel": [size, in, out], "bias": [size, out]}, ...), "output":
        {"kernel": [size, units, 1], "bias": [size, 1]}}}.
      nu: rmsprop's running mean of squared gradients, like `params`.
      step: int32 updates done (shared: every variant sees every batch).
      hyperparams: {name: float32[slots]} for `HYPERPARAMS`.
      dropout_keys: one PRNG key per slot, folded with the step for each batch.
      alive: bool[slots], False from the epoch a variant stopped being finite.
      best_params: None, or like `params`: each variant's weights at its lowest validation loss
        so far (kept on the device, one `where` per epoch).
      layout: the static arrangement.
    """

    params: Any
    nu: Any
    step: jax.Array
    hyperparams: dict[str, jax.Array]
    dropout_keys: jax.Array
    alive: jax.Array
    best_params: Any = None
    layout: Layout = struct.field(pytree_node=False, default=None)


def _per_leaf(layout: Layout, values: jax.Array, params: Any) -> Any:
    """A per-slot array broadcast to each parameter leaf (columns of the first layer, leading
    axis of the blocks)."""
    column_slots = jnp.asarray(layout.column_slots())
    blocks = []
    for block, block_params in zip(layout.blocks, params["blocks"]):
        members = values[block.start : block.start + block.size]
        blocks.append(jax.tree_util.tree_map(lambda leaf: members.reshape((-1,) + (1,) * (leaf.ndim - 1)), block_params))
    per_column = values[column_slots]
    return {"first": {"kernel": per_column[None, :], "bias": per_column}, "blocks": tuple(blocks)}


_RMS = optax.scale_by_rms(decay=RMS_DECAY, eps=RMS_EPSILON, eps_in_sqrt=True)


def _rmsprop(state: FusedState, grads: Any) -> tuple[Any, Any]:
    """Keras rmsprop with decoupled weight decay, per variant (the same arithmetic as
    `imdb_jax.train.optim.rmsprop`: `p + -lr * (g / sqrt(nu + eps) + wd * p)`)."""
    scaled, rms_state = _RMS.update(grads, optax.ScaleByRmsState(nu=state.nu))
    learning_rate = _per_leaf(state.layout, state.hyperparams["learning_rate"], state.params)
    weight_decay = _per_leaf(state.layout, state.hyperparams["weight_decay"], state.params)
    params = jax.tree_util.tree_map(
        lambda p, u, lr, wd: p + (-lr) * (u + wd * p), state.params, scaled, learning_rate, weight_decay
    )
    return params, rms_state.nu


def _loss_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array, penalty: jax.Array):
    per_example = optax.sigmoid_binary_cross_entropy(logits, labels[None, :])
    count = tree_sum(weights, axis=0)
    correct = ((logits > 0) == (labels > 0.5)[None, :]).astype(jnp.float32)
    return {
        # Keras reports the penalised loss averaged over examples: sum(bce) + n * penalty.
        "loss_sum": tree_sum(per_example * weights, axis=1) + count * penalty,
        "correct": tree_sum(correct * weights, axis=1),
        "count": count,
    }


def fused_loss(params: Any, state: FusedState, batch: dict[str, Any], training: bool):
    """Sum over variants of each variant's mean loss (so each variant's gradient is its own),
    and {"loss_sum": [slots], "correct": [slots], "count": []}."""
    dropout = None
    if training:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.dropout_keys, state.step)
        dropout = (state.hyperparams["dropout_rate"], keys)
    logits = apply(params, batch["inputs"], state.layout, dropout)
    penalty = penalties(params, state.layout, state.hyperparams["l1"], state.hyperparams["l2"])
    sums = _loss_sums(logits, batch["labels"], batch["weights"], penalty)
    return jnp.sum(sums["loss_sum"] / jnp.maximum(sums["count"], 1.0)), sums


def fused_train_step(state: FusedState, batch: dict[str, Any]) -> tuple[FusedState, dict[str, jax.Array]]:
    """One rmsprop update of every variant on the same batch.

    Args:
      state: the fused variants.
      batch: {"inputs": MultiHot, "labels": float32[batch], "weights": float32[batch]}.

    Returns:
      The new state and per-variant metric sums of the batch (before the update, as Keras
      reports them): {"loss_sum": [slots], "correct": [slots], "count": []}.
    """
    grads, sums = jax.grad(fused_loss, has_aux=True)(state.params, state, batch, True)
    params, nu = _rmsprop(state, grads)
    return state.replace(params=params, nu=nu, step=state.step + 1), sums


def fused_eval_step(state: FusedState, batch: dict[str, Any]) -> dict[str, jax.Array]:
    """Per-variant metric sums without dropout (the loss includes the penalty, as Keras')."""
    return fused_loss(state.params, state, batch, False)[1]


def fused_predict(state: FusedState, inputs: MultiHot) -> jax.Array:
    """float32[slots, batch] logits."""
    return apply(state.params, inputs, state.layout)


def finite_slots(state: FusedState, loss_sum: jax.Array) -> jax.Array:
    """bool[slots]: the variant's epoch loss and every one of its weights are finite."""
    layout = state.layout
    params = state.params
    finite = jnp.isfinite(loss_sum)
    column_ok = jnp.all(jnp.isfinite(params["first"]["kernel"]), axis=0) & jnp.isfinite(params["first"]["bias"])
    parts = []
    for block, block_params in zip(layout.blocks, params["blocks"]):
        ok = jnp.all(column_ok[block.offset : block.offset + block.columns].reshape(block.size, -1), axis=1)
        for leaf in jax.tree_util.tree_leaves(block_params):
            ok = ok & jnp.all(jnp.isfinite(leaf.reshape(block.size, -1)), axis=1)
        parts.append(ok)
    return finite & jnp.concatenate(parts)


def select_slots(keep: jax.Array, new: Any, old: Any, layout: Layout) -> Any:
    """Per variant, `new` where `keep` else `old`, for a params-shaped tree."""
    keep_leaf = _per_leaf(layout, keep, new)
    return jax.tree_util.tree_map(lambda k, a, b: jnp.where(k, a, b), keep_leaf, new, old)
