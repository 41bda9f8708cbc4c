"""`imdb-jax study`: user errors exit 2 with one clear line before any data is read, and a short
real study runs end to end."""

from __future__ import annotations

import json

import pytest

from imdb_jax.cli import main


def _fail(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imdb-jax study: error: ")
    return lines[0]


@pytest.fixture
def no_data(monkeypatch):
    """Fails the test if the command reaches the data: errors must come first."""
    import imdb_jax.cli.study as study_command

    def refuse(*args, **kwargs):
        raise AssertionError("the data was loaded before the options were checked")

    monkeypatch.setattr(study_command, "load_data", refuse)


def test_unknown_experiment(capsys, no_data):
    message = _fail(capsys, ["study", "units", "width"])
    assert "unknown experiment 'width'" in message and "units, layers, epochs, regularization, dropout, all" in message


def test_nothing_to_study(capsys, no_data):
    assert "name at least one experiment" in _fail(capsys, ["study"])


@pytest.mark.parametrize(
    "option, message",
    [
        (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
        (["--batch-size", "-1"], "--batch-size"),
        (["--batch-size", "100000000"], "--batch-size must be at most 32768"),
        (["--validation", "0"], "--validation"),
        (["--seeds", "0"], "--seeds must be a positive integer, got 0"),
    ],
)
def test_bad_numbers(capsys, no_data, option, message):
    assert message in _fail(capsys, ["study", "units", *option])


def test_bad_spec_files(capsys, no_data, tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[[variants]]\nhidden_units = [16\n")
    assert f"{broken} is not valid TOML" in _fail(capsys, ["study", "--spec", str(broken)])
    unknown = tmp_path / "unknown.json"
    unknown.write_text('[{"hidden_units": [16], "dropout": 0.5}]')
    assert "variant 1: unknown variant settings: dropout" in _fail(capsys, ["study", "--spec", str(unknown)])
    assert "cannot read the study file" in _fail(capsys, ["study", "--spec", str(tmp_path / "missing.json")])


def test_bad_choice_is_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "units", "--runs", "widest"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'widest'" in capsys.readouterr().err


def test_help_lists_the_experiments(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert (
        "units, layers, epochs, regularization, dropout, all" in out and "--spec FILE" in out and "--no-retrain" in out
    )


# ---------------------------------------------------------------------------------------------
# On the real data.


@pytest.mark.real_data
def test_short_study_on_the_real_reviews(imdb_data, imdb_cache_dir, tmp_path, capsys):
    """The `epochs` experiment (16-16) plus an L2 variant from a spec file: one group, 2 epochs."""
    spec = tmp_path / "l2.toml"
    spec.write_text("[[variants]]\nhidden_units = [16, 16]\nl2 = 0.001\n")
    output = tmp_path / "study"
    argv = [
        "study",
        "epochs",
        "--spec",
        str(spec),
        "--epochs",
        "2",
        "--cache-dir",
        str(imdb_cache_dir),
        "--output",
        str(output),
        "--seeds",
        "2",
        "--no-progress",
        "--json",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["experiments"] == {"epochs": ["16-16"], "custom": ["16-16 l2=0.001"]}
    blocks = [block for run in summary["runs"] for block in run["blocks"]]
    assert {tuple(block["hidden_units"]) for block in blocks} == {(16, 16)} and sum(
        len(block["variants"]) for block in blocks
    ) == 4
    assert summary["seeds"] == 2 and summary["runs"][0]["trained"] == 4  # 2 variants x 2 seeds, one run

    stored = json.loads((output / "study.json").read_text())
    assert stored["settings"]["train_reviews"] == 15000 and stored["settings"]["validation_reviews"] == 10000
    for variant in stored["variants"]:
        assert [len(history["val_loss"]) for history in variant["histories"]] == [2, 2]
        assert variant["stats"]["val_accuracy_at_best"]["min"] > 0.8  # two epochs of rmsprop learn IMDb sentiment
        assert variant["stats"]["best_val_loss"]["sd"] is not None
    best = min(stored["variants"], key=lambda variant: variant["best_val_loss"])
    assert summary["best"]["name"] == best["name"]
    retrain = summary["retrain"]
    assert retrain["variant"] == best["name"] and retrain["epochs"] == best["best_epoch"]
    assert stored["retrain"]["train_reviews"] == 25000 and stored["retrain"]["test_reviews"] == 25000
    assert retrain["test_accuracy"] > 0.8
    report = (output / "report.md").read_text()
    sixteen = stored["variants"][0]
    if sixteen["best_epoch"] < 2:
        assert (
            f"The 16-16 model's mean validation loss is lowest at epoch 1 ({sixteen['history']['val_loss'][0]:.4f}) and turns up"
            in report
        )
    else:
        assert "The 16-16 model's mean validation loss is still at its lowest at the last epoch (2)" in report
    assert set(stored["figures"]) == {
        "val_loss_epochs.png",
        "val_loss_custom.png",
        "val_accuracy_epochs.png",
        "val_accuracy_custom.png",
        "train_vs_val_loss.png",
        "train_vs_val_accuracy.png",
    }
    assert (output / "model" / "model.json").is_file()
