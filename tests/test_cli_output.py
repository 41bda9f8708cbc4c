"""`--output` of `train`, `study` and `tune`: one run per folder, one writer at a time.

A folder holding an earlier run is refused, or with `--overwrite` replaced whole: the new run is
written beside it and swapped in only when complete, so the folder never mixes two runs' files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from imdb_jax import atomic
from imdb_jax.cli import main

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str]) -> tuple[int, str, str]:
    """`imdb-jax ARGV` in-process: (exit status, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(argv)
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 2
    return status, stdout.getvalue(), stderr.getvalue()


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative name -> bytes)."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _earlier_study(folder: Path) -> Path:
    """What `study units --output FOLDER` leaves: a report, a figure and a retrained model."""
    (folder / "model").mkdir(parents=True)
    (folder / "study.json").write_text('{"status": "done"}')
    (folder / "report.md").write_text("# units")
    (folder / "val_loss_units.png").write_bytes(b"\x89PNG old figure")
    (folder / "model" / "model.json").write_text("{}")
    return folder


def _earlier_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.json").write_text("{}")
    (folder / "params.npz").write_bytes(b"old weights")
    (folder / "history_val_loss.png").write_bytes(b"\x89PNG old figure")
    return folder


def _leftovers(folder: Path) -> list[str]:
    """Staging folders and lock files left beside `folder`."""
    return sorted(path.name for path in folder.parent.iterdir() if path.name.startswith(f".{folder.name}."))


@pytest.fixture
def no_work(monkeypatch):
    """Fails the command if it gets as far as loading data."""
    import imdb_jax.cli.study
    import imdb_jax.cli.train
    import imdb_jax.tune.runner

    def refuse(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(imdb_jax.cli.train, "load_data", refuse)
    monkeypatch.setattr(imdb_jax.cli.study, "load_data", refuse)
    monkeypatch.setattr(imdb_jax.tune.runner, "tune", refuse)


def _train_options(data: Path, tmp_path: Path) -> list[str]:
    return [
        "--data-dir",
        str(data),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--hidden-units",
        "4",
        "--epochs",
        "3",
        "--batch-size",
        "2",
        "--no-progress",
        "--compile-cache",
        "off",
    ]


@pytest.mark.parametrize(
    "command, earlier, expected",
    [
        (["train"], _earlier_model, "already holds a model (model.json)"),
        (["study", "units"], _earlier_study, "already holds a study (study.json)"),
        (["tune"], _earlier_model, "already holds a model (model.json)"),
    ],
)
def test_an_output_holding_an_earlier_run_is_refused_before_any_work(command, earlier, expected, no_work, tmp_path):
    folder = earlier(tmp_path / "runs" / "a")
    before = _snapshot(folder)
    status, stdout, stderr = _run([*command, "--output", str(folder)])
    assert status == 2 and stdout == "", stderr
    assert stderr.splitlines() == [
        f"imdb-jax {command[0]}: error: --output {folder} {expected}; choose another folder, or pass --overwrite to replace it"
    ]
    assert _snapshot(folder) == before and _leftovers(folder) == []


def test_files_imdb_jax_did_not_write_are_never_replaced(no_work, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    for extra in ([], ["--overwrite"]):
        status, _, stderr = _run(["train", "--output", str(tmp_path / "mine"), *extra])
        assert status == 2 and "holds files that imdb-jax did not write" in stderr, stderr
    assert _snapshot(tmp_path / "mine") == {"notes.txt": b"my notes"}


def test_the_current_folder_is_never_swapped_away(no_work, tmp_path, monkeypatch):
    folder = _earlier_model(tmp_path / "a")
    before = _snapshot(folder)
    monkeypatch.chdir(folder)
    status, _, stderr = _run(["train", "--output", ".", "--overwrite"])
    assert status == 2 and "holds the current folder" in stderr, stderr
    assert _snapshot(folder) == before and _leftovers(folder) == []


@pytest.mark.parametrize("command", [["train"], ["study", "units"]])
@pytest.mark.parametrize("option", ["--resume", "--resume-anyway"])
def test_resume_and_overwrite_together_are_refused(no_work, tmp_path, command, option):
    status, _, stderr = _run([*command, "--output", str(tmp_path / "a"), option, "--overwrite"])
    assert status == 2 and f"{option} and --overwrite contradict each other" in stderr
    assert not (tmp_path / "a").exists()  # refused with the other option errors, before the folder is claimed


def test_overwrite_replaces_the_whole_folder_only_once_the_new_run_is_complete(fake_aclimdb, tmp_path, monkeypatch):
    import imdb_jax.train.fit

    folder = _earlier_study(tmp_path / "runs" / "a")
    before = _snapshot(folder)
    fit, seen = imdb_jax.train.fit.fit, []

    def fit_while_looking(*args, **kwargs):
        seen.append((_snapshot(folder) == before, _leftovers(folder)))
        return fit(*args, **kwargs)

    monkeypatch.setattr(imdb_jax.train.fit, "fit", fit_while_looking)
    status, stdout, stderr = _run(
        ["train", *_train_options(fake_aclimdb, tmp_path), "--output", str(folder), "--overwrite", "--json"]
    )
    assert status == 0, stderr
    # While training, the folder still held the earlier run, untouched; the new one grew beside it.
    assert seen == [(True, [".a.lock", ".a.partial"])]
    # Afterwards: the new run's files only (no old figure, report or model/), nothing left beside.
    assert sorted(path.name for path in folder.iterdir()) == [
        "history.json",
        "history_accuracy.png",
        "history_loss.png",
        "model.json",
        "params.npz",
    ]
    assert _leftovers(folder) == []
    report = json.loads(stdout)
    assert report["output"] == str(folder) and all(
        Path(plot).parent == folder and Path(plot).is_file() for plot in report["plots"]
    )


def test_a_failed_replacement_leaves_the_earlier_run_whole(fake_aclimdb, tmp_path, monkeypatch):
    import imdb_jax.train.fit
    from imdb_jax.errors import ImdbJaxError

    folder = _earlier_model(tmp_path / "a")
    before = _snapshot(folder)

    def fail(*args, **kwargs):
        raise ImdbJaxError("a problem found while training")

    monkeypatch.setattr(imdb_jax.train.fit, "fit", fail)
    status, _, stderr = _run(["train", *_train_options(fake_aclimdb, tmp_path), "--output", str(folder), "--overwrite"])
    assert status == 2 and "a problem found while training" in stderr
    assert _snapshot(folder) == before and _leftovers(folder) == []


def test_a_killed_replacement_resumes_beside_the_earlier_run_and_then_replaces_it(fake_aclimdb, tmp_path, monkeypatch):
    from imdb_jax.saved.model_folder import load_single_model
    from imdb_jax.train import checkpoints

    folder = _earlier_model(tmp_path / "a")
    before = _snapshot(folder)
    save, written = checkpoints.save, []

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        written.append(1)
        raise KeyboardInterrupt  # Ctrl-C right after the first epoch's checkpoint

    monkeypatch.setattr(checkpoints, "save", save_then_stop)
    options = [*_train_options(fake_aclimdb, tmp_path), "--output", str(folder)]
    status, _, stderr = _run(["train", *options, "--overwrite"])
    assert status == 130 and written == [1], stderr
    assert _snapshot(folder) == before
    assert (atomic.staging_folder(folder) / "checkpoint" / "run.json").is_file()

    monkeypatch.setattr(checkpoints, "save", save)
    status, stdout, stderr = _run(["train", *options, "--resume", "--json"])
    assert status == 0, stderr
    assert json.loads(stdout)["output"] == str(folder) and _leftovers(folder) == []
    assert (
        "history_val_loss.png" not in {path.name for path in folder.iterdir()} and not (folder / "checkpoint").exists()
    )
    history = load_single_model(folder).history
    assert history is not None and len(history["loss"]) == 3


def test_study_overwrite_names_the_retrained_model_where_it_ends_up(fake_aclimdb, tmp_path):
    from imdb_jax.saved.model_folder import load_single_model

    folder = _earlier_study(tmp_path / "runs" / "a")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"hidden_units": [4]}, {"hidden_units": [2]}]))
    status, stdout, stderr = _run(
        [
            "study",
            "--spec",
            str(spec),
            "--epochs",
            "2",
            "--seeds",
            "1",
            "--validation",
            "2",
            "--batch-size",
            "2",
            "--data-dir",
            str(fake_aclimdb),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
            "--compile-cache",
            "off",
            "--output",
            str(folder),
            "--overwrite",
            "--json",
        ]
    )
    assert status == 0, stderr
    names = {path.name for path in folder.iterdir()}
    assert "val_loss_units.png" not in names and {"study.json", "report.md", "model"} <= names
    stored = json.loads((folder / "study.json").read_text())
    assert stored["status"] == "done" and stored["retrain"]["model_dir"] == str(folder / "model")
    assert json.loads(stdout)["retrain"]["model_dir"] == str(folder / "model")
    assert load_single_model(folder / "model").config.hidden_units in ((4,), (2,))
    assert _leftovers(folder) == []


HOLD_THE_LOCK = """
import sys, time
from imdb_jax.atomic import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_is_refused_and_a_killed_writer_blocks_nobody(no_work, tmp_path):
    folder = tmp_path / "a"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "held\n"
        for command in (["train"], ["study", "units"], ["tune"]):
            status, _, stderr = _run([*command, "--output", str(folder)])
            assert status == 2, stderr
            assert f"--output {folder} is being written by another imdb-jax command (pid {holder.pid} on " in stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
        holder.stdout.close()
    assert atomic.lock_path(folder).exists()  # kill -9 left the lock file, but not the lock
    with pytest.raises(AssertionError, match="work started"):
        _run(["train", "--output", str(folder)])
    assert _leftovers(folder) == [] and not folder.exists()  # the empty folder it made is removed again


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with atomic.folder_lock(tmp_path / "a") as lock:
        assert lock.read_text() == f"pid {os.getpid()} on {os.uname().nodename}\n"
        with pytest.raises(atomic.FolderInUse) as refused, atomic.folder_lock(tmp_path / "a"):
            pass
        assert refused.value.holder == f"pid {os.getpid()} on {os.uname().nodename}"
    assert not lock.exists()
    with atomic.folder_lock(tmp_path / "a"):
        pass


def test_one_seed_and_one_epoch_are_singular(fake_aclimdb, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"hidden_units": [4]}]))
    status, stdout, stderr = _run(
        [
            "study",
            "--spec",
            str(spec),
            "--epochs",
            "1",
            "--seeds",
            "1",
            "--validation",
            "2",
            "--batch-size",
            "2",
            "--data-dir",
            str(fake_aclimdb),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--compile-cache",
            "off",
            "--output",
            str(tmp_path / "one"),
        ]
    )
    assert status == 0, stderr
    assert "1 variant x 1 seed, 1 epoch;" in stdout and "for 1 epoch on" in stdout, stdout
    assert "1 variant x 1 seed (1 model)" in stderr and "retrained" in stderr, stderr
    assert not [word for word in ("1 seeds", "1 epochs", "1 variants", "1 models") if word in stdout + stderr]
