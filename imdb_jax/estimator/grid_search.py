"""`FusedGridSearchCV`: scikit-learn's `GridSearchCV` whose candidates train at once.

`GridSearchCV` fits its candidates one by one. Here, per fold, every candidate of a
`SparseMLPClassifier` grid trains in one `imdb_jax.fit_variants` run: different widths, depths,
penalties, dropout rates and learning rates side by side in one compiled program. Candidates that
cannot share a run (different `epochs`, `batch_size`, `random_state`, or early-stopping
settings) get one run per group of equal settings. Each candidate then becomes the
`SparseMLPClassifier` it would be after its own `fit` (`fit_variants` guarantees each variant
ends bitwise where it would alone) and is scored by the same scorer on the same rows, so
`cv_results_` holds the same scores as `GridSearchCV`'s, bitwise.
"""

from __future__ import annotations

import numbers
import time
import warnings
from collections import defaultdict
from typing import Any, cast

from sklearn.base import clone
from sklearn.exceptions import FitFailedWarning
from sklearn.metrics._scorer import _MultimetricScorer
from sklearn.model_selection import GridSearchCV, ParameterGrid, check_cv
from sklearn.utils import _safe_indexing
from sklearn.utils.validation import _num_samples, indexable

from imdb_jax.estimator.classifier import SparseMLPClassifier, resolve_seed
from imdb_jax.specs import VariantSpec


class FusedGridSearchCV(GridSearchCV):
    """`GridSearchCV` over a `SparseMLPClassifier` grid, each fold's candidates trained fused.

    Takes `GridSearchCV`'s parameters (`estimator`, `param_grid`, `scoring`, `refit`, `cv`,
    `verbose`, `error_score`, `return_train_score`; `n_jobs` and `pre_dispatch` are accepted and
    unused: one fused run already keeps the machine busy) and gives its results: `cv_results_`
    with the same keys and scores, `best_params_`, `best_score_`, `best_index_`,
    `best_estimator_`, `refit_time_`, `scorer_`, `n_splits_`, `multimetric_`, and `predict`,
    `predict_proba`, `score`, ... delegated to `best_estimator_`.

    Differences from `GridSearchCV`:
      - `estimator` must be a `SparseMLPClassifier`, and `fit` takes no fit parameters besides
        `groups` (for the splitter).
      - Timing keys: `mean_fit_time` / `std_fit_time` (and the per-split values behind them) give
        each candidate an equal share of its fused run: the run's seconds divided by the
        candidates in it. `mean_score_time` is each candidate's own scoring time.
      - `random_state=None`: one seed is drawn per fold and shared by the candidates of a run
        (their data order must be one); `GridSearchCV` draws one per fit. Ints and
        `RandomState`s give `GridSearchCV`'s seeds.
      - A failure inside a fused run fails every candidate of that run (scored `error_score`).
    """

    def fit(self, X: Any, y: Any = None, **params: Any) -> FusedGridSearchCV:
        """Runs the search: per fold, one fused run per group of candidates, then the refit.

        Args:
          X: [rows, features] array-like or sparse matrix.
          y: [rows] two labels.
          **params: only `groups`, the splitter's group labels.
        """
        groups = params.pop("groups", None)
        if params:
            raise TypeError(f"FusedGridSearchCV.fit takes no fit parameters, got {', '.join(sorted(params))}")
        if not isinstance(self.estimator, SparseMLPClassifier):
            raise TypeError(f"FusedGridSearchCV searches a SparseMLPClassifier, got {type(self.estimator).__name__}")
        scorers, refit_metric = self._get_scorers()
        X, y, groups = indexable(X, y, groups)
        cv: Any = check_cv(cast(Any, self.cv), y, classifier=True)
        self.n_splits_ = n_splits = cv.get_n_splits(X, y, groups)
        splits = list(cv.split(X, y, groups))
        if len(splits) != n_splits:
            raise ValueError(f"cv.split and cv.get_n_splits disagree: {n_splits} splits expected, got {len(splits)}")
        base = cast(SparseMLPClassifier, clone(self.estimator))
        candidates = list(ParameterGrid(self.param_grid))
        if not candidates:
            raise ValueError("No fits were performed: the grid has no candidates")
        if self.verbose > 0:
            print(
                f"Fitting {n_splits} folds for each of {len(candidates)} candidates, totalling {n_splits * len(candidates)} fits"
            )

        out: list[dict[str, Any] | None] = [None] * (len(candidates) * n_splits)
        for split, (train, test) in enumerate(splits):
            x_train, y_train = _safe_indexing(X, train), _safe_indexing(y, train)
            x_test, y_test = _safe_indexing(X, test), _safe_indexing(y, test)
            # A fresh clone per fit, as GridSearchCV makes: a RandomState parameter is then a
            # fresh copy each time, and draws GridSearchCV's seed.
            estimators = [_candidate(base, params) for params in candidates]
            fold_seed = None
            runs: dict[tuple, list[int]] = defaultdict(list)
            for index, estimator in enumerate(estimators):
                if estimator.random_state is None:
                    fold_seed = resolve_seed(None) if fold_seed is None else fold_seed
                    seed = fold_seed
                else:
                    seed = resolve_seed(estimator.random_state)
                runs[estimator.run_key(seed)].append(index)
            for key, members in runs.items():
                seconds, errors = self._fused_run(
                    [estimators[i] for i in members], x_train, y_train, key[0], f"split {split + 1}/{n_splits}"
                )
                for index, error in zip(members, errors):
                    record = {
                        "fit_time": seconds / len(members),
                        "n_test_samples": _num_samples(x_test),
                        "fit_error": error,
                    }
                    record.update(self._scores(scorers, estimators[index], x_test, y_test, x_train, y_train, error))
                    out[index * n_splits + split] = record
                if self.verbose > 1:
                    print(f"[split {split + 1}/{n_splits}] {len(members)} candidates in one run: {seconds:.1f} s")

        records = [record for record in out if record is not None]
        failed = sum(record["fit_error"] is not None for record in records)
        if failed == len(records):
            raise ValueError(f"All {failed} fits failed; the first error:\n{records[0]['fit_error']}")
        if failed:
            warnings.warn(
                f"{failed} fits failed out of {len(records)}; their scores are error_score={self.error_score!r}. "
                f"The first error:\n{next(r['fit_error'] for r in records if r['fit_error'] is not None)}",
                FitFailedWarning,
                stacklevel=2,
            )
        results = self._format_results(candidates, n_splits, records)
        first = next(record["test_scores"] for record in records if record["fit_error"] is None)
        self.multimetric_ = isinstance(first, dict)
        if callable(self.scoring) and self.multimetric_:
            self._check_refit_for_multimetric(first)
            refit_metric = self.refit
        if self.refit or not self.multimetric_:
            self.best_index_ = self._select_best_index(self.refit, refit_metric, results)
            if not callable(self.refit):
                self.best_score_ = results[f"mean_test_{refit_metric}"][self.best_index_]
            self.best_params_ = results["params"][self.best_index_]
        if self.refit:
            self.best_estimator_ = _candidate(base, self.best_params_)
            started = time.time()
            self.best_estimator_.fit(X, y)
            self.refit_time_ = time.time() - started
            if hasattr(self.best_estimator_, "feature_names_in_"):
                self.feature_names_in_ = self.best_estimator_.feature_names_in_
        self.scorer_ = scorers._scorers if isinstance(scorers, _MultimetricScorer) else scorers
        self.cv_results_ = results
        return self

    def _fused_run(
        self, estimators: list[SparseMLPClassifier], x: Any, y: Any, seed: int, label: str = ""
    ) -> tuple[float, list[str | None]]:
        """Fits `estimators` (of equal `run_key`s) in one `fit_variants` run, in place; with
        `verbose`, its epochs show as a progress bar on stderr named by `label`.

        Returns:
          The run's seconds and, per estimator, its error as text (None: fitted). Invalid
          settings fail their own candidate only; a failure of the run fails all of them.
        """
        # Deferred: JAX (~1.3 s) loads with the first fit, not when the search is imported or built.
        import jax

        from imdb_jax import fit_variants

        started = time.perf_counter()
        errors: list[str | None] = [None] * len(estimators)
        try:
            data = estimators[0].prepare(x, y, seed)
            options = estimators[0].training_options()
        except Exception as error:
            if self.error_score == "raise":
                raise
            return time.perf_counter() - started, [_describe(error)] * len(estimators)
        configs: dict[int, Any] = {}
        for index, estimator in enumerate(estimators):
            try:
                configs[index] = estimator.model_config(data.n_features)
            except Exception as error:
                if self.error_score == "raise":
                    raise
                errors[index] = _describe(error)
        if not configs:
            return time.perf_counter() - started, errors
        try:
            members = list(configs)
            result = fit_variants(
                [VariantSpec.from_config(configs[index], seed) for index in members],
                data.train,
                data.validation,
                shuffle_seed=seed,
                devices=jax.devices()[:1],  # where fit trains: the same numbers
                progress=self.verbose > 0,
                description=f"grid {label}".strip(),
                **options,
            )
            for position, index in enumerate(members):
                estimator = estimators[index]
                best = estimator.early_stopping and estimator.restore_best_weights
                state = result.state(position, "best" if best else "last")
                estimator.adopt(data, configs[index], state, result.histories[position])
        except Exception as error:
            if self.error_score == "raise":
                raise
            for index in configs:
                errors[index] = _describe(error)
        return time.perf_counter() - started, errors

    def _scores(self, scorers, estimator, x_test, y_test, x_train, y_train, error: str | None) -> dict[str, Any]:
        """{"test_scores", "score_time"[, "train_scores"]} of one fitted candidate."""
        record: dict[str, Any] = {}
        started = time.time()
        if error is None:
            record["test_scores"] = _score(scorers, estimator, x_test, y_test)
        else:
            record["test_scores"] = self._error_scores(scorers)
        record["score_time"] = time.time() - started if error is None else 0.0
        if self.return_train_score:
            record["train_scores"] = (
                _score(scorers, estimator, x_train, y_train) if error is None else self._error_scores(scorers)
            )
        return record

    def _error_scores(self, scorers) -> Any:
        if isinstance(scorers, _MultimetricScorer):
            return dict.fromkeys(scorers._scorers, self.error_score)
        return self.error_score


def _candidate(base: SparseMLPClassifier, params: dict[str, Any]) -> SparseMLPClassifier:
    """A fresh clone of `base` with a candidate's settings, made as `GridSearchCV` makes it."""
    settings = cast(dict[str, Any], clone(params, safe=False))
    return cast(SparseMLPClassifier, clone(base)).set_params(**settings)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _score(scorer, estimator, x, y) -> Any:
    """The scorer's value(s) as Python numbers, as `GridSearchCV` stores them."""
    scores = scorer(estimator, x, y)
    if isinstance(scores, dict):
        return {name: _number(name, value) for name, value in scores.items()}
    return _number("score", scores)


def _number(name: str, value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()  # NumPy scalars (and memmapped ones)
    if not isinstance(value, numbers.Number):
        raise ValueError(f"scoring must return a number, got {value!r} ({type(value).__name__}) for {name}")
    return value
