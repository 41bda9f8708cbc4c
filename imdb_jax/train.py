"""The training loop: whole epochs as compiled scans over on-device batches.

`fit` trains one model; `imdb_jax.variants.fit_variants` trains many with the same machinery.
An epoch is one jit-compiled `lax.scan` of the pure `train_step` over the epoch's batches
(shuffled on the device), so no Python runs per step, and the padded last batch keeps one shape:
one compilation per run shape, never one per batch or epoch. A model whose loss or weights stop
being finite in an epoch goes back to its weights from before that epoch (its last finite ones)
and is marked diverged from that epoch on; the run goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from imdb_jax.config import ModelConfig
from imdb_jax.device_data import (
    DeviceReviews,
    epoch_rows,
    gather_batch,
    max_batch_nonzeros,
    as_xy,
    checked_csr,
    exact_capacity,
    round_capacity,
    shuffled_capacity,
    to_device,
)
from imdb_jax.errors import ImdbJaxError
from imdb_jax.steps import TrainState, create_train_state, eval_step, predict_logits, train_step

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
FIRST_LAYERS = ("auto", "sparse", "dense")


# ---------------------------------------------------------------------------------------------
# Steps over carries. The carry of one model is (state, alive, dropout_key); a group of stacked
# variants has the same structure with a leading variant axis on every leaf.


def _all_finite(tree: Any) -> jax.Array:
    return jnp.isfinite(sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(tree)))


def model_step(carry, batch):
    """`train_step` on one model's carry; the dropout key is folded with the step number."""
    state, alive, dropout_key = carry
    state, metrics = train_step(state, batch, jax.random.fold_in(dropout_key, state.step))
    return (state, alive, dropout_key), metrics


def keep_finite(before, after, metrics):
    """End-of-epoch divergence containment for one model.

    A model whose epoch loss or new weights are not finite (or that diverged earlier) goes back
    to its state at the start of the epoch — its last finite weights — and is marked dead.
    Checking once per epoch instead of once per step keeps the steps themselves plain.
    """
    old_state, alive, dropout_key = before
    new_state = after[0]
    keep = alive & jnp.isfinite(metrics["loss_sum"]) & _all_finite(new_state.params)
    state = jax.tree_util.tree_map(lambda new, old: jnp.where(keep, new, old), new_state, old_state)
    return state, keep, dropout_key


def variants_step(carries, batch):
    """`model_step` over groups of stacked variants, one `vmap` per group; every group and
    variant sees the same batch."""
    step = jax.vmap(model_step, in_axes=(0, None))
    results = [step(carry, batch) for carry in carries]
    return tuple(carry for carry, _ in results), tuple(metrics for _, metrics in results)


def variants_keep_finite(before, after, metrics):
    return tuple(jax.vmap(keep_finite)(*group) for group in zip(before, after, metrics))


def _first(carry):
    return carry[0]


def _group_states(carries):
    return tuple(carry[0] for carry in carries)


def variants_eval_step(states, batch):
    return tuple(jax.vmap(eval_step, in_axes=(0, None))(state, batch) for state in states)


def variants_predict(states, inputs):
    return tuple(jax.vmap(predict_logits, in_axes=(0, None))(state, inputs) for state in states)


@dataclasses.dataclass(frozen=True)
class Stepper:
    """How a compiled epoch treats its carry: one model (`MODEL`) or groups of variants
    (`VARIANTS`). Hashable, so it is a static argument of the compiled epochs."""

    step: Callable
    keep_finite: Callable
    states: Callable
    evaluate: Callable
    predict: Callable


MODEL = Stepper(model_step, keep_finite, _first, eval_step, predict_logits)
VARIANTS = Stepper(variants_step, variants_keep_finite, _group_states, variants_eval_step, variants_predict)


# ---------------------------------------------------------------------------------------------
# Compiled epochs.


def _sum_over_batches(metrics):
    return jax.tree_util.tree_map(lambda value: jnp.sum(value, axis=0), metrics)


@functools.partial(jax.jit, static_argnames=("stepper", "capacity"), donate_argnums=(0,))
def train_epoch(carry, data: DeviceReviews, rows: jax.Array, *, stepper: Stepper, capacity: tuple[int, int]):
    """One epoch: `stepper.step` on each batch of `rows` (int32[num_batches, batch]) in turn,
    then `stepper.keep_finite`.

    Returns the final carry and the epoch's metric sums.
    """

    def body(carry, batch_rows):
        return stepper.step(carry, gather_batch(data, batch_rows, capacity))

    after, metrics = jax.lax.scan(body, carry, rows)
    metrics = _sum_over_batches(metrics)
    return stepper.keep_finite(carry, after, metrics), metrics


@functools.partial(jax.jit, static_argnames=("evaluate", "capacity"))
def eval_epoch(states, data: DeviceReviews, rows: jax.Array, *, evaluate: Callable, capacity: tuple[int, int]):
    """Metric sums of `evaluate(states, batch)` over every batch of `rows`."""

    def body(_, batch_rows):
        return None, evaluate(states, gather_batch(data, batch_rows, capacity))

    _, metrics = jax.lax.scan(body, None, rows)
    return _sum_over_batches(metrics)


@functools.partial(jax.jit, static_argnames=("predict", "capacity"))
def predict_epoch(states, data: DeviceReviews, rows: jax.Array, *, predict: Callable, capacity: tuple[int, int]):
    """Logits of `predict(states, inputs)` for every batch, stacked on a leading batch axis."""

    def body(_, batch_rows):
        return None, predict(states, gather_batch(data, batch_rows, capacity)["inputs"])

    _, logits = jax.lax.scan(body, None, rows)
    return logits


# ---------------------------------------------------------------------------------------------
# Host-side driving.


# Costs of the first layer, fitted to epoch timings of XLA on CPU (2 cores; 1 and 64 variants
# of 16-16, 0 / 1,051 / 3,000 dense columns; benchmarks/README.md). Unit: one tail word of one
# review through one hidden unit (its gather forward and scatter-add backward). A dense column
# costs SPARSE_TO_DENSE_COST of that per unit (its share of the matmuls), plus
# HEAD_COLUMN_COST per column whatever the width (building the dense head of each batch).
SPARSE_TO_DENSE_COST = 0.012
HEAD_COLUMN_COST = 2.0


def choose_dense_words(first_layer: str | int, x: Any, width: int = 16) -> int:
    """How many leading (most frequent) columns the first layer multiplies densely.

    Args:
      first_layer: "dense" (all columns: densify every batch), "sparse" (none: embedding bag),
        "auto" (the split minimising estimated cost), or an explicit column count.
      x: the training CSR matrix (columns ordered most frequent first, as `load_imdb` makes
        them).
      width: first-layer units trained together (all variants' together in `fit_variants`).

    "auto" minimises, per review, `width * (SPARSE_TO_DENSE_COST * dense_words + tail_words)
    + HEAD_COLUMN_COST * dense_words`, `tail_words` being the expected number of a review's words
    beyond the head: a column goes dense when it is in more than `SPARSE_TO_DENSE_COST +
    HEAD_COLUMN_COST / width` of the reviews. Narrow models stay (nearly) all sparse; wide
    studies multiply the frequent words densely.
    """
    x = checked_csr(x)
    num_words = x.shape[1]
    if isinstance(first_layer, (int, np.integer)) and not isinstance(first_layer, bool):
        if not 0 <= first_layer <= num_words:
            raise ImdbJaxError(f"first_layer as a column count must be in [0, {num_words}], got {first_layer}")
        return int(first_layer)
    if first_layer not in FIRST_LAYERS:
        raise ImdbJaxError(f"first_layer must be one of {', '.join(FIRST_LAYERS)} or a column count, got {first_layer!r}")
    if first_layer != "auto":
        return num_words if first_layer == "dense" else 0
    review_share = np.bincount(x.indices, minlength=num_words) / x.shape[0]
    tail_words = review_share.sum() - np.concatenate([[0.0], np.cumsum(review_share)])
    columns = np.arange(num_words + 1)
    cost = max(width, 1) * (SPARSE_TO_DENSE_COST * columns + tail_words) + HEAD_COLUMN_COST * columns
    return int(np.argmin(cost))


class _EpochPlan:
    """Batch layout and capacities of one split, with the one-off capacity growth check."""

    def __init__(self, data: DeviceReviews, batch_size: int, shuffle: bool):
        self.data = data
        self.batch_size = batch_size
        if shuffle:
            self.capacity = shuffled_capacity(data, batch_size)
        else:
            self.rows = epoch_rows(data.num_rows, batch_size)
            self.capacity = exact_capacity(data, self.rows)

    def shuffled_rows(self, key: jax.Array) -> jax.Array:
        rows = epoch_rows(self.data.num_rows, self.batch_size, key)
        needed = [int(count) for count in max_batch_nonzeros(self.data, rows)]
        if any(count > capacity for count, capacity in zip(needed, self.capacity)):
            # Rare: grow once, at the cost of one recompilation.
            self.capacity = tuple(
                max(capacity, round_capacity(int(count * 1.05))) for count, capacity in zip(needed, self.capacity)
            )
        return rows


def _alive(carry, stepper: Stepper):
    return carry[1] if stepper is MODEL else tuple(group[1] for group in carry)


def run_epochs(
    carry: Any,
    train: DeviceReviews,
    validation: DeviceReviews | None,
    *,
    epochs: int,
    batch_size: int,
    shuffle_seed: int,
    stepper: Stepper,
    progress: bool,
    description: str,
    on_epoch: Callable[[int, Any, Any], str] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Drives `epochs` compiled epochs and returns the carry and per-epoch raw metrics.

    Each entry of the returned list holds device-fetched numpy metric sums: {"train", "val",
    "alive"}, in the structure `step` / `evaluate` produce.
    """
    if epochs <= 0:
        raise ImdbJaxError(f"epochs must be a positive integer, got {epochs}")
    if batch_size <= 0:
        raise ImdbJaxError(f"batch_size must be a positive integer, got {batch_size}")
    train_plan = _EpochPlan(train, batch_size, shuffle=True)
    val_plan = None if validation is None else _EpochPlan(validation, batch_size, shuffle=False)
    shuffle_key = jax.random.key(shuffle_seed)
    records = []
    bar = tqdm(range(epochs), desc=description, unit="epoch", disable=not progress, file=sys.stderr, leave=True)
    for epoch in bar:
        rows = train_plan.shuffled_rows(jax.random.fold_in(shuffle_key, epoch))
        carry, train_metrics = train_epoch(carry, train, rows, stepper=stepper, capacity=train_plan.capacity)
        record = {"train": jax.device_get(train_metrics), "alive": jax.device_get(_alive(carry, stepper)), "val": None}
        if val_plan is not None:
            val_metrics = eval_epoch(
                stepper.states(carry), validation, val_plan.rows, evaluate=stepper.evaluate, capacity=val_plan.capacity
            )
            record["val"] = jax.device_get(val_metrics)
        records.append(record)
        if on_epoch is not None and progress:
            bar.set_postfix_str(on_epoch(epoch, record, carry))
    bar.close()
    return carry, records


def _ratio(numerator, count):
    return np.asarray(numerator, np.float64) / np.maximum(np.asarray(count, np.float64), 1.0)


def history_from_records(records: list[dict[str, Any]], select: Callable[[Any], Any] = lambda tree: tree) -> dict[str, list]:
    """Keras-style history (one value per epoch) for one model.

    Args:
      records: `run_epochs` output.
      select: picks one model's metrics out of each record's structure.

    Returns:
      {"loss", "accuracy", ["val_loss", "val_accuracy"], "diverged"}; values of diverged epochs
      are NaN.
    """
    history: dict[str, list] = {key: [] for key in ("loss", "accuracy", "diverged")}
    has_val = records[0]["val"] is not None
    if has_val:
        history.update(val_loss=[], val_accuracy=[])
    for record in records:
        diverged = not bool(select(record["alive"]))
        history["diverged"].append(diverged)
        parts = [("", record["train"])] + ([("val_", record["val"])] if has_val else [])
        for prefix, sums in parts:
            sums = select(sums)
            loss = float(_ratio(sums["loss_sum"], sums["count"]))
            accuracy = float(_ratio(sums["correct"], sums["count"]))
            history[prefix + "loss"].append(math.nan if diverged else loss)
            history[prefix + "accuracy"].append(math.nan if diverged else accuracy)
    return history


def _describe_single(epoch, record, carry):
    del epoch, carry
    parts = [("loss", record["train"])] + ([("val_loss", record["val"])] if record["val"] is not None else [])
    text = " ".join(f"{name}={float(_ratio(sums['loss_sum'], sums['count'])):.4f}" for name, sums in parts)
    return text + ("" if bool(record["alive"]) else " DIVERGED")


def device_splits(
    train: Any, validation: Any, first_layer: str | int, width: int
) -> tuple[DeviceReviews, DeviceReviews | None]:
    """Both splits on the device, cut into dense head and sparse tail at the same column.

    Args:
      width: first-layer units trained together (see `choose_dense_words`).
    """
    train_x, train_y = as_xy(train)
    dense_words = choose_dense_words(first_layer, train_x, width)
    train_data = to_device((train_x, train_y), dense_words)
    val_data = None
    if validation is not None:
        val_data = to_device(validation, dense_words)
        if val_data.num_words != train_data.num_words:
            raise ImdbJaxError(f"train has {train_data.num_words} word columns but validation has {val_data.num_words}")
    return train_data, val_data


def fit(
    config: ModelConfig,
    train: Any,
    validation: Any = None,
    *,
    epochs: int = 4,
    batch_size: int = 512,
    seed: int = 0,
    shuffle_seed: int | None = None,
    first_layer: str | int = "auto",
    progress: bool = True,
) -> tuple[TrainState, dict[str, list]]:
    """Trains one model like Keras' `model.fit(..., shuffle=True)`.

    Args:
      config: the model; `config.num_words` must match the data's columns.
      train: a `Split` (or `(x_csr, y)`) of training reviews.
      validation: optional split scored after every epoch.
      epochs: passes over `train`.
      batch_size: reviews per update; the last, shorter batch is kept (padded, weight 0).
      seed: seeds the initial weights and dropout.
      shuffle_seed: seeds the per-epoch shuffling; defaults to `seed`. `fit_variants` shares one
        shuffle across variants, so pass its `shuffle_seed` here to reproduce a variant.
      first_layer: how the first layer meets the multi-hot rows: "dense" (densify each batch),
        "sparse" (embedding bag), "auto" (dense for frequent words, sparse for rare ones, split
        by estimated cost) or a number of leading columns to treat densely. Results agree to
        float32 rounding.
      progress: show a progress bar with the running losses.

    Returns:
      The trained state and the history: {"loss", "accuracy", "val_loss", "val_accuracy",
      "diverged"}, one value per epoch, training figures including the penalty like Keras.
    """
    train_data, val_data = device_splits(train, validation, first_layer, config.hidden_units[0])
    if train_data.num_words != config.num_words:
        raise ImdbJaxError(f"the data has {train_data.num_words} word columns but the model expects num_words={config.num_words}")
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    carry = (create_train_state(init_key, config), jnp.asarray(True), dropout_key)
    carry, records = run_epochs(
        carry,
        train_data,
        val_data,
        epochs=epochs,
        batch_size=batch_size,
        shuffle_seed=seed if shuffle_seed is None else shuffle_seed,
        stepper=MODEL,
        progress=progress,
        description="fit",
        on_epoch=_describe_single,
    )
    history = history_from_records(records)
    if any(history["diverged"]):
        epoch = history["diverged"].index(True) + 1
        print(f"warning: training diverged in epoch {epoch}; the state holds the last finite weights", file=sys.stderr)
    return carry[0], history


def _scoring_data(state: TrainState, x: Any, first_layer: str | int) -> sp.csr_matrix:
    del first_layer  # validated by choose_dense_words
    x = checked_csr(x)
    num_words = state.params["hidden_0"]["kernel"].shape[-2]
    if x.shape[1] != num_words:
        raise ImdbJaxError(f"the data has {x.shape[1]} word columns but the model expects {num_words}")
    return x


# Below this many reviews "auto" scores with the all-sparse first layer: its choice then does not
# depend on the input, so small scoring calls share one compiled program.
AUTO_SCORING_MIN_ROWS = 4096


def _scoring_dense_words(first_layer: str | int, x: sp.csr_matrix, state: TrainState) -> int:
    if first_layer == "auto" and x.shape[0] < AUTO_SCORING_MIN_ROWS:
        return 0
    return choose_dense_words(first_layer, x, state.params["hidden_0"]["kernel"].shape[-1])


def evaluate(state: TrainState, split: Any, *, batch_size: int = 512, first_layer: str | int = "auto") -> dict[str, float]:
    """{"loss", "accuracy"} of a trained model on a labelled split (loss includes the penalty)."""
    x, y = as_xy(split)
    if y is None:
        raise ImdbJaxError("evaluate needs labels: pass a Split or an (x, y) pair")
    _scoring_data(state, x, first_layer)
    data = to_device((x, y), _scoring_dense_words(first_layer, x, state), bucket_sizes=batch_size)
    plan = _EpochPlan(data, batch_size, shuffle=False)
    sums = jax.device_get(eval_epoch(state, data, plan.rows, evaluate=MODEL.evaluate, capacity=plan.capacity))
    return {"loss": float(_ratio(sums["loss_sum"], sums["count"])), "accuracy": float(_ratio(sums["correct"], sums["count"]))}


def predict(state: TrainState, x: Any, *, batch_size: int = 512, first_layer: str | int = "auto") -> np.ndarray:
    """float32[num_reviews] probabilities of a positive review, for CSR multi-hot rows `x`."""
    x = _scoring_data(state, as_xy(x)[0], first_layer)
    data = to_device(x, _scoring_dense_words(first_layer, x, state), bucket_sizes=batch_size)
    plan = _EpochPlan(data, batch_size, shuffle=False)
    logits = predict_epoch(state, data, plan.rows, predict=MODEL.predict, capacity=plan.capacity)
    return np.asarray(jax.nn.sigmoid(logits.reshape(-1)[: x.shape[0]]), np.float32)
