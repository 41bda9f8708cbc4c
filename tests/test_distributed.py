"""Several processes as one run (`imdb_jax.train.distributed`, `--coordinator ...`): a study over 2
processes of 2 CPU devices each is the one-process study, bitwise; only process 0 writes; a
killed process ends the run on the other within the heartbeat bound; a process that cannot reach
the coordinator stops with a clear message; bad options are refused.

The multi-process tests start real processes on loopback addresses only, with tiny data (the
fake aclImdb of conftest), short timeouts, and one persistent compilation cache shared by every
process of this module.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from imdb_jax.errors import ImdbJaxError
from imdb_jax.train import distributed

HEARTBEAT_S = 5
# A peer's death must end the survivor within the heartbeat bound plus the time to notice it
# and leave (generous: the test machine may be loaded).
DEATH_BOUND_S = HEARTBEAT_S + 25
SPECS = [
    {"hidden_units": [4], "seed": 0},
    {"hidden_units": [8, 8], "l2": 0.01, "seed": 1},
    {"hidden_units": [4], "dropout_rate": 0.3, "seed": 2},
]
TIMINGS = ("wall_s", "compile_s", "train_s", "training_s", "figures_s")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xla")


@pytest.fixture()
def study_args(tmp_path, fake_aclimdb) -> list[str]:
    spec_file = tmp_path / "specs.json"
    spec_file.write_text(json.dumps(SPECS))
    return [
        "study",
        "--spec",
        str(spec_file),
        "--seeds",
        "2",
        "--batch-size",
        "2",
        "--validation",
        "2",
        "--num-words",
        "20",
        "--data-dir",
        str(fake_aclimdb),
        "--no-progress",
    ]


def start(
    args: list,
    cache: Path,
    compile_cache: Path,
    devices: int,
    initialization_timeout: int = 60,
    program: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """`imdb-jax ARGS` (or `python PROGRAM ARGS`) in a process of its own."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "IMDB_JAX_CACHE_DIR": str(cache),
        "IMDB_JAX_COMPILE_CACHE": str(compile_cache),
        "IMDB_JAX_HEARTBEAT_TIMEOUT": str(HEARTBEAT_S),
        "IMDB_JAX_INITIALIZATION_TIMEOUT": str(initialization_timeout),
        "IMDB_JAX_SHUTDOWN_TIMEOUT": "60",
        **(env or {}),
    }
    command = [sys.executable, *(program or ["-m", "imdb_jax"]), *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_pair(args: list[str], tmp_path: Path, compile_cache: Path, **options: Any) -> list[subprocess.Popen]:
    """Processes 0 and 1 of one run, 2 CPU devices each, each with its own data cache and
    output folder (`options`: `start`'s `program` and `env`)."""
    port = free_port()
    return [
        start(
            [
                *args,
                "--output",
                tmp_path / f"out{rank}",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                2,
                "--process-id",
                rank,
            ],
            tmp_path / f"cache{rank}",
            compile_cache,
            devices=2,
            **options,
        )
        for rank in range(2)
    ]


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"process hung:\n{err[-3000:]}")
    return process.returncode, out, err


def without_timings(value):
    if isinstance(value, dict):
        return {
            key: without_timings(item) for key, item in value.items() if key not in TIMINGS + ("devices", "model_dir")
        }
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


def test_a_study_over_two_processes_is_the_one_process_study(study_args, tmp_path, compile_cache):
    args = [*study_args, "--epochs", "3"]
    alone = start([*args, "--output", tmp_path / "alone"], tmp_path / "cache", compile_cache, devices=1)
    status, _, err = finish(alone)
    assert status == 0, err[-3000:]
    pair = start_pair(args, tmp_path, compile_cache)
    (status0, out0, err0), (status1, out1, err1) = finish(pair[0]), finish(pair[1])
    assert (status0, status1) == (0, 0), (err0[-3000:], err1[-3000:])

    expected = json.loads((tmp_path / "alone" / "study.json").read_text())
    found = json.loads((tmp_path / "out0" / "study.json").read_text())
    assert len(expected["devices"]) == 1 and len(found["devices"]) == 4  # the variants spread over 4 devices
    assert found["status"] == "done" and len(found["variants"]) == len(SPECS)
    assert without_timings(found) == without_timings(expected)  # every history and statistic, bit for bit
    with (
        np.load(tmp_path / "alone" / "model" / "params.npz") as ours,
        np.load(tmp_path / "out0" / "model" / "params.npz") as theirs,
    ):
        assert sorted(ours.files) == sorted(theirs.files)
        for name in ours.files:
            assert np.array_equal(ours[name], theirs[name]), name
    assert "wrote" in out0 and out1 == ""  # process 1 reports nothing and writes nothing
    assert not (tmp_path / "out1").exists()


# `imdb-jax ARGV` whose process 0 (the one that writes checkpoints) kills itself with SIGKILL, as
# `kill -9` would, right after the checkpoint of epoch $KILL_AFTER_EPOCH: a kill at a known point
# of the run, not at a moment timing picks.
KILLED_AFTER_EPOCH = """
import os, signal, sys
import jax
from imdb_jax.train import checkpoints
written, save = [0], checkpoints.save
def save_then_die(*args, **kwargs):
    save(*args, **kwargs)
    written[0] += 1
    if written[0] == int(os.environ["KILL_AFTER_EPOCH"]) and jax.process_index() == 0:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoints.save = save_then_die
from imdb_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_two_process_study_killed_mid_run_resumes_to_the_uninterrupted_result(study_args, tmp_path, compile_cache):
    """Only process 0 holds the checkpoint; process 1's output folder is a throw-away one, gone
    with the kill. Resumed with 2 processes, every process must continue from process 0's state
    (`checkpoints.load` broadcasts it), and the study ends bitwise where the uninterrupted one
    does (the 2-process study is the 1-process one, bitwise: the test above)."""
    args = [*study_args, "--epochs", "3"]
    alone = start([*args, "--output", tmp_path / "alone"], tmp_path / "cache", compile_cache, devices=1)
    status, _, err = finish(alone)
    assert status == 0, err[-3000:]

    # Both killed after the first epoch's checkpoint: process 0 kills itself once it is written,
    # process 1 (which may be in the next epoch, or waiting for process 0 there) is killed at once.
    # TMPDIR holds process 1's throw-away output folder, which a killed process cannot remove.
    writer, other = start_pair(
        args,
        tmp_path,
        compile_cache,
        program=["-c", KILLED_AFTER_EPOCH],
        env={"KILL_AFTER_EPOCH": "1", "TMPDIR": str(tmp_path)},
    )
    try:
        writer.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        writer.kill()
        pytest.fail(f"process 0 was not killed after the first epoch:\n{writer.communicate()[1][-3000:]}")
    finally:
        other.send_signal(signal.SIGKILL)
        other.communicate()
    assert writer.returncode == -signal.SIGKILL
    checkpoint = json.loads((tmp_path / "out0" / "checkpoints" / "custom" / "run.json").read_text())
    assert checkpoint["epochs_done"] == 1
    assert not (tmp_path / "out1").exists()  # process 1 keeps no state of its own to resume from

    pair = start_pair([*args, "--resume", "--json"], tmp_path, compile_cache)
    (status0, out0, err0), (status1, out1, err1) = finish(pair[0]), finish(pair[1])
    assert (status0, status1) == (0, 0), (err0[-3000:], err1[-3000:])
    # Standard output is the JSON line alone, in process 0, and nothing in process 1: the
    # collectives that broadcast the checkpoint announce their connections on stderr.
    assert out1 == "" and len(out0.splitlines()) == 1 and json.loads(out0)["output"] == str(tmp_path / "out0")
    expected = json.loads((tmp_path / "alone" / "study.json").read_text())
    found = json.loads((tmp_path / "out0" / "study.json").read_text())
    assert found["status"] == "done" and len(found["devices"]) == 4
    assert without_timings(found) == without_timings(expected)  # every history and statistic, bit for bit
    with (
        np.load(tmp_path / "alone" / "model" / "params.npz") as ours,
        np.load(tmp_path / "out0" / "model" / "params.npz") as theirs,
    ):
        assert sorted(ours.files) == sorted(theirs.files)
        for name in ours.files:
            assert np.array_equal(ours[name], theirs[name]), name
    assert not (tmp_path / "out0" / "checkpoints").exists()

    # Resumed again: the study is finished, as process 0 finds, and every process says so at once.
    started = time.monotonic()
    pair = start_pair([*args, "--resume"], tmp_path, compile_cache)
    (status0, _, err0), (status1, _, err1) = finish(pair[0], timeout=120), finish(pair[1], timeout=120)
    assert (status0, status1) == (2, 2), (err0[-3000:], err1[-3000:])
    assert "already finished" in err0 and "already finished" in err1, (err0[-3000:], err1[-3000:])
    assert time.monotonic() - started < 60


def test_resuming_a_finished_train_run_stops_every_process(tmp_path, fake_aclimdb, compile_cache):
    """Only process 0's output folder shows the run is finished: every process must stop (not
    process 0 alone, leaving the other waiting in a collective until its timeout)."""
    args = ["train", "--hidden-units", "4", "--epochs", "1", "--batch-size", "2", "--num-words", "20"]
    args += ["--data-dir", str(fake_aclimdb), "--no-progress"]
    pair = start_pair(args, tmp_path, compile_cache)
    (status0, _, err0), (status1, _, err1) = finish(pair[0]), finish(pair[1])
    # 3: finished, but no better than chance on six reviews in one epoch (the model is saved).
    assert status0 == status1 and status0 in (0, 3), (err0[-3000:], err1[-3000:])
    started = time.monotonic()
    pair = start_pair([*args, "--resume"], tmp_path, compile_cache)
    (status0, _, err0), (status1, _, err1) = finish(pair[0], timeout=120), finish(pair[1], timeout=120)
    assert (status0, status1) == (2, 2), (err0[-3000:], err1[-3000:])
    assert "already finished" in err0 and "already finished" in err1, (err0[-3000:], err1[-3000:])
    assert time.monotonic() - started < 60


def test_a_killed_process_ends_the_run_on_the_other(study_args, tmp_path, compile_cache):
    survivor, victim = start_pair([*study_args, "--epochs", "100000", "--no-retrain"], tmp_path, compile_cache)
    progress = tmp_path / "out0" / "study.json"  # rewritten by process 0 after every epoch
    deadline = time.monotonic() + 120
    while not progress.exists() and survivor.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not progress.exists():
        victim.kill()
        survivor.kill()
        pytest.fail(f"the run did not start training:\n{survivor.communicate()[1][-3000:]}")
    victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    status, _, err = finish(survivor, timeout=DEATH_BOUND_S + 30)
    elapsed = time.monotonic() - killed
    victim.communicate()
    assert status != 0
    assert elapsed < DEATH_BOUND_S, f"took {elapsed:.1f} s"
    assert "lost another process of the run" in err or "another task died" in err, err[-3000:]


def test_an_unreachable_coordinator_is_a_clear_error(tmp_path, compile_cache):
    started = time.monotonic()
    process = start(
        [
            "study",
            "units",
            "--output",
            tmp_path / "out",
            "--coordinator",
            f"127.0.0.1:{free_port()}",
            "--num-processes",
            2,
            "--process-id",
            1,
        ],
        tmp_path / "cache",
        compile_cache,
        devices=1,
        initialization_timeout=2,
    )
    status, _, err = finish(process, timeout=60)
    # Its own 2 s timeout, not JAX's default of 300 s (the rest is starting Python and JAX, which
    # takes longer on a loaded machine).
    assert status == 2 and time.monotonic() - started < 150
    assert "cannot reach the coordinator at 127.0.0.1:" in err and "initialization_timeout=2 s" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# One process: nothing changes.


def test_one_process_needs_no_options(monkeypatch):
    for variable in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    assert distributed.initialize() is False
    assert distributed.initialize("127.0.0.1:1234", 1, 0) is False
    assert not distributed.is_initialized() and distributed.is_main()
    assert distributed.agree_status(3) == 3


def test_a_launcher_is_detected_only_with_several_tasks(monkeypatch):
    for variable in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.detected_cluster() is None
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.detected_cluster() == "slurm"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"coordinator": "127.0.0.1:1234", "num_processes": 2}, "go together"),
        ({"coordinator": "127.0.0.1", "num_processes": 2, "process_id": 0}, "HOST:PORT"),
        ({"coordinator": "127.0.0.1:99999", "num_processes": 2, "process_id": 0}, "HOST:PORT"),
        ({"coordinator": "127.0.0.1:1234", "num_processes": 2, "process_id": 2}, r"--process-id must be in \[0, 1\]"),
        ({"coordinator": "127.0.0.1:1234", "num_processes": 0, "process_id": 0}, "--num-processes must be a positive"),
        (
            {"coordinator": "127.0.0.1:1234", "num_processes": 2, "process_id": 1, "heartbeat_timeout": 0},
            "heartbeat timeout",
        ),
    ],
)
def test_bad_settings_are_refused_before_joining(options, message):
    with pytest.raises(ImdbJaxError, match=message):
        distributed.initialize(**options)
    assert not distributed.is_initialized()


def test_timeouts_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("IMDB_JAX_HEARTBEAT_TIMEOUT", "7")
    assert distributed.timeout("heartbeat") == 7 and distributed.timeout("heartbeat", 9) == 9
    assert distributed.timeout("initialization") == distributed.TIMEOUTS["initialization"]
    monkeypatch.setenv("IMDB_JAX_SHUTDOWN_TIMEOUT", "soon")
    with pytest.raises(ImdbJaxError, match="IMDB_JAX_SHUTDOWN_TIMEOUT must be a number"):
        distributed.timeout("shutdown")


def test_in_one_process_gather_is_device_get_and_place_is_device_put():
    tree = {"weights": jax.numpy.arange(6.0).reshape(2, 3), "step": jax.numpy.int32(4)}
    gathered = distributed.gather(tree)
    assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(gathered))
    assert np.array_equal(gathered["weights"], np.arange(6.0).reshape(2, 3))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("variants",))
    placed = distributed.place(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    assert placed["weights"].sharding.mesh == mesh and np.array_equal(placed["weights"], tree["weights"])
