"""A checkpointed run killed at any point of writing its checkpoint resumes to the uninterrupted
result, bitwise; a checkpoint written under another JAX is refused unless asked for.

The kill points are injected (`checkpoints._fault`), not timed: each point of each epoch is hit
for certain. A process killed by the system would leave the half-written temporary file too,
which is put there by hand.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from test_variants import BATCH, SPECS, TRAIN, VALIDATION

from imdb_jax import fit_variants
from imdb_jax.errors import ImdbJaxError
from imdb_jax.train import checkpoints

EPOCHS = 3


class Killed(BaseException):
    """Stands for the process dying: nothing in the package catches a BaseException."""


def run(folder=None, resume=False, epochs=EPOCHS):
    return fit_variants(
        SPECS[:2],
        TRAIN,
        VALIDATION,
        epochs=epochs,
        batch_size=BATCH,
        progress=False,
        checkpoint_dir=folder,
        resume=resume,
    )


@pytest.fixture(scope="module")
def uninterrupted():
    return run()


def assert_same(result, expected):
    def arrays(fused):
        return jax.tree.leaves(fused.replace(dropout_keys=jax.random.key_data(fused.dropout_keys)))

    for mine, theirs in zip(arrays(result.fused), arrays(expected.fused), strict=True):
        assert np.array_equal(np.asarray(mine), np.asarray(theirs))
    for mine, theirs in zip(result.histories, expected.histories):
        for key in ("loss", "val_loss", "diverged"):
            assert np.array_equal(mine[key], theirs[key], equal_nan=key != "diverged"), key


@pytest.mark.parametrize("epoch", [1, 2])
@pytest.mark.parametrize("point", ["arrays written", "arrays renamed", "description written"])
def test_a_kill_at_any_point_of_a_checkpoint_resumes_bitwise(tmp_path, monkeypatch, uninterrupted, point, epoch):
    hits = []

    def fault(where: str) -> None:
        if where == point:
            hits.append(where)
            if len(hits) == epoch:
                raise Killed(where)

    monkeypatch.setattr(checkpoints, "_fault", fault)
    folder = tmp_path / "run"
    with pytest.raises(Killed):
        run(folder)
    monkeypatch.undo()
    if point == "arrays renamed" and epoch == 1:
        assert not (folder / checkpoints.META).exists()  # the window the JSON used to leave broken
    (folder / ".run-left-by-kill-9.npz").write_bytes(b"PK\x03\x04 half a zip")
    assert_same(run(folder, resume=True), uninterrupted)


def rewrite_environment(folder, **changes):
    """Edits the stored description's environment, as another JAX would have written it."""
    with np.load(folder / checkpoints.ARRAYS) as archive:
        arrays = {name: archive[name] for name in archive.files}
    described = json.loads(str(arrays[checkpoints.DESCRIPTION]))
    described["environment"].update(changes)
    arrays[checkpoints.DESCRIPTION] = np.asarray(json.dumps(described))
    np.savez(folder / checkpoints.ARRAYS, **arrays)


def test_the_description_records_the_jax_it_ran_under(tmp_path):
    run(tmp_path, epochs=1)
    described = json.loads((tmp_path / checkpoints.META).read_text())
    assert described["environment"] == {
        "jax": jax.__version__,
        "jaxlib": checkpoints.environment()["jaxlib"],
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }


@pytest.mark.parametrize("change", [{"jax": "0.0.1"}, {"backend": "tpu"}, {"devices": 64}])
def test_resuming_under_another_jax_is_refused_unless_forced(tmp_path, uninterrupted, change):
    run(tmp_path, epochs=1)
    rewrite_environment(tmp_path, **change)
    with pytest.raises(ImdbJaxError) as error:
        run(tmp_path, resume=True)
    message = str(error.value)
    assert "\n" not in message and "was written under" in message and "resume='force'" in message
    assert str(next(iter(change.values()))) in message
    assert_same(
        fit_variants(
            SPECS[:2],
            TRAIN,
            VALIDATION,
            epochs=EPOCHS,
            batch_size=BATCH,
            progress=False,
            checkpoint_dir=tmp_path,
            resume="force",
        ),
        uninterrupted,
    )
