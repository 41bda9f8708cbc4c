"""A folder becomes a model: one saved model or an ensemble of them, whichever the folder holds."""

from __future__ import annotations

import os

from imdb_jax.saved.ensemble import ENSEMBLE_FILE, EnsembleModel, load_ensemble
from imdb_jax.saved.model_folder import MODEL_FILE, SavedModel, existing_folder, load_single_model


def load_model(path: str | os.PathLike) -> SavedModel | EnsembleModel:
    """Loads a model saved with `save_model`, or an ensemble saved with `save_ensemble`.

    Args:
      path: the model folder.

    Returns:
      A `SavedModel`, or for an ensemble's folder an `EnsembleModel`, which predicts like one;
      its predictions equal those of the saved state.

    Raises:
      ImdbJaxError: the folder is missing, is not a model folder, or its files are corrupt or do
        not fit together.
    """
    folder = existing_folder(path)
    if (folder / ENSEMBLE_FILE).is_file() and not (folder / MODEL_FILE).exists():
        return load_ensemble(folder)
    return load_single_model(folder)
