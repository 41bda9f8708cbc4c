"""Studies with early stopping: each seed's stop epoch in study.json and the report, and seed
histories of different lengths through the statistics, conclusions, report and figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from imdb_jax import VariantSpec, fit_variants, run_study
from imdb_jax.errors import ImdbJaxError
from imdb_jax.study import conclusions, report_markdown, variant_summary
from imdb_jax.study.figures import write_figures
from tests.test_study import synthetic_data


def _history(val_loss):
    """A history whose validation loss is `val_loss` (its length is the epochs trained)."""
    epochs = len(val_loss)
    return {
        "loss": [0.6 - 0.05 * epoch for epoch in range(epochs)],
        "accuracy": [0.6 + 0.02 * epoch for epoch in range(epochs)],
        "val_loss": list(val_loss),
        "val_accuracy": [0.9 - value / 10 for value in val_loss],
        "diverged": [False] * epochs,
    }


def _summary(stopped: bool):
    """Two variants of 16-16 with 3 seeds each; with `stopped`, seeds that stopped early end at
    their stop epoch (so the histories have different lengths)."""
    curves = {
        "16-16": [[0.40, 0.33, 0.30, 0.32, 0.35], [0.41, 0.32, 0.31, 0.33], [0.40, 0.34, 0.29, 0.31, 0.34, 0.36]],
        "16-16 dropout=0.5": [
            [0.45, 0.36, 0.31, 0.30, 0.29, 0.30],
            [0.44, 0.35, 0.32, 0.30, 0.28, 0.29],
            [0.46, 0.37, 0.33, 0.31, 0.30, 0.29],
        ],
    }
    stops = {"16-16": [5, 4, 6], "16-16 dropout=0.5": [6, 6, None]}
    specs = [VariantSpec(hidden_units=(16, 16)), VariantSpec(hidden_units=(16, 16), dropout_rate=0.5)]
    variants = [
        variant_summary(
            spec,
            name,
            [_history(curve) for curve in curves[name]],
            ["dropout"],
            [0, 1, 2],
            stops[name] if stopped else None,
        )
        for spec, name in zip(specs, curves)
    ]
    summary = {
        "status": "done",
        "settings": {
            "epochs": 6,
            "batch_size": 512,
            "seeds": 3,
            "shuffle_seed": 0,
            "validation_reviews": 10,
            "train_reviews": 10,
            "patience": 1 if stopped else None,
        },
        "experiments": {"dropout": [0, 1]},
        "variants": variants,
        "runs": [],
        "devices": ["cpu"],
        "retrain": None,
        "wall_s": 1.0,
    }
    summary["conclusions"] = conclusions(summary)
    return summary


def test_unequal_seed_histories_go_through_statistics_conclusions_report_and_figures(tmp_path):
    summary = _summary(stopped=True)
    baseline, dropout = summary["variants"]
    # The mean curve stops where the first seed stopped (epoch 4): every point is over all 3 seeds.
    assert len(baseline["history"]["val_loss"]) == baseline["mean_epochs"] == 4
    np.testing.assert_allclose(
        baseline["history"]["val_loss"],
        np.mean([[0.40, 0.33, 0.30, 0.32], [0.41, 0.32, 0.31, 0.33], [0.40, 0.34, 0.29, 0.31]], axis=0),
    )
    assert baseline["best_epoch"] == 3
    # Each seed's own figures use its whole history.
    assert [figures["stopped_epoch"] for figures in baseline["per_seed"]] == [5, 4, 6]
    assert [figures["last_val_loss"] for figures in baseline["per_seed"]] == [0.35, 0.33, 0.36]
    assert [figures["best_epoch"] for figures in dropout["per_seed"]] == [5, 5, 6]
    assert dropout["stopped_epochs"] == [6, 6, None]
    found = summary["conclusions"]["dropout"]
    assert found["early_stopping"]["stopped"] == 5 and found["early_stopping"]["seeds"] == 6
    overfit = found["compared"][0]["overfitting"]
    assert overfit["last_epochs"] == [6, 6, 6] and overfit["baseline_last_epochs"] == [5, 4, 6]
    assert not overfit["same_end"] and overfit["epochs"] == 6
    report = report_markdown(summary)
    assert "Early stopping (patience 1) stopped 5 of 6 seeds" in report
    assert "16-16 after epochs 5, 4, 6; 16-16 dropout=0.5 after epochs 6, 6, -" in report
    assert "| stopped after epoch |" in report and "| 5, 4, 6 |" in report and "| 6, 6, - |" in report
    assert "at each seed's last epoch" in report and "at epoch 6" not in report
    written = write_figures(summary, tmp_path)
    assert all(path.stat().st_size > 0 for path in written)


def test_without_early_stopping_the_report_says_nothing_of_it():
    summary = _summary(stopped=False)
    assert "stopped_epochs" not in summary["variants"][0] and "early_stopping" not in summary["conclusions"]["dropout"]
    report = report_markdown(summary)
    assert "stopped" not in report.lower()


def test_study_json_stop_epochs_are_fit_variants_own(tmp_path):
    data = synthetic_data()
    # Learning rates high enough that some seeds' validation loss turns up within 10 epochs.
    specs = [VariantSpec(hidden_units=(32,), learning_rate=0.1), VariantSpec(hidden_units=(8,), learning_rate=0.3)]
    result = run_study(
        specs,
        data,
        output_dir=tmp_path,
        validation=40,
        epochs=10,
        batch_size=32,
        seeds=2,
        progress=False,
        retrain=False,
        figures=False,
        patience=1,
    )
    stored = json.loads((tmp_path / "study.json").read_text())
    assert stored["settings"]["patience"] == 1
    train, validation = data.split_validation(40)
    alone = fit_variants(result.replicas, train, validation, epochs=10, batch_size=32, progress=False, patience=1)
    expected = [alone.stopped_epoch(position) for position in range(len(result.replicas))]
    # Else this test shows nothing: some seed stops early, and seeds of one variant end apart.
    assert any(epoch is not None and epoch < 10 for epoch in expected)
    assert any(
        len({len(history["val_loss"]) for history in variant["histories"]}) > 1 for variant in stored["variants"]
    )
    got = []
    for variant, copies in zip(stored["variants"], result.replica_of):
        assert variant["stopped_epochs"] == [figures["stopped_epoch"] for figures in variant["per_seed"]]
        got += list(zip(copies, variant["stopped_epochs"]))
        for copy, history in zip(copies, variant["histories"]):
            assert history["val_loss"] == alone.histories[copy]["val_loss"]  # bitwise, and as long
        assert len(variant["history"]["val_loss"]) == min(len(history["val_loss"]) for history in variant["histories"])
    assert [epoch for _, epoch in sorted(got)] == expected
    report = (tmp_path / "report.md").read_text()
    assert "Early stopping (patience 1) stopped" in report
    assert not math.isnan(stored["variants"][0]["best_val_loss"])


def test_the_cli_passes_patience_through():
    import argparse

    from imdb_jax.cli import study

    parser = argparse.ArgumentParser()
    study.add_parser(parser.add_subparsers())
    args = parser.parse_args(["study", "units", "--patience", "2"])
    assert args.patience == 2
    with pytest.raises(ImdbJaxError, match="--patience"):
        args.patience = -1
        study._checked_variants(args)
