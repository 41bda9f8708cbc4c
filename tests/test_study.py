"""The study: experiment definitions, study.json, the computed report, figures, the retrain, and
variant spec files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp

from imdb_jax import Split, VariantSpec, load_specs, run_study
from imdb_jax.data import IMDbData
from imdb_jax.errors import ImdbJaxError
from imdb_jax.study import EXPERIMENTS, conclusions, report_markdown, select_experiments, union, variant_summary
from imdb_jax.text import Vocabulary

NUM_WORDS = 64


def synthetic_data(num_train: int = 120, num_test: int = 60, seed: int = 0) -> IMDbData:
    """Reviews whose label is told by which half of a 64-word vocabulary most of their words
    come from, plus noise words."""
    rng = np.random.default_rng(seed)

    def split(rows: int) -> Split:
        labels = rng.integers(0, 2, rows).astype(np.float32)
        indptr, indices = [0], []
        for label in labels:
            signal = rng.choice(NUM_WORDS // 2, 5, replace=False) + (NUM_WORDS // 2) * int(label)
            noise = rng.choice(NUM_WORDS, 3, replace=False)
            words = np.unique(np.concatenate([signal, noise]))
            indices.extend(words)
            indptr.append(len(indices))
        x = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(rows, NUM_WORDS))
        return Split(x, labels)

    vocabulary = Vocabulary(tuple(f"word{index}" for index in range(NUM_WORDS)))
    return IMDbData(split(num_train), split(num_test), vocabulary, source="synthetic")


# ---------------------------------------------------------------------------------------------
# Experiment definitions.


def test_experiments_are_the_seeds_thirteen_models():
    assert [spec.hidden_units for spec in EXPERIMENTS["units"]] == [(4,), (16,), (512,)]
    assert [spec.hidden_units for spec in EXPERIMENTS["layers"]] == [(16,), (16, 16), (16, 16, 16), (16, 16, 16, 16)]
    assert [spec.hidden_units for spec in EXPERIMENTS["epochs"]] == [(16, 16)]
    assert [(spec.l1, spec.l2) for spec in EXPERIMENTS["regularization"]] == [(0, 0), (0.001, 0), (0, 0.001)]
    assert [spec.dropout_rate for spec in EXPERIMENTS["dropout"]] == [0, 0.5]
    assert all(spec.hidden_units == (16, 16) for name in ("regularization", "dropout") for spec in EXPERIMENTS[name])
    assert sum(len(specs) for specs in EXPERIMENTS.values()) == 13


def test_all_trains_each_distinct_variant_once():
    specs, members = union(select_experiments("all"))
    # 13 models, of which 16 (units, layers) and 16-16 (layers, epochs, regularization, dropout) repeat.
    assert len(specs) == 9
    sixteen_sixteen = specs.index(VariantSpec((16, 16)))
    assert [name for name, indices in members.items() if sixteen_sixteen in indices] == ["layers", "epochs", "regularization", "dropout"]
    assert [len(members[name]) for name in EXPERIMENTS] == [3, 4, 1, 3, 2]


def test_select_experiments_rejects_unknown_names_and_mixes_specs():
    with pytest.raises(ImdbJaxError, match="unknown experiment 'width'.*units, layers"):
        select_experiments(["units", "width"])
    chosen = select_experiments(["dropout", VariantSpec((8,)), "units"])
    assert list(chosen) == ["units", "dropout", "custom"]
    assert chosen["custom"] == (VariantSpec((8,)),)
    with pytest.raises(ImdbJaxError, match="no variants"):
        select_experiments([])


# ---------------------------------------------------------------------------------------------
# The report follows the numbers: hand-made histories where we choose the outcome.


def _history(val_loss, loss=None):
    val_loss = list(val_loss)
    loss = list(loss) if loss is not None else [0.5 - 0.02 * epoch for epoch in range(len(val_loss))]
    return {
        "loss": loss,
        "accuracy": [0.8] * len(val_loss),
        "val_loss": val_loss,
        "val_accuracy": [0.9 - value / 10 for value in val_loss],
        "diverged": [math.isnan(value) for value in val_loss],
    }


def _valley(best_epoch, best, epochs=6):
    """Validation losses falling to `best` at `best_epoch`, rising after."""
    return [best + 0.05 * abs(epoch - best_epoch) for epoch in range(1, epochs + 1)]


def _summary(curves, experiments):
    """A study summary from {name: (spec, history)} and {experiment: [names]}."""
    names = list(curves)
    summary = {
        "settings": {"epochs": 6, "batch_size": 512, "shuffle_seed": 0, "train_reviews": 15000, "validation_reviews": 10000},
        "experiments": {experiment: [names.index(name) for name in members] for experiment, members in experiments.items()},
        "variants": [
            variant_summary(spec, name, history, [e for e, members in experiments.items() if name in members])
            for name, (spec, history) in curves.items()
        ],
        "retrain": {"variant": "16-16", "epochs": 3, "train_reviews": 25000, "test_loss": 0.3, "test_accuracy": 0.88},
        "wall_s": 1.0,
        "devices": ["cpu"],
    }
    summary["conclusions"] = conclusions(summary)
    return summary


def _seedlike(l1_best, l2_best, dropout_best_epoch, dropout_best):
    curves = {
        "4": (VariantSpec((4,)), _history(_valley(5, 0.30), loss=[0.6 - 0.01 * e for e in range(6)])),
        "16": (VariantSpec((16,)), _history(_valley(3, 0.28))),
        "512": (VariantSpec((512,)), _history(_valley(1, 0.29), loss=[0.2 - 0.03 * e for e in range(6)])),
        "16-16": (VariantSpec((16, 16)), _history(_valley(4, 0.27))),
        "16-16-16": (VariantSpec((16, 16, 16)), _history(_valley(2, 0.285))),
        "16-16 l1=0.001": (VariantSpec((16, 16), l1=0.001), _history(_valley(6, l1_best))),
        "16-16 l2=0.001": (VariantSpec((16, 16), l2=0.001), _history(_valley(4, l2_best))),
        "16-16 dropout=0.5": (VariantSpec((16, 16), dropout_rate=0.5), _history(_valley(dropout_best_epoch, dropout_best))),
    }
    experiments = {
        "units": ["4", "16", "512"],
        "layers": ["16", "16-16", "16-16-16"],
        "epochs": ["16-16"],
        "regularization": ["16-16", "16-16 l1=0.001", "16-16 l2=0.001"],
        "dropout": ["16-16", "16-16 dropout=0.5"],
    }
    return _summary(curves, experiments)


def test_report_states_what_the_numbers_say():
    summary = _seedlike(l1_best=0.31, l2_best=0.26, dropout_best_epoch=6, dropout_best=0.275)
    report = report_markdown(summary)
    assert "Width: 16 units did best (lowest validation loss 0.2800 at epoch 3)" in report
    assert "512 units overfit soonest (validation loss lowest at epoch 1, rising after)" in report
    assert "4 units fit the training reviews least" in report
    assert "Depth: 2 hidden layers did best (lowest validation loss 0.2700 at epoch 4); 3 hidden layers overfit soonest" in report
    assert "The 16-16 model's validation loss is lowest at epoch 4 (0.2700) and turns up after it" in report
    assert "L2(0.001) lowered the minimum validation loss (0.2600 vs 0.2700 without a penalty)" in report
    assert "L1(0.001) did not lower the minimum validation loss (0.3100 vs 0.2700" in report
    assert "L2(0.001) helped; L2(0.001) most." in report
    assert "dropout 0.5 moved the best epoch later, from 4 to 6, and its minimum validation loss was not lower" in report
    assert "test accuracy 0.8800" in report


def test_report_changes_when_the_numbers_change():
    summary = _seedlike(l1_best=0.25, l2_best=0.29, dropout_best_epoch=2, dropout_best=0.26)
    report = report_markdown(summary)
    assert summary["conclusions"]["regularization"]["helped"] == ["L1(0.001)"]
    assert "L1(0.001) lowered the minimum validation loss (0.2500" in report
    assert "L2(0.001) did not lower" in report
    assert "dropout 0.5 moved the best epoch earlier, from 4 to 2, and its minimum validation loss was lower" in report
    summary = _seedlike(l1_best=0.40, l2_best=0.29, dropout_best_epoch=4, dropout_best=0.30)
    report = report_markdown(summary)
    assert "No penalty helped; L2(0.001) came closest." in report
    assert "dropout 0.5 left the best epoch where it was (4)" in report


def test_report_handles_diverged_variants_and_no_overfitting():
    curves = {
        "8": (VariantSpec((8,)), _history([0.5, 0.4, 0.3, 0.25])),  # still falling at the end
        "8 lr=1e+30": (VariantSpec((8,), learning_rate=1e30), _history([0.6, math.nan, math.nan, math.nan])),
        "8 lr=10": (VariantSpec((8,), learning_rate=10.0), _history([math.nan] * 4)),
    }
    summary = _summary(curves, {"custom": list(curves)})
    assert summary["variants"][1]["diverged_epoch"] == 2 and summary["variants"][1]["best_epoch"] == 1
    assert summary["variants"][2]["best_epoch"] is None and summary["variants"][2]["best_val_loss"] is None
    report = report_markdown(summary)
    assert "Best: 8 (lowest validation loss 0.2500 at epoch 4)" in report
    assert "still at its lowest at the last epoch (4): no overfitting yet" in report
    assert "Diverged: 8 lr=1e+30, 8 lr=10." in report
    assert "| 8 lr=10 | n/a | n/a |" in report


# ---------------------------------------------------------------------------------------------
# A whole study on synthetic data, end to end.

STUDY = {
    "widths": [VariantSpec((4,), seed=1), VariantSpec((8, 8), learning_rate=3e-3)],
    "penalties": [VariantSpec((8, 8), learning_rate=3e-3), VariantSpec((8, 8), l2=0.01, learning_rate=3e-3)],
}


@pytest.fixture(scope="module")
def synthetic_study(tmp_path_factory):
    output = tmp_path_factory.mktemp("study")
    data = synthetic_data()
    result = run_study(STUDY, data, output_dir=output, validation=40, epochs=4, batch_size=32, progress=False)
    return result, data


def test_study_json_holds_every_variant_and_epoch(synthetic_study):
    result, _ = synthetic_study
    stored = json.loads((result.output_dir / "study.json").read_text())
    assert [variant["name"] for variant in stored["variants"]] == ["4 seed=1", "8-8 lr=0.003", "8-8 l2=0.01 lr=0.003"]
    assert stored["experiments"] == {"widths": [0, 1], "penalties": [1, 2]}
    assert [variant["experiments"] for variant in stored["variants"]] == [["widths"], ["widths", "penalties"], ["penalties"]]
    for variant, spec in zip(stored["variants"], result.specs):
        assert VariantSpec.from_dict(variant["spec"]) == spec
        assert all(len(values) == 4 for values in variant["history"].values())
        val_loss = variant["history"]["val_loss"]
        assert variant["best_epoch"] == int(np.argmin(val_loss)) + 1
        assert variant["best_val_loss"] == pytest.approx(min(val_loss))
        assert variant["best_val_accuracy"] == pytest.approx(max(variant["history"]["val_accuracy"]))
        assert variant["diverged"] is False
    assert stored["settings"]["train_reviews"] == 80 and stored["settings"]["validation_reviews"] == 40
    assert len(stored["runs"]) == 1  # merged: one fit_variants run for both experiments
    run = stored["runs"][0]
    assert sorted(name for group in run["groups"] for name in group["variants"]) == sorted(v["name"] for v in stored["variants"])
    assert run["compile_s"] > 0 and run["wall_s"] >= run["compile_s"]
    assert stored["devices"]


def test_study_histories_are_the_trained_variants(synthetic_study):
    result, _ = synthetic_study
    stored = json.loads((result.output_dir / "study.json").read_text())
    run = result.runs[0]
    for position, spec in enumerate(run.specs):
        variant = stored["variants"][result.specs.index(spec)]
        np.testing.assert_allclose(variant["history"]["val_loss"], run.histories[position]["val_loss"], rtol=1e-12)


def test_study_report_matches_the_json(synthetic_study):
    result, _ = synthetic_study
    stored = json.loads((result.output_dir / "study.json").read_text())
    report = (result.output_dir / "report.md").read_text()
    best = min(stored["variants"], key=lambda variant: variant["best_val_loss"])
    assert stored["best_variant"] == best["name"]
    for experiment, indices in stored["experiments"].items():
        winner = min((stored["variants"][index] for index in indices), key=lambda variant: variant["best_val_loss"])
        assert f"Best: {winner['name']} (lowest validation loss {winner['best_val_loss']:.4f} at epoch {winner['best_epoch']})" in report
    for variant in stored["variants"]:
        assert f"| {variant['name']} | {variant['best_epoch']} | {variant['best_val_loss']:.4f} |" in report


def test_study_retrains_the_best_variant_on_all_reviews(synthetic_study):
    from imdb_jax import evaluate, fit, load_model

    result, data = synthetic_study
    stored = json.loads((result.output_dir / "study.json").read_text())
    best = next(variant for variant in stored["variants"] if variant["name"] == stored["best_variant"])
    retrain = stored["retrain"]
    assert retrain["variant"] == best["name"] and retrain["epochs"] == best["best_epoch"]
    assert retrain["train_reviews"] == 120 and len(retrain["history"]["loss"]) == best["best_epoch"]
    spec = VariantSpec.from_dict(best["spec"])
    state, _ = fit(spec.config(NUM_WORDS), data.train, epochs=best["best_epoch"], batch_size=32, seed=spec.seed, shuffle_seed=0, progress=False)
    test = evaluate(state, data.test, batch_size=32)
    assert retrain["test_accuracy"] == pytest.approx(test["accuracy"], abs=1e-6)
    assert retrain["test_loss"] == pytest.approx(test["loss"], rel=1e-5)
    saved = load_model(retrain["model_dir"])
    assert saved.config == spec.config(NUM_WORDS)
    assert saved.metrics["test_accuracy"] == pytest.approx(test["accuracy"], abs=1e-6)


def test_study_figures_are_pngs(synthetic_study):
    result, _ = synthetic_study
    figures = result.summary["figures"]
    assert sorted(figures) == ["train_vs_val_loss.png", "val_loss_penalties.png", "val_loss_widths.png"]
    for name in figures:
        data = (result.output_dir / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


def test_depth_figure_with_a_layers_experiment(tmp_path):
    from imdb_jax.study import write_figures

    summary = _seedlike(l1_best=0.31, l2_best=0.26, dropout_best_epoch=6, dropout_best=0.275)
    paths = write_figures(summary, tmp_path)
    assert [path.name for path in paths] == [
        "val_loss_units.png", "val_loss_layers.png", "val_loss_epochs.png", "val_loss_regularization.png",
        "val_loss_dropout.png", "train_vs_val_loss.png", "depth.png",
    ]
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in paths)


def test_run_study_rejects_bad_settings_before_training(tmp_path):
    data = synthetic_data(num_train=20, num_test=10)
    with pytest.raises(ImdbJaxError, match="epochs must be a positive integer"):
        run_study("units", data, output_dir=tmp_path, epochs=0)
    with pytest.raises(ImdbJaxError, match="unknown experiment"):
        run_study(["units", "depth"], data, output_dir=tmp_path)
    with pytest.raises(ImdbJaxError, match="num_validation"):
        run_study("units", data, output_dir=tmp_path, validation=20)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Spec files.


def test_load_specs_reads_json_and_toml(tmp_path):
    expected = [VariantSpec((4,)), VariantSpec((16, 16), l2=0.001, seed=3, name="l2")]
    (tmp_path / "study.json").write_text(json.dumps([{"hidden_units": [4]}, {"hidden_units": [16, 16], "l2": 0.001, "seed": 3, "name": "l2"}]))
    (tmp_path / "wrapped.json").write_text(json.dumps({"variants": [spec.to_dict() for spec in expected]}))
    (tmp_path / "study.toml").write_text('[[variants]]\nhidden_units = [4]\n\n[[variants]]\nhidden_units = [16, 16]\nl2 = 0.001\nseed = 3\nname = "l2"\n')
    for name in ("study.json", "wrapped.json", "study.toml"):
        assert load_specs(tmp_path / name) == expected


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("broken.json", "[{", "not valid JSON"),
        ("broken.toml", "[[variants]\n", "not valid TOML"),
        ("empty.json", "[]", "non-empty list"),
        ("table.json", '{"hidden_units": [4]}', "non-empty list"),
        ("unknown.json", '[{"hidden_units": [4], "units": 3}]', "variant 1: unknown variant settings: units"),
        ("negative.toml", "[[variants]]\nhidden_units = [4]\n[[variants]]\ndropout_rate = 1.5\n", "variant 2: dropout_rate must be in"),
        ("width.json", '[{"hidden_units": [0]}]', "widths must be positive"),
    ],
)
def test_load_specs_rejects_bad_files_clearly(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ImdbJaxError, match=message) as error:
        load_specs(path)
    assert str(path) in str(error.value)


def test_load_specs_missing_file(tmp_path):
    with pytest.raises(ImdbJaxError, match="cannot read the study file"):
        load_specs(tmp_path / "missing.toml")
