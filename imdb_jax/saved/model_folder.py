"""A trained model becomes a folder, and a folder becomes a model again.

A model folder holds three plain files:

- ``params.npz``: the parameters, one array per parameter named by its path
  (``hidden_0/kernel``, ``output/bias``, ...), readable with ``numpy.load`` alone.
- ``model.json``: the format version, the package version, the ``ModelConfig``, the vocabulary
  (its words and tokeniser version, so raw text is vectorised exactly as in training), the
  training step, the SHA-256 of ``params.npz`` and any metrics.
- ``history.json``: the Keras-style per-epoch history (``null`` when none was given).
- ``features.npz``, for n-gram or weighted features only (``imdb_jax.data.features.FeatureSpec``, up to
  a million terms): the terms, their idf or naive-Bayes ratios and settings
  (``FeatureSpec.to_arrays``); ``model.json`` then names the file and its SHA-256 instead of
  holding the words, and says format 2. Plain word vocabularies stay inline (format 1).

A folder holding ``ensemble.json`` instead is an ensemble of such folders (``imdb_jax.saved.ensemble``);
``load_model`` loads either.

Why not Orbax (installed with Flax): a model here is ~160k float32s and a few hundred kilobytes
of JSON. Orbax's asynchronous, sharded, multi-host checkpointing buys nothing at that size, but
it would tie the folder's layout to Orbax's version and make it unreadable without it, and its
restore needs a target tree built first anyway. ``.npz`` and JSON can be opened by anyone, with
NumPy and a text editor.

A save never leaves the folder without a loadable model. Into a folder that holds no model yet,
each file is written atomically (`imdb_jax.atomic.atomic_write`), ``model.json`` last: it vouches
for the others by the checksum of ``params.npz``. Over an existing model, the new model is written
whole to a folder beside it, and the two folders are swapped by one atomic rename (Linux's
``renameat2(RENAME_EXCHANGE)``); anything else in the old folder (figures, your files) is then
moved into the new one. A run killed at any moment leaves the old model or the new one at the
path (killed during that last move, the rest waits in the hidden ``.NAME.saving-*`` beside it).
Where the exchange is not available, two renames a moment apart stand in for it; a kill between
them leaves the old model in ``.NAME.old-*`` beside the path. Anything that is not a model folder (missing files, corrupt npz or
JSON, parameters that do not fit the config) raises ``ImdbJaxError`` naming the folder and what
is wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from imdb_jax import __version__
from imdb_jax.atomic import atomic_write, current_umask, exchange, fsync_folder, json_bytes
from imdb_jax.config import ModelConfig
from imdb_jax.data.features import FORMAT as FEATURES_FORMAT
from imdb_jax.data.features import FeatureSpec, vectorizer_from_dict
from imdb_jax.data.text import Text, Vocabulary
from imdb_jax.errors import ImdbJaxError
from imdb_jax.train.fit import predict
from imdb_jax.train.steps import TrainState, create_train_state, train_state_from_params

FORMAT = "imdb_jax.model"
FORMAT_VERSION = 2  # 2: features in FEATURES_FILE; folders without it are still written as 1
PARAMS_FILE = "params.npz"
MODEL_FILE = "model.json"
HISTORY_FILE = "history.json"
FEATURES_FILE = "features.npz"
_loaded_features: dict[str, FeatureSpec] = {}  # by SHA-256 of FEATURES_FILE: ensemble members share them


@dataclasses.dataclass(frozen=True, eq=False)
class SavedModel:
    """A model loaded from its folder.

    Attributes:
      state: the train state with the saved parameters (its optimiser state is fresh: a loaded
        model is for predicting and evaluating).
      config: the model's settings.
      vocabulary: the vocabulary (and tokeniser version) the model was trained with: a
        ``Vocabulary``, or a ``FeatureSpec`` for n-gram or weighted features.
      history: the per-epoch training history, or None.
      metrics: the metrics saved with the model (e.g. test loss and accuracy), or None.
      path: the folder it was loaded from.
    """

    state: TrainState
    config: ModelConfig
    vocabulary: Vocabulary | FeatureSpec
    history: dict[str, list] | None = None
    metrics: dict[str, Any] | None = None
    path: Path | None = None

    def predict_texts(self, texts: Iterable[Text] | Text, *, batch_size: int = 512) -> np.ndarray:
        """Probabilities that raw reviews are positive.

        Args:
          texts: reviews as ``str`` or UTF-8 ``bytes`` (a single review is accepted too); they are
            tokenised and vectorised with the saved vocabulary, unknown words dropped.
          batch_size: reviews per compiled batch.

        Returns:
          float32[len(texts)] probabilities (empty for no texts).
        """
        return self.predict_rows(self.vectorize(texts), batch_size=batch_size)

    def vectorize(self, texts: Iterable[Text] | Text) -> Any:
        """float32[len(texts), num_words] CSR multi-hot rows of raw reviews, vectorised with the
        saved vocabulary (unknown words dropped: a row with no entries had no known word)."""
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        return self.vocabulary.transform(list(texts))

    def predict_rows(self, x: Any, *, batch_size: int = 512) -> np.ndarray:
        """float32[rows] probabilities of rows made by `vectorize`."""
        if x.shape[0] == 0:
            return np.zeros((0,), np.float32)
        return predict(self.state, x, batch_size=batch_size)


def _history_from_json(history: Any) -> dict[str, list] | None:
    """Undoes `to_json_value` on a history: null epochs of numeric curves become NaN again."""
    if history is None:
        return None
    if not isinstance(history, dict) or not all(isinstance(values, list) for values in history.values()):
        raise ValueError("a history must be an object of per-epoch lists")
    return {
        key: [math.nan if item is None and key != "diverged" else item for item in values]
        for key, values in history.items()
    }


def _flat_params(params: Any) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    return {name: np.asarray(value) for name, value in sorted(flat.items())}


@functools.cache
def _expected_shapes(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """{parameter path: (shape, dtype)} of a model with `config`, without computing weights."""
    shapes = jax.eval_shape(lambda: create_train_state(jax.random.key(0), config).params)  # traced, not run
    return {
        name: (tuple(leaf.shape), str(leaf.dtype))  # pyright: ignore[reportAttributeAccessIssue]
        for name, leaf in traverse_util.flatten_dict(shapes, sep="/").items()
    }


def _shape_problems(flat: Mapping[str, np.ndarray], config: ModelConfig) -> list[str]:
    expected = _expected_shapes(config)
    problems = [f"missing parameter {name}" for name in sorted(set(expected) - set(flat))]
    problems += [f"unexpected parameter {name}" for name in sorted(set(flat) - set(expected))]
    for name in sorted(set(expected) & set(flat)):
        shape, dtype = expected[name]
        if tuple(flat[name].shape) != shape or str(flat[name].dtype) != dtype:
            problems.append(
                f"{name} is {flat[name].dtype}{list(flat[name].shape)}, the config needs {dtype}{list(shape)}"
            )
    return problems


def save_model(
    path: str | os.PathLike,
    state: TrainState,
    config: ModelConfig,
    vocabulary: Vocabulary | FeatureSpec,
    history: Mapping[str, list] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Saves a trained model to a folder (created if needed; files of an older save are replaced).

    Args:
      path: the model folder.
      state: the trained state (one model, not a stack of variants).
      config: the model's settings; `config.num_words` must equal `len(vocabulary)`.
      vocabulary: the vocabulary the training data was vectorised with (`IMDbData.vocabulary`:
        a `Vocabulary`, or the `FeatureSpec` of n-gram or weighted features, saved to
        features.npz).
      history: optional per-epoch history (`fit`'s second result).
      metrics: optional JSON-serialisable figures to keep with the model (e.g. test accuracy).

    Returns:
      The folder.

    Raises:
      ImdbJaxError: the parameters, config and vocabulary do not fit together.
    """
    folder = Path(path)
    if len(vocabulary) != config.num_words:
        raise ImdbJaxError(
            f"the vocabulary has {len(vocabulary)} words but the config has num_words={config.num_words}"
        )
    flat = _flat_params(state.params)
    problems = _shape_problems(flat, config)
    if problems:
        raise ImdbJaxError("the parameters do not fit the config: " + "; ".join(problems))
    buffer = io.BytesIO()
    np.savez(buffer, **flat)  # pyright: ignore[reportArgumentType]
    params_bytes = buffer.getvalue()
    files = {PARAMS_FILE: params_bytes}
    described = vocabulary.to_dict() if not isinstance(vocabulary, FeatureSpec) or vocabulary.plain else None
    if described is None:
        buffer = io.BytesIO()
        np.savez(buffer, **vocabulary.to_arrays())  # pyright: ignore[reportArgumentType, reportAttributeAccessIssue]
        files[FEATURES_FILE] = buffer.getvalue()
        described = {
            "format": FEATURES_FORMAT,
            "file": FEATURES_FILE,
            "sha256": hashlib.sha256(files[FEATURES_FILE]).hexdigest(),
            "terms": len(vocabulary),
            "ngrams": vocabulary.ngrams,  # pyright: ignore[reportAttributeAccessIssue]
            "weighting": vocabulary.weighting,  # pyright: ignore[reportAttributeAccessIssue]
        }
    model = {
        "format": FORMAT,
        "format_version": 2 if FEATURES_FILE in files else 1,
        "package_version": __version__,
        "config": config.to_dict(),
        "vocabulary": described,
        "step": int(jax.device_get(state.step)),
        "params_sha256": hashlib.sha256(params_bytes).hexdigest(),
        "metrics": None if metrics is None else dict(metrics),
    }
    files[HISTORY_FILE] = json_bytes(None if history is None else dict(history))
    files[MODEL_FILE] = json_bytes(model)  # last: it vouches for the others
    try:
        _write_model_files(folder, files)
    except OSError as error:
        raise ImdbJaxError(f"could not save the model to {folder}: {error}") from error
    return folder


def _write_model_files(folder: Path, files: Mapping[str, bytes]) -> None:
    """Puts `files` ({name: bytes}, model.json last) into `folder` so that a loadable model is
    there at every moment: the old one until the switch, the new one after."""
    if not (folder / MODEL_FILE).exists() or _holds_working_directory(folder):
        # No old model to keep (or the folder cannot be swapped): write in place, model.json last.
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            atomic_write(folder / name, data)
        return
    beside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.saving-"))
    try:
        os.chmod(beside, 0o777 & ~current_umask())  # mkdtemp makes 0700; a model folder is an ordinary folder
        for name, data in files.items():
            atomic_write(beside / name, data)
    except BaseException:
        for name in files:
            (beside / name).unlink(missing_ok=True)
        os.rmdir(beside)
        raise
    old = _swap(folder, beside)
    fsync_folder(folder.parent)
    # The new model is in place; what else the old folder held (figures, the user's files) moves in.
    for entry in sorted(old.iterdir()):
        if entry.name not in files:
            os.rename(entry, folder / entry.name)
    for name in files:
        (old / name).unlink(missing_ok=True)
    os.rmdir(old)


def _holds_working_directory(folder: Path) -> bool:
    cwd = Path.cwd().resolve()
    target = folder.resolve()
    return cwd == target or target in cwd.parents


def _swap(folder: Path, beside: Path) -> Path:
    """Gives `beside`'s contents the name `folder`; returns where the old folder now is."""
    if exchange(folder, beside):
        return beside
    old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
    os.rmdir(old)
    os.rename(folder, old)
    os.rename(beside, folder)  # between these two renames the model is only at `old`
    return old


def _read_json(file: Path, folder: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImdbJaxError(f"{folder} is not a model folder: {file.name} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ImdbJaxError(f"{folder} is not a usable model folder: {file.name} is not valid JSON ({error})") from None


def existing_folder(path: str | os.PathLike) -> Path:
    """`path` as a folder, or the one-line error a file or a missing path gets."""
    folder = Path(path)
    if not folder.is_dir():
        raise ImdbJaxError(
            f"{folder} is a file, not a model folder"
            if folder.is_file()
            else f"{folder} is not a model folder (no such folder)"
        )
    return folder


def load_single_model(path: str | os.PathLike) -> SavedModel:
    """Loads one model saved with `save_model` (`imdb_jax.saved.loading.load_model` loads
    ensembles too).

    Args:
      path: the model folder.

    Returns:
      The model; its predictions equal those of the saved state.

    Raises:
      ImdbJaxError: the folder is missing, is not a model folder, or its files are corrupt or do
        not fit together.
    """
    folder = existing_folder(path)
    model = _read_json(folder / MODEL_FILE, folder)
    if not isinstance(model, dict) or model.get("format") != FORMAT:
        raise ImdbJaxError(f"{folder} is not a model folder: {MODEL_FILE} is not an imdb_jax model description")
    version = model.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ImdbJaxError(
            f"{folder} was saved in model format {version!r}; this imdb_jax reads format {FORMAT_VERSION} "
            f"(saved by imdb_jax {model.get('package_version')!r})"
        )
    try:
        config = ModelConfig.from_dict(model["config"])
        vocabulary = _load_vocabulary(model["vocabulary"], folder)
        step = int(model.get("step", 0))
        expected_sha = str(model["params_sha256"])
    except ImdbJaxError as error:
        raise ImdbJaxError(f"{folder} is not a usable model folder: {error}") from None
    except (KeyError, TypeError, ValueError) as error:
        raise ImdbJaxError(
            f"{folder} is not a usable model folder: bad {MODEL_FILE} ({type(error).__name__}: {error})"
        ) from None
    if len(vocabulary) != config.num_words:
        raise ImdbJaxError(
            f"{folder}: the vocabulary has {len(vocabulary)} words but the config has num_words={config.num_words}"
        )

    try:
        params_bytes = (folder / PARAMS_FILE).read_bytes()
    except FileNotFoundError:
        raise ImdbJaxError(f"{folder} is not a model folder: {PARAMS_FILE} is missing") from None
    except OSError as error:
        raise ImdbJaxError(f"{folder}: cannot read {PARAMS_FILE}: {error}") from None
    if hashlib.sha256(params_bytes).hexdigest() != expected_sha:
        raise ImdbJaxError(f"{folder}: {PARAMS_FILE} is corrupt or does not belong to {MODEL_FILE} (checksum mismatch)")
    try:
        with np.load(io.BytesIO(params_bytes), allow_pickle=False) as archive:
            flat = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ImdbJaxError(f"{folder}: {PARAMS_FILE} is not a readable .npz file ({error})") from None
    problems = _shape_problems(flat, config)
    if problems:
        raise ImdbJaxError(f"{folder}: the parameters do not fit the saved config: " + "; ".join(problems))

    history_file = folder / HISTORY_FILE
    history = None
    if history_file.exists():
        try:
            history = _history_from_json(_read_json(history_file, folder))
        except ValueError as error:
            raise ImdbJaxError(f"{folder}: {HISTORY_FILE} is not a history ({error})") from None
    metrics = model.get("metrics")

    # Built around the saved weights without compiling anything (a fresh optimiser state).
    params = traverse_util.unflatten_dict(dict(flat.items()), sep="/")
    state = train_state_from_params(params, config, step=step)
    return SavedModel(state, config, vocabulary, history, metrics, folder)


def _load_vocabulary(described: Any, folder: Path) -> Vocabulary | FeatureSpec:
    """The vocabulary `model.json` describes: inline (`vectorizer_from_dict`), or in
    FEATURES_FILE, checked against its SHA-256 (equal files load once per process)."""
    if not (isinstance(described, dict) and "file" in described):
        return vectorizer_from_dict(described)
    if described["file"] != FEATURES_FILE:
        raise ImdbJaxError(f"the features must be in {FEATURES_FILE}, not {described['file']!r}")
    try:
        data = (folder / FEATURES_FILE).read_bytes()
    except FileNotFoundError:
        raise ImdbJaxError(f"{FEATURES_FILE} is missing") from None
    except OSError as error:
        raise ImdbJaxError(f"cannot read {FEATURES_FILE}: {error}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != described.get("sha256"):
        raise ImdbJaxError(f"{FEATURES_FILE} is corrupt or does not belong to {MODEL_FILE} (checksum mismatch)")
    if digest not in _loaded_features:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ImdbJaxError(f"{FEATURES_FILE} is not a readable .npz file ({error})") from None
        if len(_loaded_features) >= 4:
            _loaded_features.pop(next(iter(_loaded_features)))
        _loaded_features[digest] = FeatureSpec.from_arrays(arrays)
    return _loaded_features[digest]
