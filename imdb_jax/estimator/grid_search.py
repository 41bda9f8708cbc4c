"""`FusedGridSearchCV`: scikit-learn's `GridSearchCV` whose candidates train at once.

`GridSearchCV` fits its candidates one by one. Here, per fold, every candidate of a
`SparseMLPClassifier` grid trains in one `imdb_jax.fit_variants` run: different widths, depths,
penalties, dropout rates and learning rates side by side in one compiled program. Candidates that
cannot share a run (different `epochs`, `batch_size`, `random_state`, or early-stopping
settings) get one run per group of equal settings. Each candidate then becomes the
`SparseMLPClassifier` it would be after its own `fit` (`fit_variants` guarantees each variant
ends bitwise where it would alone) and is scored by the same scorer on the same rows, so
`cv_results_` holds the same scores as `GridSearchCV`'s, bitwise.

With several devices (on a CPU, one per core when `imdb_jax.train.cpu_devices.use_every_core()`
ran before JAX was imported, as the command line does), a run's candidates are split into one
group per device, balanced by work (`device_groups`), and each device trains its groups in a
thread of its own, fold after fold, while the main thread cuts the next folds: the devices
never wait for each other. Every candidate is scored on the first device (by its device's
thread), so each scoring program compiles once. A candidate's numbers depend neither on its
company nor on its device (every CPU device runs the same code), so the scores stay bitwise
`GridSearchCV`'s.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

from sklearn.base import clone
from sklearn.exceptions import FitFailedWarning
from sklearn.metrics._scorer import _MultimetricScorer
from sklearn.model_selection import GridSearchCV, ParameterGrid, check_cv
from sklearn.utils import _safe_indexing
from sklearn.utils.validation import _num_samples, indexable

from imdb_jax.estimator.classifier import PreparedData, SparseMLPClassifier, resolve_seed
from imdb_jax.models.layout import block_keys
from imdb_jax.specs import VariantSpec

# A penalised candidate's epoch costs about this many times an unpenalised one's of its width
# (`device_groups`).
PENALTY_COST = 1.5


class FusedGridSearchCV(GridSearchCV):
    """`GridSearchCV` over a `SparseMLPClassifier` grid, each fold's candidates trained fused.

    Takes `GridSearchCV`'s parameters (`estimator`, `param_grid`, `scoring`, `refit`, `cv`,
    `verbose`, `error_score`, `return_train_score`; `n_jobs` and `pre_dispatch` are accepted and
    unused: the candidates spread over JAX's local devices instead, see below) and gives its
    results: `cv_results_`
    with the same keys and scores, `best_params_`, `best_score_`, `best_index_`,
    `best_estimator_`, `refit_time_`, `scorer_`, `n_splits_`, `multimetric_`, and `predict`,
    `predict_proba`, `score`, ... delegated to `best_estimator_`.

    Differences from `GridSearchCV`:
      - `estimator` must be a `SparseMLPClassifier`, and `fit` takes no fit parameters besides
        `groups` (for the splitter).
      - Devices: the candidates of a run are split over the local devices of JAX's default
        backend, balanced by work (`device_groups`: the fewest devices within 10% of the least
        work), one thread per device. JAX starts with one CPU device unless told otherwise:
        call `imdb_jax.train.cpu_devices.use_every_core()` before JAX is first imported to get
        one per core (or set `XLA_FLAGS=--xla_force_host_platform_device_count=N`).
      - Timing keys: `mean_fit_time` / `std_fit_time` (and the per-split values behind them) give
        each candidate an equal share of its fused run on its device: the run's seconds divided
        by the candidates in it (runs on different devices overlap in time). `mean_score_time`
        is each candidate's own scoring time.
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
        devices = _local_devices()
        executors = [ThreadPoolExecutor(1, thread_name_prefix=f"grid-device-{i}") for i in range(len(devices))]
        cancel = threading.Event()
        # (split, label, candidate indices, the future of their share of a run on one device)
        units: list[tuple[int, str, list[int], Future]] = []
        try:
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
                label = f"split {split + 1}/{n_splits}"
                test_rows = _num_samples(x_test)
                for key, members in runs.items():
                    # Cut here, on the main thread, while the devices train the folds before.
                    started = time.perf_counter()
                    prepared, errors = self._prepare_run([estimators[i] for i in members], x_train, y_train, key[0])
                    shared = (time.perf_counter() - started) / len(members)
                    for index, error in zip(members, errors):
                        if error is not None:
                            failed = self._scores(scorers, None, x_test, y_test, x_train, y_train, error)
                            out[index * n_splits + split] = self._record(shared, test_rows, error, failed)
                    if prepared is None:
                        continue
                    data, options, configs = prepared
                    positions = sorted(configs)  # in `members`, of those that can train
                    shares = device_groups([configs[position] for position in positions], len(devices))
                    for device, share in enumerate(shares):
                        chosen = [positions[position] for position in share]
                        indices = [members[position] for position in chosen]
                        where = f"{label}, device {device + 1}/{len(shares)}" if len(shares) > 1 else label
                        future = executors[device].submit(
                            self._train_and_score,
                            [estimators[index] for index in indices],
                            [configs[position] for position in chosen],
                            data,
                            options,
                            key[0],
                            (devices[device], devices[0]),
                            where,
                            cancel,
                            scorers,
                            (x_test, y_test, x_train, y_train),
                            shared,
                        )
                        units.append((split, where, indices, future))
            for split, where, indices, future in units:
                seconds, records = future.result()
                for index, record in zip(indices, records):
                    out[index * n_splits + split] = record
                if self.verbose > 1:
                    print(f"[{where}] {len(records)} candidates in one run: {seconds:.1f} s")
        except BaseException:
            cancel.set()  # a run in progress stops at the end of its epoch
            raise
        finally:
            for executor in executors:
                executor.shutdown(wait=True, cancel_futures=True)

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

    def _prepare_run(
        self, estimators: list[SparseMLPClassifier], x: Any, y: Any, seed: int
    ) -> tuple[tuple[PreparedData, dict[str, Any], dict[int, Any]] | None, list[str | None]]:
        """The data, training options and model configs that `estimators` (of equal `run_key`s)
        share in one fused run.

        Returns:
          (data, options, {position in `estimators`: config}) or None when none can train, and
          per estimator its error as text (None: it can train). Invalid settings fail their own
          candidate only; data that cannot be prepared fails all of them.
        """
        errors: list[str | None] = [None] * len(estimators)
        try:
            data = estimators[0].prepare(x, y, seed)
            options = estimators[0].training_options()
        except Exception as error:
            if self.error_score == "raise":
                raise
            return None, [_describe(error)] * len(estimators)
        configs: dict[int, Any] = {}
        for index, estimator in enumerate(estimators):
            try:
                configs[index] = estimator.model_config(data.n_features)
            except Exception as error:
                if self.error_score == "raise":
                    raise
                errors[index] = _describe(error)
        return ((data, options, configs) if configs else None), errors

    def _train_and_score(
        self,
        estimators: list[SparseMLPClassifier],
        configs: list[Any],
        data: PreparedData,
        options: dict[str, Any],
        seed: int,
        devices: tuple[Any, Any],
        label: str,
        cancel: threading.Event,
        scorers: Any,
        split: tuple[Any, Any, Any, Any],
        shared_seconds: float,
    ) -> tuple[float, list[dict[str, Any]]]:
        """One device's share of a fused run: trains `estimators` (with their `configs`) in one
        `fit_variants` run on `devices[0]`, in place, then scores each one on `devices[1]` (the
        search's first device, whichever trained them: each scoring program compiles once).

        Returns:
          The run's seconds and each estimator's record ("fit_time": its share of the run plus
          `shared_seconds`, "n_test_samples", "fit_error", the scores).
        """
        # Deferred: JAX (~1.3 s) loads with the first fit, not when the search is imported or built.
        import jax

        x_test, y_test, x_train, y_train = split
        with jax.default_device(devices[0]):  # the run's arrays and programs live on its device
            seconds, errors = self._fused_run(estimators, configs, data, options, seed, devices, label, cancel)
        with jax.default_device(devices[1]):
            records = [
                self._record(
                    shared_seconds + seconds / len(estimators),
                    _num_samples(x_test),
                    error,
                    self._scores(scorers, estimator, x_test, y_test, x_train, y_train, error),
                )
                for estimator, error in zip(estimators, errors)
            ]
        return seconds, records

    def _fused_run(
        self,
        estimators: list[SparseMLPClassifier],
        configs: list[Any],
        data: PreparedData,
        options: dict[str, Any],
        seed: int,
        devices: tuple[Any, Any],
        label: str,
        cancel: threading.Event,
    ) -> tuple[float, list[str | None]]:
        """Fits `estimators` in one `fit_variants` run on `devices[0]`, in place, their models
        then moved to `devices[1]`; with `verbose`, its epochs show as a progress bar on stderr
        named by `label`. A failure of the run fails all of them; `cancel` stops it at the end
        of an epoch.

        Returns:
          The run's seconds and, per estimator, its error as text (None: fitted).
        """
        # Deferred: JAX (~1.3 s) loads with the first fit, not when the search is imported or built.
        import jax

        from imdb_jax import fit_variants

        def stop_when_cancelled(*_: Any) -> None:
            if cancel.is_set():
                raise _Cancelled("the search was interrupted")

        started = time.perf_counter()
        errors: list[str | None] = [None] * len(estimators)
        if cancel.is_set():
            return 0.0, ["_Cancelled: the search was interrupted"] * len(estimators)
        try:
            result = fit_variants(
                [VariantSpec.from_config(config, seed) for config in configs],
                data.train,
                data.validation,
                shuffle_seed=seed,
                devices=[devices[0]],  # one device per run: fit's numbers, on any of them
                progress=self.verbose > 0,
                description=f"grid {label}".strip(),
                on_epoch_end=stop_when_cancelled,
                **options,
            )
            for position, estimator in enumerate(estimators):
                best = estimator.early_stopping and estimator.restore_best_weights
                # Scored on the first device, whichever trained it: one scoring program per shape.
                state = jax.device_put(result.state(position, "best" if best else "last"), devices[1])
                estimator.adopt(data, configs[position], state, result.histories[position])
        except Exception as error:
            if self.error_score == "raise" or isinstance(error, _Cancelled):
                raise
            errors = [_describe(error)] * len(estimators)
        return time.perf_counter() - started, errors

    @staticmethod
    def _record(fit_time: float, test_rows: int, error: str | None, scores: dict[str, Any]) -> dict[str, Any]:
        """One fit's raw record, as `_format_results` takes it (`scores`: from `_scores`)."""
        return {"fit_time": fit_time, "n_test_samples": test_rows, "fit_error": error, **scores}

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


class _Cancelled(Exception):
    """Raised in a device's thread to stop its run when the search fails or is interrupted."""


def _local_devices() -> list[Any]:
    """The devices to spread a search over: the default backend's local devices (one process;
    across processes, the first only, as `fit` trains)."""
    # Deferred: JAX (~1.3 s) loads with the first fit, not when the search is imported or built.
    import jax

    from imdb_jax.train import compile_cache

    compile_cache.enable()  # once, here, before the devices' threads would race to it
    return list(jax.local_devices()) if jax.process_count() == 1 else list(jax.local_devices()[:1])


def device_groups(configs: Sequence[Any], devices: int) -> list[list[int]]:
    """The candidates (indices into `configs`, `ModelConfig`s) each device trains, balanced by work.

    A candidate's work is its first layer's width, times `PENALTY_COST` with an L1 or L2
    penalty: an epoch's cost on CPU is mostly the first layer's embedding bag, whose gather and
    scatter-add move `width` floats per non-zero, and a penalty adds about half as much again
    (solo epochs on 16,667 IMDb reviews of 10,000 words: 64 wide 0.22 s, with L2 0.33 s; 16-16
    0.09 s, with L2 0.14 s; dropout adds nothing measurable). A fused run costs about what its
    candidates cost alone, so works add up. The candidates of a block (`block_keys`: the same
    widths, penalty or not: what a fused run stacks together) stay together unless the block is
    more than a device's share of the work, when it is cut into as many near-equal pieces as
    that takes. Blocks and pieces go heaviest first, each to the device with the least work so
    far. The fewest devices within 10% of the least work are used (as
    `imdb_jax.train.variants.balanced_device_count` chooses): every device used compiles a
    program of its own. Each group keeps the candidates' order; empty groups are left out.
    """
    blocks: dict[tuple, list[int]] = {}
    for index, key in enumerate(block_keys(configs)):
        blocks.setdefault(key, []).append(index)

    def cost(indices: Sequence[int]) -> float:
        total = 0.0
        for index in indices:
            config = configs[index]
            width = int(config.hidden_units[0]) if config.hidden_units else 1
            total += width * (PENALTY_COST if config.l1 > 0 or config.l2 > 0 else 1.0)
        return total

    everything = cost(range(len(configs)))

    def plan(count: int) -> tuple[float, list[list[int]]]:
        pieces = []
        for members in blocks.values():
            cuts = min(len(members), max(1, math.ceil(cost(members) * count / everything - 1e-9)))
            size, extra = divmod(len(members), cuts)
            bounds = [cut * size + min(cut, extra) for cut in range(cuts + 1)]
            pieces.extend(members[bounds[cut] : bounds[cut + 1]] for cut in range(cuts))
        loads, groups = [0.0] * count, [[] for _ in range(count)]
        for piece in sorted(pieces, key=lambda piece: (-cost(piece), piece[0])):
            device = min(range(count), key=lambda device: (loads[device], device))
            loads[device] += cost(piece)
            groups[device].extend(piece)
        return max(loads), [sorted(group) for group in groups if group]

    plans = [plan(count) for count in range(1, max(min(devices, len(configs)), 1) + 1)]
    least = min(work for work, _ in plans)
    return next(groups for work, groups in plans if work <= 1.1 * least)


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
