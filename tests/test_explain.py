"""`imdb_jax.saved.explain` and `imdb-jax predict --explain`: gradient x input through the model."""

from __future__ import annotations

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imdb_jax.cli import main
from imdb_jax.config import ModelConfig
from imdb_jax.data.features import FeatureSpec
from imdb_jax.data.text import Vocabulary
from imdb_jax.saved.ensemble import EnsembleModel
from imdb_jax.saved.explain import explain_rows, explain_texts, input_gradients
from imdb_jax.saved.model_folder import SavedModel, save_model
from imdb_jax.train.fit import fit

NEUTRAL = ("the", "film", "plot", "actor", "scene", "story", "music", "ending", "was", "and")


def _corpus(seed: int = 0, reviews: int = 200) -> tuple[list[str], np.ndarray]:
    """Reviews of neutral words whose label is set by one planted word: zqgood or zqbad."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, reviews)
    texts = []
    for label in labels:
        words = list(rng.choice(NEUTRAL, 8)) + ["zqgood" if label else "zqbad"]
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts, labels.astype(np.float32)


@pytest.fixture(scope="module")
def word_model() -> SavedModel:
    texts, labels = _corpus()
    vocabulary, x = Vocabulary.fit_transform(texts, num_words=100)
    config = ModelConfig(num_words=len(vocabulary), hidden_units=(8,), learning_rate=1e-2)
    state, _ = fit(config, (x, labels), epochs=15, batch_size=32, progress=False)
    return SavedModel(state, config, vocabulary)


@pytest.fixture(scope="module")
def nb_model() -> SavedModel:
    """1-2-grams with naive-Bayes values: the inputs are not all 1."""
    texts, labels = _corpus(seed=1)
    features, x = FeatureSpec.fit_transform(texts, labels, ngrams=2, weighting="nb")
    config = ModelConfig(num_words=len(features), hidden_units=(8,), learning_rate=1e-2)
    state, _ = fit(config, (x, labels), epochs=15, batch_size=32, progress=False)
    return SavedModel(state, config, features)


def test_planted_words_rank_first(word_model, nb_model):
    for model in (word_model, nb_model):
        positive, negative = explain_texts(
            model, ["the film zqgood was the story", "music zqbad and the ending"], top=3
        )
        assert positive[0]["term"] == "zqgood" and positive[0]["contribution"] > 0
        assert negative[0]["term"] == "zqbad" and negative[0]["contribution"] < 0
        assert len(positive) <= 3
        sizes = [abs(item["contribution"]) for item in positive]
        assert sizes == sorted(sizes, reverse=True)


def test_contributions_are_gradient_times_input(nb_model):
    """Against the dense model: d logit / d x (one jax.grad of a dense row) times x."""
    texts = ["the film zqgood was", "zqbad plot and music", "the the the"]
    x = nb_model.vectorize(texts)
    logits, gradients = input_gradients(nb_model.state, x)
    dense = jnp.asarray(x.toarray())

    def logit(row):
        return nb_model.state.apply_fn({"params": nb_model.state.params}, row[None, :])[0]

    for row in range(len(texts)):
        reference = np.asarray(jax.grad(logit)(dense[row]))
        start, stop = x.indptr[row], x.indptr[row + 1]
        np.testing.assert_allclose(gradients[start:stop], reference[x.indices[start:stop]], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(logits[row], logit(dense[row]), rtol=1e-5, atol=1e-6)
    explained = explain_rows(nb_model, x, top=100)
    for row in range(len(texts)):
        start, stop = x.indptr[row], x.indptr[row + 1]
        expected = {
            nb_model.vocabulary.terms[column]: float(gradient) * float(value)
            for column, gradient, value in zip(x.indices[start:stop], gradients[start:stop], x.data[start:stop])
            if gradient * value != 0
        }
        assert {item["term"]: item["contribution"] for item in explained[row]} == pytest.approx(
            expected, rel=1e-6, abs=1e-9
        )


def test_an_ensemble_of_one_model_twice_explains_as_the_model(word_model):
    texts = ["the film zqgood was the story", "music zqbad and the ending", "plot plot"]
    twice = EnsembleModel((word_model, word_model), np.array([0.5, 0.5]))
    alone = explain_texts(word_model, texts, top=4)
    together = explain_texts(twice, texts, top=4)
    for one, two in zip(alone, together):
        assert [item["term"] for item in one] == [item["term"] for item in two]
        assert [item["contribution"] for item in two] == pytest.approx([item["contribution"] for item in one], rel=1e-5)


def test_no_known_terms_and_no_reviews(word_model):
    assert explain_texts(word_model, ["qqq zzz", ""], top=5) == [[], []]
    assert explain_texts(word_model, [], top=5) == []


def _run(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(argv)
        except SystemExit as exit:
            status = exit.code
    return status, stdout.getvalue(), stderr.getvalue()  # pyright: ignore[reportReturnType]


def test_predict_explain(nb_model, tmp_path):
    folder = save_model(tmp_path / "model", nb_model.state, nb_model.config, nb_model.vocabulary)
    status, stdout, _ = _run(
        ["predict", "--model", str(folder), "--explain", "--top", "2", "--json", "the zqgood film", "qqq"]
    )
    assert status == 0
    found = json.loads(stdout)["predictions"]
    assert found[0]["explanation"][0]["term"] == "zqgood" and len(found[0]["explanation"]) <= 2
    assert found[1]["explanation"] == [] and found[1]["probability"] is None
    status, stdout, _ = _run(["predict", "--model", str(folder), "--explain", "the zqbad film"])
    assert status == 0
    lines = stdout.splitlines()
    assert lines[0].split()[1] == "negative" and lines[1].strip().startswith("why: -zqbad (")
    status, stdout, _ = _run(["predict", "--model", str(folder), "the zqbad film"])
    assert status == 0 and "why:" not in stdout
    status, _, stderr = _run(["predict", "--model", str(folder), "--explain", "--top", "0", "x"])
    assert status == 2 and "--top" in stderr
