"""Fast JAX sentiment classifiers on IMDb multi-hot reviews.

The names below are imported on first use (PEP 562), so `import imdb_jax`, and with it the
command line's `--help` and option errors, do not pay for importing JAX.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "IMDbData": "imdb_jax.data.imdb",
    "Split": "imdb_jax.data.imdb",
    "load_imdb": "imdb_jax.data.imdb",
    "Vocabulary": "imdb_jax.data.text",
    "tokenize": "imdb_jax.data.text",
    "FeatureSpec": "imdb_jax.data.features",
    "ModelConfig": "imdb_jax.config",
    "VariantSpec": "imdb_jax.specs",
    "load_specs": "imdb_jax.specs",
    "MLP": "imdb_jax.models.mlp",
    "TrainState": "imdb_jax.train.steps",
    "create_train_state": "imdb_jax.train.steps",
    "eval_step": "imdb_jax.train.steps",
    "train_step": "imdb_jax.train.steps",
    "train_state_from_params": "imdb_jax.train.steps",
    "FusedState": "imdb_jax.train.steps",
    "fused_train_step": "imdb_jax.train.steps",
    "fused_eval_step": "imdb_jax.train.steps",
    "make_batch": "imdb_jax.train.device_data",
    "evaluate": "imdb_jax.train.fit",
    "fit": "imdb_jax.train.fit",
    "predict": "imdb_jax.train.fit",
    "fit_variants": "imdb_jax.train.variants",
    "VariantsResult": "imdb_jax.train.variants",
    "load_model": "imdb_jax.saved.loading",
    "save_model": "imdb_jax.saved.model_folder",
    "run_study": "imdb_jax.study",
    "tune": "imdb_jax.tune.runner",
    "SparseMLPClassifier": "imdb_jax.estimator.classifier",
    "FusedGridSearchCV": "imdb_jax.estimator.grid_search",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'imdb_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
