"""Fast JAX sentiment classifiers on IMDb multi-hot reviews.

The names below are imported on first use (PEP 562), so `import imdb_jax`, and with it the
command line's `--help` and option errors, do not pay for importing JAX.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "iterate_batches": "imdb_jax.batches",
    "IMDbData": "imdb_jax.data",
    "Split": "imdb_jax.data",
    "load_imdb": "imdb_jax.data",
    "Vocabulary": "imdb_jax.text",
    "tokenize": "imdb_jax.text",
    "ModelConfig": "imdb_jax.config",
    "TrainState": "imdb_jax.steps",
    "create_train_state": "imdb_jax.steps",
    "eval_step": "imdb_jax.steps",
    "train_step": "imdb_jax.steps",
    "train_state_from_params": "imdb_jax.steps",
    "FusedState": "imdb_jax.fused",
    "fused_train_step": "imdb_jax.fused",
    "fused_eval_step": "imdb_jax.fused",
    "FeatureSpec": "imdb_jax.features",
    "evaluate": "imdb_jax.train",
    "fit": "imdb_jax.train",
    "predict": "imdb_jax.train",
    "load_model": "imdb_jax.checkpoint",
    "save_model": "imdb_jax.checkpoint",
    "VariantSpec": "imdb_jax.specs",
    "load_specs": "imdb_jax.specs",
    "fit_variants": "imdb_jax.variants",
    "run_study": "imdb_jax.study",
    "tune": "imdb_jax.tune",
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
