"""The training loop: whole epochs as compiled scans of the fused step over on-device batches.

`fit` trains one model and `imdb_jax.train.variants.fit_variants` many; both run the same compiled
epoch (`fit` is a study of one), so a variant trained alone and the same variant among others
agree bitwise. An epoch is one jit-compiled `lax.scan` of `fused_train_step` over the epoch's
batches (cut from the CSR arrays on the device, in an order shuffled on the device), so no
Python runs per step; the padded last batch keeps one shape, so there is one compilation per
run shape. The variant axis can be spread over devices: every leaf of the state then carries a
leading shard axis, sharded over a mesh. A variant whose loss or weights stop being finite in an
epoch goes back to its weights from before that epoch and is marked diverged; the others go on.
With `EarlyStopping`, a variant that stopped improving keeps its weights from then on (it is
bitwise where it would be had it trained alone and stopped), and the run ends when every variant
has stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from imdb_jax.config import MAX_BATCH_SIZE
from imdb_jax.data.csr import as_xy
from imdb_jax.errors import ImdbJaxError
from imdb_jax.models.dense_head import choose_dense_words
from imdb_jax.progress import progress_bar
from imdb_jax.train import compile_cache
from imdb_jax.train.device_data import (
    DeviceReviews,
    epoch_rows,
    exact_capacity,
    max_batch_nonzeros,
    round_capacity,
    shuffled_capacity,
    to_device,
)
from imdb_jax.train.distributed import gather
from imdb_jax.train.epochs import device_spread, eval_epoch, keep_best, train_epoch
from imdb_jax.train.steps import FusedState


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Keras' `EarlyStopping(monitor="val_loss")`, for every variant on its own.

    At the end of each epoch from `start_from_epoch` on (0-based, as Keras counts), a variant's
    validation loss improves when it is below its best so far by more than `min_delta`; after
    `patience` epochs without improvement the variant stops: its weights stay those of its last
    epoch (`restore_best` / `weights="best"` give its lowest-validation-loss weights, as
    `restore_best_weights=True` does).

    Attributes:
      patience: epochs without improvement before a variant stops (Keras allows 0: a variant
        then stops at its first epoch without improvement).
      min_delta: the smallest decrease that counts as an improvement.
      start_from_epoch: epochs not monitored at the start.
    """

    patience: int
    min_delta: float = 0.0
    start_from_epoch: int = 0

    def __post_init__(self):
        for name in ("patience", "start_from_epoch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ImdbJaxError(f"{name} must be a non-negative integer, got {value!r}")
        delta = self.min_delta
        if (
            isinstance(delta, bool)
            or not isinstance(delta, (int, float, np.floating))
            or not (math.isfinite(delta) and delta >= 0)
        ):
            raise ImdbJaxError(f"min_delta must be a non-negative number, got {delta!r}")

    def training(self, records: list[dict[str, Any]]) -> np.ndarray:
        """bool[shards, slots]: which variants still train after the epochs in `records` (a
        replay of every epoch's decision, so a resumed run decides as an uninterrupted one)."""
        shape = np.asarray(records[0]["alive"]).shape
        best = np.full(shape, np.inf)
        wait = np.zeros(shape, np.int64)
        training = np.ones(shape, bool)
        for epoch, record in enumerate(records):
            if record["val"] is None or epoch < self.start_from_epoch:
                continue
            loss = _val_loss(record)
            wait = np.where(training, wait + 1, wait)
            improved = training & (loss + self.min_delta < best)
            best = np.where(improved, loss, best)
            wait = np.where(improved, 0, wait)
            stop = training & ~improved & (wait >= self.patience) & (epoch > 0)
            training = training & ~stop
        return training


# ---------------------------------------------------------------------------------------------
# Host-side driving.


def fetch(tree: Any) -> Any:
    """Device arrays → host NumPy, for records, checkpoints and results (the one place a run's
    numbers leave the devices). `jax.device_get` in one process; across processes
    (`imdb_jax.train.distributed`) every process gets every shard, so all must call it together."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return gather(tree)


class EpochPlan:
    """Batch layout and capacities of one split, with the one-off capacity growth check."""

    def __init__(self, data: DeviceReviews, batch_size: int, shuffle: bool):
        self.data = data
        self.batch_size = batch_size
        # Only the split's own rows are shuffled and batched, never its bucket padding, so a
        # bucketed split gives the batches (and numbers) of the same split at its exact size.
        self.reviews = int(data.real_rows)
        if shuffle:
            self.capacity = shuffled_capacity(data, batch_size, self.reviews)
        else:
            self.rows = epoch_rows(self.reviews, batch_size)
            self.capacity = exact_capacity(data, self.rows)

    def shuffled_rows(self, key: jax.Array, epoch: int) -> jax.Array:
        rows = epoch_rows(self.reviews, self.batch_size, key, epoch)
        needed = [int(count) for count in max_batch_nonzeros(self.data, rows)]
        if any(count > capacity for count, capacity in zip(needed, self.capacity)):
            # Rare: grow once, at the cost of one recompilation.
            self.capacity = tuple(
                max(capacity, round_capacity(int(count * 1.05))) for count, capacity in zip(needed, self.capacity)
            )
        return rows


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ImdbJaxError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > MAX_BATCH_SIZE:
        raise ImdbJaxError(f"batch_size must be at most {MAX_BATCH_SIZE:,}, got {batch_size:,}")
    return int(batch_size)


def run_epochs(
    state: FusedState,
    train: DeviceReviews,
    validation: DeviceReviews | None,
    *,
    epochs: int,
    batch_size: int,
    shuffle_seed: int,
    records: list[dict[str, Any]] | None = None,
    progress: bool = True,
    description: str = "train",
    describe: Callable[[dict[str, Any]], str] | None = None,
    on_epoch_end: Callable[[int, FusedState, dict[str, Any]], None] | None = None,
    early_stopping: EarlyStopping | None = None,
) -> tuple[FusedState, list[dict[str, Any]]]:
    """Drives the epochs after `records` (those already done, when resuming) up to `epochs` and
    returns the state and every epoch's record.

    Epoch `e` is shuffled with `fold_in(key(shuffle_seed), e)`, so a run resumed at an epoch
    boundary sees the same batches as one that never stopped. With validation and a state that
    keeps `best_params`, each variant's weights at its lowest validation loss so far (strictly
    lower than every earlier epoch's) are kept.

    Each record holds host NumPy copies: {"train": sums, "val": sums or None, "alive":
    bool[shards, slots], "train_s": seconds of the training epoch, "val_s": seconds of the
    validation pass} (times include any compilation, and stop after the results are on the
    host); with `early_stopping`, also "training": bool[shards, slots], which variants go on
    after this epoch; the loop ends early when none does. `on_epoch_end(epochs_done, state,
    record)` is called after each epoch: the timing and checkpointing hook.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs <= 0:
        raise ImdbJaxError(f"epochs must be a positive integer, got {epochs!r}")
    check_batch_size(batch_size)
    train_plan = EpochPlan(train, batch_size, shuffle=True)
    val_plan = None if validation is None else EpochPlan(validation, batch_size, shuffle=False)
    shuffle_key = jax.random.key(shuffle_seed)
    records = list(records or [])
    start_epoch = len(records)
    best_loss = None
    for record in records:
        if record["val"] is not None:  # a run without validation has no best loss to replay
            best_loss = _lowest(best_loss, record)
    if early_stopping is not None and validation is None:
        raise ImdbJaxError("early stopping needs validation data")
    if early_stopping is not None and records and not np.any(records[-1]["training"] & records[-1]["alive"]):
        return state, records
    bar = progress_bar(
        range(start_epoch, epochs), desc=description, unit="epoch", enabled=progress, initial=start_epoch, total=epochs
    )
    for epoch in bar:
        started = time.perf_counter()
        rows = train_plan.shuffled_rows(shuffle_key, epoch)
        state, train_sums = train_epoch(state, train, rows, capacity=train_plan.capacity, spread=device_spread(state))
        record = {"train": fetch(train_sums), "alive": fetch(state.alive), "val": None, "val_s": 0.0}
        record["train_s"] = time.perf_counter() - started
        if val_plan is not None:
            started = time.perf_counter()
            record["val"] = fetch(eval_epoch(state, validation, val_plan.rows, capacity=val_plan.capacity))  # pyright: ignore[reportArgumentType]
            if state.best_params is not None:
                previous, best_loss = best_loss, _lowest(best_loss, record)
                state = keep_best(state, best_loss < (np.inf if previous is None else previous))
            record["val_s"] = time.perf_counter() - started
        if early_stopping is not None:
            record["training"] = early_stopping.training([*records, record])
            state = state.replace(training=_like(state.training, record["training"]))  # pyright: ignore[reportAttributeAccessIssue]
        records.append(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, state, record)
        if describe is not None and progress:
            bar.set_postfix_str(describe(record))
        if early_stopping is not None and not np.any(record["training"] & record["alive"]):
            break
    bar.close()
    return state, records


def _val_loss(record: dict[str, Any]) -> np.ndarray:
    """float64[shards, slots]: each variant's validation loss in `record` (inf where diverged)."""
    sums = record["val"]
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = _ratio(sums["loss_sum"], np.asarray(sums["count"])[:, None])
    return np.where(np.asarray(record["alive"], bool) & np.isfinite(loss), loss, np.inf)


def _lowest(best: np.ndarray | None, record: dict[str, Any]) -> np.ndarray:
    """float64[shards, slots]: the lowest validation loss so far, counting this record (NaN,
    i.e. a diverged epoch, never counts)."""
    loss = _val_loss(record)
    return loss if best is None else np.minimum(best, loss)


def _like(template: jax.Array, values: np.ndarray) -> jax.Array:
    """Host values as a device array placed like `template` (sharded over the same devices)."""
    return jax.device_put(np.asarray(values, template.dtype), template.sharding)


def _ratio(numerator, count):
    return np.asarray(numerator, np.float64) / np.maximum(np.asarray(count, np.float64), 1.0)


def history_from_records(records: list[dict[str, Any]], shard: int, slot: int) -> dict[str, list]:
    """Keras-style history (one value per epoch) of the variant at (`shard`, `slot`).

    Returns:
      {"loss", "accuracy", ["val_loss", "val_accuracy", "val_cross_entropy" (val_loss without
      the penalty)], "diverged"}; values of diverged epochs are NaN. A variant stopped early has
      the epochs it trained only.
    """
    history: dict[str, list] = {key: [] for key in ("loss", "accuracy", "diverged")}
    has_val = bool(records) and records[0]["val"] is not None
    if has_val:
        history.update(val_loss=[], val_accuracy=[])
    records = records[: stopped_epoch(records, shard, slot) or len(records)]
    for record in records:
        diverged = not bool(record["alive"][shard, slot])
        history["diverged"].append(diverged)
        parts = [("", record["train"])] + ([("val_", record["val"])] if has_val else [])
        for prefix, sums in parts:
            loss = float(_ratio(sums["loss_sum"][shard, slot], sums["count"][shard]))
            accuracy = float(_ratio(sums["correct"][shard, slot], sums["count"][shard]))
            history[prefix + "loss"].append(math.nan if diverged else loss)
            history[prefix + "accuracy"].append(math.nan if diverged else accuracy)
            if prefix == "val_" and "cross_entropy_sum" in sums:  # the loss without the penalty
                cross_entropy = float(_ratio(sums["cross_entropy_sum"][shard, slot], sums["count"][shard]))
                history.setdefault("val_cross_entropy", []).append(math.nan if diverged else cross_entropy)
    return history


def stopped_epoch(records: list[dict[str, Any]], shard: int, slot: int) -> int | None:
    """The 1-based epoch after which early stopping stopped the variant, or None."""
    for epoch, record in enumerate(records, start=1):
        if "training" in record and not bool(record["training"][shard, slot]):
            return epoch
    return None


def device_splits(train: Any, validation: Any, first_layer: str | int) -> tuple[DeviceReviews, DeviceReviews | None]:
    """Both splits on the device, cut into dense head and sparse tail at the same column (chosen
    from the training data and the backend only).

    Each split's arrays are padded to a bucketed number of rows and non-zeros (`to_device`'s
    `bucket_sizes`), so that splits of nearly equal sizes (the folds of a cross-validation:
    16,666 and 16,667 reviews) share their compiled epochs instead of compiling one each; the
    padding is never batched (`EpochPlan`), so the numbers are those of the exact sizes.
    """
    compile_cache.enable()
    train_x, train_y = as_xy(train)
    dense_words = choose_dense_words(first_layer, train_x)
    train_data = to_device((train_x, train_y), dense_words, bucket_sizes=1)
    val_data = None
    if validation is not None:
        val_data = to_device(validation, dense_words, bucket_sizes=1)
        if val_data.num_words != train_data.num_words:
            raise ImdbJaxError(f"train has {train_data.num_words} word columns but validation has {val_data.num_words}")
    return train_data, val_data


# ---------------------------------------------------------------------------------------------
# Scoring one trained model with the Flax MLP.
