"""TensorBoard logs: one run folder per variant, its scalars and hyperparameters read back from
the event files (by our reader, and by TensorFlow's when it is installed)."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imdb_jax.errors import ImdbJaxError
from imdb_jax.specs import VariantSpec
from imdb_jax.tensorboard import SCALARS, TensorBoardLogger, read_events, read_run, run_folder_name

SPECS = [
    VariantSpec(),
    VariantSpec(hidden_units=(32, 8, 4), l2=0.001, seed=1),
    VariantSpec(hidden_units=(16,), dropout_rate=0.5, learning_rate=0.01, name="wide / dropout #2"),
]


def _histories(epochs: int) -> list[dict[str, list]]:
    """Three variants' Keras-style histories; the second diverges in epoch 3 (NaN from then on)."""
    rng = np.random.default_rng(0)
    histories = []
    for index in range(len(SPECS)):
        history = {key: [float(value) for value in rng.uniform(0.1, 0.9, epochs)] for key in SCALARS}
        history["diverged"] = [index == 1 and epoch >= 2 for epoch in range(epochs)]
        for key in SCALARS:
            history[key] = [
                math.nan if diverged else value for value, diverged in zip(history[key], history["diverged"])
            ]
        histories.append(history)
    return histories


def _prefix(histories: list[dict[str, list]], epochs: int) -> list[dict[str, list]]:
    return [{key: values[:epochs] for key, values in history.items()} for history in histories]


def _expected(values: list[float]) -> list[tuple[int, float]]:
    """(step, value) pairs as written: epochs from 1, float32 like TensorBoard's scalars, NaN left out."""
    return [(epoch, float(np.float32(value))) for epoch, value in enumerate(values, 1) if not math.isnan(value)]


@pytest.fixture()
def written(tmp_path: Path) -> tuple[Path, TensorBoardLogger, list[dict[str, list]]]:
    """Four epochs logged one at a time, as `fit_variants(on_epoch_end=...)` calls it."""
    histories = _histories(4)
    logger = TensorBoardLogger(tmp_path / "tb", SPECS, {"epochs": 4, "batch_size": 512, "first_layer": "auto"})
    for epochs in range(1, 5):
        logger.on_epoch_end(epochs, _prefix(histories, epochs))
    logger.close()
    return tmp_path / "tb", logger, histories


def test_every_variant_gets_a_run_folder_named_from_its_name(written):
    log_dir, logger, _ = written
    assert [path.name for path in logger.run_dirs] == ["16-16", "32-8-4_l2=0.001_seed=1", "wide_dropout_2"]
    assert sorted(path.name for path in log_dir.iterdir()) == sorted(path.name for path in logger.run_dirs)
    assert all(len(list(path.glob("events.out.tfevents.*"))) == 1 for path in logger.run_dirs)


def test_scalars_read_back_equal_the_histories_epoch_by_epoch(written):
    _, logger, histories = written
    for run_dir, history in zip(logger.run_dirs, histories):
        scalars = read_run(run_dir)["scalars"]
        assert set(scalars) == set(SCALARS)
        for tag in SCALARS:
            assert scalars[tag] == _expected(history[tag]), (run_dir.name, tag)
    # The diverged variant's curves stop at its last finite epoch.
    assert [step for step, _ in read_run(logger.run_dirs[1])["scalars"]["loss"]] == [1, 2]


def test_hyperparameters_read_back_are_the_specs_settings_plus_the_shared_ones(written):
    _, logger, _ = written
    runs = [read_run(run_dir) for run_dir in logger.run_dirs]
    assert runs[1]["hparams"] == {
        "hidden_units": "32-8-4", "layers": 3.0, "dropout_rate": 0.0, "l1": 0.0, "l2": 0.001, "weight_decay": 0.0,
        "learning_rate": 0.001, "seed": 1.0, "epochs": 4.0, "batch_size": 512.0, "first_layer": "auto",
    }  # fmt: skip
    assert runs[2]["hparams"]["dropout_rate"] == 0.5 and runs[2]["hparams"]["learning_rate"] == 0.01
    assert runs[0]["hparams"]["hidden_units"] == "16-16"
    assert all(run["status"] == "success" for run in runs)


def test_each_epoch_is_written_once_and_flushed_as_it_ends(tmp_path: Path):
    histories = _histories(3)
    logger = TensorBoardLogger(tmp_path, SPECS)
    logger.on_epoch_end(2, _prefix(histories, 2))
    # Before close: a running TensorBoard already sees the first two epochs.
    assert read_run(logger.run_dirs[0])["scalars"]["loss"] == _expected(histories[0]["loss"][:2])
    assert read_run(logger.run_dirs[0])["status"] is None
    logger.on_epoch_end(2, _prefix(histories, 2))  # the same epochs again: nothing new
    logger.on_epoch_end(3, histories)
    logger.close()
    logger.close()
    assert read_run(logger.run_dirs[0])["scalars"]["val_loss"] == _expected(histories[0]["val_loss"])


def test_variants_not_yet_trained_are_skipped_until_their_history_arrives(tmp_path: Path):
    """A study passes one list for all its copies; those of later runs are still {}."""
    histories = _histories(2)
    with TensorBoardLogger(tmp_path, SPECS) as logger:
        logger.on_epoch_end(2, [histories[0], {}, {}])
        logger.on_epoch_end(2, [histories[0], histories[1], histories[2]])
    assert read_run(logger.run_dirs[2])["scalars"]["accuracy"] == _expected(histories[2]["accuracy"])
    assert read_run(logger.run_dirs[0])["scalars"]["accuracy"] == _expected(histories[0]["accuracy"])


def test_histories_without_validation_write_training_scalars_only(tmp_path: Path):
    with TensorBoardLogger(tmp_path, ["only run"], [{"epochs": 1}]) as logger:
        logger.on_epoch_end(1, [{"loss": [0.5], "accuracy": [0.75], "diverged": [False]}])
    run = read_run(tmp_path / "only_run")
    assert run["scalars"] == {"loss": [(1, 0.5)], "accuracy": [(1, 0.75)]}
    assert run["hparams"] == {"epochs": 1.0}


def test_a_second_run_into_the_same_log_dir_gets_its_own_folders(tmp_path: Path):
    first = TensorBoardLogger(tmp_path, SPECS[:1])
    first.close()
    second = TensorBoardLogger(tmp_path, [SPECS[0], SPECS[0]])
    second.close()
    assert [path.name for path in second.run_dirs] == ["16-16-2", "16-16-3"]


def test_a_failed_run_ends_its_session_as_failed(tmp_path: Path):
    with pytest.raises(KeyError), TensorBoardLogger(tmp_path, SPECS[:1]) as logger:
        raise KeyError("training broke")
    assert read_run(logger.run_dirs[0])["status"] == "failure"


def test_mismatched_inputs_and_unwritable_folders_raise_clear_errors(tmp_path: Path):
    with pytest.raises(ImdbJaxError, match="2 entries for 3 variants"):
        TensorBoardLogger(tmp_path, SPECS, [{}, {}])
    logger = TensorBoardLogger(tmp_path / "a", SPECS)
    with pytest.raises(ImdbJaxError, match="2 histories for 3 variants"):
        logger.on_epoch_end(1, _histories(1)[:2])
    logger.close()
    with pytest.raises(ImdbJaxError, match="closed"):
        logger.on_epoch_end(1, _histories(1))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ImdbJaxError, match="cannot write TensorBoard logs"):
        TensorBoardLogger(tmp_path / "file" / "tb", SPECS)


def test_a_damaged_event_file_is_reported(written):
    _, logger, _ = written
    path = next(logger.run_dirs[0].glob("*tfevents*"))
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ImdbJaxError, match="bad record"):
        read_events(logger.run_dirs[0])


def test_run_folder_names_are_one_safe_path_component():
    assert run_folder_name("16-16 l2=0.001 #2") == "16-16_l2=0.001_2"
    assert run_folder_name("../../etc") == "etc"
    assert run_folder_name("..") == "variant" and run_folder_name("") == "variant"


_TF_READ = """
import json, sys
from pathlib import Path
from tensorflow.python.summary.summary_iterator import summary_iterator
runs = {}
for run_dir in sorted(Path(sys.argv[1]).iterdir()):
    run = runs.setdefault(run_dir.name, {"scalars": {}, "plugins": []})
    for path in sorted(run_dir.glob("*tfevents*")):
        for event in summary_iterator(str(path)):  # checks every record's CRC
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    run["scalars"].setdefault(value.tag, []).append([event.step, value.simple_value])
                else:
                    run["plugins"].append([value.tag, value.metadata.plugin_data.plugin_name])
print(json.dumps(runs))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None, reason="TensorFlow (the bench extra) is not installed"
)
def test_tensorflows_own_reader_reads_the_same_runs(written):
    """An independent reader: TensorFlow's event iterator, the one TensorBoard descends from."""
    log_dir, logger, histories = written
    result = subprocess.run([sys.executable, "-c", _TF_READ, str(log_dir)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout.splitlines()[-1])
    for run_dir, history in zip(logger.run_dirs, histories):
        run = runs[run_dir.name]
        assert {tag: [tuple(point) for point in points] for tag, points in run["scalars"].items()} == {
            tag: _expected(history[tag]) for tag in SCALARS
        }
        assert run["plugins"] == [
            ["_hparams_/session_start_info", "hparams"],
            ["_hparams_/session_end_info", "hparams"],
        ]


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """`imdb-jax ARGV` in-process: (exit status, stdout, stderr)."""
    from imdb_jax.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(argv)
    return status, stdout.getvalue(), stderr.getvalue()


@pytest.fixture()
def corpus(tmp_path: Path, write_aclimdb) -> list[str]:
    return [
        "--data-dir",
        str(write_aclimdb(tmp_path / "aclImdb")),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--num-words",
        "50",
    ]


def test_imdb_jax_train_logdir_leaves_the_models_curves_and_settings(tmp_path: Path, corpus):
    argv = ["train", *corpus, "--hidden-units", "4", "--epochs", "2", "--batch-size", "2", "--learning-rate", "0.01"]
    status, stdout, stderr = _cli(
        [
            *argv,
            "--validation",
            "2",
            "--output",
            str(tmp_path / "model"),
            "--logdir",
            str(tmp_path / "tb"),
            "--no-progress",
            "--json",
        ]
    )
    assert status == 0, stderr
    history = json.loads(stdout)["history"]
    (run_dir,) = (tmp_path / "tb").iterdir()
    run = read_run(run_dir)
    assert run_dir.name == "4_lr=0.01"
    assert run["scalars"] == {tag: _expected(history[tag]) for tag in SCALARS}
    assert run["hparams"]["hidden_units"] == "4" and run["hparams"]["learning_rate"] == 0.01
    assert run["status"] == "success"


def test_imdb_jax_study_logdir_writes_every_variant_and_seed(tmp_path: Path, corpus):
    spec_file = tmp_path / "study.json"
    spec_file.write_text(json.dumps([{"hidden_units": [4]}, {"hidden_units": [2, 2], "l2": 0.001}]))
    argv = [
        "study",
        "--spec",
        str(spec_file),
        *corpus,
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--validation",
        "2",
        "--seeds",
        "2",
    ]
    status, stdout, stderr = _cli(
        [*argv, "--output", str(tmp_path / "study"), "--logdir", str(tmp_path / "tb"), "--no-progress", "--json"]
    )
    assert status == 0, stderr
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    runs = {path.name: read_run(path) for path in (tmp_path / "tb").iterdir() if path.name != "retrain"}
    # One folder per trained copy, named as the study names its copies ("4 [seed 1]").
    assert sorted(runs) == ["2-2_l2=0.001_seed_0", "2-2_l2=0.001_seed_1", "4_seed_0", "4_seed_1"]
    for variant in study["variants"]:
        for seed, history in zip(variant["seeds"], variant["histories"]):
            run = runs[run_folder_name(f"{variant['name']} [seed {seed}]")]
            assert run["scalars"]["val_loss"] == _expected(history["val_loss"])
            assert run["hparams"]["seed"] == seed and run["hparams"]["validation_reviews"] == 2.0
    (retrained,) = (tmp_path / "tb" / "retrain").iterdir()
    assert read_run(retrained)["scalars"]["loss"] == _expected(study["retrain"]["history"]["loss"])


def test_a_logger_dropped_unclosed_closes_its_files(tmp_path: Path):
    """Training that raises leaves its logger unclosed: its files still close, flushed, without
    a ResourceWarning (an error under this suite's warning filter)."""
    logger = TensorBoardLogger(tmp_path, SPECS[:1])
    logger.on_epoch_end(1, _prefix(_histories(1), 1)[:1])
    run_dir = logger.run_dirs[0]
    del logger
    gc.collect()
    assert read_run(run_dir)["scalars"]["loss"] == _expected(_histories(1)[0]["loss"])
