"""Whole epochs as compiled programs: `lax.scan` of a step over a split's batches, cut on the device.

A training epoch scans `fused_train_step` (every leaf of the state with a leading device-shard
axis) and ends with divergence containment; scoring scans any step, fused or one model's.

With the shard axis spread over several devices (`spread` > 1), each step runs under
`jax.shard_map`: every device steps its own shard and nothing else. Left to XLA's automatic
partitioning, the CPU's embedding-bag kernel (a custom call XLA cannot partition) made every
device gather all shards' kernels and compute every shard's bag, keeping its own slice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, PartitionSpec

from imdb_jax.train.device_data import DeviceReviews, gather_batch
from imdb_jax.train.programs import stored_jit
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

# The mesh axis the fused state's leading shard axis is spread over.
VARIANT_AXIS = "variants"


def device_spread(state: Any) -> int:
    """How many devices the leading shard axis of `state` (a `FusedState` of concrete arrays) is
    spread over: the size of its mesh axis, or 1 (one device, or not a concrete array)."""
    sharding = getattr(state.alive, "sharding", None)
    spec = getattr(sharding, "spec", None)
    if not spec or spec[0] != VARIANT_AXIS:
        return 1
    return int(sharding.mesh.shape[VARIANT_AXIS])  # pyright: ignore[reportOptionalMemberAccess]


def per_device(step: Callable, spread: int) -> Callable:
    """`step(state, batch)` (state leaves with a leading shard axis, the batch shared) run by
    each of `spread` devices on its own shards (`jax.shard_map`); `step` itself for 1."""
    if spread == 1:
        return step
    mesh = AbstractMesh((spread,), (VARIANT_AXIS,))
    # No replication checks (`check_vma`): the bag kernel's custom call does not say which of
    # its values vary by device, and every output here is per shard anyway.
    return jax.shard_map(
        step,
        mesh=mesh,
        in_specs=(PartitionSpec(VARIANT_AXIS), PartitionSpec()),
        out_specs=PartitionSpec(VARIANT_AXIS),
        check_vma=False,
    )


def _add(total, part):
    return jax.tree_util.tree_map(jnp.add, total, part)


def _zero_sums(state: FusedState) -> dict[str, jax.Array]:
    shards, slots = state.alive.shape
    zeros = jnp.zeros((shards, slots), jnp.float32)
    return {"loss_sum": zeros, "cross_entropy_sum": zeros, "correct": zeros, "count": jnp.zeros((shards,), jnp.float32)}


def keep_finite(before: FusedState, after: FusedState, loss_sum: jax.Array) -> FusedState:
    """End of an epoch for one shard: a variant whose epoch loss or new weights are not finite
    (or that diverged earlier) goes back to its state at the start of the epoch, its last finite
    weights, and is marked dead; a variant that early stopping stopped goes back too (its
    weights stay those it stopped with). Checked once per epoch, not per step."""
    finite = finite_slots(after, loss_sum)
    keep = before.alive & before.training & finite
    return after.replace(  # pyright: ignore[reportAttributeAccessIssue]
        params=select_slots(keep, after.params, before.params, after.layout),
        opt_state=after.opt_state._replace(
            nu=select_slots(keep, after.opt_state.nu, before.opt_state.nu, after.layout)
        ),
        alive=before.alive & (finite | ~before.training),
    )


@stored_jit(static_argnames=("capacity", "spread"), donate_argnums=(0,))
def train_epoch(state: FusedState, data: DeviceReviews, rows: jax.Array, *, capacity: tuple[int, int], spread: int = 1):
    """One epoch: `fused_train_step` on each batch of `rows` (int32[num_batches, batch]) in
    turn, metric sums accumulated step by step, then divergence containment.

    Args:
      spread: the devices the shard axis is spread over (`device_spread(state)`).

    Returns:
      The new state and {"loss_sum": [shards, slots], "correct": ..., "count": [shards]}.
    """
    step = per_device(jax.vmap(fused_train_step, in_axes=(0, None)), spread)

    def body(carry, batch_rows):
        state, sums = carry
        state, batch_sums = step(state, gather_batch(data, batch_rows, capacity))
        return (state, _add(sums, batch_sums)), None

    (after, sums), _ = jax.lax.scan(body, (state, _zero_sums(state)), rows)
    return jax.vmap(keep_finite)(state, after, sums["loss_sum"]), sums


@stored_jit
def keep_best(state: FusedState, improved: jax.Array) -> FusedState:
    """`best_params` takes each variant's current weights where `improved` (bool[shards,
    slots]) says its validation loss is the lowest so far."""
    select = jax.vmap(lambda keep, new, old: select_slots(keep, new, old, state.layout))
    return state.replace(best_params=select(improved, state.params, state.best_params))  # pyright: ignore[reportAttributeAccessIssue]


# ---------------------------------------------------------------------------------------------
# Scoring: one scan over a split's batches, for any step (fused or one model).


@stored_jit(static_argnames=("metrics", "capacity", "spread"))
def sum_over_batches(
    metrics: Callable, state: Any, data: DeviceReviews, rows: jax.Array, *, capacity: tuple[int, int], spread: int = 1
):
    """The metric sums of `metrics(state, batch)` added over every batch of `rows` (`metrics`
    run `per_device` over `spread` devices)."""
    metrics = per_device(metrics, spread)

    def batch(batch_rows):
        return gather_batch(data, batch_rows, capacity)

    shapes = jax.eval_shape(metrics, state, batch(rows[0]))
    zeros = jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)

    def body(sums, batch_rows):
        return _add(sums, metrics(state, batch(batch_rows))), None

    return jax.lax.scan(body, zeros, rows)[0]


@stored_jit(static_argnames=("logits", "capacity", "spread"))
def map_over_batches(
    logits: Callable, state: Any, data: DeviceReviews, rows: jax.Array, *, capacity: tuple[int, int], spread: int = 1
):
    """`logits(state, inputs)` of every batch of `rows`, stacked on a leading batch axis
    (`logits` run `per_device` over `spread` devices)."""
    logits = per_device(logits, spread)

    def body(_, batch_rows):
        return None, logits(state, gather_batch(data, batch_rows, capacity)["inputs"])

    return jax.lax.scan(body, None, rows)[1]


# The fused steps of every device shard (each state leaf has a leading shard axis). Named
# module-level functions: the program store keys a static function by its module and name.
def _sharded_eval(state: FusedState, batch: dict[str, Any]) -> dict[str, jax.Array]:
    return jax.vmap(fused_eval_step, in_axes=(0, None))(state, batch)


def _sharded_predict(state: FusedState, inputs: Any) -> jax.Array:
    return jax.vmap(fused_predict, in_axes=(0, None))(state, inputs)


def eval_epoch(state: FusedState, data: DeviceReviews, rows: jax.Array, *, capacity: tuple[int, int]):
    """Per-variant metric sums {"loss_sum": [shards, slots], ...} over every batch, no dropout."""
    return sum_over_batches(_sharded_eval, state, data, rows, capacity=capacity, spread=device_spread(state))


def logits_epoch(state: FusedState, data: DeviceReviews, rows: jax.Array, *, capacity: tuple[int, int]):
    """float32[num_batches, shards, slots, batch] logits of every fused variant, no dropout."""
    return map_over_batches(_sharded_predict, state, data, rows, capacity=capacity, spread=device_spread(state))


def score_epoch(state: TrainState, data: DeviceReviews, rows: jax.Array, *, capacity: tuple[int, int]):
    """One model's `eval_step` metric sums over every batch."""
    return sum_over_batches(eval_step, state, data, rows, capacity=capacity)


def predict_epoch(state: TrainState, data: DeviceReviews, rows: jax.Array, *, capacity: tuple[int, int]):
    """One model's logits of every batch, stacked on a leading batch axis."""
    return map_over_batches(predict_logits, state, data, rows, capacity=capacity)
