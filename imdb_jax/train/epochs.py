"""Whole epochs as compiled programs: lax.scan of the fused step over on-device batches."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from imdb_jax.train.device_data import DeviceReviews, gather_batch
from imdb_jax.train.steps import (
    FusedState,
    TrainState,
    eval_step,
    finite_slots,
    fused_eval_step,
    fused_predict,
    fused_train_step,
    predict_logits,
    select_slots,
)


def _add(total, part):
    return jax.tree_util.tree_map(jnp.add, total, part)


def _zero_sums(state: FusedState) -> dict[str, jax.Array]:
    shards, slots = state.alive.shape
    zeros = jnp.zeros((shards, slots), jnp.float32)
    return {"loss_sum": zeros, "correct": zeros, "count": jnp.zeros((shards,), jnp.float32)}


def keep_finite(before: FusedState, after: FusedState, loss_sum: jax.Array) -> FusedState:
    """End-of-epoch divergence containment for one shard: a variant whose epoch loss or new
    weights are not finite (or that diverged earlier) goes back to its state at the start of the
    epoch, its last finite weights, and is marked dead. Checked once per epoch, not per step."""
    keep = before.alive & finite_slots(after, loss_sum)
    return after.replace(
        params=select_slots(keep, after.params, before.params, after.layout),
        nu=select_slots(keep, after.nu, before.nu, after.layout),
        alive=keep,
    )


@functools.partial(jax.jit, static_argnames=("capacity",), donate_argnums=(0,))
def train_epoch(state: FusedState, data: DeviceReviews, rows: jax.Array, *, capacity: tuple[int, int]):
    """One epoch: `fused_train_step` on each batch of `rows` (int32[num_batches, batch]) in
    turn, metric sums accumulated step by step, then divergence containment.

    Returns:
      The new state and {"loss_sum": [shards, slots], "correct": ..., "count": [shards]}.
    """
    step = jax.vmap(fused_train_step, in_axes=(0, None))

    def body(carry, batch_rows):
        state, sums = carry
        state, batch_sums = step(state, gather_batch(data, batch_rows, capacity))
        return (state, _add(sums, batch_sums)), None

    (after, sums), _ = jax.lax.scan(body, (state, _zero_sums(state)), rows)
    return jax.vmap(keep_finite)(state, after, sums["loss_sum"]), sums


@functools.partial(jax.jit, static_argnames=("capacity",))
def eval_epoch(state: FusedState, data: DeviceReviews, rows: jax.Array, *, capacity: tuple[int, int]):
    """Per-variant metric sums over every batch of `rows`, no dropout."""
    evaluate = jax.vmap(fused_eval_step, in_axes=(0, None))

    def body(sums, batch_rows):
        return _add(sums, evaluate(state, gather_batch(data, batch_rows, capacity))), None

    sums, _ = jax.lax.scan(body, _zero_sums(state), rows)
    return sums


@jax.jit
def keep_best(state: FusedState, improved: jax.Array) -> FusedState:
    """`best_params` takes each variant's current weights where `improved` (bool[shards,
    slots]) says its validation loss is the lowest so far."""
    select = jax.vmap(lambda keep, new, old: select_slots(keep, new, old, state.layout))
    return state.replace(best_params=select(improved, state.params, state.best_params))


@functools.partial(jax.jit, static_argnames=("capacity",))
def logits_epoch(state: FusedState, data: DeviceReviews, rows: jax.Array, *, capacity: tuple[int, int]):
    """float32[num_batches, shards, slots, batch] logits of every fused variant, no dropout."""
    predict = jax.vmap(fused_predict, in_axes=(0, None))

    def body(_, batch_rows):
        return None, predict(state, gather_batch(data, batch_rows, capacity)["inputs"])

    return jax.lax.scan(body, None, rows)[1]


@functools.partial(jax.jit, static_argnames=("capacity",))
def score_epoch(state: TrainState, data: DeviceReviews, rows: jax.Array, *, capacity: tuple[int, int]):
    """`eval_step` metric sums over every batch of `rows`."""

    def body(sums, batch_rows):
        return _add(sums, eval_step(state, gather_batch(data, batch_rows, capacity))), None

    zeros = {"loss_sum": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.float32)}
    sums, _ = jax.lax.scan(body, zeros, rows)
    return sums


@functools.partial(jax.jit, static_argnames=("capacity",))
def predict_epoch(state: TrainState, data: DeviceReviews, rows: jax.Array, *, capacity: tuple[int, int]):
    """Logits of every batch, stacked on a leading batch axis."""

    def body(_, batch_rows):
        return None, predict_logits(state, gather_batch(data, batch_rows, capacity)["inputs"])

    _, logits = jax.lax.scan(body, None, rows)
    return logits
