"""`SparseMLPClassifier`: scikit-learn's own estimator checks, and the classifier in pipelines,
searches and pickles, trained exactly as `imdb_jax.fit` trains."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("sklearn")

from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import imdb_jax  # noqa: E402
from imdb_jax import ModelConfig, SparseMLPClassifier  # noqa: E402

# Small and quick to learn: each fit compiles its programs, and sklearn's checks fit ~100 times.
CHECKED = SparseMLPClassifier(hidden_units=(8,), epochs=8, batch_size=16, learning_rate=0.02)

# Checks the classifier cannot pass, with the reason (scikit-learn reports them as xfail).
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@parametrize_with_checks([CHECKED], expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _words(seed: int = 0, rows: int = 240, columns: int = 40) -> tuple[sp.csr_matrix, np.ndarray]:
    """Multi-hot rows whose label is the sign of a fixed linear score (learnable)."""
    rng = np.random.default_rng(seed)
    x = (rng.random((rows, columns)) < 0.15).astype(np.float32)
    score = x @ rng.normal(size=columns)
    return sp.csr_matrix(x), (score > np.median(score)).astype(np.int64)


def test_importing_the_package_does_not_import_scikit_learn():
    code = "import sys, imdb_jax; imdb_jax.fit, imdb_jax.ModelConfig; assert 'sklearn' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# One architecture and one data set for the tests below, so that they share compiled programs.
SETTINGS = {"hidden_units": (8, 4), "l2": 1e-3, "dropout_rate": 0.25, "epochs": 3, "batch_size": 32}


@pytest.fixture(scope="module")
def fitted() -> tuple[sp.csr_matrix, np.ndarray, SparseMLPClassifier]:
    x, y = _words()
    return x, y, SparseMLPClassifier(**SETTINGS, random_state=5).fit(x, y)


def test_fit_is_imdb_jax_fit_with_the_seed_as_random_state(fitted):
    x, y, estimator = fitted
    config = ModelConfig(num_words=x.shape[1], hidden_units=(8, 4), l2=1e-3, dropout_rate=0.25)
    state, history = imdb_jax.fit(
        config, (x, y.astype(np.float32)), epochs=3, batch_size=32, seed=5, shuffle_seed=5, progress=False
    )
    for ours, theirs in zip(_leaves(estimator.params_), _leaves(state.params)):
        np.testing.assert_array_equal(ours, np.asarray(theirs))
    np.testing.assert_array_equal(estimator.predict_proba(x)[:, 1], imdb_jax.predict(state, x))
    assert estimator.history_["loss"] == history["loss"]
    assert estimator.n_iter_ == 3 and estimator.seed_ == 5 and estimator.config_ == config


def _leaves(params):
    import jax

    return jax.tree_util.tree_leaves(params)


def test_any_two_labels_dense_or_sparse_input(fitted):
    x, y, estimator = fitted
    names = np.array(["negative", "positive"])[y]
    sparse = SparseMLPClassifier(**SETTINGS, random_state=5).fit(x, names)
    dense = SparseMLPClassifier(**SETTINGS, random_state=5).fit(x.toarray().astype(np.float64), names)
    assert list(sparse.classes_) == ["negative", "positive"] and sparse.n_features_in_ == x.shape[1]
    probabilities = sparse.predict_proba(x)
    np.testing.assert_array_equal(probabilities, estimator.predict_proba(x))  # the labels' names change nothing
    np.testing.assert_array_equal(dense.predict_proba(x.toarray()), probabilities)
    np.testing.assert_array_equal(sparse.predict(x), np.where(probabilities[:, 1] > 0.5, "positive", "negative"))
    np.testing.assert_array_equal(sparse.decision_function(x) > 0, probabilities[:, 1] > 0.5)
    assert sparse.score(x, names) == np.mean(sparse.predict(x) == names)
    assert 0.5 < sparse.score(x, names) < 1  # it learnt something, on rows it trained on


def test_refuses_three_classes_and_non_finite_rows():
    x, y = _words()
    with pytest.raises(ValueError, match="Only binary classification"):
        SparseMLPClassifier(epochs=1).fit(x, y + (np.arange(y.size) % 3 == 0))
    bad = x.copy()
    bad.data[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        SparseMLPClassifier(epochs=1).fit(bad, y)
    with pytest.raises(ValueError, match="hidden_units"):
        SparseMLPClassifier(hidden_units=(0,), epochs=1).fit(x, y)
    with pytest.raises(ValueError, match="epochs"):
        SparseMLPClassifier(epochs=0).fit(x, y)


def test_a_pickle_round_trip_predicts_identically(fitted):
    x, _, estimator = fitted
    restored = pickle.loads(pickle.dumps(estimator))
    assert "_state" not in restored.__dict__  # rebuilt from the NumPy weights on first use
    np.testing.assert_array_equal(restored.predict_proba(x), estimator.predict_proba(x))
    np.testing.assert_array_equal(restored.decision_function(x), estimator.decision_function(x))
    assert restored.get_params() == estimator.get_params()


def test_early_stopping_is_fit_with_patience_and_the_best_weights():
    from sklearn.model_selection import train_test_split

    x, y = _words(rows=400)
    estimator = SparseMLPClassifier(
        hidden_units=(32,),
        learning_rate=0.05,
        epochs=30,
        batch_size=16,
        early_stopping=True,
        patience=1,
        validation_fraction=0.25,
        random_state=3,
    ).fit(x, y)
    kept, held = train_test_split(np.arange(400), test_size=0.25, random_state=3, stratify=y)
    kept, held = np.sort(kept), np.sort(held)
    labels = y.astype(np.float32)
    state, history = imdb_jax.fit(
        ModelConfig(num_words=estimator.n_features_in_, hidden_units=(32,), learning_rate=0.05),
        (x[kept], labels[kept]),
        (x[held], labels[held]),
        epochs=30,
        batch_size=16,
        seed=3,
        shuffle_seed=3,
        progress=False,
        patience=1,
        restore_best=True,
    )
    np.testing.assert_array_equal(estimator.predict_proba(x)[:, 1], imdb_jax.predict(state, x))
    assert estimator.history_["val_loss"] == history["val_loss"]
    assert estimator.n_iter_ < 30  # it stopped early


@pytest.fixture(scope="module")
def reviews(real_data_dir):
    """The first 400 training reviews of the real IMDb data, as text, with 0/1 labels."""
    from imdb_jax.data.sources import resolve_source

    raw = resolve_source(real_data_dir, "tfds").read()
    texts = [text.decode("utf-8") for text in raw.train_texts[:400]]
    return texts, np.asarray(raw.train_labels[:400])


def test_after_tfidf_in_a_pipeline_grid_search_and_cross_validation(reviews):
    texts, labels = reviews
    pipeline = make_pipeline(
        TfidfVectorizer(max_features=3000, sublinear_tf=True),
        SparseMLPClassifier(hidden_units=(16,), epochs=8, batch_size=32, learning_rate=0.01),
    )
    scores = cross_val_score(pipeline, texts, labels, cv=2)
    assert scores.shape == (2,) and scores.min() > 0.6  # chance is 0.5 on these reviews
    # The same folds and one architecture: the search reuses cross_val_score's programs.
    grid = {"sparsemlpclassifier__learning_rate": [0.01, 0.003]}
    search = GridSearchCV(pipeline, grid, cv=2).fit(texts, labels)
    assert search.cv_results_["split0_test_score"][0] == scores[0]  # the same fit, the same score
    assert search.best_estimator_[-1].n_features_in_ == 3000
    assert set(search.predict(texts[:20])) <= {0, 1}
