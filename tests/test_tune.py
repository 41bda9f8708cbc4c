"""`imdb_jax.tune` and `imdb-jax tune` on a small synthetic corpus: the choice never reads the test
set, the folder it writes works in `predict` and `evaluate`, ensembles save, load and score."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from imdb_jax.cli import main
from imdb_jax.config import ModelConfig
from imdb_jax.data.features import FeatureSpec
from imdb_jax.errors import ImdbJaxError
from imdb_jax.saved.ensemble import EnsembleModel, EnsembleRows, binary_metrics, load_ensemble, save_ensemble
from imdb_jax.saved.loading import load_model
from imdb_jax.saved.model_folder import SavedModel
from imdb_jax.specs import VariantSpec
from imdb_jax.train.fit import fit
from imdb_jax.tune.runner import tune
from imdb_jax.tune.search import BUDGETS, Candidate, FeatureSet, SearchSpace, select

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
POSITIVE = ("great", "wonderful", "loved", "superb", "moving")
NEGATIVE = ("awful", "boring", "terrible", "dull", "waste")
NEUTRAL = ("the", "film", "plot", "actor", "scene", "story", "music", "ending", "a", "was", "and", "it")
VALIDATION = 60

# A search of a few seconds: two feature sets, two rounds, an ensemble step.
SPACE = SearchSpace(
    feature_sets=(FeatureSet("nb", 2, min_count=1), FeatureSet("binary", 1, min_count=1)),
    probes=(((4,), 0.0),),
    learning_rates=(3e-3, 1e-2),
    refine_sets=1,
    hidden=((4,), (8,)),
    dropout=(0.0,),
    weight_decay=(0.0,),
    extra_seeds=1,
    epochs=3,
    batch_size=64,
    validation=VALIDATION,
    ensemble_size=3,
)


def write_corpus(folder: Path, *, flip_test: bool = False, seed: int = 0) -> Path:
    """An aclImdb folder of 240 training and 80 test reviews: sentiment words decide, with noise.
    `flip_test` swaps the test reviews' labels (the same files under the other label)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", 120), ("test", 40)):
        for label, words, other in (("pos", POSITIVE, NEGATIVE), ("neg", NEGATIVE, POSITIVE)):
            stored = {"pos": "neg", "neg": "pos"}[label] if flip_test and split == "test" else label
            (folder / split / stored).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                review = list(rng.choice(NEUTRAL, 8)) + list(rng.choice(words, 2))
                if rng.random() < 0.3:
                    review.append(str(rng.choice(other)))
                rng.shuffle(review)
                (folder / split / stored / f"{index}_{7 if label == 'pos' else 2}.txt").write_text(
                    " ".join(review) + "."
                )
    return folder


def _run(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(argv)
        except SystemExit as exit:
            status = exit.code
    return status, stdout.getvalue(), stderr.getvalue()  # pyright: ignore[reportReturnType]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    return {
        "plain": write_corpus(root / "plain" / "aclImdb"),
        "flipped": write_corpus(root / "flipped" / "aclImdb", flip_test=True),
        "cache": root / "cache",
        "root": root,
    }


@pytest.fixture(scope="module")
def tuned(corpora):
    output = corpora["root"] / "model"
    result = tune(corpora["plain"], corpora["cache"], budget=SPACE, progress=False, output_dir=output)
    return result


def _choice(result) -> tuple:
    return (
        result.choice.single,
        result.choice.picks,
        result.choice.ensemble,
        [(c.name, c.best_epoch, c.val_loss, c.val_accuracy) for c in result.candidates],
    )


def test_flipped_test_labels_change_nothing_but_the_test_score(corpora, tuned):
    flipped = tune(corpora["flipped"], corpora["cache"], budget=SPACE, progress=False)
    assert _choice(flipped) == _choice(tuned)
    assert flipped.validation_accuracy == tuned.validation_accuracy
    assert tuned.test_accuracy + flipped.test_accuracy == pytest.approx(1.0, abs=1e-12)
    assert tuned.test_accuracy > 0.8  # the corpus is learnable: the flip is visible


def test_fused_validation_logits_are_each_variants_own():
    """The one fused pass gives each variant the logits its own best weights give alone."""
    from imdb_jax.train.fit import predict
    from imdb_jax.train.variants import fit_variants
    from imdb_jax.tune.search import best_validation_logits

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120).astype(np.float32)
    texts = [
        " ".join(list(rng.choice(NEUTRAL, 6)) + list(rng.choice(POSITIVE if label else NEGATIVE, 2)))
        for label in labels
    ]
    features, x = FeatureSpec.fit_transform(texts, labels, ngrams=2, weighting="nb")
    specs = [
        VariantSpec(hidden_units=(8,), seed=1),
        VariantSpec(hidden_units=(4,), dropout_rate=0.5),
        VariantSpec(hidden_units=(4, 4)),
    ]
    train, validation = (x[40:], labels[40:]), (x[:40], labels[:40])
    result = fit_variants(specs, train, validation, epochs=3, batch_size=32, progress=False)
    logits = best_validation_logits(result, validation, 32)
    for index in range(len(specs)):
        alone = predict(result.state(index, "best"), validation[0])
        np.testing.assert_allclose(1 / (1 + np.exp(-logits[index].astype(np.float64))), alone, rtol=1e-5, atol=1e-6)


def test_single_choice_figures_match_its_history(tuned):
    single = tuned.candidates[tuned.choice.single]
    assert tuned.choice.single_metrics["accuracy"] == pytest.approx(single.val_accuracy, abs=1e-9)
    assert tuned.choice.single_metrics["loss"] == pytest.approx(single.val_loss, rel=1e-4)


def test_search_features_hold_the_validation_reviews_out(tuned):
    loads = tuned.summary["features_loaded"]
    search = [item for item in loads if item["held_out"] == VALIDATION]
    final = [item for item in loads if item["held_out"] == 0]
    assert search and final and len(search) + len(final) == len(loads)
    assert loads.index(final[0]) > max(loads.index(item) for item in search)  # refitted only after the choice
    assert {item["features"] for item in search} == {features.name for features in SPACE.feature_sets}


def test_the_search_covers_the_space(tuned):
    rounds = {c.round for c in tuned.candidates}
    assert rounds == {"features", "models"}
    probes = [c for c in tuned.candidates if c.round == "features"]
    assert len(probes) == len(SPACE.feature_sets) * len(SPACE.probes) * len(SPACE.learning_rates)
    scales = {
        c.features.weighting: c.spec.learning_rate
        for c in probes
        if c.spec.learning_rate == min(p.spec.learning_rate for p in probes if p.features == c.features)
    }
    assert scales == {"nb": 3e-3, "binary": 3e-3}
    assert all(c.best_epoch is not None and 0 <= c.val_accuracy <= 1 for c in tuned.candidates)
    assert len({(c.features, c.spec) for c in tuned.candidates}) == len(tuned.candidates)  # nothing trained twice


def test_folder_works_in_predict_and_evaluate(corpora, tuned):
    folder = tuned.output_dir
    names = {path.name for path in folder.iterdir()}
    assert {"search.md", "search.png", "search.json"} <= names
    assert ("ensemble.json" in names) == tuned.choice.ensemble
    model = load_model(folder)
    texts = ["a great and wonderful film", "boring awful plot", "zzz"]
    np.testing.assert_allclose(model.predict_texts(texts), tuned.model.predict_texts(texts), rtol=1e-6, atol=1e-7)
    status, stdout, _ = _run(["predict", "--model", str(folder), "--json", *texts])
    assert status == 0
    found = json.loads(stdout)["predictions"]
    assert found[0]["label"] == "positive" and found[1]["label"] == "negative" and found[2]["probability"] is None
    status, stdout, _ = _run(
        [
            "evaluate",
            "--model",
            str(folder),
            "--data-dir",
            str(corpora["plain"]),
            "--cache-dir",
            str(corpora["cache"]),
            "--no-progress",
            "--json",
        ]
    )
    assert status == 0
    scored = json.loads(stdout)
    assert scored["num_test"] == 80
    assert scored["test_accuracy"] == pytest.approx(tuned.test_accuracy, abs=1e-9)


def test_report_and_summary(tuned):
    folder = tuned.output_dir
    report = (folder / "search.md").read_text()
    assert f"**Test accuracy {tuned.test_accuracy:.4f}**" in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(rows) == len(tuned.candidates)
    assert (folder / "search.png").read_bytes().startswith(PNG_SIGNATURE)
    summary = json.loads((folder / "search.json").read_text())
    assert summary["test_accuracy"] == tuned.test_accuracy and summary["test_reviews"] == 80
    assert summary["seconds"]["total"] > 0 and len(summary["candidates"]) == len(tuned.candidates)


def test_cli_tune_json(corpora, tmp_path):
    output = tmp_path / "cli-model"
    status, stdout, stderr = _run(
        [
            "tune",
            "--budget",
            "quick",
            "--validation",
            str(VALIDATION),
            "--data-dir",
            str(corpora["plain"]),
            "--cache-dir",
            str(corpora["cache"]),
            "--output",
            str(output),
            "--no-progress",
            "--json",
        ]
    )
    assert status == 0, stderr
    summary = json.loads(stdout)
    assert summary["output"] == str(output) and 0.5 < summary["test_accuracy"] <= 1.0
    assert summary["variants"] > 0 and sum(member["weight"] for member in summary["members"]) == pytest.approx(1.0)
    status, _, stderr = _run(["tune", "--output", str(output), "--data-dir", str(corpora["plain"])])
    assert status == 2 and "already holds a model" in stderr


@pytest.mark.parametrize(
    "argv, message", [(["--validation", "0"], "--validation"), (["--budget", "huge"], "invalid choice")]
)
def test_cli_tune_bad_options(argv, message, tmp_path):
    status, _, stderr = _run(["tune", "--output", str(tmp_path / "out"), *argv])
    assert status == 2 and message in stderr
    assert not (tmp_path / "out").exists()


def test_budgets_are_search_spaces():
    assert set(BUDGETS) == {"quick", "default", "thorough"}
    default = BUDGETS["default"]
    assert default.validation == 10000 and {features.weighting for features in default.feature_sets} == {
        "nb",
        "tfidf",
        "binary",
    }
    with pytest.raises(ImdbJaxError):
        tune(budget="huge")
    with pytest.raises(ImdbJaxError):
        dataclasses.replace(default, epochs=0)


# ------------------------------------------------------------------------------------------ select


def _candidates(count: int, sets: list[FeatureSet]) -> list[Candidate]:
    return [Candidate(sets[index], VariantSpec(seed=index), "features", {}, 1, 0.5, 0.0) for index in range(count)]


def _with_accuracy(candidates, probabilities, labels):
    return [
        dataclasses.replace(
            c, val_accuracy=binary_metrics(p, labels)["accuracy"], val_loss=binary_metrics(p, labels)["loss"]
        )
        for c, p in zip(candidates, probabilities)
    ]


def test_select_keeps_an_ensemble_only_when_validation_accuracy_improves():
    labels = np.array([1, 1, 1, 0, 0, 0], np.float64)
    # Each model is confidently wrong on a different review; averaged, all are right.
    probabilities = np.array(
        [
            [0.1, 0.9, 0.9, 0.1, 0.1, 0.1],
            [0.9, 0.1, 0.9, 0.1, 0.1, 0.1],
            [0.9, 0.9, 0.1, 0.1, 0.1, 0.1],
        ]
    )
    sets = [FeatureSet("nb", 3), FeatureSet("nb", 3), FeatureSet("nb", 3)]
    candidates = _with_accuracy(_candidates(3, sets), probabilities, labels)
    space = dataclasses.replace(BUDGETS["default"], ensemble_size=3)
    choice = select(candidates, probabilities, labels, space)
    assert choice.ensemble and sorted(choice.picks) == [0, 1, 2]
    assert choice.ensemble_metrics["accuracy"] == 1.0 and choice.single_metrics["accuracy"] == pytest.approx(5 / 6)
    assert sorted(weight for _, weight in choice.members()) == pytest.approx([1 / 3] * 3)
    # The same models, where averaging lowers the log loss but cannot beat the single model's accuracy.
    agreeing = np.array(
        [[0.9, 0.9, 0.9, 0.1, 0.1, 0.4], [0.6, 0.6, 0.6, 0.4, 0.4, 0.4], [0.6, 0.6, 0.6, 0.4, 0.4, 0.4]]
    )
    candidates = _with_accuracy(_candidates(3, sets), agreeing, labels)
    choice = select(candidates, agreeing, labels, space)
    assert not choice.ensemble and choice.members() == [(0, 1.0)]


def test_select_limits_feature_sets():
    labels = np.array([1, 1, 1, 0, 0, 0], np.float64)
    probabilities = np.array(
        [
            [0.1, 0.9, 0.9, 0.1, 0.1, 0.1],
            [0.9, 0.1, 0.9, 0.1, 0.1, 0.1],
            [0.9, 0.9, 0.1, 0.1, 0.1, 0.1],
        ]
    )
    sets = [FeatureSet("nb", 3), FeatureSet("tfidf", 3), FeatureSet("binary", 3)]
    candidates = _with_accuracy(_candidates(3, sets), probabilities, labels)
    space = dataclasses.replace(BUDGETS["default"], ensemble_size=3, max_feature_sets=2)
    choice = select(candidates, probabilities, labels, space)
    assert len({sets[index] for index in choice.picks}) <= 2


# ---------------------------------------------------------------------------------------- ensemble


@pytest.fixture(scope="module")
def two_models():
    """Two small models on different features (nb 1-2-grams, binary words) of the same reviews."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 160).astype(np.float32)
    texts = [
        " ".join(list(rng.choice(NEUTRAL, 6)) + list(rng.choice(POSITIVE if label else NEGATIVE, 2)))
        for label in labels
    ]
    models = []
    for weighting, ngrams in (("nb", 2), ("binary", 1)):
        features, x = FeatureSpec.fit_transform(texts, labels, ngrams=ngrams, weighting=weighting)
        config = ModelConfig(num_words=len(features), hidden_units=(4,), learning_rate=1e-2)
        state, history = fit(config, (x, labels), epochs=5, batch_size=32, progress=False)
        models.append(SavedModel(state, config, features, history))
    return models


def test_ensemble_folder_round_trip(two_models, tmp_path, write_aclimdb):
    folder = save_ensemble(
        tmp_path / "ensemble",
        [{"state": m.state, "config": m.config, "vocabulary": m.vocabulary, "history": m.history} for m in two_models],
        [0.75, 0.25],
        {"note": "test"},
    )
    loaded = load_model(folder)
    assert isinstance(loaded, EnsembleModel) and loaded.metrics == {"note": "test"}
    texts = ["great film", "the boring plot", "wonderful moving scene and awful music", "qqq"]
    expected = 0.75 * two_models[0].predict_texts(texts) + 0.25 * two_models[1].predict_texts(texts)
    np.testing.assert_allclose(loaded.predict_texts(texts), expected, rtol=1e-6)
    rows = loaded.vectorize(texts)
    assert isinstance(rows, EnsembleRows) and len(rows.matrices) == 2
    assert list(np.diff(rows.indptr)) == [max(np.diff(x.indptr)[i] for x in rows.matrices) for i in range(4)]
    assert np.diff(rows.indptr)[-1] == 0
    labels = np.array([1, 0, 1, 0], np.float32)
    assert loaded.evaluate_rows(rows, labels) == pytest.approx(binary_metrics(expected, labels), rel=1e-6)

    status, stdout, _ = _run(["predict", "--model", str(folder), "--json", *texts])
    assert status == 0
    found = json.loads(stdout)["predictions"]
    assert [entry["probability"] for entry in found[:3]] == pytest.approx(expected[:3].tolist(), rel=1e-6)
    assert found[3]["probability"] is None
    data = write_aclimdb(tmp_path / "aclImdb")
    status, stdout, stderr = _run(
        [
            "evaluate",
            "--model",
            str(folder),
            "--data-dir",
            str(data),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
            "--json",
        ]
    )
    assert status == 0, stderr
    scored = json.loads(stdout)
    # The test reviews written above, scored by the ensemble's own predictions (metrics are means:
    # their order does not matter).
    from conftest import FAKE_REVIEWS

    test_texts = [text.decode() for label in ("pos", "neg") for text in FAKE_REVIEWS[("test", label)].values()]
    test_labels = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
    wanted = binary_metrics(
        0.75 * two_models[0].predict_texts(test_texts) + 0.25 * two_models[1].predict_texts(test_texts), test_labels
    )
    assert scored["num_test"] == 4 and math.isfinite(scored["test_loss"])
    assert scored["test_accuracy"] == pytest.approx(wanted["accuracy"], abs=1e-9)
    assert scored["test_loss"] == pytest.approx(wanted["loss"], rel=1e-5)


def test_bad_ensembles(two_models, tmp_path):
    member = {"state": two_models[0].state, "config": two_models[0].config, "vocabulary": two_models[0].vocabulary}
    with pytest.raises(ImdbJaxError, match="sum to 1"):
        save_ensemble(tmp_path / "a", [member, member], [0.5, 0.6])
    folder = save_ensemble(tmp_path / "b", [member, member], [0.5, 0.5])
    description = json.loads((folder / "ensemble.json").read_text())
    description["members"][1]["path"] = "../elsewhere"
    (folder / "ensemble.json").write_text(json.dumps(description))
    with pytest.raises(ImdbJaxError, match="not inside"):
        load_ensemble(folder)
    (folder / "ensemble.json").write_text("{not json")
    with pytest.raises(ImdbJaxError, match="not valid JSON"):
        load_model(folder)
