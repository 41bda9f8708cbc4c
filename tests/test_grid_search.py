"""`FusedGridSearchCV`: GridSearchCV's results, bitwise, from one fused run per fold and group."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("sklearn")

from sklearn.exceptions import FitFailedWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402

import imdb_jax  # noqa: E402
from imdb_jax import FusedGridSearchCV, ModelConfig, SparseMLPClassifier  # noqa: E402
from imdb_jax.estimator.grid_search import device_groups  # noqa: E402

BASE = SparseMLPClassifier(hidden_units=(8,), epochs=3, batch_size=32, learning_rate=0.01, random_state=2)
# Six candidates: widths, depths, a penalty, dropout and learning rates train together; the
# one with another random_state needs (and gets) a run of its own, as would another batch size.
GRID = [
    {"hidden_units": [(8,), (4, 4)], "l2": [0.0, 1e-3]},
    {"hidden_units": [(8,)], "dropout_rate": [0.5], "learning_rate": [0.02]},
    {"hidden_units": [(8,)], "random_state": [7]},
]
TIMING = ("mean_fit_time", "std_fit_time", "mean_score_time", "std_score_time")


def _words(rows: int = 200, columns: int = 30, per_row: int = 6) -> tuple[sp.csr_matrix, np.ndarray]:
    """Multi-hot rows of `per_row` words each, labelled by the sign of a fixed linear score.

    Every row holding as many words makes folds of equal sizes equal in shape, so they share
    compiled programs: the tests pay for compiling each architecture once, not once per fold.
    """
    rng = np.random.default_rng(1)
    columns_of = np.stack([rng.choice(columns, per_row, replace=False) for _ in range(rows)])
    x = sp.csr_matrix(
        (np.ones(rows * per_row, np.float32), columns_of.ravel(), np.arange(rows + 1) * per_row), (rows, columns)
    )
    score = x @ rng.normal(size=columns)
    return x, np.where(score > np.median(score), "good", "bad")


def _assert_same_results(fused: dict, plain: dict) -> None:
    assert set(fused) == set(plain)
    for key in fused:
        if key in TIMING or key.endswith("_time"):
            continue
        ours, theirs = fused[key], plain[key]
        if key == "params":
            assert ours == theirs
        elif isinstance(theirs, np.ma.MaskedArray):  # param_*: masked where a candidate lacks the setting
            np.testing.assert_array_equal(np.ma.getmaskarray(ours), np.ma.getmaskarray(theirs), err_msg=key)
            assert list(ours.compressed()) == list(theirs.compressed()), key
        else:
            assert ours.dtype == theirs.dtype, key
            np.testing.assert_array_equal(ours, theirs, err_msg=key)  # exact: no tolerance


@pytest.fixture(scope="module")
def searches():
    x, y = _words()
    cv = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)
    runs = []
    original = imdb_jax.fit_variants

    def counting(specs, *args, **kwargs):
        runs.append(len(specs))
        return original(specs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(imdb_jax, "fit_variants", counting)  # the search imports it from the package when it runs
        fused = FusedGridSearchCV(BASE, GRID, cv=cv, return_train_score=True).fit(x, y)
    plain = GridSearchCV(BASE, GRID, cv=cv, return_train_score=True).fit(x, y)
    return x, y, fused, plain, runs


def test_cv_results_equal_grid_search_cv_bitwise(searches):
    x, _, fused, plain, _ = searches
    _assert_same_results(fused.cv_results_, plain.cv_results_)
    assert fused.best_index_ == plain.best_index_ and fused.best_params_ == plain.best_params_
    assert fused.best_score_ == plain.best_score_
    np.testing.assert_array_equal(fused.predict_proba(x), plain.predict_proba(x))
    assert fused.n_splits_ == 2 and fused.refit_time_ > 0 and list(fused.classes_) == ["bad", "good"]
    assert np.unique(fused.cv_results_["split0_test_score"]).size > 1  # the candidates really differ


def test_each_fold_trains_its_candidates_in_one_run_per_group(searches):
    *_, runs = searches
    assert runs == [5, 1, 5, 1]  # per fold: the five that share settings, then the other seed


def test_multimetric_scoring_and_refit_by_name_match_grid_search_cv(searches):
    x, y, *_ = searches
    grid = {"hidden_units": [(8,), (4, 4)]}  # the programs the searches above compiled
    scoring = ["accuracy", "neg_log_loss"]
    cv = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)
    refit: Any = "neg_log_loss"  # (scikit-learn's inferred signature says bool)
    fused = FusedGridSearchCV(BASE, grid, cv=cv, scoring=scoring, refit=refit).fit(x, y)
    plain = GridSearchCV(BASE, grid, cv=cv, scoring=scoring, refit=refit).fit(x, y)
    _assert_same_results(fused.cv_results_, plain.cv_results_)
    assert fused.best_params_ == plain.best_params_ and fused.best_score_ == plain.best_score_
    assert fused.multimetric_ and set(fused.scorer_) == set(scoring)


def test_an_invalid_candidate_scores_error_score_and_the_others_train(searches):
    x, y, *_ = searches
    with pytest.warns(FitFailedWarning, match="2 fits failed"), pytest.warns(UserWarning, match="non-finite"):
        search = FusedGridSearchCV(BASE, {"hidden_units": [(8,), (0,)]}, cv=2, refit=False).fit(x, y)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores[0]) and np.isnan(scores[1])
    with pytest.raises(ValueError, match="hidden_units"):
        FusedGridSearchCV(BASE, {"hidden_units": [(0,)]}, cv=2, error_score="raise").fit(x, y)


def test_a_failing_run_fails_its_candidates_or_raises_from_the_device_thread():
    x, y = _words(rows=40)

    def failing(*_, **__):
        raise RuntimeError("the run broke")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(imdb_jax, "fit_variants", failing)
        with pytest.raises(RuntimeError, match="the run broke"):
            FusedGridSearchCV(BASE, {"l2": [0.0, 1e-3]}, cv=2, error_score="raise").fit(x, y)
        with pytest.raises(ValueError, match="All 4 fits failed; the first error:\nRuntimeError: the run broke"):
            FusedGridSearchCV(BASE, {"l2": [0.0, 1e-3]}, cv=2).fit(x, y)


def test_refuses_other_estimators():
    from sklearn.linear_model import LogisticRegression

    x, y = _words(rows=40)
    with pytest.raises(TypeError, match="SparseMLPClassifier"):
        FusedGridSearchCV(LogisticRegression(), {"C": [1.0]}, cv=2).fit(x, y)


def test_early_stopping_candidates_match_grid_search_cv(searches):
    """Candidates that stop at different epochs in one fused run score as they do alone."""
    x, y, *_ = searches
    base = SparseMLPClassifier(
        hidden_units=(8,), epochs=20, batch_size=16, learning_rate=0.05, early_stopping=True, patience=1, random_state=4
    )
    grid = {"learning_rate": [0.1, 0.03, 0.01]}  # one architecture: one program for both searches
    stopped = []
    original = imdb_jax.fit_variants

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        stopped.append([result.stopped_epoch(index) for index in range(len(result.specs))])
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(imdb_jax, "fit_variants", recording)
        fused = FusedGridSearchCV(base, grid, cv=2, refit=False).fit(x, y)
    plain = GridSearchCV(base, grid, cv=2, refit=False).fit(x, y)
    _assert_same_results(fused.cv_results_, plain.cv_results_)
    assert len(stopped) == 2 and all(epoch is not None for epoch in stopped[0] + stopped[1])  # all stopped early
    assert any(len(set(epochs)) > 1 for epochs in stopped)  # at different epochs within one run


def test_verbose_shows_each_fused_runs_epochs_and_quiet_shows_nothing(capsys):
    x, y = _words(rows=120)
    grid = {"hidden_units": [(8,), (4, 4)]}
    FusedGridSearchCV(BASE, grid, cv=2, verbose=1).fit(x, y)
    err = capsys.readouterr().err
    # Off a terminal, one line per epoch of each fold's fused run, named by its split.
    for split in (1, 2):
        assert f"grid split {split}/2" in err
    assert err.count("epoch") >= 2 * BASE.epochs and "\r" not in err
    FusedGridSearchCV(BASE, grid, cv=2).fit(x, y)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


TWO_DEVICES_SCRIPT = textwrap.dedent(
    """
    import pickle, sys
    import jax
    sys.path.insert(0, sys.argv[1])
    import imdb_jax
    from sklearn.model_selection import StratifiedKFold
    from test_grid_search import BASE, GRID, _words
    runs, original = [], imdb_jax.fit_variants

    def recording(specs, *args, **kwargs):
        result = original(specs, *args, **kwargs)
        kernel = result.fused_state().params["first"]["kernel"]
        runs.append((len(specs), [str(device) for device in kwargs["devices"]], [str(d) for d in kernel.devices()]))
        return result

    imdb_jax.fit_variants = recording
    x, y = _words()
    cv = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)
    search = imdb_jax.FusedGridSearchCV(BASE, GRID, cv=cv, return_train_score=True, refit=False).fit(x, y)
    with open(sys.argv[2], "wb") as file:
        pickle.dump({"cv_results": search.cv_results_, "runs": runs, "devices": len(jax.devices())}, file)
    """
)


def test_two_devices_share_a_run_and_give_the_same_results_bitwise(searches, tmp_path):
    """With 2 CPU devices (in a subprocess) each fold's run of five is split over both devices,
    one thread each, and `cv_results_` is still `GridSearchCV`'s (on one device) bitwise."""
    *_, plain, _ = searches
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    tests, found_at = str(Path(__file__).resolve().parent), tmp_path / "found.pickle"
    done = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES_SCRIPT, tests, str(found_at)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = pickle.loads(found_at.read_bytes())
    assert found["devices"] == 2
    # Per fold: the five of one seed split 3 + 2 over both devices (8 + 8 with dropout, one
    # block, and 4-4 | the two with L2, 8 + 4 wide), each share on its own device; the other
    # seed's one on the first.
    on = [(count, asked, used) for count, asked, used in found["runs"]]
    assert sorted(on) == sorted(
        [(3, ["cpu:0"], ["cpu:0"]), (2, ["cpu:1"], ["cpu:1"]), (1, ["cpu:0"], ["cpu:0"])] * 2
    ), on
    plain_results = {key: value for key, value in plain.cv_results_.items() if not key.endswith("_time")}
    found_results = {key: value for key, value in found["cv_results"].items() if not key.endswith("_time")}
    _assert_same_results(found_results, plain_results)


def test_device_groups_balance_work_and_keep_blocks_whole():
    def configs(*widths_and_l2):
        return [ModelConfig(num_words=10, hidden_units=units, l2=l2) for units, l2 in widths_and_l2]

    mixed = configs(((16, 16), 0.0), ((64,), 0.0), ((64,), 1e-3), ((32, 32, 32), 0.0), ((32, 32, 32), 0.0))
    assert device_groups(mixed, 1) == [[0, 1, 2, 3, 4]]
    assert device_groups(mixed, 2) == [[0, 2], [1, 3, 4]]  # 16 + 64 with L2 (x 1.5) | 64 + 2 x 32 (one block)
    # A block of more than a device's share is cut into near-equal pieces.
    same = configs(*[((8,), 0.0)] * 6)
    assert device_groups(same, 2) == [[0, 1, 2], [3, 4, 5]]
    assert device_groups(same, 4) == [[0, 1], [2, 3], [4, 5]]  # 3 devices do as well as 4
    assert device_groups(configs(*[((8,), 0.0)] * 3, ((8,), 1e-3)), 2) == [[0, 1], [2, 3]]
    # A wide candidate no split can share: the fewest devices within 10% of the least work.
    assert device_groups(configs(((512,), 0.0), ((16,), 0.0), ((16,), 0.0)), 2) == [[0, 1, 2]]
    assert device_groups(configs(((8,), 0.0)), 8) == [[0]]
