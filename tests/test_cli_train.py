"""`imdb-jax train`, `predict` and `evaluate`, run in-process on a small corpus and on the real data."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from imdb_jax.cli import main
from imdb_jax.data.text import Vocabulary
from imdb_jax.plots import plot_curves, plot_history
from imdb_jax.saved.model_folder import load_single_model as load_model
from imdb_jax.saved.model_folder import save_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
POSITIVE = ("great", "wonderful", "loved", "superb", "moving")
NEGATIVE = ("awful", "boring", "terrible", "dull", "waste")
NEUTRAL = ("the", "film", "plot", "actor", "scene", "story", "music", "ending")


def _write_corpus(folder: Path) -> Path:
    """A small aclImdb folder: 24 training and 12 test reviews whose sentiment words decide."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 6)):
        for label, words in (("pos", POSITIVE), ("neg", NEGATIVE)):
            (folder / split / label).mkdir(parents=True)
            for index in range(count):
                review = list(rng.choice(NEUTRAL, 6)) + list(rng.choice(words, 2))
                rng.shuffle(review)
                (folder / split / label / f"{index}_{7 if label == 'pos' else 2}.txt").write_text(
                    " ".join(review) + ".<br />"
                )
    return folder


def _run(argv: list[str]) -> tuple[int, str, str]:
    """`imdb-jax ARGV` in-process: (exit status, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(argv)
        except SystemExit as exit:  # argparse's own errors
            status = exit.code if isinstance(exit.code, int) else 2
    return status, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return {"data_dir": str(_write_corpus(root / "aclImdb")), "cache_dir": str(root / "cache")}


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """One `train --json` run on the small corpus, with 8 reviews held out."""
    output = tmp_path_factory.mktemp("runs") / "model"
    status, stdout, stderr = _run(
        [
            "train",
            "--data-dir",
            corpus["data_dir"],
            "--cache-dir",
            corpus["cache_dir"],
            "--output",
            str(output),
            "--hidden-units",
            "8,8",
            "--epochs",
            "12",
            "--batch-size",
            "8",
            "--learning-rate",
            "0.01",
            "--validation",
            "8",
            "--no-progress",
            "--json",
        ]
    )
    assert status == 0, stderr
    return {"output": output, "stdout": stdout, "stderr": stderr}


def test_train_json_prints_one_line_and_saves_model_and_plots(trained):
    lines = trained["stdout"].splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["learned"] is True and report["problems"] == [] and report["exit_status"] == 0
    assert "warning" not in trained["stderr"]
    assert report["output"] == str(trained["output"])
    assert report["epochs"] == 12 and report["num_train"] == 16 and report["num_validation"] == 8
    assert set(report["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy", "val_cross_entropy", "diverged"}
    assert all(len(report["history"][key]) == 12 for key in report["history"])
    assert report["history"]["loss"][-1] < report["history"]["loss"][0]
    assert 1 <= report["best_val_loss_epoch"] <= 12
    assert report["best_val_loss"] == min(report["history"]["val_loss"])
    assert report["test_accuracy"] >= 0.75  # 12 test reviews whose sentiment words decide
    assert report["config"]["hidden_units"] == [8, 8] and report["config"]["learning_rate"] == 0.01
    assert report["config"]["num_words"] == len(POSITIVE + NEGATIVE + NEUTRAL)  # the corpus has fewer words than 10,000
    assert report["seconds"]["fit"] > 0 and report["devices"]
    for plot in report["plots"]:
        assert Path(plot).parent == trained["output"] and Path(plot).read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(Path(plot).name for plot in report["plots"]) == ["history_accuracy.png", "history_loss.png"]
    model = load_model(trained["output"])
    assert model.metrics is not None and model.history is not None
    assert model.metrics["test_accuracy"] == report["test_accuracy"]
    assert model.history["val_loss"] == report["history"]["val_loss"]


def test_saved_model_predicts_raw_text(trained):
    model = load_model(trained["output"])
    probabilities = model.predict_texts(["A great, wonderful story. Loved it!", "Awful and boring: a waste."])
    assert probabilities[0] > 0.5 > probabilities[1]


def test_predict_prints_probability_and_label_per_review(trained):
    status, stdout, _ = _run(["predict", "--model", str(trained["output"]), "superb moving film", "dull terrible plot"])
    assert status == 0
    first, second = stdout.splitlines()
    assert first.split()[1] == "positive" and float(first.split()[0]) > 0.5 and first.endswith("superb moving film")
    assert second.split()[1] == "negative" and float(second.split()[0]) < 0.5
    status, stdout, _ = _run(["predict", "--model", str(trained["output"]), "--json", "great", ""])
    report = json.loads(stdout)
    assert len(stdout.splitlines()) == 1 and [p["text"] for p in report["predictions"]] == ["great", ""]
    assert report["predictions"][0]["label"] == "positive"


def _stdin(data: bytes):
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")


def test_predict_reads_reviews_from_stdin_and_survives_bad_bytes(trained, monkeypatch):
    monkeypatch.setattr(sys, "stdin", _stdin(b"great wonderful\n\n  \n\xff\xfe awful \xc3 waste\n"))
    status, stdout, stderr = _run(["predict", "--model", str(trained["output"]), "--json"])
    assert status == 0, stderr
    predictions = json.loads(stdout)["predictions"]
    # One entry per line, blank lines too, with a note instead of a probability.
    assert [(p["label"], p["note"]) for p in predictions] == [
        ("positive", None),
        (None, "empty review"),
        (None, "empty review"),
        ("negative", None),
    ]
    assert predictions[1]["probability"] is None and predictions[1]["known_words"] == 0
    assert "\ufffd" in predictions[3]["text"]
    monkeypatch.setattr(sys, "stdin", _stdin(b""))
    status, stdout, stderr = _run(["predict", "--model", str(trained["output"])])
    assert status == 0 and stdout == "" and "no reviews" in stderr


def test_evaluate_scores_the_saved_model_on_the_test_split(trained, corpus):
    status, stdout, stderr = _run(
        [
            "evaluate",
            "--model",
            str(trained["output"]),
            "--data-dir",
            corpus["data_dir"],
            "--cache-dir",
            corpus["cache_dir"],
            "--no-progress",
            "--json",
        ]
    )
    assert status == 0, stderr
    report, train_report = json.loads(stdout), json.loads(trained["stdout"])
    assert report["num_test"] == 12
    assert report["test_accuracy"] == train_report["test_accuracy"]
    assert report["test_loss"] == pytest.approx(train_report["test_loss"], rel=1e-6)
    assert "cached" in report["vectorised_with"]


def test_evaluate_vectorises_with_the_model_vocabulary_when_it_differs(trained, corpus, tmp_path):
    """The same model with its columns permuted must score the same: evaluate has to re-vectorise
    the raw test reviews with the model's own vocabulary, not use the data's matrices."""
    model = load_model(trained["output"])
    order = np.random.default_rng(1).permutation(len(model.vocabulary))
    words = tuple(model.vocabulary.words[index] for index in order)
    kernel = np.asarray(model.state.params["hidden_0"]["kernel"])[order]
    params = {**model.state.params, "hidden_0": {**model.state.params["hidden_0"], "kernel": kernel}}
    save_model(tmp_path / "permuted", model.state.replace(params=params), model.config, Vocabulary(words))
    status, stdout, stderr = _run(
        [
            "evaluate",
            "--model",
            str(tmp_path / "permuted"),
            "--data-dir",
            corpus["data_dir"],
            "--cache-dir",
            corpus["cache_dir"],
            "--no-progress",
            "--json",
        ]
    )
    assert status == 0, stderr
    report = json.loads(stdout)
    assert "raw test reviews" in report["vectorised_with"]
    assert report["test_accuracy"] == json.loads(trained["stdout"])["test_accuracy"]
    assert report["test_loss"] == pytest.approx(json.loads(trained["stdout"])["test_loss"], rel=1e-5)


BAD_TRAIN_OPTIONS = {
    "negative width": (["--hidden-units", "16,-4"], "--hidden-units: widths must be positive"),
    "zero width": (["--hidden-units", "0"], "--hidden-units: widths must be positive"),
    "not a width": (["--hidden-units", "16,x"], "comma-separated integers"),
    "zero epochs": (["--epochs", "0"], "--epochs must be a positive integer"),
    "zero batch size": (["--batch-size", "0"], "--batch-size must be a positive integer"),
    "dropout of one": (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    "negative l2": (["--l2", "-0.1"], "--l2 must be a finite number >= 0"),
    "zero learning rate": (["--learning-rate", "0"], "--learning-rate must be positive"),
    "huge batch": (["--batch-size", "100000000"], "--batch-size must be at most 32768"),
    "negative validation": (["--validation", "-5"], "--validation"),
    "unknown flag": (["--colour", "blue"], "unrecognized arguments: --colour"),
    "unknown first layer": (["--first-layer", "conv"], "invalid choice"),
    "epochs not a number": (["--epochs", "four"], "invalid int value"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN_OPTIONS))
def test_bad_train_options_end_with_a_message_not_a_traceback(case, tmp_path):
    options, message = BAD_TRAIN_OPTIONS[case]
    status, stdout, stderr = _run(
        ["train", "--output", str(tmp_path / "run"), "--data-dir", str(tmp_path / "nowhere"), *options]
    )
    assert status == 2
    assert message in stderr and "error:" in stderr.splitlines()[-1]
    assert "Traceback" not in stderr and stdout == ""
    assert not (tmp_path / "run").exists()  # rejected before loading data or training


def test_validation_larger_than_the_training_set_is_refused(corpus, tmp_path):
    status, _, stderr = _run(
        [
            "train",
            "--data-dir",
            corpus["data_dir"],
            "--cache-dir",
            corpus["cache_dir"],
            "--output",
            str(tmp_path / "run"),
            "--validation",
            "24",
            "--no-progress",
        ]
    )
    assert status == 2 and "Traceback" not in stderr
    assert stderr.splitlines() == [
        "imdb-jax train: error: --validation must be between 0 and 23 (the data has 24 training reviews), got 24"
    ]
    assert not (tmp_path / "run").exists()  # the output folder made for the run is removed again


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_folder_that_is_not_a_model_is_refused(command, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a model")

    def refused(folder: Path) -> str:
        status, stdout, stderr = _run(
            [command, "--model", str(folder), "some text"]
            if command == "predict"
            else [command, "--model", str(folder)]
        )
        assert status == 2 and stdout == "" and len(stderr.splitlines()) == 1, stderr
        return stderr.strip()

    assert refused(tmp_path / "empty").startswith(
        f"imdb-jax {command}: error: {tmp_path / 'empty'} is not a model folder: model.json is missing"
    )
    assert (
        refused(tmp_path / "absent")
        == f"imdb-jax {command}: error: {tmp_path / 'absent'} is not a model folder (no such folder)"
    )
    assert refused(tmp_path / "afile").startswith(
        f"imdb-jax {command}: error: {tmp_path / 'afile'} is a file, not a model folder"
    )


def test_plot_curves_draws_named_curves_and_plot_history_without_validation(tmp_path):
    figure = Figure()
    axes = figure.add_subplot()
    lines = plot_curves(axes, {"16-16": [0.6, 0.4, 0.35], "512": [0.5, 0.3, 0.6]}, ylabel="validation loss")
    assert [line.get_label() for line in lines] == ["16-16", "512"]
    np.testing.assert_array_equal(lines[1].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(lines[1].get_ydata(), [0.5, 0.3, 0.6])
    legend = axes.get_legend()
    assert legend is not None and axes.get_ylabel() == "validation loss"
    assert [text.get_text() for text in legend.get_texts()] == ["16-16", "512"]

    paths = plot_history(
        {"loss": [0.5, 0.3], "accuracy": [0.8, 0.9], "diverged": [False, False]}, tmp_path / "sub" / "run"
    )
    assert [path.name for path in paths] == ["run_loss.png", "run_accuracy.png"]
    assert all(path.read_bytes().startswith(PNG_SIGNATURE) for path in paths)


def test_the_default_train_run_on_the_real_data(imdb_data, real_data_dir, imdb_cache_dir, tmp_path, monkeypatch):
    """The seed's final run: 16-16, 4 epochs on all 25,000 training reviews, batch 512, seed 0,
    with the plain report (test metrics, predictions beside labels) and the default output folder."""
    monkeypatch.chdir(tmp_path)
    status, stdout, stderr = _run(
        ["train", "--data-dir", str(real_data_dir), "--cache-dir", str(imdb_cache_dir), "--no-progress"]
    )
    assert status == 0, stderr
    assert "data: 25000 training reviews; 25000 test reviews; 10000 words" in stdout
    assert "hidden 16-16, 4 epochs, batch 512, seed 0" in stdout
    (accuracy_line,) = [line for line in stdout.splitlines() if line.startswith("test loss:")]
    test_loss, test_accuracy = float(accuracy_line.split()[2]), float(accuracy_line.split()[5])
    assert test_accuracy >= 0.875, stdout
    assert 0.2 < test_loss < 0.4

    prediction_lines = [line for line in stdout.splitlines() if "(label: " in line]
    assert len(prediction_lines) == 10
    for line, label in zip(prediction_lines, imdb_data.y_test[:10]):
        probability, predicted, _, shown_label = line.split()
        assert predicted == ("positive" if float(probability) > 0.5 else "negative")
        assert shown_label == ("positive)" if label == 1.0 else "negative)")
    assert sum(line.split()[1] == line.split()[3].rstrip(")") for line in prediction_lines) >= 7

    (output,) = (tmp_path / "runs").iterdir()
    assert output.name.startswith("train-") and f"model saved to {Path('runs') / output.name}" in stdout
    assert (output / "history_loss.png").exists() and (output / "history_accuracy.png").exists()
    model = load_model(output)
    assert model.vocabulary.words == imdb_data.vocabulary.words and model.metrics is not None
    assert model.metrics["test_accuracy"] == pytest.approx(test_accuracy, abs=1e-4)
    positive, negative = model.predict_texts(
        [
            "One of the best films I have seen: a wonderful, moving story and brilliant acting.",
            "The worst movie ever. Boring, stupid and a complete waste of time.",
        ]
    )
    assert positive > 0.5 > negative


# ---------------------------------------------------------------------------------------------
# A run killed at an epoch boundary, resumed.

# `imdb-jax ARGV` that kills itself (SIGKILL, as `kill -9` would) right after writing the
# checkpoint of epoch $KILL_AFTER_EPOCH: a kill at a known point, not at a moment timing picks.
KILLED_AFTER_EPOCH = """
import os, signal, sys
from imdb_jax.train import checkpoints
written, save = [0], checkpoints.save
def save_then_die(*args, **kwargs):
    save(*args, **kwargs)
    written[0] += 1
    if written[0] == int(os.environ["KILL_AFTER_EPOCH"]):
        os.kill(os.getpid(), signal.SIGKILL)
checkpoints.save = save_then_die
from imdb_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _killed_after_epoch(argv: list[str], epoch: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_EPOCH, *argv],
        env={**os.environ, "KILL_AFTER_EPOCH": str(epoch)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def test_a_train_run_without_validation_killed_after_an_epoch_resumes_to_the_uninterrupted_result(corpus, tmp_path):
    """The default `train` has no --validation: its resume must work too (it once crashed in
    the loop that replays the best validation loss; tests/test_resume.py kills runs with one)."""
    options = [
        "--data-dir",
        corpus["data_dir"],
        "--cache-dir",
        corpus["cache_dir"],
        "--hidden-units",
        "8",
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--learning-rate",
        "0.01",
        "--no-progress",
        "--compile-cache",
        "off",
    ]
    killed = tmp_path / "killed"
    _killed_after_epoch(["train", *options, "--output", str(killed)], epoch=2)
    assert json.loads((killed / "checkpoint" / "run.json").read_text())["epochs_done"] == 2
    status, resumed, stderr = _run(["train", *options, "--output", str(killed), "--resume", "--json"])
    assert status == 0, stderr
    assert "Traceback" not in stderr
    status, whole, stderr = _run(["train", *options, "--output", str(tmp_path / "whole"), "--json"])
    assert status == 0, stderr
    got, want = (json.loads(text) for text in (resumed, whole))
    assert got["history"] == want["history"] and got["test_loss"] == want["test_loss"]
    with np.load(killed / "params.npz") as got_params, np.load(tmp_path / "whole" / "params.npz") as want_params:
        assert sorted(got_params.files) == sorted(want_params.files)
        assert all(np.array_equal(got_params[name], want_params[name]) for name in want_params.files)
    assert not (killed / "checkpoint").exists()


# ---------------------------------------------------------------------------------------------
# A run that did not learn says so.


def test_a_run_that_blew_up_but_stayed_finite_warns_and_exits_3(corpus, tmp_path):
    """--learning-rate 1e6 keeps the loss finite but huge: the run must not pass as a success."""
    options = [
        "train",
        "--data-dir",
        corpus["data_dir"],
        "--cache-dir",
        corpus["cache_dir"],
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--learning-rate",
        "1e6",
        "--no-progress",
        "--compile-cache",
        "off",
    ]
    status, stdout, stderr = _run([*options, "--output", str(tmp_path / "text")])
    assert status == 3, stderr
    warnings = [
        line for line in stderr.splitlines() if line.startswith("imdb-jax train: warning: the model did not learn: ")
    ]
    assert warnings and "times a constant guess" in " ".join(warnings), stderr
    table = stdout.splitlines()[2:6]  # header and three epochs, every column in its place
    assert table[0].split() == ["epoch", "loss", "accuracy"] and len({len(line) for line in table}) == 1, table
    assert "3 epochs" in stdout and (tmp_path / "text" / "model.json").is_file()  # saved all the same, to look at

    status, stdout, stderr = _run([*options, "--output", str(tmp_path / "json"), "--json"])
    report = json.loads(stdout)
    assert status == 3 and report["exit_status"] == 3 and report["learned"] is False
    assert report["problems"] and all(problem in stderr for problem in report["problems"])


def test_learning_problems_name_each_way_a_run_fails():
    from imdb_jax.cli.train import learning_problems

    labels = np.array([1, 0, 0, 0], np.float32)  # a constant guess: accuracy 0.75, loss 0.5623
    fine = {"loss": [0.6, 0.3], "accuracy": [0.75, 0.9], "diverged": [False, False]}
    assert learning_problems(fine, labels) == []
    chance = {"loss": [0.6, 0.55], "accuracy": [0.75, 0.75], "diverged": [False, False]}
    assert learning_problems(chance, labels) == [
        "its final training accuracy 0.7500 is no better than always answering the majority label (0.7500)"
    ]
    grew = {"loss": [0.05, 30.0], "accuracy": [1.0, 1.0], "diverged": [False, False]}  # 600 times its lowest epoch
    assert learning_problems(grew, labels) == ["its final training loss 30 is 600 times its lowest (0.0500)"]
    nan = {"loss": [0.6, float("nan")], "accuracy": [0.8, float("nan")], "diverged": [False, True]}
    assert learning_problems(nan, labels) == ["the training loss became NaN or infinite (the run diverged)"]


def test_one_epoch_is_not_one_epochs(corpus, tmp_path):
    status, stdout, stderr = _run(
        [
            "train",
            "--data-dir",
            corpus["data_dir"],
            "--cache-dir",
            corpus["cache_dir"],
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--learning-rate",
            "0.01",
            "--no-progress",
            "--compile-cache",
            "off",
            "--output",
            str(tmp_path / "one"),
        ]
    )
    assert status in (0, 3), stderr
    assert ", 1 epoch, batch 8" in stdout and "1 epochs" not in stdout


def test_load_model_says_a_file_is_a_file(tmp_path):
    from imdb_jax import load_model as load_any_model
    from imdb_jax.errors import ImdbJaxError

    (tmp_path / "afile").write_text("not a model")
    for load in (load_any_model, load_model):
        with pytest.raises(ImdbJaxError, match=r"afile is a file, not a model folder$"):
            load(tmp_path / "afile")
        with pytest.raises(ImdbJaxError, match=r"absent is not a model folder \(no such folder\)$"):
            load(tmp_path / "absent")
