"""A trained model becomes a folder, and a folder becomes a model again.

A model folder holds three plain files:

- ``params.npz``: the parameters, one array per parameter named by its path
  (``hidden_0/kernel``, ``output/bias``, ...), readable with ``numpy.load`` alone.
- ``model.json``: the format version, the package version, the ``ModelConfig``, the vocabulary
  (its words and tokeniser version, so raw text is vectorised exactly as in training), the
  training step, the SHA-256 of ``params.npz`` and any metrics.
- ``history.json``: the Keras-style per-epoch history (``null`` when none was given).

Why not Orbax (installed with Flax): a model here is ~160k float32s and a few hundred kilobytes
of JSON. Orbax's asynchronous, sharded, multi-host checkpointing buys nothing at that size, but
it would tie the folder's layout to Orbax's version and make it unreadable without it, and its
restore needs a target tree built first anyway. ``.npz`` and JSON can be opened by anyone, with
NumPy and a text editor.

Each file is written to a temporary file in the same folder and ``os.replace``d into place,
``model.json`` last: a run killed while saving leaves whole files, and a ``params.npz`` that does
not belong to ``model.json`` is caught by its checksum. Anything that is not a model folder
(missing files, corrupt npz or JSON, parameters that do not fit the config) raises
``ImdbJaxError`` naming the folder and what is wrong.
"""

from __future__ import annotations

import contextlib
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
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from imdb_jax import __version__
from imdb_jax.config import ModelConfig
from imdb_jax.errors import ImdbJaxError
from imdb_jax.steps import TrainState, create_train_state
from imdb_jax.text import Text, Vocabulary
from imdb_jax.train import predict

FORMAT = "imdb_jax.model"
FORMAT_VERSION = 1
PARAMS_FILE = "params.npz"
MODEL_FILE = "model.json"
HISTORY_FILE = "history.json"


@dataclasses.dataclass(frozen=True, eq=False)
class SavedModel:
    """A model loaded from its folder.

    Attributes:
      state: the train state with the saved parameters (its optimiser state is fresh: a loaded
        model is for predicting and evaluating).
      config: the model's settings.
      vocabulary: the vocabulary (and tokeniser version) the model was trained with.
      history: the per-epoch training history, or None.
      metrics: the metrics saved with the model (e.g. test loss and accuracy), or None.
      path: the folder it was loaded from.
    """

    state: TrainState
    config: ModelConfig
    vocabulary: Vocabulary
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
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        x = self.vocabulary.transform(list(texts))
        if x.shape[0] == 0:
            return np.zeros((0,), np.float32)
        return predict(self.state, x, batch_size=batch_size)


def to_json_value(value: Any) -> Any:
    """A strict-JSON version of `value`: numpy and JAX scalars and arrays become numbers and
    lists, tuples become lists, paths become strings, NaN and infinities become null."""
    if isinstance(value, Mapping):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if isinstance(value, (np.ndarray, jax.Array)):
        return to_json_value(np.asarray(value).tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


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


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` via a fsynced temporary file in the same folder and `os.replace`,
    so readers see the old file or the new one, never part of one."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; these are ordinary files
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(to_json_value(value), allow_nan=False) + "\n").encode("utf-8")


def _flat_params(params: Any) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    return {name: np.asarray(value) for name, value in sorted(flat.items())}


@functools.cache
def _expected_shapes(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """{parameter path: (shape, dtype)} of a model with `config`, without computing weights."""
    shapes = jax.eval_shape(lambda key: create_train_state(key, config).params, jax.random.key(0))
    return {name: (tuple(leaf.shape), str(leaf.dtype)) for name, leaf in traverse_util.flatten_dict(shapes, sep="/").items()}


def _shape_problems(flat: Mapping[str, np.ndarray], config: ModelConfig) -> list[str]:
    expected = _expected_shapes(config)
    problems = [f"missing parameter {name}" for name in sorted(set(expected) - set(flat))]
    problems += [f"unexpected parameter {name}" for name in sorted(set(flat) - set(expected))]
    for name in sorted(set(expected) & set(flat)):
        shape, dtype = expected[name]
        if tuple(flat[name].shape) != shape or str(flat[name].dtype) != dtype:
            problems.append(f"{name} is {flat[name].dtype}{list(flat[name].shape)}, the config needs {dtype}{list(shape)}")
    return problems


def save_model(
    path: str | os.PathLike,
    state: TrainState,
    config: ModelConfig,
    vocabulary: Vocabulary,
    history: Mapping[str, list] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Saves a trained model to a folder (created if needed; files of an older save are replaced).

    Args:
      path: the model folder.
      state: the trained state (one model, not a stack of variants).
      config: the model's settings; `config.num_words` must equal `len(vocabulary)`.
      vocabulary: the vocabulary the training data was vectorised with.
      history: optional per-epoch history (`fit`'s second result).
      metrics: optional JSON-serialisable figures to keep with the model (e.g. test accuracy).

    Returns:
      The folder.

    Raises:
      ImdbJaxError: the parameters, config and vocabulary do not fit together.
    """
    folder = Path(path)
    if len(vocabulary) != config.num_words:
        raise ImdbJaxError(f"the vocabulary has {len(vocabulary)} words but the config has num_words={config.num_words}")
    flat = _flat_params(state.params)
    problems = _shape_problems(flat, config)
    if problems:
        raise ImdbJaxError("the parameters do not fit the config: " + "; ".join(problems))
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    params_bytes = buffer.getvalue()
    model = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "config": config.to_dict(),
        "vocabulary": vocabulary.to_dict(),
        "step": int(jax.device_get(state.step)),
        "params_sha256": hashlib.sha256(params_bytes).hexdigest(),
        "metrics": None if metrics is None else dict(metrics),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / PARAMS_FILE, params_bytes)
        atomic_write(folder / HISTORY_FILE, _json_bytes(None if history is None else dict(history)))
        atomic_write(folder / MODEL_FILE, _json_bytes(model))  # last: it vouches for the others
    except OSError as error:
        raise ImdbJaxError(f"could not save the model to {folder}: {error}") from error
    return folder


def _read_json(file: Path, folder: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImdbJaxError(f"{folder} is not a model folder: {file.name} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ImdbJaxError(f"{folder} is not a usable model folder: {file.name} is not valid JSON ({error})") from None


def load_model(path: str | os.PathLike) -> SavedModel:
    """Loads a model saved with `save_model`.

    Args:
      path: the model folder.

    Returns:
      The model; its predictions equal those of the saved state.

    Raises:
      ImdbJaxError: the folder is missing, is not a model folder, or its files are corrupt or do
        not fit together.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ImdbJaxError(f"{folder} is not a model folder (no such folder)")
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
        vocabulary = Vocabulary.from_dict(model["vocabulary"])
        step = int(model.get("step", 0))
        expected_sha = str(model["params_sha256"])
    except ImdbJaxError as error:
        raise ImdbJaxError(f"{folder} is not a usable model folder: {error}") from None
    except (KeyError, TypeError, ValueError) as error:
        raise ImdbJaxError(f"{folder} is not a usable model folder: bad {MODEL_FILE} ({type(error).__name__}: {error})") from None
    if len(vocabulary) != config.num_words:
        raise ImdbJaxError(f"{folder}: the vocabulary has {len(vocabulary)} words but the config has num_words={config.num_words}")

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

    template = create_train_state(jax.random.key(0), config)
    params = traverse_util.unflatten_dict({name: jnp.asarray(value) for name, value in flat.items()}, sep="/")
    state = template.replace(params=params, step=jnp.asarray(step, jnp.int32))
    return SavedModel(state, config, vocabulary, history, metrics, folder)
