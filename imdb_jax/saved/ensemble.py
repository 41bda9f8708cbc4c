"""Several saved models whose probabilities are averaged: ``EnsembleModel`` and its folder.

An ensemble folder holds ``ensemble.json`` and one ordinary model folder per member
(``member-0/``, ``member-1/``, ...; each loads alone with ``load_model``). ``ensemble.json`` gives
the format, each member's folder (relative, inside the ensemble's) and weight (positive, summing
to 1), and any metrics. ``imdb_jax.saved.loading.load_model`` loads either kind of folder, so
``imdb-jax predict`` and ``evaluate`` take an ensemble's folder as they take a model's.

Members may use different features (n-grams, weighting): each review is vectorised once per
distinct feature set, and the ensemble's probability is ``sum_m weight_m * p_m``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from imdb_jax import __version__
from imdb_jax.atomic import atomic_write, json_bytes
from imdb_jax.data.features import FeatureSpec
from imdb_jax.data.text import Text, token_ids
from imdb_jax.errors import ImdbJaxError
from imdb_jax.saved.model_folder import MODEL_FILE, load_single_model, save_model

FORMAT = "imdb_jax.saved.ensemble"
FORMAT_VERSION = 1
ENSEMBLE_FILE = "ensemble.json"
PROBABILITY_FLOOR = 1e-7  # the log loss of an averaged probability is taken at [floor, 1 - floor]


@dataclasses.dataclass(frozen=True, eq=False)
class EnsembleRows:
    """Reviews vectorised for every distinct feature set of an ensemble.

    Attributes:
      matrices: one float32[reviews, features] CSR matrix per distinct feature set.
      member_matrix: for each member, the index of its matrix in ``matrices``.
    """

    matrices: tuple[sp.csr_matrix, ...]
    member_matrix: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """(reviews, the widest feature set's columns)."""
        return (self.matrices[0].shape[0], max(x.shape[1] for x in self.matrices))  # pyright: ignore[reportOptionalSubscript]

    @property
    def indptr(self) -> np.ndarray:
        """Like a CSR matrix's row pointers, counting per review the known terms of the feature
        set that knows most of them (so a review with no known term has an empty row)."""
        counts = np.max([np.diff(x.indptr) for x in self.matrices], axis=0)
        return np.concatenate([[0], np.cumsum(counts)])


@dataclasses.dataclass(frozen=True, eq=False)
class EnsembleModel:
    """Models whose probabilities are averaged with fixed weights.

    Attributes:
      members: the models (``imdb_jax.saved.model_folder.SavedModel``).
      weights: float64[members], positive, summing to 1.
      metrics: figures saved with the ensemble (e.g. its test accuracy), or None.
      path: the folder it was loaded from (None when built in memory).
    """

    members: tuple[Any, ...]
    weights: np.ndarray
    metrics: dict[str, Any] | None = None
    path: Path | None = None

    def __post_init__(self) -> None:
        members = tuple(self.members)
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "weights", check_weights(self.weights, len(members)))

    @functools.cached_property
    def _feature_groups(self) -> tuple[tuple[Any, ...], tuple[int, ...]]:
        """(distinct vectorizers, each member's index into them): equal features vectorise once."""
        distinct: list[Any] = []
        member_matrix = []
        for member in self.members:
            for index, known in enumerate(distinct):
                if known is member.vocabulary or known == member.vocabulary:
                    member_matrix.append(index)
                    break
            else:
                distinct.append(member.vocabulary)
                member_matrix.append(len(distinct) - 1)
        return tuple(distinct), tuple(member_matrix)

    @property
    def vectorizers(self) -> tuple[Any, ...]:
        """The distinct feature sets (``Vocabulary`` or ``FeatureSpec``) of the members."""
        return self._feature_groups[0]

    def vectorize(self, texts: Iterable[Text] | Text) -> EnsembleRows:
        """Raw reviews vectorised once per distinct feature set (unknown terms dropped)."""
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        texts = list(texts)
        vectorizers, member_matrix = self._feature_groups
        if len(vectorizers) > 1 and all(isinstance(vectorizer, FeatureSpec) for vectorizer in vectorizers):
            tokens = token_ids(texts)  # tokenised once for every feature set
            return EnsembleRows(tuple(vectorizer.transform_tokens(tokens) for vectorizer in vectorizers), member_matrix)
        return EnsembleRows(tuple(vectorizer.transform(texts) for vectorizer in vectorizers), member_matrix)

    def rows_from(self, matrices: Sequence[sp.csr_matrix]) -> EnsembleRows:
        """``EnsembleRows`` of matrices already vectorised with ``vectorizers``, in that order."""
        if len(matrices) != len(self.vectorizers):
            raise ImdbJaxError(f"the ensemble has {len(self.vectorizers)} feature sets, got {len(matrices)} matrices")
        return EnsembleRows(tuple(matrices), self._feature_groups[1])

    def member_probabilities(self, rows: EnsembleRows, *, batch_size: int = 512) -> np.ndarray:
        """float32[members, reviews]: each member's probability that a review is positive."""
        self._check_rows(rows)
        return np.stack(
            [
                member.predict_rows(rows.matrices[index], batch_size=batch_size)
                for member, index in zip(self.members, rows.member_matrix)
            ]
        )

    def predict_rows(self, rows: EnsembleRows, *, batch_size: int = 512) -> np.ndarray:
        """float32[reviews]: the weighted mean of the members' probabilities."""
        if rows.shape[0] == 0:
            return np.zeros((0,), np.float32)
        return (self.weights @ self.member_probabilities(rows, batch_size=batch_size).astype(np.float64)).astype(
            np.float32
        )

    def predict_texts(self, texts: Iterable[Text] | Text, *, batch_size: int = 512) -> np.ndarray:
        """float32[len(texts)] probabilities that raw reviews are positive."""
        return self.predict_rows(self.vectorize(texts), batch_size=batch_size)

    def evaluate_rows(self, rows: EnsembleRows, labels: np.ndarray, *, batch_size: int = 512) -> dict[str, float]:
        """{"loss", "accuracy"} of the averaged probabilities: the mean binary cross-entropy
        (probabilities clipped to ``[1e-7, 1 - 1e-7]``) and the share with ``p > 0.5`` equal to
        the label."""
        labels = np.asarray(labels, np.float64).reshape(-1)
        if labels.shape[0] != rows.shape[0]:
            raise ImdbJaxError(f"{rows.shape[0]} reviews but {labels.shape[0]} labels")
        probabilities = self.predict_rows(rows, batch_size=batch_size).astype(np.float64)
        return binary_metrics(probabilities, labels)

    def _check_rows(self, rows: EnsembleRows) -> None:
        if not isinstance(rows, EnsembleRows) or len(rows.member_matrix) != len(self.members):
            raise ImdbJaxError("rows for an ensemble must come from its own vectorize (one matrix per feature set)")


def check_weights(weights: Sequence[float] | np.ndarray, count: int) -> np.ndarray:
    """float64[count] ensemble weights, or an ``ImdbJaxError`` unless positive and summing to 1."""
    weights = np.asarray(weights, np.float64).reshape(-1)
    if count == 0 or weights.shape != (count,):
        raise ImdbJaxError(f"an ensemble needs one weight per member: {count} members, {weights.size} weights")
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0) or abs(weights.sum() - 1.0) > 1e-6:
        raise ImdbJaxError(f"ensemble weights must be positive and sum to 1, got {weights.tolist()}")
    return weights


def binary_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{"loss", "accuracy"} of probabilities against 0/1 labels (clipped log loss; p > 0.5 is positive)."""
    p = np.clip(np.asarray(probabilities, np.float64), PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
    y = np.asarray(labels, np.float64)
    loss = -np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)) if y.size else float("nan")
    accuracy = np.mean((p > 0.5) == (y > 0.5)) if y.size else float("nan")
    return {"loss": float(loss), "accuracy": float(accuracy)}


def save_ensemble(
    path: str | os.PathLike,
    members: Sequence[Mapping[str, Any]],
    weights: Sequence[float],
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Writes an ensemble folder: each member with ``save_model``, then ``ensemble.json``.

    Args:
      path: the folder (created if needed); it must not hold a single model already.
      members: per member, ``save_model``'s arguments as a mapping: {"state", "config",
        "vocabulary", optional "history", "metrics"}.
      weights: one positive weight per member, summing to 1.
      metrics: figures to keep with the ensemble.

    Returns:
      The folder.
    """
    folder = Path(path)
    if (folder / MODEL_FILE).exists():
        raise ImdbJaxError(
            f"{folder} already holds a single model ({MODEL_FILE}); write the ensemble to another folder"
        )
    weights = check_weights(weights, len(members)).tolist()
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (member, weight) in enumerate(zip(members, weights)):
        name = f"member-{index}"
        save_model(
            folder / name,
            member["state"],
            member["config"],
            member["vocabulary"],
            member.get("history"),
            member.get("metrics"),
        )
        entries.append({"path": name, "weight": weight})
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "members": entries,
        "metrics": None if metrics is None else dict(metrics),
    }
    atomic_write(folder / ENSEMBLE_FILE, json_bytes(description))  # last: it vouches for the members
    return folder


def load_ensemble(path: str | os.PathLike) -> EnsembleModel:
    """Loads an ensemble folder written by ``save_ensemble``.

    Raises:
      ImdbJaxError: ``ensemble.json`` is missing or malformed, a member folder is outside the
        ensemble's or not a loadable model, or the weights are not positive summing to 1.
    """
    folder = Path(path)
    try:
        description = json.loads((folder / ENSEMBLE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImdbJaxError(f"{folder} is not an ensemble folder: {ENSEMBLE_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ImdbJaxError(f"{folder}: {ENSEMBLE_FILE} is not valid JSON ({error})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise ImdbJaxError(f"{folder}: {ENSEMBLE_FILE} is not an imdb_jax ensemble description")
    version = description.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ImdbJaxError(
            f"{folder} was saved in ensemble format {version!r}; this imdb_jax reads format {FORMAT_VERSION}"
        )
    entries = description.get("members")
    if not isinstance(entries, list) or not entries:
        raise ImdbJaxError(f"{folder}: {ENSEMBLE_FILE} lists no members")
    members, weights = [], []
    root = folder.resolve()
    for entry in entries:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("path"), str)
            or isinstance(entry.get("weight"), bool)
            or not isinstance(entry.get("weight"), (int, float))
        ):
            raise ImdbJaxError(f"{folder}: each member of {ENSEMBLE_FILE} needs a 'path' and a numeric 'weight'")
        member_folder = (folder / entry["path"]).resolve()
        if root not in member_folder.parents:
            raise ImdbJaxError(f"{folder}: member {entry['path']!r} is not inside the ensemble's folder")
        member = load_single_model(folder / entry["path"])
        if isinstance(member, EnsembleModel):
            raise ImdbJaxError(
                f"{folder}: member {entry['path']!r} is itself an ensemble; members must be single models"
            )
        members.append(member)
        weights.append(float(entry["weight"]))
    return EnsembleModel(tuple(members), np.asarray(weights), description.get("metrics"), folder)
