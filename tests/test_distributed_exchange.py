"""What crosses processes, and when (`imdb_jax.train.distributed`), checked in 2 real processes of
1 CPU device each, in a few seconds:

- process 0's checkpoint reaches the others whole whatever its size: its size in 64 bits (2 GiB
  and more do not wrap or overflow an int32), its bytes in chunks of at most `CHUNK_BYTES` (here
  lowered, so a few kilobytes span several);
- a process that finished with its command's own status (train's 3, "did not learn") stops no
  one: not even a process that fetches once more after it has posted that status, an order
  forced here (it comes only some of the time in a real run).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imdb_jax.train import distributed
from tests.test_distributed import finish, free_port, start

# Sizes above int32 (and the checkpoint's two markers, -1 "none" and -2 "unreadable"), as
# `process_0s` must carry them.
SIZES = [2**31 - 1, 2**31, 2**31 + 7, 2**32, 5 * 2**40 + 3, 2**63 - 1, -1, -2, -(2**31) - 1, -(2**63)]

# Process PROCESS_ID of 2 (argv: COORDINATOR PROCESS_ID FOLDER): process 0's sizes as every
# process gets them (the others pass 0), then process 0's checkpoint file, read through
# `checkpoints._read_on_process_0` with chunks of 1000 bytes (process 1's folder has no file: it
# gets process 0's), and the shape of every `from_process_0` that carried it. One JSON line.
BROADCAST = """
import json, sys
from pathlib import Path
import numpy as np
from imdb_jax.train import checkpoints, distributed
coordinator, rank, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
assert distributed.initialize(coordinator, 2, rank)
sizes = [distributed.process_0s(size if rank == 0 else 0) for size in json.loads(sys.argv[4])]
distributed.CHUNK_BYTES = 1000
shapes, send = [], distributed.from_process_0
def recorded(value):
    shapes.append(list(np.shape(value)))
    return send(value)
distributed.from_process_0 = recorded
payload = np.random.default_rng(0).integers(0, 256, 3500, np.uint8).tobytes()
file = folder / "run.npz"
if rank == 0:
    file.write_bytes(payload)
data = checkpoints._read_on_process_0(file)
print(json.dumps({"sizes": sizes, "whole": data == payload, "shapes": shapes}))
"""

# `imdb-jax ARGV` with train's work replaced: process 0 ends at once with train's own status 3;
# process 1 waits until process 0 has posted its status to the coordination service, then
# fetches once more (a gather that needs no other process, as a real run's last ones may be) and
# ends with 3 too.
FINISHED_FIRST = """
import sys
import jax
from imdb_jax.cli import main, train
from imdb_jax.train import distributed
def did_not_learn(args, config, output, drawing):
    if jax.process_index() == 1:
        distributed._client().blocking_key_value_get(distributed._STATUS_KEY + "0", 60_000)
        distributed.gather(jax.numpy.arange(3))
    return train.DID_NOT_LEARN
train._train = did_not_learn
sys.exit(main(sys.argv[1:]))
"""


def start_pair(program: str, args_of, tmp_path: Path, compile_cache: Path) -> list:
    """Processes 0 and 1 of one run, `python -c PROGRAM *args_of(coordinator, rank)`."""
    coordinator = f"127.0.0.1:{free_port()}"
    return [
        start(
            args_of(coordinator, rank),
            tmp_path / f"cache{rank}",
            compile_cache,
            devices=1,
            program=["-c", program],
            env={"TMPDIR": str(tmp_path)},
        )
        for rank in range(2)
    ]


def test_a_checkpoint_of_any_size_reaches_every_process_whole(tmp_path):
    for rank in range(2):
        (tmp_path / str(rank)).mkdir()
    pair = start_pair(
        BROADCAST,
        lambda coordinator, rank: [coordinator, rank, tmp_path / str(rank), json.dumps(SIZES)],
        tmp_path,
        tmp_path / "xla",
    )
    (status0, out0, err0), (status1, out1, err1) = finish(pair[0], timeout=120), finish(pair[1], timeout=120)
    assert (status0, status1) == (0, 0), (err0[-3000:], err1[-3000:])
    for out in (out0, out1):
        found = json.loads(out.splitlines()[-1])
        assert found["sizes"] == SIZES
        assert found["whole"]
        # The size (two int32 words), then 3500 bytes as 1000, 1000, 1000 and 500.
        assert found["shapes"] == [[2], [1000], [1000], [1000], [500]]


def test_a_size_travels_as_two_int32_words():
    for size in SIZES:
        words = distributed._to_words(size)
        assert words.dtype == np.int32 and words.shape == (2,)
        assert distributed._from_words(words) == size
    for size in (2**63, -(2**63) - 1):
        with pytest.raises(ValueError, match="64 bits"):
            distributed._to_words(size)


def test_a_process_that_did_not_learn_stops_no_one_even_one_still_fetching(tmp_path, fake_aclimdb):
    """Both processes end with train's 3 and no error, though process 1 checks its peers (as
    every gather does) only after process 0 has finished with status 3: before the fix it took
    that status for a failure, stopped with 2 and "process 0 of the run failed"."""
    args = ["train", "--epochs", "1", "--data-dir", fake_aclimdb, "--no-progress"]
    pair = start_pair(
        FINISHED_FIRST,
        lambda coordinator, rank: [
            *args,
            "--output",
            tmp_path / f"out{rank}",
            "--coordinator",
            coordinator,
            "--num-processes",
            2,
            "--process-id",
            rank,
        ],
        tmp_path,
        tmp_path / "xla",
    )
    (status0, _, err0), (status1, _, err1) = finish(pair[0], timeout=120), finish(pair[1], timeout=120)
    assert (status0, status1) == (3, 3), (err0[-3000:], err1[-3000:])
    assert "error" not in err0 and "error" not in err1, (err0[-3000:], err1[-3000:])
