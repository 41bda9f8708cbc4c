"""``tune``: the most accurate model the package makes in a few minutes, chosen on held-out reviews.

What it does, in order (``tune``):

1. **Features round.** For every feature set of the search space it builds the n-gram features
   with ``load_imdb(..., held_out=validation)``: vocabulary, idf and naive-Bayes ratios come from
   ``train[validation:]`` only. It trains a few probe models on those reviews as one fused
   ``fit_variants`` run per feature set (every variant sees the same batches) and scores each
   on the first ``validation`` training reviews after every epoch.
2. **Models round.** On the ``refine_sets`` best feature sets, a grid of widths, depths,
   dropout and weight decay at that set's better learning rate, plus more seeds of its best
   probe, again one fused run per set.
3. **Selection, on the validation reviews only.** Each variant is scored with its weights at its
   lowest validation loss (its best epoch): validation accuracy, ties to the lower loss. The most
   accurate variant is the single choice. An ensemble is then grown from it greedily (Caruana et
   al., 2004): repeatedly add, with replacement, the variant that most lowers the validation log
   loss of the averaged probabilities, up to ``ensemble_size`` picks from at most
   ``max_feature_sets`` feature sets, stopping when nothing lowers it. The ensemble (weights =
   picks / total) is kept only if its validation accuracy beats the single choice's; otherwise
   the single model is.
4. **Retraining.** Each chosen variant is trained again on all training reviews, with its
   features refitted on all of them (``held_out=0``), for its best epoch count (the median over
   the chosen variants of one feature set, which train together), without validation.
5. **The test set, once.** Only now are the test reviews scored, once, by the final model (the
   same code ``imdb-jax evaluate`` runs), and the model folder, the report (``search.md``, a
   table of every variant) and the figure (``search.png``, validation accuracy against each
   setting) are written.

The search space (``SearchSpace``; ``BUDGETS`` names three sizes) and why:

- **Feature weighting and n-gram range** matter most: bag-of-words models on IMDb gain several
  points from word pairs and triples (Wang & Manning 2012; Mesnil et al. 2014), and naive-Bayes
  log-count ratios weigh each term by how much it says about the label. The default tries
  naive-Bayes 1-3-grams and 1-2-grams, tf-idf 1-3-grams and binary 1-3-grams (terms seen at least
  twice): weighting at 1-3-grams, and n-gram range at naive-Bayes. Different weightings also make
  different errors, which an ensemble can use.
- **Learning rate**, per weighting: rmsprop's step is about the learning rate per weight
  whatever the gradient's scale, so the change of a first-layer output is the step times the
  review's values. tf-idf rows have unit length (values about 0.05) while naive-Bayes and binary
  values are about 0.5-1, so tf-idf's learning rates are ``LEARNING_RATE_SCALE`` = 10 times the
  others'. Two rates, 1e-3 and 3e-3 (scaled), bracket what converges within the epochs given.
- **Width and depth**: the first layer's kernel is ``features x width`` and the optimiser
  updates all of it every step, so at ~600,000-950,000 features width is what costs; on these
  features 4 units do as well as 32 on validation, so widths are small (4, 8, 16) and depth is
  1 or 2.
- **Dropout** (0, 0.5) and **weight decay** (0, 1, decoupled, times the learning rate): the
  regularisers, besides early stopping at the best epoch.
- **Seeds**: further seeds of the best probe, which the ensemble can average.

Every choice above is made from validation figures; the test reviews are vectorised with the
final features and scored once, after the choice is fixed.

Measured (``benchmarks/bench_tune.py``, the figures README.md quotes; one machine: the project's
shared 2-core x86-64 Intel Xeon VM, no accelerator, other jobs beside it; machines of this kind differ
by 3-5x): the default budget trains 42 variants and keeps an ensemble of naive-Bayes 1-3-gram and
tf-idf 1-3-gram models, validation accuracy 0.9178 (best single 0.9165), **test accuracy 0.9229**,
in 140 s from nothing (empty feature and compilation caches) and 65 s with both cached;
scikit-learn's naive-Bayes 1-3-gram LogisticRegression, C chosen the same way, tests at 0.9170 in
19 s, in the same run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from imdb_jax import __version__
from imdb_jax.atomic import write_json
from imdb_jax.errors import ImdbJaxError
from imdb_jax.saved.ensemble import ENSEMBLE_FILE, EnsembleModel, EnsembleRows, save_ensemble
from imdb_jax.saved.model_folder import MODEL_FILE, SavedModel, save_model
from imdb_jax.train.fit import evaluate
from imdb_jax.train.variants import fit_variants
from imdb_jax.tune.report import write_report
from imdb_jax.tune.search import (
    SHUFFLE_SEED,
    Candidate,
    Choice,
    FeatureSet,
    SearchSpace,
    resolve_budget,
    run_search,
    select,
)


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """What ``tune`` hands back.

    Attributes:
      model: the final model (``SavedModel``, or ``EnsembleModel`` for an ensemble).
      test_accuracy, test_loss: of ``model`` on the test reviews (scored once, at the end).
      validation_accuracy, validation_loss: of the choice on the validation reviews (search models).
      candidates: every variant the search trained.
      choice: the selection (``Choice``).
      seconds: wall seconds per stage ("features", "search", "retrain", "test", "write", "total").
      summary: everything above as JSON-ready values (what ``search.json`` holds).
      output_dir: where the model and report were written (None: not written).
    """

    model: Any
    test_accuracy: float
    test_loss: float
    validation_accuracy: float
    validation_loss: float
    candidates: tuple[Candidate, ...]
    choice: Choice
    seconds: dict[str, float]
    summary: dict[str, Any]
    output_dir: Path | None = None


class _Clock:
    """Wall seconds booked per stage."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def book(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


def tune(
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    budget: str | SearchSpace = "default",
    progress: bool = True,
    output_dir: str | os.PathLike | None = None,
) -> TuneResult:
    """Searches, selects on validation reviews, retrains on all training reviews, tests once.

    Args:
      data_dir: the data, as ``load_imdb`` takes it (default ``$TFDS_DATA_DIR``).
      cache_dir: the feature cache folder, as ``load_imdb`` takes it.
      budget: "quick", "default" or "thorough" (``BUDGETS``), or a ``SearchSpace``.
      progress: progress lines and bars on stderr.
      output_dir: where to write the model folder (a single model's files, or an ensemble's
        ``ensemble.json`` and member folders) with ``search.md``, ``search.png`` and
        ``search.json``; None writes nothing.

    Returns:
      A ``TuneResult``.

    Raises:
      ImdbJaxError: a bad budget, too few training reviews for the validation count, no data,
        an ``output_dir`` that already holds a model.
    """
    space = resolve_budget(budget)
    if output_dir is not None:
        for name in (MODEL_FILE, ENSEMBLE_FILE):
            if (Path(output_dir) / name).exists():  # said now, not after minutes of training
                raise ImdbJaxError(f"{output_dir} already holds a model ({name}); write to another folder")
    clock = _Clock()
    log = functools.partial(print, file=sys.stderr, flush=True) if progress else (lambda *args, **kwargs: None)
    loaded: list[dict[str, Any]] = []

    def load(features: FeatureSet, held_out: int) -> Any:
        started = time.perf_counter()
        data = features.load(held_out, data_dir, cache_dir, progress)
        seconds = time.perf_counter() - started
        clock.book("features", seconds)
        loaded.append(
            {
                "features": features.name,
                "held_out": held_out,
                "from_cache": data.from_cache,
                "seconds": seconds,
                "columns": data.num_words,
            }
        )
        log(
            f"tune: {features.name} features (held out {held_out}): {data.num_words:,} columns, "
            f"{'from the cache' if data.from_cache else 'built'} in {seconds:.1f} s"
        )
        return data

    candidates, probabilities, labels = run_search(space, load, clock.book, log, progress)
    choice = select(candidates, probabilities, labels, space)  # pyright: ignore[reportArgumentType]
    chosen = choice.members()
    log(
        f"tune: chose {'an ensemble of ' + str(len(chosen)) if choice.ensemble else 'a single model'}: "
        f"validation accuracy {(choice.ensemble_metrics if choice.ensemble else choice.single_metrics)['accuracy']:.4f} "
        f"(best single {choice.single_metrics['accuracy']:.4f}, greedy ensemble {choice.ensemble_metrics['accuracy']:.4f})"
    )

    model, test_rows, test_labels, retrained = _retrain(space, candidates, chosen, load, clock, log, progress)
    started = time.perf_counter()
    metrics = _score(model, test_rows, test_labels)  # pyright: ignore[reportArgumentType]  # the one look at the test reviews
    clock.book("test", time.perf_counter() - started)
    log(f"tune: test accuracy {metrics['accuracy']:.4f} (loss {metrics['loss']:.4f}) on {len(test_labels):,} reviews")  # pyright: ignore[reportArgumentType]

    picked = choice.ensemble_metrics if choice.ensemble else choice.single_metrics
    summary = _summary(space, candidates, choice, retrained, metrics, picked, loaded)
    folder = None
    if output_dir is not None:
        started = time.perf_counter()
        folder = _write_model(Path(output_dir), model, retrained, summary)
        clock.book("write", time.perf_counter() - started)
    clock.seconds["total"] = clock.elapsed
    summary["seconds"] = {key: round(value, 3) for key, value in clock.seconds.items()}
    if folder is not None:  # the report and figure, after the clock: they need its figures
        write_report(summary, folder)
        write_json(folder / "search.json", summary)
    log(f"tune: {clock.seconds['total']:.1f} s in all" + ("" if folder is None else f"; wrote {folder}"))
    return TuneResult(
        model=model,
        test_accuracy=metrics["accuracy"],
        test_loss=metrics["loss"],
        validation_accuracy=picked["accuracy"],
        validation_loss=picked["loss"],
        candidates=tuple(candidates),
        choice=choice,
        seconds=dict(clock.seconds),
        summary=summary,
        output_dir=folder,
    )


# ---------------------------------------------------------------------------------------------
# Retraining on all training reviews, and the one test.


def _retrain(
    space: SearchSpace,
    candidates: Sequence[Candidate],
    chosen: list[tuple[int, float]],
    load: Callable,
    clock: _Clock,
    log: Callable,
    progress: bool,
):
    """Trains the chosen variants on all training reviews (features refitted, ``held_out=0``),
    one fused run per feature set. Returns (model, test rows, test labels, retrained records)."""
    groups: dict[FeatureSet, list[int]] = {}
    for position, (index, _) in enumerate(chosen):
        groups.setdefault(candidates[index].features, []).append(position)
    members: list[Any] = [None] * len(chosen)
    retrained: list[dict[str, Any]] = [{}] * len(chosen)
    test_matrices, member_matrix, test_labels = [], [0] * len(chosen), None
    for features, positions in groups.items():
        data = load(features, 0)
        epochs = int(math.ceil(np.median([candidates[chosen[position][0]].best_epoch for position in positions])))  # pyright: ignore[reportArgumentType, reportCallIssue]
        specs = [candidates[chosen[position][0]].spec for position in positions]
        started = time.perf_counter()
        result = fit_variants(
            specs,
            data.train,
            None,
            epochs=epochs,
            batch_size=space.batch_size,
            shuffle_seed=SHUFFLE_SEED,
            devices=jax.devices()[:1],
            progress=progress,
            description=f"retrain {features.name}",
        )
        seconds = time.perf_counter() - started
        clock.book("retrain", seconds)
        log(
            f"tune: retrained {len(specs)} {features.name} variant(s) on {len(data.train):,} reviews for {epochs} epochs in {seconds:.1f} s"
        )
        for slot, position in enumerate(positions):
            index, weight = chosen[position]
            members[position] = SavedModel(
                result.state(slot, "last"), result.config(slot), data.vocabulary, result.histories[slot]
            )
            retrained[position] = {
                "candidate": index,
                "name": candidates[index].name,
                "weight": weight,
                "epochs": epochs,
                "train_reviews": len(data.train),
                "columns": data.num_words,
            }
            member_matrix[position] = len(test_matrices)
        test_matrices.append(data.test.x)
        labels = np.asarray(data.test.y, np.float64)
        if test_labels is not None and not np.array_equal(labels, test_labels):
            raise ImdbJaxError("the feature sets disagree on the test labels")
        test_labels = labels
        del data
    if len(chosen) == 1:
        return members[0], test_matrices[0], test_labels, retrained
    model = EnsembleModel(tuple(members), np.asarray([weight for _, weight in chosen]))
    rows = EnsembleRows(tuple(test_matrices), tuple(member_matrix))
    return model, rows, test_labels, retrained


def _score(model: Any, rows: Any, labels: np.ndarray) -> dict[str, float]:
    """{"loss", "accuracy", "count"} on the test reviews, by the code ``imdb-jax evaluate`` runs."""
    if isinstance(model, EnsembleModel):
        metrics = model.evaluate_rows(rows, labels)
    else:
        metrics = evaluate(model.state, (rows, labels.astype(np.float32)))
    return {**metrics, "count": len(labels)}


def _summary(space, candidates, choice, retrained, metrics, picked, loaded) -> dict[str, Any]:
    return {
        "package_version": __version__,
        "space": dataclasses.asdict(space),
        "candidates": [candidate.to_dict() for candidate in candidates],
        "choice": {
            "single": choice.single,
            "picks": list(choice.picks),
            "ensemble": choice.ensemble,
            "single_validation": choice.single_metrics,
            "ensemble_validation": choice.ensemble_metrics,
        },
        "members": retrained,
        "validation_accuracy": picked["accuracy"],
        "validation_loss": picked["loss"],
        "test_accuracy": metrics["accuracy"],
        "test_loss": metrics["loss"],
        "test_reviews": int(metrics["count"]),
        "features_loaded": loaded,
        "features_cached": all(item["from_cache"] for item in loaded),
    }


def _write_model(folder: Path, model: Any, retrained: list[dict[str, Any]], summary: dict[str, Any]) -> Path:
    """The model folder (a single model's files, or an ensemble's) with its metrics."""
    metrics = {
        "test_accuracy": summary["test_accuracy"],
        "test_loss": summary["test_loss"],
        "validation_accuracy": summary["validation_accuracy"],
        "tuned": True,
    }
    if isinstance(model, EnsembleModel):
        save_ensemble(
            folder,
            [
                {
                    "state": member.state,
                    "config": member.config,
                    "vocabulary": member.vocabulary,
                    "history": member.history,
                    "metrics": {
                        "search_candidate": record["name"],
                        "epochs": record["epochs"],
                        "weight": record["weight"],
                    },
                }
                for member, record in zip(model.members, retrained)
            ],
            model.weights,  # pyright: ignore[reportArgumentType]
            metrics,
        )
    else:
        save_model(folder, model.state, model.config, model.vocabulary, model.history, metrics)
    return folder
