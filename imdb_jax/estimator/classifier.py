"""`SparseMLPClassifier`: the package's MLP as a scikit-learn classifier.

It trains through `imdb_jax.fit` (so a classifier and the same settings trained by `fit`, or
among other variants by `fit_variants`, are bitwise the same model) and scores through
`imdb_jax.predict`. Its parameters are `ModelConfig`'s settings plus the training loop's; the
input width (`num_words`) is the data's. scikit-learn is needed here only: `import imdb_jax`
never imports it.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, cast

import numpy as np
import scipy.sparse as sp

from imdb_jax.config import ModelConfig

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.model_selection import train_test_split
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "imdb_jax.SparseMLPClassifier and FusedGridSearchCV need scikit-learn >= 1.6: "
        "pip install 'scikit-learn>=1.6' (or the package's 'test' extra)"
    ) from error

# The seeds drawn for random_state=None or a RandomState (jax.random.key takes any int; this
# keeps them in int32 like scikit-learn's own draws).
_SEED_BOUND = np.iinfo(np.int32).max


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """One fit's data as `imdb_jax.fit` takes it, shared by every candidate of a fused run.

    Attributes:
      train: (float32 CSR[rows, features], float32[rows] labels 0/1) to train on.
      validation: the held-out (x, y) pair scored after every epoch (early stopping), or None.
      classes: the two labels, sorted; label 1 is `classes[1]`.
      n_features: columns of X.
      feature_names: column names when X was a DataFrame, else None.
      seed: the resolved seed (weights, dropout, shuffling and the validation split).
    """

    train: tuple[sp.csr_matrix, np.ndarray]
    validation: tuple[sp.csr_matrix, np.ndarray] | None
    classes: np.ndarray
    n_features: int
    feature_names: np.ndarray | None
    seed: int


def resolve_seed(random_state: Any) -> int:
    """An int seed: an int as it is, else one drawn from `check_random_state(random_state)`."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(_SEED_BOUND))


def as_csr(x: Any) -> sp.csr_matrix:
    """float32 CSR rows of an already validated 2-D array or sparse matrix."""
    x = sp.csr_matrix(x, dtype=np.float32)
    if not x.has_sorted_indices:
        x = x.sorted_indices()
    return x


class SparseMLPClassifier(ClassifierMixin, BaseEstimator):
    """A binary MLP classifier on sparse rows (multi-hot, tf-idf, any finite features).

    `fit(X, y)` trains `imdb_jax.fit(ModelConfig(num_words=X.shape[1], ...), ...)` with seed and
    shuffle seed `random_state`: Keras' rmsprop, binary cross-entropy, relu hidden layers and a
    sigmoid output, on batches reshuffled every epoch.

    Parameters:
      hidden_units: widths of the hidden relu layers, first to last (an int: one layer).
      dropout_rate, l1, l2, weight_decay, learning_rate: as in `imdb_jax.ModelConfig`.
      epochs: passes over the training rows (the most, with early stopping).
      batch_size: rows per update.
      early_stopping: hold out `validation_fraction` of the rows (stratified, drawn with
        `random_state`) and stop when the validation loss has not improved by more than
        `min_delta` for `patience` epochs (Keras' `EarlyStopping(monitor="val_loss")`).
      validation_fraction: the share of rows held out; used only with `early_stopping`.
      patience, min_delta, start_from_epoch, restore_best_weights: Keras' `EarlyStopping`
        settings, used only with `early_stopping`; `restore_best_weights` (default True, unlike
        Keras) keeps the weights of the epoch with the lowest validation loss.
      random_state: an int seeds everything (initial weights, dropout, shuffling, the validation
        split); the default 0, like `imdb_jax.fit(seed=0)`, makes fits reproducible bitwise.
        None or a `numpy.random.RandomState` draws a fresh int seed per fit.

    Attributes:
      classes_: the two labels, sorted; `predict_proba[:, 1]` is the probability of `classes_[1]`.
      n_features_in_: columns of X seen in `fit` (`feature_names_in_` too, for DataFrames).
      config_: the trained `ModelConfig`.
      params_: the trained Flax weights as NumPy arrays ({"hidden_0": {"kernel", "bias"}, ...,
        "output": ...}); pickles carry these, and the model is rebuilt from them on first use.
      history_: Keras-style per-epoch history ("loss", "accuracy", with early stopping
        "val_loss", "val_accuracy"; "diverged").
      n_iter_: epochs trained.
      seed_: the seed the fit used.
    """

    def __init__(
        self,
        hidden_units: Any = (16, 16),
        dropout_rate: float = 0.0,
        l1: float = 0.0,
        l2: float = 0.0,
        weight_decay: float = 0.0,
        learning_rate: float = 1e-3,
        epochs: int = 4,
        batch_size: int = 512,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        patience: int = 2,
        min_delta: float = 0.0,
        start_from_epoch: int = 0,
        restore_best_weights: bool = True,
        random_state: Any = 0,
    ):
        self.hidden_units = hidden_units
        self.dropout_rate = dropout_rate
        self.l1 = l1
        self.l2 = l2
        self.weight_decay = weight_decay
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.min_delta = min_delta
        self.start_from_epoch = start_from_epoch
        self.restore_best_weights = restore_best_weights
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.classifier_tags.multi_class = False
        return tags

    # -----------------------------------------------------------------------------------------
    # The pieces of `fit`, shared with `FusedGridSearchCV` (which trains many at once).

    def model_config(self, num_words: int):
        """The `ModelConfig` of these settings (raises `ConfigError`, a ValueError, if invalid)."""
        return ModelConfig(
            num_words=num_words,
            hidden_units=self.hidden_units,
            dropout_rate=self.dropout_rate,
            l1=self.l1,
            l2=self.l2,
            weight_decay=self.weight_decay,
            learning_rate=self.learning_rate,
        )

    def training_options(self) -> dict[str, Any]:
        """The keyword arguments `fit` and `fit_variants` share (besides data and seeds)."""
        for name, least in (("epochs", 1), ("batch_size", 1), ("patience", 0), ("start_from_epoch", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        options: dict[str, Any] = {"epochs": int(self.epochs), "batch_size": int(self.batch_size)}
        if self.early_stopping:
            if not 0 < self.validation_fraction < 1:
                raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
            if not self.min_delta >= 0:
                raise ValueError(f"min_delta must be >= 0, got {self.min_delta!r}")
            options.update(
                patience=int(self.patience), min_delta=self.min_delta, start_from_epoch=int(self.start_from_epoch)
            )
        return options

    def run_key(self, seed: int) -> tuple:
        """Settings a fused run shares: candidates with equal keys can train in one run."""
        validation = None
        if self.early_stopping:
            validation = (self.validation_fraction, self.patience, self.min_delta, self.start_from_epoch)
        return (seed, self.epochs, self.batch_size, bool(self.early_stopping), validation)

    def prepare(self, X: Any, y: Any, seed: int | None = None) -> PreparedData:
        """Validates X and y (setting `n_features_in_`) and cuts the training and validation rows.

        Args:
          X: float array-like or sparse matrix [rows, features], finite.
          y: [rows] of exactly two distinct labels (any type).
          seed: the seed to use; default: resolved from `random_state`.
        """
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float32, reset=True)
        check_classification_targets(y)
        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind != "binary":  # scikit-learn's wording, which its checks look for
            raise ValueError(f"Only binary classification is supported. The type of the target is {kind}.")
        classes, labels = np.unique(y, return_inverse=True)
        if classes.size != 2:
            raise ValueError(f"SparseMLPClassifier needs 2 classes in y, got 1 class ({classes[0]!r})")
        seed = resolve_seed(self.random_state) if seed is None else seed
        x = as_csr(X)
        labels = labels.astype(np.float32)
        validation = None
        if self.early_stopping:
            rows = np.arange(labels.size)
            parts = train_test_split(
                rows, test_size=self.validation_fraction, random_state=seed % _SEED_BOUND, stratify=labels
            )
            kept, held = (np.sort(part) for part in cast(list[np.ndarray], parts))  # the rows keep their order
            validation = (x[held], labels[held])
            x, labels = x[kept], labels[kept]
        return PreparedData(
            train=(x, labels),
            validation=validation,
            classes=classes,
            n_features=int(X.shape[1]),
            feature_names=getattr(self, "feature_names_in_", None),
            seed=seed,
        )

    def adopt(self, data: PreparedData, config: Any, state: Any, history: dict[str, list]) -> SparseMLPClassifier:
        """Makes this estimator the fitted model `state` (a `TrainState`) trained on `data`."""
        # Deferred: JAX (~1.3 s) loads with the first fit or predict, not on import, clone or unpickling.
        import jax

        self.classes_ = data.classes
        self.n_features_in_ = data.n_features
        if data.feature_names is not None:
            self.feature_names_in_ = data.feature_names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.config_ = config
        self.params_ = jax.tree_util.tree_map(np.asarray, jax.device_get(state.params))
        self.history_ = history
        self.n_iter_ = len(history["loss"])
        self.seed_ = data.seed
        self._state = state
        return self

    # -----------------------------------------------------------------------------------------
    # scikit-learn's API.

    def fit(self, X: Any, y: Any) -> SparseMLPClassifier:
        """Trains on X (array-like or sparse [rows, features]) and y (two labels of any type)."""
        # Deferred: JAX (~1.3 s) loads with the first fit or predict, not on import, clone or unpickling.
        from imdb_jax import fit

        data = self.prepare(X, y)
        config = self.model_config(data.n_features)
        options = self.training_options()
        if self.early_stopping:
            options["restore_best"] = bool(self.restore_best_weights)
        state, history = fit(
            config,
            data.train,
            data.validation,
            seed=data.seed,
            shuffle_seed=data.seed,
            progress=False,
            **options,
        )
        return self.adopt(data, config, state, history)

    def _train_state(self):
        state = getattr(self, "_state", None)
        if state is None:  # unpickled: rebuild the model from its NumPy weights once
            # Deferred: JAX (~1.3 s) loads with the first fit or predict, not on import, clone or unpickling.
            from imdb_jax import train_state_from_params

            state = self._state = train_state_from_params(self.params_, self.config_)
        return state

    def _positive_probability(self, X: Any) -> np.ndarray:
        """float32[rows] probability of `classes_[1]`."""
        # Deferred: JAX (~1.3 s) loads with the first fit or predict, not on import, clone or unpickling.
        from imdb_jax import predict

        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=np.float32, reset=False)
        return predict(self._train_state(), as_csr(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        """float32[rows, 2]: probabilities of `classes_[0]` and `classes_[1]`."""
        positive = self._positive_probability(X)
        return np.stack([1.0 - positive, positive], axis=1)

    def decision_function(self, X: Any) -> np.ndarray:
        """float64[rows] log-odds of `classes_[1]` (> 0: predicted `classes_[1]`).

        Recovered from the model's float32 probabilities, so it saturates at about +-17 where
        they round to 0 or 1 (infinite when they are exactly 0 or 1).
        """
        positive = self._positive_probability(X).astype(np.float64)
        with np.errstate(divide="ignore"):
            return np.log(positive) - np.log1p(-positive)

    def predict(self, X: Any) -> np.ndarray:
        """[rows] predicted labels, from `classes_` (`classes_[1]` where its probability > 0.5)."""
        positive = self._positive_probability(X)
        return self.classes_[(positive > 0.5).astype(np.intp)]

    def __getstate__(self):
        state = cast(dict[str, Any], super().__getstate__())
        state.pop("_state", None)  # device arrays and compiled functions: rebuilt on first use
        return state
