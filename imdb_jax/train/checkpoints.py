"""A run's state at epoch boundaries, so a killed run continues where it stopped.

After every epoch `fit_variants(..., checkpoint_dir=DIR)` writes `DIR/run.npz`: every array of the
fused state (weights, rmsprop state, best weights, step, per-variant settings, PRNG key data,
which variants are alive) and every epoch's metric sums so far, plus `DIR/run.json` saying what
the run is (variants, data fingerprint, batch size, shuffle seed, devices). The shuffle of epoch
`e` depends only on `e`, so resuming from a checkpoint replays exactly the batches the run would
have seen, and the finished result is bitwise identical to an uninterrupted run.

Why one `.npz` renamed into place rather than Orbax: the state is one host's arrays of tens of
megabytes, written once per epoch; a single file written beside and renamed into place
(`imdb_jax.atomic`) is never half old and half new, needs no extra dependency, and loads
with NumPy alone (during a run `BackgroundWriter` writes it in a thread
while the next epoch trains). The arrays file alone is the checkpoint: it holds its own epoch
count and the run's description (as JSON text), so a process killed between writing it and
the JSON beside it (written after, for people and tools) leaves a run that resumes. The
description records the JAX and jaxlib versions, backend and device count: another JAX may round
differently, so resuming under one is refused unless asked for (`resume="force"`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from imdb_jax.atomic import atomic_write, json_bytes
from imdb_jax.errors import ImdbJaxError
from imdb_jax.train import distributed
from imdb_jax.train.loop import fetch
from imdb_jax.train.programs import stored_jit
from imdb_jax.train.steps import FusedState

ARRAYS = "run.npz"
META = "run.json"
FORMAT = 1
DESCRIPTION = "description"  # the run's description inside ARRAYS, as JSON text


def _fault(point: str) -> None:
    """Fault-injection hook for tests: called at each point of `save` where a kill may land
    ("arrays written" before the rename, "arrays renamed", "description written")."""


def environment() -> dict[str, Any]:
    """What bitwise resumption depends on beyond the run itself: the JAX that compiles it."""
    return {
        "jax": jax.__version__,
        "jaxlib": getattr(jaxlib, "__version__", "unknown"),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }


def data_fingerprint(x: Any, y: Any) -> str:
    """SHA-256 of a split's CSR structure, values and labels (a resumed run must see the same
    data)."""
    digest = hashlib.sha256()
    for array in (x.indptr, x.indices, x.data, np.asarray([] if y is None else y, np.float32)):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(repr(x.shape).encode())
    return digest.hexdigest()


def _flatten(state: FusedState) -> dict[str, np.ndarray]:
    host = state.replace(dropout_keys=jax.random.key_data(state.dropout_keys))  # pyright: ignore[reportAttributeAccessIssue]
    leaves = jax.tree_util.tree_flatten_with_path(host)[0]
    return {"state" + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _records_arrays(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    arrays = {}
    if not records:
        return arrays
    arrays["records/alive"] = np.stack([record["alive"] for record in records])
    arrays["records/train_s"] = np.asarray([record["train_s"] for record in records])
    arrays["records/val_s"] = np.asarray([record["val_s"] for record in records])
    if "training" in records[0]:  # early stopping's decisions
        arrays["records/training"] = np.stack([record["training"] for record in records])
    for part in ("train", "val"):
        if records[0][part] is None:
            continue
        for name in records[0][part]:
            arrays[f"records/{part}/{name}"] = np.stack([np.asarray(record[part][name]) for record in records])
    return arrays


def _records_from(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    if "records/alive" not in arrays:
        return []
    records = []
    for epoch in range(arrays["records/alive"].shape[0]):
        record = {
            "alive": arrays["records/alive"][epoch],
            "train_s": float(arrays["records/train_s"][epoch]),
            "val_s": float(arrays["records/val_s"][epoch]),
            "train": None,
            "val": None,
        }
        if "records/training" in arrays:
            record["training"] = arrays["records/training"][epoch]
        for part in ("train", "val"):
            names = [key.split("/")[-1] for key in arrays if key.startswith(f"records/{part}/")]
            if names:
                record[part] = {name: arrays[f"records/{part}/{name}"][epoch] for name in names}
        records.append(record)
    return records


def save(folder: str | Path, state: FusedState, records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Writes the run after `len(records)` epochs (arrays first, then the description).

    Across processes every process must call it (the state is gathered from all of them);
    only process 0 writes.
    """
    host = fetch(state)
    if jax.process_index() != 0:
        return
    _write(Path(folder), host, records, meta)


def _write(folder: Path, host: Any, records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {**_flatten(host), **_records_arrays(records)}
    arrays["epochs_done"] = np.asarray(len(records))
    described = {**meta, "environment": environment(), "format": FORMAT, "epochs_done": len(records)}
    arrays[DESCRIPTION] = np.asarray(json_bytes(described, indent=1).decode("utf-8"))
    # Written beside and renamed into place, without fsync: a killed process (kill -9, Ctrl-C, a
    # crash) leaves the previous checkpoint or this one, never part of one; only a power cut
    # before the system flushes could cost the last epochs. An fsync of a study's ~100 MB state
    # every epoch would cost more than the epoch itself.
    handle, temporary = tempfile.mkstemp(prefix=".run-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)  # pyright: ignore[reportArgumentType]
        _fault("arrays written")
        os.replace(temporary, folder / ARRAYS)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fault("arrays renamed")
    atomic_write(folder / META, json_bytes(described, indent=1))
    _fault("description written")


@stored_jit
def _snapshot(state: FusedState) -> FusedState:
    """A copy of every array of the state, as one program (an eager copy per leaf was a dispatch
    each: ~30 ms an epoch of the 1-seed study on the main thread, the devices idle)."""
    return jax.tree_util.tree_map(jnp.copy, state)


class BackgroundWriter:
    """`save`, with the copying to the host and the writing done beside the next epoch.

    A study's state is hundreds of megabytes; fetching and writing it took 1.7 s after every
    7.5 s epoch of the 4-seed study, with the devices idle. `save` here copies the state on the
    device (the next epoch donates its buffers) and returns; a thread fetches the copy and writes
    it, as `save` would, while the next epoch trains. One write at a time: a save waits for the
    one before. What a kill leaves is unchanged (the previous checkpoint or this one, whole). An
    error in the thread (a full disk) is raised by the next `save` or by `wait`.

    Across processes (`jax.process_count() > 1`) every process must gather the state together,
    so there `save` is the plain synchronous one.
    """

    def __init__(self, folder: str | Path, meta: dict[str, Any]):
        self.folder = Path(folder)
        self.meta = meta
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: FusedState, records: list[dict[str, Any]]) -> None:
        self.wait()
        if jax.process_count() > 1:
            save(self.folder, state, records, self.meta)
            return
        snapshot = _snapshot(state)
        self._thread = threading.Thread(
            target=self._run, args=(snapshot, list(records)), name="imdb-jax-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self, snapshot: FusedState, records: list[dict[str, Any]]) -> None:
        try:
            save(self.folder, snapshot, records, self.meta)
        except BaseException as error:  # handed to the main thread
            self._error = error

    def wait(self) -> None:
        """Waits for the write in progress; raises its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _read_on_process_0(file: Path) -> bytes | OSError | None:
    """The checkpoint's bytes as process 0 reads them (None: there is none), in every process.

    Only process 0 writes checkpoints (the others may have no access to its folder): across
    processes it reads the file and broadcasts it, so that every process resumes from the same
    state (or all start afresh, or all fail alike): its size in 64 bits (`process_0s`), then its
    bytes in bounded chunks (`bytes_from_process_0`), so a checkpoint of any size arrives whole.
    """
    data: bytes | OSError | None = None
    if jax.process_index() == 0 and file.exists():
        try:
            data = file.read_bytes()
        except OSError as error:
            data = error
    if jax.process_count() == 1:
        return data
    size = distributed.process_0s(-1 if data is None else -2 if isinstance(data, OSError) else len(data))
    if size < 0:
        return data if jax.process_index() == 0 else None if size == -1 else OSError(f"process 0 cannot read {file}")
    return distributed.bytes_from_process_0(data if isinstance(data, bytes) else None, size)


def load(
    folder: str | Path, template: FusedState, meta: dict[str, Any], *, force: bool = False
) -> tuple[FusedState, list[dict[str, Any]]] | None:
    """The saved state and records of the run described by `meta`, or None if `folder` holds no
    checkpoint yet.

    Args:
      folder: the run's checkpoint folder.
      template: a state of the run's shapes (its initial state).
      meta: the run's description.
      force: resume even if the checkpoint was written under another JAX, jaxlib, backend or
        device count (the result may then differ from an uninterrupted run's by rounding).

    Raises:
      ImdbJaxError: the checkpoint belongs to another run (other variants, data, batch size,
        shuffle seed or devices), was written under another JAX (unless `force`), or is damaged.
    """
    folder = Path(folder)
    data = _read_on_process_0(folder / ARRAYS)
    if data is None:
        return None
    try:
        if isinstance(data, OSError):
            raise data
        with np.load(io.BytesIO(data)) as archive:
            arrays = {name: archive[name] for name in archive.files}
        if DESCRIPTION in arrays:
            saved_meta = json.loads(str(arrays.pop(DESCRIPTION)))
        else:  # written before the description moved into the arrays
            saved_meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError) as error:
        raise ImdbJaxError(f"the checkpoint in {folder} cannot be read ({error}); remove it to start afresh") from None
    saved_environment, current = saved_meta.get("environment"), environment()
    if saved_environment != current and not force:

        def said(env: Any) -> str:
            if not isinstance(env, dict):
                return "an unrecorded JAX"
            return f"jax {env.get('jax')}, jaxlib {env.get('jaxlib')}, {env.get('backend')}, {env.get('devices')} device(s)"

        raise ImdbJaxError(
            f"the checkpoint in {folder} was written under {said(saved_environment)}, this is {said(current)}: "
            "resuming would not be bitwise an uninterrupted run; resume='force' (--resume-anyway) continues anyway"
        )
    different = sorted(key for key in meta if saved_meta.get(key) != json.loads(json_bytes(meta[key])))
    if different:
        raise ImdbJaxError(
            f"the checkpoint in {folder} is from a different run ({', '.join(different)} differ); "
            "use another output folder or remove it to start afresh"
        )
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(
        template.replace(dropout_keys=jax.random.key_data(template.dropout_keys))  # pyright: ignore[reportAttributeAccessIssue]
    )
    leaves = []
    for path, leaf in leaves_with_paths:
        name = "state" + jax.tree_util.keystr(path)
        if name not in arrays or arrays[name].shape != np.shape(leaf):
            raise ImdbJaxError(f"the checkpoint in {folder} does not match this run's state ({name})")
        leaves.append(arrays[name])
    restored = jax.tree_util.tree_unflatten(treedef, leaves)
    restored = restored.replace(dropout_keys=jax.random.wrap_key_data(restored.dropout_keys))
    return restored, _records_from(arrays)
