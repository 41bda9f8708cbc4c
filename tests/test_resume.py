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
        done = subprocess.run(
            command(name, *extra, "--resume", "--data-dir", str(corpus["data"])),
            env=corpus["env"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and "--resume needs --output" in done.stderr
