"""The training loop: whole epochs as compiled scans of the fused step over on-device batches.

`fit` trains one model and `imdb_jax.variants.fit_variants` many; both run the same compiled
epoch (`fit` is a study of one), so a variant trained alone and the same variant among others
agree bitwise. An epoch is one jit-compiled `lax.scan` of `fused_train_step` over the epoch's
batches (cut from the CSR arrays on the device, in an order shuffled on the device), so no
Python runs per step; the padded last batch keeps one shape, so there is one compilation per
run shape. The variant axis can be spread over devices: every leaf of the state then carries a
leading shard axis, sharded over a mesh. A variant whose loss or weights stop being finite in an
epoch goes back to its weights from before that epoch and is marked diverged; the others go on.

`evaluate` and `predict` score one trained model (`TrainState`) with the Flax `MLP`.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from imdb_jax import compile_cache
from imdb_jax.config import ModelConfig
from imdb_jax.device_data import (
    DeviceReviews,
    as_xy,
    checked_csr,
    epoch_rows,
    exact_capacity,
    gather_batch,
    max_batch_nonzeros,
    round_capacity,
    shuffled_capacity,
    to_device,
)
from imdb_jax.errors import ImdbJaxError
from imdb_jax.fused import FusedState, finite_slots, fused_eval_step, fused_predict, fused_train_step, select_slots
from imdb_jax.planning import FIRST_LAYERS, choose_dense_words  # noqa: F401  (re-exported)
from imdb_jax.steps import TrainState, eval_step, predict_logits


# Largest batch accepted: beyond it a batch's dense activations alone outgrow any memory.
MAX_BATCH_SIZE = 1 << 20


# ---------------------------------------------------------------------------------------------
# Compiled epochs over fused states (every leaf with a leading shard axis).


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


# ---------------------------------------------------------------------------------------------
# Host-side driving.


def fetch(tree: Any) -> Any:
    """Device arrays → host NumPy, for records, checkpoints and results (the one place a run's
    numbers leave the devices). `jax.device_get` in one process; across processes
    (`imdb_jax.distributed`) every process gets every shard, so all must call it together."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from imdb_jax.distributed import gather

    return gather(tree)


class EpochPlan:
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
    host). `on_epoch_end(epochs_done, state, record)` is called after each epoch: the timing
    and checkpointing hook.
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
        best_loss = _lowest(best_loss, record)
    bar = tqdm(
        range(start_epoch, epochs), desc=description, unit="epoch", disable=not progress, file=sys.stderr, leave=True,
        initial=start_epoch, total=epochs,
    )
    for epoch in bar:
        started = time.perf_counter()
        rows = train_plan.shuffled_rows(jax.random.fold_in(shuffle_key, epoch))
        state, train_sums = train_epoch(state, train, rows, capacity=train_plan.capacity)
        record = {"train": fetch(train_sums), "alive": fetch(state.alive), "val": None, "val_s": 0.0}
        record["train_s"] = time.perf_counter() - started
        if val_plan is not None:
            started = time.perf_counter()
            record["val"] = fetch(eval_epoch(state, validation, val_plan.rows, capacity=val_plan.capacity))
            if state.best_params is not None:
                previous, best_loss = best_loss, _lowest(best_loss, record)
                state = keep_best(state, best_loss < (np.inf if previous is None else previous))
            record["val_s"] = time.perf_counter() - started
        records.append(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, state, record)
        if describe is not None and progress:
            bar.set_postfix_str(describe(record))
    bar.close()
    return state, records


def _lowest(best: np.ndarray | None, record: dict[str, Any]) -> np.ndarray:
    """float64[shards, slots]: the lowest validation loss so far, counting this record (NaN,
    i.e. a diverged epoch, never counts)."""
    sums = record["val"]
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = _ratio(sums["loss_sum"], np.asarray(sums["count"])[:, None])
    loss = np.where(np.asarray(record["alive"], bool) & np.isfinite(loss), loss, np.inf)
    return loss if best is None else np.minimum(best, loss)


def _ratio(numerator, count):
    return np.asarray(numerator, np.float64) / np.maximum(np.asarray(count, np.float64), 1.0)


def history_from_records(records: list[dict[str, Any]], shard: int, slot: int) -> dict[str, list]:
    """Keras-style history (one value per epoch) of the variant at (`shard`, `slot`).

    Returns:
      {"loss", "accuracy", ["val_loss", "val_accuracy"], "diverged"}; values of diverged epochs
      are NaN.
    """
    history: dict[str, list] = {key: [] for key in ("loss", "accuracy", "diverged")}
    has_val = bool(records) and records[0]["val"] is not None
    if has_val:
        history.update(val_loss=[], val_accuracy=[])
    for record in records:
        diverged = not bool(record["alive"][shard, slot])
        history["diverged"].append(diverged)
        parts = [("", record["train"])] + ([("val_", record["val"])] if has_val else [])
        for prefix, sums in parts:
            loss = float(_ratio(sums["loss_sum"][shard, slot], sums["count"][shard]))
            accuracy = float(_ratio(sums["correct"][shard, slot], sums["count"][shard]))
            history[prefix + "loss"].append(math.nan if diverged else loss)
            history[prefix + "accuracy"].append(math.nan if diverged else accuracy)
    return history


def device_splits(train: Any, validation: Any, first_layer: str | int) -> tuple[DeviceReviews, DeviceReviews | None]:
    """Both splits on the device, cut into dense head and sparse tail at the same column (chosen
    from the training data and the backend only)."""
    compile_cache.enable()
    train_x, train_y = as_xy(train)
    dense_words = choose_dense_words(first_layer, train_x)
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
    restore_best: bool = False,
    checkpoint_dir: Any = None,
    resume: bool = False,
) -> tuple[TrainState, dict[str, list]]:
    """Trains one model like Keras' `model.fit(..., shuffle=True)`.

    It is `fit_variants` with one variant, so a model trained here and the same model trained
    among other variants (same seed and `shuffle_seed`) are bitwise identical.

    Args:
      config: the model; `config.num_words` must match the data's columns.
      train: a `Split` (or `(x_csr, y)`) of training reviews.
      validation: optional split scored after every epoch.
      epochs: passes over `train`.
      batch_size: reviews per update; the last, shorter batch is kept (padded, weight 0).
      seed: seeds the initial weights and dropout.
      shuffle_seed: seeds the per-epoch shuffling; defaults to `seed`. `fit_variants` shares one
        shuffle across variants, so pass its `shuffle_seed` here to reproduce a variant.
      first_layer: "sparse" (embedding bag), "dense" (densify each batch), "auto" (the
        backend's choice, see `imdb_jax.planning`) or a number of leading columns to multiply
        densely. Results agree to float32 rounding.
      progress: show a progress bar with the running losses.
      restore_best: return the weights of the epoch with the lowest validation loss (Keras'
        `EarlyStopping(restore_best_weights=True)`); default False: the last epoch's weights.
      checkpoint_dir, resume: save the run after every epoch / continue a killed run, as in
        `fit_variants`.

    Returns:
      The trained state (the last epoch's weights unless `restore_best`) and the history: {"loss", "accuracy",
      "val_loss", "val_accuracy", "diverged"}, one value per epoch, training figures including
      the penalty like Keras.
    """
    from imdb_jax.specs import VariantSpec
    from imdb_jax.variants import fit_variants

    if restore_best and validation is None:
        raise ImdbJaxError("restore_best needs validation data")
    spec = VariantSpec.from_config(config, seed)
    columns = getattr(as_xy(train)[0], "shape", (0, config.num_words))[-1]
    if columns != config.num_words:
        raise ImdbJaxError(f"the data has {columns} word columns but the model expects num_words={config.num_words}")
    result = fit_variants(
        [spec],
        train,
        validation,
        epochs=epochs,
        batch_size=batch_size,
        shuffle_seed=seed if shuffle_seed is None else shuffle_seed,
        first_layer=first_layer,
        devices=jax.devices()[:1],
        progress=progress,
        description="fit",
        checkpoint_dir=checkpoint_dir,
        resume=resume,
    )

    history = result.histories[0]
    if any(history["diverged"]):
        epoch = history["diverged"].index(True) + 1
        print(f"warning: training diverged in epoch {epoch}; the state holds the last finite weights", file=sys.stderr)
    return result.state(0, "best" if restore_best else "last"), history


# ---------------------------------------------------------------------------------------------
# Scoring one trained model with the Flax MLP.


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


def _scoring_data(state: TrainState, x: Any) -> sp.csr_matrix:
    x = checked_csr(x)
    num_words = state.params["hidden_0"]["kernel"].shape[-2]
    if x.shape[1] != num_words:
        raise ImdbJaxError(f"the data has {x.shape[1]} word columns but the model expects {num_words}")
    return x


def evaluate(state: TrainState, split: Any, *, batch_size: int = 512, first_layer: str | int = "auto") -> dict[str, float]:
    """{"loss", "accuracy"} of a trained model on a labelled split (loss includes the penalty)."""
    compile_cache.enable()
    check_batch_size(batch_size)
    x, y = as_xy(split)
    if y is None:
        raise ImdbJaxError("evaluate needs labels: pass a Split or an (x, y) pair")
    x = _scoring_data(state, x)
    data = to_device((x, y), choose_dense_words(first_layer, x), bucket_sizes=batch_size)
    plan = EpochPlan(data, batch_size, shuffle=False)
    sums = jax.device_get(score_epoch(state, data, plan.rows, capacity=plan.capacity))
    return {"loss": float(_ratio(sums["loss_sum"], sums["count"])), "accuracy": float(_ratio(sums["correct"], sums["count"]))}


def predict(state: TrainState, x: Any, *, batch_size: int = 512, first_layer: str | int = "auto") -> np.ndarray:
    """float32[num_reviews] probabilities of a positive review, for CSR multi-hot rows `x`."""
    compile_cache.enable()
    check_batch_size(batch_size)
    x = _scoring_data(state, as_xy(x)[0])
    data = to_device(x, choose_dense_words(first_layer, x), bucket_sizes=batch_size)
    plan = EpochPlan(data, batch_size, shuffle=False)
    logits = predict_epoch(state, data, plan.rows, capacity=plan.capacity)
    return np.asarray(jax.nn.sigmoid(logits.reshape(-1)[: x.shape[0]]), np.float32)
