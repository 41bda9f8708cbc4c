"""`imdb-jax study ... --resume` and `imdb-jax train ... --resume`: a run killed with `kill -9` at a
random epoch, run again with `--resume`, ends exactly where an uninterrupted run ends (study.json
but for its timings, and the saved model's weights)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

WORDS = [f"w{index}" for index in range(60)]


def write_corpus(folder: Path, reviews: int = 240, seed: int = 0) -> Path:
    """An aclImdb-shaped folder whose label shows in which half of the words a review draws from."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            (folder / split / label).mkdir(parents=True, exist_ok=True)
        for number in range(reviews):
            label = "pos" if number % 2 else "neg"
            half = WORDS[30:] if label == "pos" else WORDS[:30]
            text = " ".join(list(rng.choice(half, 6)) + list(rng.choice(WORDS, 4)))
            (folder / split / label / f"{number}_5.txt").write_text(text)
    return folder


def command(*options: str) -> list[str]:
    return [sys.executable, "-m", "imdb_jax", *options]


def strip_timings(value):
    """study.json without its clocks and its own folder's name (they differ between any two runs)."""
    if isinstance(value, dict):
        return {
            key: strip_timings(item)
            for key, item in value.items()
            if not (key.endswith("_s") or key in ("seconds", "fit_seconds_per_epoch", "model_dir", "output"))
        }
    if isinstance(value, list):
        return [strip_timings(item) for item in value]
    return value


def run_killed(args: list[str], progress_file: Path, done_after, kill_at: int, env: dict) -> None:
    """Starts `args`, waits until `done_after(progress_file)` reaches `kill_at`, then kill -9."""
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    reached = False
    while time.monotonic() < deadline and process.poll() is None:
        try:
            reached = done_after(progress_file) >= kill_at
        except (OSError, ValueError, KeyError, TypeError):
            reached = False
        if reached:
            break
        time.sleep(0.002)
    alive = process.poll() is None
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert alive and reached, f"the run ended before epoch {kill_at}: {stderr.decode()[-2000:]}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("resume")
    data = write_corpus(root / "aclImdb")
    env = {**os.environ, "IMDB_JAX_CACHE_DIR": str(root / "cache"), "JAX_PLATFORMS": "cpu"}
    subprocess.run(command("data", "--data-dir", str(data), "--no-progress"), env=env, check=True, capture_output=True)
    return {"root": root, "data": data, "env": env}


def test_a_study_killed_at_a_random_epoch_resumes_to_the_uninterrupted_result(corpus):
    root, env = corpus["root"], corpus["env"]
    epochs = 10
    spec = root / "specs.json"
    spec.write_text(
        json.dumps(
            [{"hidden_units": [8]}, {"hidden_units": [8, 8], "dropout_rate": 0.3}, {"hidden_units": [4], "l2": 0.01}]
        )
    )

    def study(output: Path, *extra: str) -> list[str]:
        return command(
            "study",
            "--spec",
            str(spec),
            "--epochs",
            str(epochs),
            "--validation",
            "100",
            "--seeds",
            "2",
            "--batch-size",
            "32",
            "--data-dir",
            str(corpus["data"]),
            "--no-progress",
            "--output",
            str(output),
            *extra,
        )

    def epochs_done(path: Path) -> int:
        return json.loads(path.read_text())["epochs_done"]["epochs"]

    kill_at = int(np.random.default_rng().integers(1, epochs - 1))
    killed = root / "killed-study"
    run_killed(study(killed), killed / "study.json", epochs_done, kill_at, env)
    snapshot = json.loads((killed / "study.json").read_text())
    assert snapshot["status"] == "running" and 1 <= snapshot["epochs_done"]["epochs"] < epochs
    resumed = subprocess.run(study(killed, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = subprocess.run(study(root / "whole-study"), env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]

    finished, reference = (json.loads((folder / "study.json").read_text()) for folder in (killed, root / "whole-study"))
    assert finished["status"] == "done"
    assert strip_timings(finished) == strip_timings(reference)
    with (
        np.load(killed / "model" / "params.npz") as got,
        np.load(root / "whole-study" / "model" / "params.npz") as want,
    ):
        assert sorted(got.files) == sorted(want.files)
        assert all(np.array_equal(got[name], want[name]) for name in want.files)
    assert not (killed / "checkpoints").exists()  # a finished study keeps its results, not its checkpoints
    again = subprocess.run(study(killed, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already finished" in again.stderr and again.stderr.count("\n") == 1


def test_a_train_run_killed_at_a_random_epoch_resumes_to_the_uninterrupted_result(corpus):
    root, env = corpus["root"], corpus["env"]
    epochs = 12

    def train(output: Path, *extra: str) -> list[str]:
        return command(
            "train",
            "--epochs",
            str(epochs),
            "--validation",
            "100",
            "--batch-size",
            "32",
            "--hidden-units",
            "8,8",
            "--dropout",
            "0.2",
            "--data-dir",
            str(corpus["data"]),
            "--no-progress",
            "--output",
            str(output),
            *extra,
        )

    def epochs_done(path: Path) -> int:
        return json.loads(path.read_text())["epochs_done"]

    kill_at = int(np.random.default_rng().integers(1, epochs - 1))
    killed = root / "killed-train"
    run_killed(train(killed), killed / "checkpoint" / "run.json", epochs_done, kill_at, env)
    resumed = subprocess.run(train(killed, "--resume", "--json"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = subprocess.run(train(root / "whole-train", "--json"), env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    got, want = (strip_timings(json.loads(done.stdout.splitlines()[-1])) for done in (resumed, whole))
    for summary in (got, want):
        summary.pop("plots", None)  # pyright: ignore[reportCallIssue]
    assert got == want
    with np.load(killed / "params.npz") as got_params, np.load(root / "whole-train" / "params.npz") as want_params:
        assert all(np.array_equal(got_params[name], want_params[name]) for name in want_params.files)
    assert not (killed / "checkpoint").exists()


def test_resume_needs_an_output_folder(corpus):
    for name in ("study", "train"):
        extra = ["all"] if name == "study" else []
        for option in ("--resume", "--resume-anyway"):
            done = subprocess.run(
                command(name, *extra, option, "--data-dir", str(corpus["data"])),
                env=corpus["env"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 2 and f"{option} needs --output" in done.stderr


# ---------------------------------------------------------------------------------------------
# A checkpoint written under another JAX: refused by --resume, continued by --resume-anyway.

# `imdb-jax ARGV` that kills itself (SIGKILL, as `kill -9` would) right after writing the
# checkpoint of epoch $KILL_AFTER_EPOCH: a kill at a known point, not at a moment timing picks.
# It asks for the command line's CPU devices before importing JAX, as `imdb-jax` does.
KILLED_AFTER_EPOCH = """
import os, signal, sys
from imdb_jax.train.cpu_devices import use_every_core
use_every_core()
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


def as_if_written_under_another_jax(checkpoint: Path) -> None:
    """Edits the JAX version the checkpoint records, in run.npz (what is read) and run.json."""
    from imdb_jax.train import checkpoints

    with np.load(checkpoint / checkpoints.ARRAYS) as archive:
        arrays = {name: archive[name] for name in archive.files}
    described = json.loads(str(arrays[checkpoints.DESCRIPTION]))
    described["environment"]["jax"] = "0.0.1"
    arrays[checkpoints.DESCRIPTION] = np.asarray(json.dumps(described))
    np.savez(checkpoint / checkpoints.ARRAYS, **arrays)  # pyright: ignore[reportArgumentType]
    (checkpoint / checkpoints.META).write_text(json.dumps(described))


@pytest.mark.parametrize("name", ["train", "study"])
def test_a_checkpoint_from_another_jax_is_refused_by_resume_and_continued_by_resume_anyway(corpus, name):
    root, env = corpus["root"], corpus["env"]
    spec = root / "anyway-specs.json"
    spec.write_text(json.dumps([{"hidden_units": [8]}, {"hidden_units": [4], "dropout_rate": 0.3}]))
    options = {
        "train": ["--hidden-units", "8", "--dropout", "0.2", "--validation", "100"],
        "study": ["--spec", str(spec), "--seeds", "2", "--validation", "100"],
    }[name]

    def args(output: Path, *extra: str) -> list[str]:
        return [
            name,
            *options,
            "--epochs",
            "4",
            "--batch-size",
            "32",
            "--data-dir",
            str(corpus["data"]),
            "--no-progress",
            "--output",
            str(output),
            *extra,
        ]

    killed = root / f"anyway-{name}"
    checkpoint = killed / ("checkpoint" if name == "train" else "checkpoints/custom")
    died = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_EPOCH, *args(killed)],
        env={**env, "KILL_AFTER_EPOCH": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    environment = json.loads((checkpoint / "run.json").read_text())["environment"]
    as_if_written_under_another_jax(checkpoint)

    refused = subprocess.run(command(*args(killed, "--resume")), env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"imdb-jax {name}: error: "), refused.stderr[-3000:]
    assert "written under jax 0.0.1" in lines[0] and "--resume-anyway" in lines[0]
    assert f"jaxlib {environment['jaxlib']}, cpu, {environment['devices']} device(s), this is jax " in lines[0]
    assert json.loads((checkpoint / "run.json").read_text())["epochs_done"] == 2  # left as it was

    anyway = subprocess.run(
        command(*args(killed, "--resume-anyway", "--json")), env=env, capture_output=True, text=True, timeout=300
    )
    assert anyway.returncode == 0, anyway.stderr[-3000:]
    whole = subprocess.run(
        command(*args(root / f"anyway-{name}-whole", "--json")), env=env, capture_output=True, text=True, timeout=300
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    got, want = (strip_timings(json.loads(done.stdout.splitlines()[-1])) for done in (anyway, whole))
    for summary in (got, want):
        summary.pop("plots", None)  # pyright: ignore[reportCallIssue]
    assert got == want
    if name == "study":
        finished, reference = (
            json.loads((folder / "study.json").read_text()) for folder in (killed, root / f"anyway-{name}-whole")
        )
        assert finished["status"] == "done" and strip_timings(finished) == strip_timings(reference)
    model = "model" if name == "study" else "."
    with (
        np.load(killed / model / "params.npz") as got_params,
        np.load(root / f"anyway-{name}-whole" / model / "params.npz") as want_params,
    ):
        assert sorted(got_params.files) == sorted(want_params.files)
        assert all(np.array_equal(got_params[key], want_params[key]) for key in want_params.files)
    assert not checkpoint.exists()
