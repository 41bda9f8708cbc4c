"""The search of ``imdb_jax.tune.runner``: its space (``SearchSpace``, ``BUDGETS``), the fused runs that
train and score its variants on the validation reviews (``run_search``), and the choice among them
(``select``). What the space holds and why: the ``imdb_jax.tune.runner`` docstring."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from imdb_jax.data.features import check_settings
from imdb_jax.data.imdb import load_imdb
from imdb_jax.errors import ImdbJaxError
from imdb_jax.saved.ensemble import binary_metrics
from imdb_jax.specs import VariantSpec
from imdb_jax.train.variants import fit_variants

LEARNING_RATE_SCALE = {"binary": 1.0, "nb": 1.0, "tfidf": 10.0}
SHUFFLE_SEED = 0


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """One ``load_imdb`` feature setting of the search.

    Attributes:
      weighting: "binary", "tfidf" or "nb".
      ngrams: longest word n-gram.
      min_count: the fewest occurrences (in the fitted training reviews) a term needs.
      num_words: the most terms kept (most frequent); None keeps every term seen ``min_count`` times.
    """

    weighting: str
    ngrams: int
    min_count: int = 2
    num_words: int | None = None

    def __post_init__(self) -> None:
        check_settings(self.ngrams, self.num_words, self.min_count, self.weighting)

    @property
    def name(self) -> str:
        """ "nb 1-3", "tfidf 1-2", "binary words"."""
        span = "words" if self.ngrams == 1 else f"1-{self.ngrams}"
        return f"{self.weighting} {span}"

    def load(self, held_out: int, data_dir: Any, cache_dir: Any, progress: bool) -> Any:
        return load_imdb(
            num_words=self.num_words,
            ngrams=self.ngrams,
            weighting=self.weighting,
            min_count=self.min_count,
            held_out=held_out,
            data_dir=data_dir,
            cache_dir=cache_dir,
            progress=progress,
        )


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What ``tune`` tries (module docstring: what and why).

    Attributes:
      feature_sets: the features round's feature sets.
      probes: (hidden_units, dropout_rate) of the probe models, each at every learning rate.
      learning_rates: rates for binary and naive-Bayes values; times ``LEARNING_RATE_SCALE`` per
        weighting.
      refine_sets: how many of the best feature sets get the models round.
      hidden: the models round's hidden widths (one tuple per architecture).
      dropout: the models round's dropout rates.
      weight_decay: the models round's decoupled weight decays.
      extra_seeds: further seeds of each refined set's best probe.
      epochs: epochs of every search run (each variant keeps its best epoch).
      batch_size: reviews per update.
      validation: the first N training reviews, held out of the features and the training.
      ensemble_size: the most picks of the greedy ensemble (1: a single model always).
      max_feature_sets: the most distinct feature sets in an ensemble (each is retrained apart).
    """

    feature_sets: tuple[FeatureSet, ...]
    probes: tuple[tuple[tuple[int, ...], float], ...] = (((4,), 0.0), ((8,), 0.5))
    learning_rates: tuple[float, ...] = (1e-3, 3e-3)
    refine_sets: int = 2
    hidden: tuple[tuple[int, ...], ...] = ((4,), (16,), (8, 8))
    dropout: tuple[float, ...] = (0.0, 0.5)
    weight_decay: tuple[float, ...] = (0.0, 1.0)
    extra_seeds: int = 2
    epochs: int = 6
    batch_size: int = 512
    validation: int = 10000
    ensemble_size: int = 5
    max_feature_sets: int = 2

    def __post_init__(self) -> None:
        if not self.feature_sets or not self.probes or not self.learning_rates:
            raise ImdbJaxError("a search space needs at least one feature set, probe and learning rate")
        for name in ("epochs", "batch_size", "validation", "ensemble_size", "max_feature_sets"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ImdbJaxError(f"{name} must be a positive integer, got {value!r}")
        if len(set(self.feature_sets)) != len(self.feature_sets):
            raise ImdbJaxError("the search space lists a feature set twice")

    def probe_specs(self, features: FeatureSet) -> list[VariantSpec]:
        scale = LEARNING_RATE_SCALE[features.weighting]
        return [
            VariantSpec(hidden_units=hidden, dropout_rate=dropout, learning_rate=rate * scale, seed=0)
            for hidden, dropout in self.probes
            for rate in self.learning_rates
        ]

    def refine_specs(self, best_probe: VariantSpec) -> list[VariantSpec]:
        grid = [
            VariantSpec(
                hidden_units=hidden,
                dropout_rate=dropout,
                weight_decay=decay,
                learning_rate=best_probe.learning_rate,
                seed=0,
            )
            for hidden in self.hidden
            for dropout in self.dropout
            for decay in self.weight_decay
        ]
        seeds = [
            dataclasses.replace(best_probe, seed=best_probe.seed + offset, name="")
            for offset in range(1, self.extra_seeds + 1)
        ]
        return grid + seeds


NB_1_3, NB_1_2, TFIDF_1_3, BINARY_1_3 = (
    FeatureSet("nb", 3),
    FeatureSet("nb", 2),
    FeatureSet("tfidf", 3),
    FeatureSet("binary", 3),
)
BUDGETS: dict[str, SearchSpace] = {
    # About a minute and a half on the 2-core CPU: the two best-known weightings, one refined.
    "quick": SearchSpace(
        feature_sets=(NB_1_3, TFIDF_1_3),
        probes=(((4,), 0.0),),
        refine_sets=1,
        hidden=((4,), (8,)),
        dropout=(0.0, 0.5),
        weight_decay=(0.0,),
        extra_seeds=1,
        ensemble_size=3,
    ),
    # Under five minutes on the 2-core CPU, features built from nothing.
    "default": SearchSpace(feature_sets=(NB_1_3, NB_1_2, TFIDF_1_3, BINARY_1_3)),
    # More feature sets, a wider grid, more seeds and epochs: about three times the default's time.
    "thorough": SearchSpace(
        feature_sets=(NB_1_3, NB_1_2, FeatureSet("nb", 1), TFIDF_1_3, FeatureSet("tfidf", 2), BINARY_1_3),
        learning_rates=(1e-3, 3e-3, 1e-2),
        refine_sets=3,
        hidden=((4,), (8,), (16,), (8, 8)),
        dropout=(0.0, 0.25, 0.5),
        weight_decay=(0.0, 1.0),
        extra_seeds=4,
        epochs=8,
        ensemble_size=8,
        max_feature_sets=3,
    ),
}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One variant trained in the search, scored on the validation reviews.

    Attributes:
      features: its feature set.
      spec: its model settings and seed.
      round: "features" or "models".
      history: its Keras-style per-epoch history.
      best_epoch: the epoch of its lowest validation loss (None if it diverged throughout).
      val_loss, val_accuracy: at ``best_epoch``.
    """

    features: FeatureSet
    spec: VariantSpec
    round: str
    history: dict[str, list]
    best_epoch: int | None
    val_loss: float
    val_accuracy: float

    @property
    def name(self) -> str:
        return f"{self.features.name}: {self.spec.name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "features_name": self.features.name,
            "features": dataclasses.asdict(self.features),
            "spec": self.spec.to_dict(),
            "round": self.round,
            "best_epoch": self.best_epoch,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "history": self.history,
        }


@dataclasses.dataclass(frozen=True)
class Choice:
    """What selection made of the candidates (indices into them).

    Attributes:
      single: the most accurate candidate.
      picks: the greedy ensemble's picks, in order (repeats allowed), starting with ``single``.
      ensemble: whether the ensemble was kept (its validation accuracy beat ``single``'s).
      single_metrics, ensemble_metrics: validation {"loss", "accuracy"} of each.
    """

    single: int
    picks: tuple[int, ...]
    ensemble: bool
    single_metrics: dict[str, float]
    ensemble_metrics: dict[str, float]

    def members(self) -> list[tuple[int, float]]:
        """(candidate, weight) of the final model, by first pick."""
        if not self.ensemble:
            return [(self.single, 1.0)]
        order = list(dict.fromkeys(self.picks))
        return [(index, self.picks.count(index) / len(self.picks)) for index in order]


def resolve_budget(budget: str | SearchSpace) -> SearchSpace:
    if isinstance(budget, SearchSpace):
        return budget
    if budget not in BUDGETS:
        raise ImdbJaxError(f"budget must be one of {', '.join(BUDGETS)} or a SearchSpace, got {budget!r}")
    return BUDGETS[budget]


# ---------------------------------------------------------------------------------------------
# The search: fused runs, scored on the validation reviews.


def run_search(space: SearchSpace, load: Callable, book: Callable[[str, float], None], log: Callable, progress: bool):
    """Both rounds (``imdb_jax.tune.runner`` steps 1 and 2).

    Args:
      space: what to train.
      load: ``load(features, held_out) -> IMDbData``.
      book: ``book(stage, seconds)`` records time.
      log: prints a progress line.
      progress: progress bars for the runs.

    Returns:
      (candidates, float64[candidates, validation] their validation probabilities at their best
      epochs, float64[validation] the validation labels).
    """
    candidates: list[Candidate] = []
    probabilities: list[np.ndarray] = []
    labels = None

    def run(features: FeatureSet, specs: list[VariantSpec], round_name: str) -> None:
        nonlocal labels
        data = load(features, space.validation)
        if not 0 < space.validation < len(data.train):
            raise ImdbJaxError(
                f"validation must be between 1 and {len(data.train) - 1} training reviews, got {space.validation}"
            )
        train, validation = data.split_validation(space.validation)
        del data
        if labels is None:
            labels = np.asarray(validation.y, np.float64)
        started = time.perf_counter()
        found, found_probabilities = train_candidates(features, specs, train, validation, space, round_name, progress)
        book("search", time.perf_counter() - started)
        candidates.extend(found)
        probabilities.extend(found_probabilities)
        best = max(found, key=_rank)
        log(
            f"tune: {round_name} round, {features.name}: {len(specs)} variants in {time.perf_counter() - started:.1f} s; "
            f"best {best.spec.name} (validation accuracy {best.val_accuracy:.4f} at epoch {best.best_epoch})"
        )

    for features in space.feature_sets:
        run(features, space.probe_specs(features), "features")
    by_set = {
        features: max((c for c in candidates if c.features == features), key=_rank) for features in space.feature_sets
    }
    for features in sorted(by_set, key=lambda features: _rank(by_set[features]), reverse=True)[: space.refine_sets]:
        done = {c.spec for c in candidates if c.features == features}
        specs = [spec for spec in dict.fromkeys(space.refine_specs(by_set[features].spec)) if spec not in done]
        if specs:
            run(features, specs, "models")
    return candidates, np.stack(probabilities), labels


def _rank(candidate: Candidate) -> tuple[float, float]:
    """Larger is better: validation accuracy, then lower validation loss (diverged last)."""
    if candidate.best_epoch is None:
        return (-math.inf, -math.inf)
    return (candidate.val_accuracy, -candidate.val_loss)


def train_candidates(
    features: FeatureSet,
    specs: Sequence[VariantSpec],
    train: Any,
    validation: Any,
    space: SearchSpace,
    round_name: str,
    progress: bool,
) -> tuple[list[Candidate], list[np.ndarray]]:
    """One fused run of ``specs``; each variant's validation figures and probabilities at its best epoch."""
    result = fit_variants(
        specs,
        train,
        validation,
        epochs=space.epochs,
        batch_size=space.batch_size,
        shuffle_seed=SHUFFLE_SEED,
        devices=jax.devices()[:1],
        progress=progress,
        description=f"tune {features.name}",
    )
    logits = best_validation_logits(result, validation, space.batch_size)
    candidates, probabilities = [], []
    for index, spec in enumerate(specs):
        history = result.histories[index]
        best = result.best_epoch(index)
        loss = math.nan if best is None else history["val_loss"][best - 1]
        accuracy = math.nan if best is None else history["val_accuracy"][best - 1]
        candidates.append(Candidate(features, spec, round_name, history, best, loss, accuracy))
        probabilities.append(
            1.0 / (1.0 + np.exp(-logits[index].astype(np.float64)))
            if best is not None
            else np.full(logits.shape[1], 0.5)
        )
    return candidates, probabilities


def best_validation_logits(result: Any, validation: Any, batch_size: int) -> np.ndarray:
    """float32[variants, reviews]: every variant's validation logits with its best weights, from
    one compiled pass of all of them fused."""
    return result.logits(validation, weights="best", batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# Selection: validation figures only.


def select(
    candidates: Sequence[Candidate], probabilities: np.ndarray, labels: np.ndarray, space: SearchSpace
) -> Choice:
    """The single choice and the greedy ensemble (module docstring, step 3).

    Args:
      candidates: the trained variants.
      probabilities: float64[candidates, validation] each one's validation probabilities at its best epoch.
      labels: float64[validation] the validation labels.
      space: for ``ensemble_size`` and ``max_feature_sets``.
    """
    alive = [index for index, candidate in enumerate(candidates) if candidate.best_epoch is not None]
    if not alive:
        raise ImdbJaxError("every variant of the search diverged; nothing to choose")
    single = max(alive, key=lambda index: (*_rank(candidates[index]), -index))
    picks = [single]
    total = probabilities[single].copy()
    current = binary_metrics(total, labels)["loss"]
    while len(picks) < space.ensemble_size:
        sets = {candidates[index].features for index in picks}
        best, best_loss = None, current
        for index in alive:
            if candidates[index].features not in sets and len(sets) >= space.max_feature_sets:
                continue
            loss = binary_metrics((total + probabilities[index]) / (len(picks) + 1), labels)["loss"]
            if loss < best_loss:
                best, best_loss = index, loss
        if best is None:
            break
        picks.append(best)
        total += probabilities[best]
        current = best_loss
    single_metrics = binary_metrics(probabilities[single], labels)
    ensemble_metrics = binary_metrics(total / len(picks), labels)
    keep = len(set(picks)) > 1 and ensemble_metrics["accuracy"] > single_metrics["accuracy"]
    return Choice(single, tuple(picks), keep, single_metrics, ensemble_metrics)
