"""Pure train and eval steps: logits become a loss, the loss becomes an update.

One loss (`loss_sums`: binary cross-entropy from logits plus Keras' kernel penalty, as sums with
a count) and one optimiser (`imdb_jax.train.optim.rmsprop`) serve both ways of training:

- one model: `TrainState` (Flax's, around the `MLP`), `train_step`, `eval_step`;
- many fused variants: `FusedState` (around the `FusedMLP`), `fused_train_step`,
  `fused_eval_step`, with per-variant metric sums; `fit` and `fit_variants` train this way (`fit`
  is a study of one).

Everything here takes and returns pytrees, so callers may `jax.jit`, `jax.vmap` or `jax.grad`
through it. Metrics are sums with a count (`loss_sum`, `correct`, `count`), which combine exactly
across batches of different sizes and are divided on the host.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from imdb_jax.config import HYPERPARAMS, ModelConfig
from imdb_jax.models.inputs import MultiHot, SparseMultiHot
from imdb_jax.models.layers import tree_sum
from imdb_jax.models.layout import Layout
from imdb_jax.models.mlp import MLP, FusedMLP
from imdb_jax.train.optim import (
    OPTIMISER_HYPERPARAMS,
    RMSpropState,
    add_hidden_sums,
    first_layer_sums,
    init_opt_state,
    kernel_penalty,
    rmsprop,
)
from imdb_jax.train.programs import stored_jit

Batch = Mapping[
    str, Any
]  # {"inputs": float32[B, V] | SparseMultiHot | MultiHot, "labels": float32[B], "weights"?: float32[B]}

# The model's own numbers; the learning rate and weight decay sit in the optimiser's state.
MODEL_HYPERPARAMS = tuple(name for name in HYPERPARAMS if name not in OPTIMISER_HYPERPARAMS)


# ---------------------------------------------------------------------------------------------
# The loss, once.


def loss_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array, penalty: jax.Array) -> dict[str, jax.Array]:
    """Per-variant metric sums of a batch.

    Args:
      logits: float32[variants, batch].
      labels: float32[batch] of 0/1.
      weights: float32[batch] (0 marks padding rows, which add nothing).
      penalty: float32[variants], each variant's kernel penalty.

    Returns:
      {"loss_sum": [variants] (cross-entropy plus penalty, as Keras reports it),
      "cross_entropy_sum": [variants] (without the penalty), "correct": [variants], "count": []};
      every sum is a fixed
      `tree_sum`, so a variant's figures do not depend on the others.
    """
    per_example = optax.sigmoid_binary_cross_entropy(logits, labels[None, :])
    count = tree_sum(weights, axis=0)
    correct = ((logits > 0) == (labels > 0.5)[None, :]).astype(jnp.float32)
    cross_entropy = tree_sum(per_example * weights[None, :], axis=1)
    return {
        # Keras reports the penalised loss averaged over examples: sum(bce) + n * penalty.
        "loss_sum": cross_entropy + count * penalty,
        "cross_entropy_sum": cross_entropy,
        "correct": tree_sum(correct * weights[None, :], axis=1),
        "count": count,
    }


def mean_loss(sums: dict[str, jax.Array]) -> jax.Array:
    """The sum over variants of each variant's mean loss: each variant's gradient is its own."""
    return jnp.sum(sums["loss_sum"] / jnp.maximum(sums["count"], 1.0))


# ---------------------------------------------------------------------------------------------
# One model.


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


@stored_jit(static_argnums=(1, 2))
def initial_params(rng: jax.Array, num_words: int, hidden_units: tuple[int, ...]) -> Any:
    """The initial Flax params of `create_train_state`: glorot-uniform kernels, zero biases."""
    model = _shared_model(num_words, hidden_units)
    return model.init(rng, jnp.zeros((1, num_words), jnp.float32))["params"]


@functools.partial(jax.jit, static_argnums=(2, 3))
def _create_train_state(rng: jax.Array, numbers: dict[str, jax.Array], num_words: int, hidden_units: tuple[int, ...]):
    # One compiled program per shape (not one small program per eager op, nor one per setting).
    # Not in the program store: the state holds the optimiser's functions, which do not pickle.
    model = _shared_model(num_words, hidden_units)
    params = initial_params(rng, num_words, hidden_units)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=rmsprop(),
        opt_state=init_opt_state(params, numbers["learning_rate"], numbers["weight_decay"]),
        hparams={name: numbers[name] for name in MODEL_HYPERPARAMS},
    )


def train_state_from_params(params: Any, config: ModelConfig, *, nu: Any = None, step: int = 0) -> TrainState:
    """A `TrainState` around known weights (a saved model, a variant cut out of a study), built
    without compiling anything: every array comes from NumPy through `jax.device_put`.

    Args:
      params: Flax params {"hidden_0": {"kernel", "bias"}, ..., "output": ...}.
      config: the model's settings (its numbers go into the state as arrays).
      nu: rmsprop's running mean of squared gradients, like `params` (default zeros: a fresh
        optimiser).
      step: updates already done.
    """
    # jax.device_put, not jnp.asarray: the latter compiles a small copy program per shape.
    params = jax.device_put(jax.tree_util.tree_map(np.asarray, params))
    zeros = jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), params)
    step = jax.device_put(np.int32(step))
    opt_state = RMSpropState(
        count=step,  # pyright: ignore[reportArgumentType]
        nu=jax.device_put(zeros if nu is None else jax.tree_util.tree_map(np.asarray, nu)),
        hyperparams={name: jax.device_put(np.float32(getattr(config, name))) for name in OPTIMISER_HYPERPARAMS},
    )
    model = _shared_model(config.num_words, config.hidden_units)
    return TrainState(
        step=step,
        apply_fn=model.apply,
        params=params,
        tx=rmsprop(),
        opt_state=opt_state,
        hparams={name: jax.device_put(np.float32(getattr(config, name))) for name in MODEL_HYPERPARAMS},
    )


def _weights(batch: Batch) -> jax.Array:
    weights = batch.get("weights")
    return jnp.ones_like(batch["labels"]) if weights is None else weights


def loss_and_metrics(params: Any, state: TrainState, batch: Batch, dropout_rng: jax.Array | None):
    """(mean loss, metric sums) of one model on a batch: `loss_sums` of a single variant."""
    logits = state.apply_fn(
        {"params": params},
        batch["inputs"],
        dropout_rate=state.hparams["dropout_rate"],
        dropout_rng=dropout_rng,
    )
    penalty = kernel_penalty(params, state.hparams["l1"], state.hparams["l2"])
    sums = loss_sums(logits[None], batch["labels"], _weights(batch), penalty[None])
    metrics = {name: value if name == "count" else value[0] for name, value in sums.items()}
    return mean_loss(sums), metrics


def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One rmsprop update on one batch.

    Args:
      state: the model and optimiser state.
      batch: {"inputs": float32[B, num_words], `SparseMultiHot` or `MultiHot` (see
        `imdb_jax.train.device_data.make_batch`), "labels": float32[B] of 0/1, optional
        "weights": float32[B] (0 marks padding rows, which add nothing)}.
      rng: PRNG key for dropout at this step (e.g. `jax.random.fold_in(key, state.step)`).

    Returns:
      The updated state and {"loss_sum", "correct", "count"} for the batch, the loss measured
      before the update (as Keras reports it).
    """
    grads, metrics = jax.grad(loss_and_metrics, has_aux=True)(state.params, state, batch, rng)
    return state.apply_gradients(grads=grads), metrics


def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    """{"loss_sum", "correct", "count"} on a batch, without dropout; the loss includes the
    kernel penalty, as Keras' `evaluate` and `val_loss` do."""
    return loss_and_metrics(state.params, state, batch, None)[1]


def predict_logits(state: TrainState, inputs: jax.Array | SparseMultiHot | MultiHot) -> jax.Array:
    """float32[batch] logits, no dropout."""
    return state.apply_fn({"params": state.params}, inputs)


# ---------------------------------------------------------------------------------------------
# Many fused variants.


@struct.dataclass
class FusedState:
    """Every variant's weights, rmsprop state and settings, in the fused layout.

    Attributes:
      params: the `FusedMLP`'s parameters ({"first": ..., "block_<b>": ...}).
      opt_state: `rmsprop`'s state; its learning rate and weight decay are trees of per-variant
        values broadcast to each leaf (`per_variant`).
      step: int32 updates done (shared: every variant sees every batch).
      hyperparams: {name: float32[slots]} for `MODEL_HYPERPARAMS` (dropout rate, L1, L2).
      dropout_keys: one PRNG key per slot, folded with the step for each batch.
      alive: bool[slots], False from the epoch a variant stopped being finite.
      training: bool[slots], False once early stopping stopped a variant (its weights then stay).
      best_params: None, or like `params`: each variant's weights at its lowest validation loss
        so far (kept on the device, one `where` per epoch).
      layout: the static arrangement.
    """

    params: Any
    opt_state: RMSpropState
    step: jax.Array
    hyperparams: dict[str, jax.Array]
    dropout_keys: jax.Array
    alive: jax.Array
    training: jax.Array
    best_params: Any = None
    layout: Layout = struct.field(pytree_node=False, default=None)


@functools.cache
def fused_model(layout: Layout) -> FusedMLP:
    """One `FusedMLP` per layout (shared, so that its `apply` compares equal across runs)."""
    return FusedMLP(layout)


def per_variant(layout: Layout, values: jax.Array, params: Any) -> Any:
    """A per-slot array broadcast to each parameter leaf (the first layer's columns, the blocks'
    leading axis), for per-variant hyperparameters and selections."""
    per_column = values[jnp.asarray(layout.column_slots())]
    tree = {"first": {"kernel": per_column[None, :], "bias": per_column}}
    for index, block in enumerate(layout.blocks):
        members = values[block.start : block.start + block.size]
        tree[f"block_{index}"] = jax.tree_util.tree_map(
            lambda leaf, members=members: members.reshape((-1,) + (1,) * (leaf.ndim - 1)), params[f"block_{index}"]
        )
    return tree


def _penalised_blocks_sums(kernel: jax.Array, layout: Layout) -> tuple[tuple[jax.Array, jax.Array], ...]:
    """Per penalised block, (sum|w|, sum w²) of each member's first-layer columns (`penalty_sums`'
    first term: a fixed `tree_sum` over the rows, then over the member's columns)."""
    sums = []
    for block in layout.blocks:
        if block.penalty:
            first = kernel[:, block.offset : block.offset + block.columns].reshape(kernel.shape[0], block.size, -1)
            sums.append(first_layer_sums(first))
    return tuple(sums)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def first_layer_penalty_sums(kernel: jax.Array, layout: Layout) -> tuple[tuple[jax.Array, jax.Array], ...]:
    """`_penalised_blocks_sums`, whose gradient is one elementwise pass over the penalised blocks.

    Autodiff of the sums would carry each block's cotangent back through the `tree_sum`s' pads
    and slices and pad the block's gradient out to the kernel's width: XLA:CPU then spends about
    three times a plain pass over the kernel on that one fusion. Transposing a sum broadcasts
    its cotangent exactly (each halving add passes it on unchanged), so the gradient here is the
    same arithmetic on each element (JAX's own `abs` and `square` transposed, with each column's
    cotangent broadcast, 0 in the columns of unpenalised blocks): the same bits, without the pads.
    Being a `jax.custom_vjp`, it takes reverse-mode autodiff (`jax.grad`, `jax.vjp`) but not
    forward mode (`jax.jvp`): the fused steps are differentiated in reverse only.
    """
    return _penalised_blocks_sums(kernel, layout)


def _first_layer_penalty_fwd(kernel, layout):
    return _penalised_blocks_sums(kernel, layout), kernel


def _first_layer_penalty_bwd(layout, kernel, cotangents):
    # Per penalised block: JAX's own transposes of `abs` and `square` on the block's columns, each
    # member's cotangents broadcast over its columns (the layout's own column -> slot map, as
    # `per_variant` uses), padded with zeros to the kernel's width: every other column's cotangent
    # is exactly 0. XLA fuses the pad into the sum with the bag's gradient, so the kernel's other
    # columns are not read for it (a pass over the whole kernel was 3 ms of a 1-seed study's step).
    # Blocks' pads are added (a column is 0 in all but one; the bag's sum then adds exactly that).
    ours = iter(cotangents)
    column_slots = layout.column_slots()
    gradient = None
    for block in layout.blocks:
        if not block.penalty:
            continue
        columns = slice(block.offset, block.offset + block.columns)
        members = jnp.asarray(column_slots[columns] - block.start)
        abs_cotangent, square_cotangent = (
            jnp.broadcast_to(sums[members], (kernel.shape[0], block.columns)) for sums in next(ours)
        )
        _, transpose = jax.vjp(lambda k: (jnp.abs(k), jnp.square(k)), kernel[:, columns])
        padding = [(0, 0, 0), (block.offset, kernel.shape[1] - block.offset - block.columns, 0)]
        padded = jax.lax.pad(transpose((abs_cotangent, square_cotangent))[0], jnp.zeros((), kernel.dtype), padding)
        gradient = padded if gradient is None else gradient + padded
    return (jnp.zeros_like(kernel) if gradient is None else gradient,)


first_layer_penalty_sums.defvjp(_first_layer_penalty_fwd, _first_layer_penalty_bwd)


def fused_penalties(params: Any, layout: Layout, l1: jax.Array, l2: jax.Array) -> jax.Array:
    """float32[slots]: each variant's kernel penalty (`penalty_sums` per block; blocks without
    L1 or L2 skip the work: their factors are 0)."""
    kernel = params["first"]["kernel"]
    first_sums = iter(first_layer_penalty_sums(kernel, layout)) if layout.penalty else iter(())
    abs_sums, square_sums = [], []
    for index, block in enumerate(layout.blocks):
        if not block.penalty:
            abs_sums.append(jnp.zeros((block.size,), jnp.float32))
            square_sums.append(jnp.zeros((block.size,), jnp.float32))
            continue
        hidden = [params[f"block_{index}"][f"hidden_{layer}"]["kernel"] for layer in range(1, len(block.hidden_units))]
        abs_sum, square_sum = add_hidden_sums(next(first_sums), hidden)
        abs_sums.append(abs_sum)
        square_sums.append(square_sum)
    return l1 * jnp.concatenate(abs_sums) + l2 * jnp.concatenate(square_sums)


def fused_loss(params: Any, state: FusedState, batch: Batch, training: bool):
    """(sum over variants of each variant's mean loss, {"loss_sum": [slots], "correct":
    [slots], "count": []})."""
    dropout = None
    if training:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.dropout_keys, state.step)
        dropout = (state.hyperparams["dropout_rate"], keys)
    logits = fused_model(state.layout).apply({"params": params}, batch["inputs"], dropout)
    penalty = fused_penalties(params, state.layout, state.hyperparams["l1"], state.hyperparams["l2"])
    sums = loss_sums(logits, batch["labels"], _weights(batch), penalty)  # pyright: ignore[reportArgumentType]
    return mean_loss(sums), sums


def fused_train_step(state: FusedState, batch: Batch) -> tuple[FusedState, dict[str, jax.Array]]:
    """One rmsprop update of every variant on the same batch.

    Args:
      state: the fused variants (`fit_variants(...).fused_state()` or
        `imdb_jax.train.variants.initial_state`).
      batch: {"inputs": `MultiHot`, "labels": float32[batch], "weights": float32[batch]
        (optional)}, e.g. from `imdb_jax.train.device_data.make_batch`.

    Returns:
      The new state and per-variant metric sums of the batch (before the update, as Keras
      reports them): {"loss_sum": [slots], "correct": [slots], "count": []}.
    """
    grads, sums = jax.grad(fused_loss, has_aux=True)(state.params, state, batch, True)
    updates, opt_state = rmsprop().update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(params=params, opt_state=opt_state, step=state.step + 1), sums  # pyright: ignore[reportAttributeAccessIssue]


def fused_eval_step(state: FusedState, batch: Batch) -> dict[str, jax.Array]:
    """Per-variant metric sums without dropout (the loss includes the penalty, as Keras')."""
    return fused_loss(state.params, state, batch, False)[1]


def fused_predict(state: FusedState, inputs: MultiHot) -> jax.Array:
    """float32[slots, batch] logits."""
    return fused_model(state.layout).apply({"params": state.params}, inputs)  # pyright: ignore[reportReturnType]


def finite_slots(state: FusedState, loss_sum: jax.Array) -> jax.Array:
    """bool[slots]: the variant's epoch loss and every one of its weights are finite."""
    layout, params = state.layout, state.params
    column_ok = jnp.all(jnp.isfinite(params["first"]["kernel"]), axis=0) & jnp.isfinite(params["first"]["bias"])
    parts = []
    for index, block in enumerate(layout.blocks):
        ok = jnp.all(column_ok[block.offset : block.offset + block.columns].reshape(block.size, -1), axis=1)
        for leaf in jax.tree_util.tree_leaves(params[f"block_{index}"]):
            ok = ok & jnp.all(jnp.isfinite(leaf.reshape(block.size, -1)), axis=1)
        parts.append(ok)
    return jnp.isfinite(loss_sum) & jnp.concatenate(parts)


def select_slots(keep: jax.Array, new: Any, old: Any, layout: Layout) -> Any:
    """Per variant, `new` where `keep` (bool[slots]) else `old`, for a params-shaped tree."""
    keep_leaf = per_variant(layout, keep, new)
    return jax.tree_util.tree_map(lambda k, a, b: jnp.where(k, a, b), keep_leaf, new, old)
