"""The baselines imdb_jax is measured against, in the same run, on the SAME CSR vectors.

* Keras 3, the seed's protocol, one model after another: Sequential Dense(16, relu) → Dense(16,
  relu) → Dense(1, sigmoid), rmsprop, binary_crossentropy, accuracy, batch 512,
  `model.fit(x_dense, y, ...)`. Keras needs dense input, so the worker densifies the CSR matrix
  in its own process (25,000 × 10,000 float32 = 1 GB, what Keras users do) and times each epoch
  with a callback (`time.perf_counter` at `on_epoch_begin` / `on_epoch_end`). The backend is
  chosen at import, so each backend runs in its own subprocess (`KERAS_BACKEND=tensorflow|jax`).
* scikit-learn `LogisticRegression(C=0.05)` fitted on the CSR matrix itself (time, test accuracy).

Nothing here needs TensorFlow or scikit-learn to import: each baseline reports itself as skipped,
with the reason, when its package is missing. This file is also the Keras worker
(`python baselines.py keras-worker JOB.json`), which imports neither JAX code nor imdb_jax.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

KERAS_BACKENDS = ("tensorflow", "jax")
INSTALL_HINT = "install the bench extra: pip install -e '.[bench]' (in a separate venv, see benchmarks/README.md)"
RESULT_MARK = "KERAS_WORKER_RESULT "

# Cited, NOT measured here: shared/DATA.md, Keras 3 (TensorFlow backend) on a 2-core machine of
# the kind the project runs on. Used only when the matching baseline is not run, and labelled.
CITED = {
    "keras_tensorflow_epoch_first_s": 2.2,
    "keras_tensorflow_epoch_steady_s": 1.8,
    "keras_tensorflow_study_s": 486.0,
    "keras_tensorflow_test_accuracy": 0.887,
    "sklearn_logreg_fit_s": 0.6,
    "sklearn_logreg_test_accuracy": 0.883,
}
CITED_SOURCE = (
    "shared/DATA.md reference figures (Keras 3 TF backend / scikit-learn on a 2-core machine), not measured in this run"
)


# ---------------------------------------------------------------------------------------------
# What is installed.


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def keras_missing(backend: str) -> str | None:
    """None when Keras can run on `backend` here, else the reason it cannot (for the skip note)."""
    if backend not in KERAS_BACKENDS:
        return f"unknown Keras backend {backend!r} (known: {', '.join(KERAS_BACKENDS)})"
    missing = [name for name in ("keras", backend) if not _installed(name)]
    if missing:
        return f"skipped: {' and '.join(missing)} not installed; {INSTALL_HINT}"
    return None


def sklearn_missing() -> str | None:
    return None if _installed("sklearn") else f"skipped: scikit-learn not installed; {INSTALL_HINT}"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# Keras: the parent side.


@dataclasses.dataclass(frozen=True)
class KerasModel:
    """One `model.fit` call of the seed's protocol.

    Attributes:
      hidden_units: widths of the Dense(relu) layers.
      l1, l2: `kernel_regularizer` factors on the hidden layers.
      dropout_rate: Dropout after every hidden layer (0: none).
      epochs: passes over the training rows.
      holdout: train on all rows but the first `holdout`, validating on those (0: all rows, no
        validation) — the seed's study protocol is holdout=10000.
      evaluate_test: score test accuracy afterwards.
      name: label.
    """

    hidden_units: tuple[int, ...] = (16, 16)
    l1: float = 0.0
    l2: float = 0.0
    dropout_rate: float = 0.0
    epochs: int = 4
    holdout: int = 0
    evaluate_test: bool = False
    name: str = "16-16"


def seed_study_models(epochs: int = 20, holdout: int = 10000, final_epochs: int = 4) -> list[KerasModel]:
    """The seed's study, in its order: 13 models × `epochs` on the rows after `holdout`, then the
    final 16-16 model for `final_epochs` on all rows, scored on the test reviews."""
    models = [KerasModel((width,), epochs=epochs, holdout=holdout, name=f"{width}") for width in (4, 16, 512)]
    models += [
        KerasModel((16,) * depth, epochs=epochs, holdout=holdout, name="-".join(["16"] * depth))
        for depth in (1, 2, 3, 4)
    ]
    models += [KerasModel(epochs=epochs, holdout=holdout, name="16-16")]
    models += [
        KerasModel(epochs=epochs, holdout=holdout, name="16-16 (no penalty)"),
        KerasModel(l1=0.001, epochs=epochs, holdout=holdout, name="16-16 l1=0.001"),
        KerasModel(l2=0.001, epochs=epochs, holdout=holdout, name="16-16 l2=0.001"),
        KerasModel(epochs=epochs, holdout=holdout, name="16-16 (no dropout)"),
        KerasModel(dropout_rate=0.5, epochs=epochs, holdout=holdout, name="16-16 dropout=0.5"),
    ]
    models.append(KerasModel(epochs=final_epochs, evaluate_test=True, name="final 16-16"))
    return models


def _save_split(folder: Path, name: str, split: Any) -> None:
    x, y = (split.x, split.y) if hasattr(split, "x") else split
    x = sp.csr_matrix(x)
    np.savez(
        folder / f"{name}.npz",
        indptr=x.indptr,
        indices=x.indices,
        shape=np.asarray(x.shape),
        labels=np.asarray(y, np.float32),
    )


def run_keras(
    backend: str,
    models: Sequence[KerasModel],
    train: Any,
    test: Any = None,
    *,
    batch_size: int = 512,
    seed: int = 0,
    timeout: float | None = 1800,
) -> dict[str, Any]:
    """Runs `models` one after another with Keras on `backend`, in a fresh subprocess.

    Args:
      backend: "tensorflow" or "jax".
      models: what to fit, in order.
      train: `Split` (or `(x_csr, y)`) of training reviews; densified in the worker.
      test: the same for test reviews (needed when a model has `evaluate_test`); densified in
        chunks of 5,000 rows only while predicting.
      batch_size: Keras `batch_size`.
      seed: `keras.utils.set_random_seed`.
      timeout: seconds before the worker is killed.

    Returns:
      {"backend", "versions", "densify_s", "import_s", "total_s" (wall, parent side, whole
      subprocess), "peak_rss_bytes" (the worker's), "models": [{"name", "epoch_s": [...],
      "fit_s", "history", "test_accuracy"?}, ...]}; or {"skipped": reason} when Keras or the
      backend is missing or the worker failed.
    """
    missing = keras_missing(backend)
    if missing:
        return {"backend": backend, "skipped": missing}
    with tempfile.TemporaryDirectory(prefix="keras-baseline-") as tmp:
        folder = Path(tmp)
        _save_split(folder, "train", train)
        if test is not None:
            _save_split(folder, "test", test)
        job = {
            "backend": backend,
            "batch_size": batch_size,
            "seed": seed,
            "folder": str(folder),
            "models": [dataclasses.asdict(model) for model in models],
        }
        (folder / "job.json").write_text(json.dumps(job))
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, str(Path(__file__).resolve()), "keras-worker", str(folder / "job.json")]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"backend": backend, "skipped": f"failed: the Keras worker ran past {timeout} s"}
        total = time.perf_counter() - start
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK) :])
            result["total_s"] = total
            return result
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    return {"backend": backend, "skipped": f"failed: Keras worker exit {done.returncode}: {' | '.join(tail)}"}


def epoch_figures(model_result: dict[str, Any]) -> dict[str, float | None]:
    """First epoch (includes Keras' tracing/compilation) and the steady median of the rest."""
    epochs = model_result["epoch_s"]
    rest = sorted(epochs[1:])
    return {
        "first_epoch_s": epochs[0],
        "steady_epoch_s": float(np.median(rest)) if rest else None,
        "steady_min_s": rest[0] if rest else None,
        "steady_max_s": rest[-1] if rest else None,
    }


# ---------------------------------------------------------------------------------------------
# Keras: the worker (a separate process; Keras is imported here only).


def _peak_rss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def _load_split(folder: Path, name: str) -> tuple[sp.csr_matrix, np.ndarray]:
    arrays = np.load(folder / f"{name}.npz")
    shape = tuple(int(size) for size in arrays["shape"])
    x = sp.csr_matrix((np.ones(len(arrays["indices"]), np.float32), arrays["indices"], arrays["indptr"]), shape=shape)
    return x, arrays["labels"]


def _build(keras, model: dict[str, Any], num_words: int):
    regularizer = None
    if model["l1"] or model["l2"]:
        regularizer = keras.regularizers.L1L2(l1=model["l1"], l2=model["l2"])
    layers = [keras.Input(shape=(num_words,))]
    for width in model["hidden_units"]:
        layers.append(keras.layers.Dense(width, activation="relu", kernel_regularizer=regularizer))
        if model["dropout_rate"]:
            layers.append(keras.layers.Dropout(model["dropout_rate"]))
    layers.append(keras.layers.Dense(1, activation="sigmoid"))
    network = keras.Sequential(layers)
    network.compile(optimizer="rmsprop", loss="binary_crossentropy", metrics=["accuracy"])
    return network


def _worker(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    folder = Path(job["folder"])
    start = time.perf_counter()
    import keras

    import_s = time.perf_counter() - start

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch_s: list[float] = []
            self._start = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_s.append(time.perf_counter() - self._start)

    x_csr, y = _load_split(folder, "train")
    start = time.perf_counter()
    x = x_csr.toarray()  # float32[rows, num_words]: Keras' Dense needs dense input
    densify_s = time.perf_counter() - start
    test = _load_split(folder, "test") if (folder / "test.npz").exists() else None
    keras.utils.set_random_seed(job["seed"])
    results = []
    for model in job["models"]:
        start = time.perf_counter()
        network = _build(keras, model, x.shape[1])
        build_s = time.perf_counter() - start
        timer = EpochTimer()
        holdout = model["holdout"]
        fit_args = {"epochs": model["epochs"], "batch_size": job["batch_size"], "callbacks": [timer], "verbose": 0}
        if holdout:
            fit_args["validation_data"] = (x[:holdout], y[:holdout])
            x_fit, y_fit = x[holdout:], y[holdout:]
        else:
            x_fit, y_fit = x, y
        start = time.perf_counter()
        history = network.fit(x_fit, y_fit, **fit_args)
        fit_s = time.perf_counter() - start
        result = {
            "name": model["name"],
            "build_s": build_s,
            "fit_s": fit_s,
            "epoch_s": timer.epoch_s,
            "history": {key: [float(value) for value in values] for key, values in history.history.items()},
        }
        if model["evaluate_test"] and test is not None:
            x_test, y_test = test
            start = time.perf_counter()
            probabilities = np.concatenate(
                [
                    network.predict(
                        x_test[begin : begin + 5000].toarray(), batch_size=job["batch_size"], verbose=0
                    ).reshape(-1)
                    for begin in range(0, len(y_test), 5000)
                ]
            )
            result["test_accuracy"] = float(np.mean((probabilities > 0.5) == (y_test > 0.5)))
            result["test_s"] = time.perf_counter() - start
        results.append(result)
        print(f"keras {job['backend']}: {model['name']} fit {fit_s:.2f} s", file=sys.stderr, flush=True)
    output = {
        "backend": keras.backend.backend(),
        "versions": {name: _version(name) for name in ("keras", "tensorflow", "jax", "jaxlib", "numpy")},
        "import_s": import_s,
        "densify_s": densify_s,
        "dense_input": f"float32[{x.shape[0]}, {x.shape[1]}] numpy array ({x.nbytes / 2**30:.2f} GiB), densified once in the worker",
        "peak_rss_bytes": _peak_rss_bytes(),
        "models": results,
    }
    print(RESULT_MARK + json.dumps(output), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# scikit-learn.


def sklearn_logreg(train: Any, test: Any, *, C: float = 0.05, repeats: int = 3) -> dict[str, Any]:
    """`LogisticRegression(C=C)` (otherwise defaults) fitted on the CSR training matrix.

    Returns:
      {"fit_s": [seconds per repeat], "test_accuracy", "n_iter", "converged", "version"}, or
      {"skipped": reason}.
    """
    missing = sklearn_missing()
    if missing:
        return {"skipped": missing}
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x_train, y_train = (train.x, train.y) if hasattr(train, "x") else train
    x_test, y_test = (test.x, test.y) if hasattr(test, "x") else test
    times, converged, model = [], True, None
    for _ in range(repeats):
        model = LogisticRegression(C=C)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            start = time.perf_counter()
            model.fit(x_train, y_train)
            times.append(time.perf_counter() - start)
        converged = converged and not any(issubclass(item.category, ConvergenceWarning) for item in caught)
    if model is None:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    accuracy = float(np.mean(model.predict(x_test) == y_test))
    return {
        "fit_s": times,
        "test_accuracy": accuracy,
        "n_iter": int(np.max(model.n_iter_)),
        "converged": converged,
        "C": C,
        "version": _version("scikit-learn"),
    }


# ---------------------------------------------------------------------------------------------
# Reusing results within one run_all.py run.


class BaselineCache:
    """Baseline results keyed by what was measured; a JSON file shared by the scripts of one run
    (so each baseline runs once), or memory only when `path` is None."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, Any] = {}
        if path is not None and path.exists():
            try:
                self.entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self.entries = {}

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get_or_run(self, key: str, run) -> Any:
        if key in self.entries:
            return self.entries[key]
        value = run()
        self.entries[key] = value
        if self.path is not None and "skipped" not in value:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.entries))
        return value


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "keras-worker":
        sys.exit(_worker(sys.argv[2]))
    print("usage: baselines.py keras-worker JOB.json (used by the benchmark scripts)", file=sys.stderr)
    sys.exit(2)
