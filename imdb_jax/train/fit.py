"""One model: `fit` (a study of one), `evaluate` and `predict`."""

from __future__ import annotations

import sys
from typing import Any

import jax
import numpy as np
import scipy.sparse as sp

from imdb_jax.config import ModelConfig
from imdb_jax.data.csr import as_xy, check_columns, check_training_inputs, checked_csr
from imdb_jax.errors import ImdbJaxError
from imdb_jax.models.dense_head import choose_dense_words
from imdb_jax.specs import VariantSpec
from imdb_jax.train import compile_cache
from imdb_jax.train.device_data import to_device
from imdb_jax.train.epochs import predict_epoch, score_epoch
from imdb_jax.train.loop import EpochPlan, _ratio, check_batch_size
from imdb_jax.train.programs import stored_jit
from imdb_jax.train.steps import TrainState
from imdb_jax.train.variants import fit_variants


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
    resume: bool | str = False,
    patience: int | None = None,
    min_delta: float = 0.0,
    start_from_epoch: int = 0,
    log_dir: Any = None,
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
        backend's choice, see `imdb_jax.models.dense_head`) or a number of leading columns to multiply
        densely. Results agree to float32 rounding.
      progress: show a progress bar with the running losses.
      restore_best: return the weights of the epoch with the lowest validation loss (Keras'
        `EarlyStopping(restore_best_weights=True)`); default False: the last epoch's weights.
      checkpoint_dir, resume: save the run after every epoch / continue a killed run, as in
        `fit_variants` (`resume="force"`: also from a checkpoint written under another JAX,
        jaxlib, backend or device count).
      patience, min_delta, start_from_epoch: Keras' `EarlyStopping` on the validation loss,
        as in `fit_variants` (the history then ends at the epoch it stopped after).
      log_dir: a folder for TensorBoard (one run: its curves and settings).

    Returns:
      The trained state (the last epoch's weights unless `restore_best`) and the history: {"loss", "accuracy",
      "val_loss", "val_accuracy", "diverged"}, one value per epoch, training figures including
      the penalty like Keras.
    """
    if restore_best and validation is None:
        raise ImdbJaxError("restore_best needs validation data")
    spec = VariantSpec.from_config(config, seed)
    check_training_inputs(train, validation, checkpoint=checkpoint_dir is not None)
    columns = as_xy(train)[0].shape[1]  # pyright: ignore[reportOptionalSubscript]
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
        patience=patience,
        min_delta=min_delta,
        start_from_epoch=start_from_epoch,
        log_dir=log_dir,
    )

    history = result.histories[0]
    if any(history["diverged"]):
        epoch = history["diverged"].index(True) + 1
        print(f"warning: training diverged in epoch {epoch}; the state holds the last finite weights", file=sys.stderr)
    return result.state(0, "best" if restore_best else "last"), history


def _scoring_data(state: TrainState, x: Any) -> sp.csr_matrix:
    x = checked_csr(x)
    check_columns(x, state.params["hidden_0"]["kernel"].shape[-2])  # pyright: ignore[reportAttributeAccessIssue]
    return x


def evaluate(
    state: TrainState, split: Any, *, batch_size: int = 512, first_layer: str | int = "auto"
) -> dict[str, float]:
    """{"loss", "accuracy"} of a trained model on a labelled split (loss includes the penalty)."""
    compile_cache.enable()
    check_batch_size(batch_size)
    x, y = as_xy(split)
    if y is None:
        raise ImdbJaxError("evaluate needs labels: pass a Split or an (x, y) pair")
    x = _scoring_data(state, x)
    data = to_device((x, y), choose_dense_words(first_layer, x), bucket_sizes=batch_size)
    plan = EpochPlan(data, batch_size, shuffle=False)
    sums = jax.device_get(score_epoch(state, data, plan.rows, capacity=plan.capacity))  # pyright: ignore[reportArgumentType]
    return {
        "loss": float(_ratio(sums["loss_sum"], sums["count"])),
        "accuracy": float(_ratio(sums["correct"], sums["count"])),
    }


def predict(state: TrainState, x: Any, *, batch_size: int = 512, first_layer: str | int = "auto") -> np.ndarray:
    """float32[num_reviews] probabilities of a positive review, for CSR multi-hot rows `x`."""
    compile_cache.enable()
    check_batch_size(batch_size)
    x = _scoring_data(state, as_xy(x)[0])
    data = to_device(x, choose_dense_words(first_layer, x), bucket_sizes=batch_size)
    plan = EpochPlan(data, batch_size, shuffle=False)
    logits = predict_epoch(state, data, plan.rows, capacity=plan.capacity)  # pyright: ignore[reportArgumentType]
    return np.asarray(_probabilities(logits, count=x.shape[0]), np.float32)


@stored_jit(static_argnames=("count",))
def _probabilities(logits: jax.Array, *, count: int) -> jax.Array:
    # One program (in the store), not three eager ones traced on every start.
    return jax.nn.sigmoid(logits.reshape(-1)[:count])
