"""One run over several processes or hosts with `jax.distributed` (multi-controller).

Every process runs the same program. `initialize` joins them into one global device set, so the
variant mesh of `fit_variants` (`jax.devices()`) spans every process's devices: each process
trains the variant shards on its own devices, on the same batches (every process reads the data
itself and shuffles with the same keys), and nothing crosses processes during an epoch. At the
end of each epoch, the metric sums (and, for checkpoints and results, the weights) are gathered
to every process (`gather`, behind `imdb_jax.train.loop.fetch`), so every process holds the same
records and results; only process 0 (`is_main`) writes files.

Failure is bounded, never a hang (the numbers below are this module's defaults):

- a process that cannot reach the coordinator, or whose peers do not all join, fails after
  `initialization_timeout` (120 s);
- a process that dies mid-run (killed, its host down): its peers fail at their next gather with
  it (`LostProcess`, at the end of the epoch), or at the latest when the coordinator has missed
  its heartbeats for `heartbeat_timeout` (60 s), after which JAX ends every process; if process
  0 (the coordinator) dies, the others end at once;
- a process that fails with an error posts its exit status; its peers stop at their next gather
  instead of waiting for it, and every process leaves with the same status (`agree_status`); a
  process that finished waits at most `shutdown_timeout` (120 s) for the others' statuses (one
  that finished with a status of its command's own, such as `imdb-jax train`'s 3, stops no one).

In a single process (no arguments and no cluster launcher detected) none of this runs: `gather`
is `jax.device_get` and `place` is `jax.device_put`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils

from imdb_jax.errors import ImdbJaxError

# Default bounds in seconds (see `timeout`).
TIMEOUTS = {"initialization": 120, "heartbeat": 60, "shutdown": 120}

# Launchers whose environment JAX reads on its own (`jax.distributed.initialize()` without
# arguments), with the variable holding the process count there.
CLUSTER_PROCESS_COUNTS = {"slurm": "SLURM_NTASKS", "open mpi": "OMPI_COMM_WORLD_SIZE"}

# The most bytes one collective of `bytes_from_process_0` carries: a payload of any size (a
# study's checkpoint may pass 2 GiB) goes in chunks of at most this many, so that neither a device
# array nor an int32 index into one grows with it.
CHUNK_BYTES = 256 * 2**20

_STATUS_KEY = "imdb_jax/exit_status/"
# Marks the status of a process that got to the end of its command (`agree_status(finished=True)`),
# whatever the status: no reason for the others to stop (`_check_peers`), since it joined every
# collective of the run.
_FINISHED = "finished "


class LostProcess(ImdbJaxError):
    """Another process of the run is gone (a collective with it failed): the run cannot go on,
    and JAX's shutdown barrier at exit would only wait for it until the heartbeat timeout."""


def detected_cluster() -> str | None:
    """The launcher that started this process as one of several ("slurm", "open mpi",
    "environment" for `JAX_COORDINATOR_ADDRESS`), or None."""
    for name, variable in CLUSTER_PROCESS_COUNTS.items():
        try:
            if int(os.environ.get(variable, "1")) > 1:
                return name
        except ValueError:
            continue
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "environment"
    return None


def timeout(kind: str, seconds: float | None = None) -> int:
    """Whole seconds of the `kind` ("initialization", "heartbeat", "shutdown") bound: `seconds`,
    else `$IMDB_JAX_<KIND>_TIMEOUT`, else this module's default."""
    variable = f"IMDB_JAX_{kind.upper()}_TIMEOUT"
    if seconds is None:
        seconds = os.environ.get(variable) or TIMEOUTS[kind]  # pyright: ignore[reportAssignmentType]
    try:
        value = float(seconds)  # pyright: ignore[reportArgumentType]
    except ValueError:
        raise ImdbJaxError(f"{variable} must be a number of seconds, got {seconds!r}") from None
    if not value > 0:
        raise ImdbJaxError(f"the {kind} timeout must be a positive number of seconds, got {seconds!r}")
    return max(1, round(value))


def is_initialized() -> bool:
    return jax.distributed.is_initialized()


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: float | None = None,
    heartbeat_timeout: float | None = None,
    shutdown_timeout: float | None = None,
) -> bool:
    """Joins this process to a multi-process run, before anything touches a device.

    With all three of `coordinator`, `num_processes`, `process_id` given, they are used; with
    none, JAX's own cluster detection runs when a multi-process launcher is detected (Slurm's
    `srun` with several tasks, Open MPI's `mpirun`, or `JAX_COORDINATOR_ADDRESS` and friends
    set), and otherwise nothing happens: today's single process.

    Args:
      coordinator: "HOST:PORT" of process 0, which serves the coordination service there.
      num_processes: how many processes take part.
      process_id: this process's number, 0 ... num_processes - 1.
      initialization_timeout: seconds to wait for every process to join (default:
        `$IMDB_JAX_INITIALIZATION_TIMEOUT`, else 120).
      heartbeat_timeout: seconds without a heartbeat after which a process counts as dead and
        every process is ended (default: `$IMDB_JAX_HEARTBEAT_TIMEOUT`, else 60).
      shutdown_timeout: seconds a finished process waits for the others at the end (default:
        `$IMDB_JAX_SHUTDOWN_TIMEOUT`, else 120).

    Returns:
      True when running as one of several processes.

    Raises:
      ImdbJaxError: some but not all of the three given, bad values, or the coordinator not
        reached in time.
    """
    initialization_timeout = timeout("initialization", initialization_timeout)
    heartbeat_timeout = timeout("heartbeat", heartbeat_timeout)
    shutdown_timeout = timeout("shutdown", shutdown_timeout)
    given = [value is not None for value in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ImdbJaxError("--coordinator, --num-processes and --process-id go together: give all three, or none")
    if not any(given):
        cluster = detected_cluster()
        if cluster is None:
            return False
        where = f"the {cluster} launcher's settings"
    else:
        _check_settings(coordinator, num_processes, process_id)  # pyright: ignore[reportArgumentType]
        if num_processes == 1:
            return False
        where = f"the coordinator at {coordinator}"
    if is_initialized():
        return jax.process_count() > 1
    started = time.monotonic()
    if any(given):
        # Plain socket checks first: JAX ends the process (no Python exception) when it cannot
        # connect, so the commonest mistakes get a clear message here.
        host, port = coordinator.rsplit(":", 1)  # pyright: ignore[reportOptionalMemberAccess]
        if process_id == 0:
            _check_port_free(host, int(port))
        else:
            _wait_for_coordinator(host, int(port), initialization_timeout)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=max(1, round(initialization_timeout - (time.monotonic() - started))),
            heartbeat_timeout_seconds=heartbeat_timeout,
            shutdown_timeout_seconds=shutdown_timeout,
        )
    except Exception as error:  # JaxRuntimeError, ValueError (a launcher's incomplete settings), ...
        raise ImdbJaxError(f"could not join the run through {where}: {_first_line(error)}") from None
    _connect_devices()
    return jax.process_count() > 1


def _connect_devices() -> None:
    """One collective over every device, so that the processes' devices are connected before
    anything else runs (its announcements go to stderr: `collective_output_to_stderr`)."""
    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("all",))
    ones = place(np.ones(len(devices), np.int32), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("all")))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    with collective_output_to_stderr():
        joined = int(_gather_leaf(jax.jit(lambda values: values.sum(), out_shardings=replicated)(ones)))
    if joined != len(devices):
        raise ImdbJaxError(f"only {joined} of the run's {len(devices)} devices answered")


@contextlib.contextmanager
def collective_output_to_stderr() -> Iterator[None]:
    """Points the process's standard output (file descriptor 1) at stderr meanwhile.

    The CPU collectives (Gloo) announce every new connection between processes' devices ("[Gloo]
    Rank 1 is connected to 1 peer ranks ...") on file descriptor 1, which belongs to the
    command's report or JSON line: wrap any collective over a set of devices not connected yet
    (the first over all devices, `from_process_0`'s one per process), and let it end only once
    every local device has finished its part.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _check_settings(coordinator: str, num_processes: int, process_id: int) -> None:
    host, _, port = str(coordinator).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ImdbJaxError(f"--coordinator must be HOST:PORT, such as 10.0.0.1:7777, got {coordinator!r}")
    for name, value in (("--num-processes", num_processes), ("--process-id", process_id)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ImdbJaxError(f"{name} must be an integer, got {value!r}")
    if num_processes < 1:
        raise ImdbJaxError(f"--num-processes must be a positive integer, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ImdbJaxError(f"--process-id must be in [0, {num_processes - 1}], got {process_id}")


def _check_port_free(host: str, port: int) -> None:
    """Process 0 serves the coordination service on every interface at `port`."""
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the service does
        try:
            probe.bind(("", port))
        except OSError as error:
            raise ImdbJaxError(
                f"process 0 cannot serve the coordinator on port {port}: {error.strerror or error}; choose another --coordinator port"
            ) from None


def _wait_for_coordinator(host: str, port: int, seconds: float) -> None:
    """Waits until process 0's coordinator accepts connections (processes may start in any
    order), at most `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host.strip("[]"), port), timeout=min(5.0, seconds)):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise ImdbJaxError(
                    f"cannot reach the coordinator at {host}:{port} within initialization_timeout={seconds} s "
                    f"({error.strerror or error}): is process 0 (--process-id 0) running there, and is the port open?"
                ) from None
        time.sleep(0.2)


def is_main() -> bool:
    """Whether this is process 0, the one that writes files (always True in one process)."""
    return jax.process_index() == 0


# ---------------------------------------------------------------------------------------------
# Arrays across processes.


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)  # pyright: ignore[reportPrivateImportUsage]


def _gather_leaf(leaf: Any) -> Any:
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
        return jax.device_get(leaf)
    if _is_key(leaf):
        # Keys travel as their raw data and come back as a key array on this process's device.
        data = _gather_leaf(jax.random.key_data(leaf))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    if leaf.is_fully_replicated:
        return np.asarray(leaf.addressable_data(0))
    return multihost_utils.process_allgather(leaf, tiled=True)


def gather(tree: Any) -> Any:
    """Device arrays → host NumPy with every process's shards, on every process.

    In one process this is exactly `jax.device_get(tree)`. Across processes an array spread over
    devices of other processes is gathered (`process_allgather`, a collective: every process
    must call this with the same tree), a replicated one read from a local copy.
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    _check_peers()
    try:
        return jax.tree_util.tree_map(_gather_leaf, tree)
    except jax.errors.JaxRuntimeError as error:
        raise LostProcess(
            f"lost another process of the run (it stopped, failed or was killed): {_first_line(error)}"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _client():
    """The coordination service's key-value client (JAX has no public handle on it yet)."""
    return jax_distributed.global_state.client


def _check_peers() -> None:
    """Raises if another process has already posted a failure (`agree_status`), rather than
    waiting for it in a collective it will never join."""
    client = _client()
    if client is None:
        return
    try:
        posted = client.key_value_dir_get(_STATUS_KEY)
    except Exception:  # the coordinator is gone; the collective will say so
        return
    for key, value in posted:
        if value.strip() not in ("", "0") and not value.startswith(_FINISHED):
            process = key.rsplit("/", 1)[-1]
            raise ImdbJaxError(
                f"process {process} of the run failed (exit status {value.strip()}); stopping this one too"
            )


def _place_leaf(leaf: Any, sharding: jax.sharding.Sharding) -> Any:
    if _is_key(leaf):
        data = _place_leaf(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Host (or local device) arrays → global arrays laid out by `sharding`.

    In one process this is `jax.device_put(tree, sharding)`. Across processes every process
    holds the whole value (the same on every process: the same data, seeds and specs) and
    builds its own devices' shards from it (`jax.make_array_from_callback`).
    """
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(lambda leaf: _place_leaf(leaf, sharding), tree)


def _sum_rows(rows: jax.Array) -> jax.Array:
    return rows.sum(axis=0, dtype=rows.dtype)


def from_process_0(value: np.ndarray) -> np.ndarray:
    """Process 0's `value`, in every process: a host array of the same shape and dtype in each
    (what the others pass is ignored).

    Unlike `multihost_utils.broadcast_one_to_all` (whose answer is read from one local device
    while the collectives of the others may still be connecting, and announcing it on the
    command's standard output), it goes through one device per process, and every connection
    is made and announced on stderr before it returns. A collective: every process must call
    it. In one process, `value` itself.
    """
    value = np.asarray(value)
    count = jax.process_count()
    if count == 1:
        return value
    _check_peers()
    devices = [
        min((device for device in jax.devices() if device.process_index == index), key=lambda d: d.id)
        for index in range(count)
    ]
    mesh = jax.sharding.Mesh(np.array(devices), ("processes",))
    mine = value if jax.process_index() == 0 else np.zeros_like(value)
    spread = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("processes"))
    stacked = jax.make_array_from_single_device_arrays(
        (count, *value.shape), spread, [jax.device_put(mine[None], devices[jax.process_index()])]
    )
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    try:
        with collective_output_to_stderr():
            # One module function, so jit traces and compiles it once per shape, not once per call
            # (a chunk of `bytes_from_process_0` each: 2 ms, not 25).
            total = jax.jit(_sum_rows, out_shardings=replicated)(stacked)
            return np.asarray(total.addressable_data(0))  # zeros added to process 0's value: the value itself
    except jax.errors.JaxRuntimeError as error:
        raise LostProcess(
            f"lost another process of the run (it stopped, failed or was killed): {_first_line(error)}"
        ) from None


def process_0s(value: int) -> int:
    """Process 0's `value` (an integer of 64 bits: a flag, a count, a size in bytes), in every
    process.

    For a decision taken from files only process 0 has (the others' output folders are
    throw-away ones, `imdb_jax.cli._distributed`), so that every process takes it alike: one
    raising an error while the others wait for it in a collective would leave them hanging until
    the collectives' timeouts. A collective: every process must call it (`from_process_0`).

    It travels as two int32 words (JAX's arrays have 32 bits unless x64 is on): a size of 2 GiB
    or more arrives whole, not wrapped or refused.
    """
    return _from_words(from_process_0(_to_words(value)))


def _to_words(value: int) -> np.ndarray:
    """int32[2]: the high and low 32 bits of `value`'s two's complement in 64 bits."""
    value = int(value)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{value} does not fit in 64 bits")
    unsigned = value % 2**64
    return np.array([unsigned >> 32, unsigned & 0xFFFFFFFF], np.uint32).view(np.int32)


def _from_words(words: np.ndarray) -> int:
    """The integer `_to_words` made `words` of."""
    high, low = (int(word) for word in np.asarray(words, np.int32).view(np.uint32))
    unsigned = high << 32 | low
    return unsigned - 2**64 if unsigned >= 2**63 else unsigned


def bytes_from_process_0(data: bytes | None, size: int) -> bytes:
    """Process 0's `data`, `size` bytes, in every process (what the others pass as `data` is
    ignored; `size` must be the same in every process: `process_0s`).

    Any size: the bytes go in chunks of at most `CHUNK_BYTES`, one `from_process_0` each. A
    collective: every process must call it. In one process, `data` itself.
    """
    if jax.process_index() != 0:
        received = np.empty(size, np.uint8)
        for start in range(0, size, CHUNK_BYTES):
            stop = min(start + CHUNK_BYTES, size)
            received[start:stop] = from_process_0(np.zeros(stop - start, np.uint8))
        return received.tobytes()
    if data is None or len(data) != size:
        raise ValueError(f"process 0 has {None if data is None else len(data)} bytes to send, not {size}")
    if jax.process_count() > 1:
        source = np.frombuffer(data, np.uint8)
        for start in range(0, size, CHUNK_BYTES):
            from_process_0(source[start : start + CHUNK_BYTES])  # for the others: process 0 has its bytes
    return data


# ---------------------------------------------------------------------------------------------
# Ending together.


def agree_status(status: int, wait: float | None = None, *, finished: bool = False) -> int:
    """The exit status every process leaves with: this process's `status` if it is non-zero,
    else the first non-zero status of another process (0 when every one succeeded).

    Each process posts its status to the coordination service and reads the others', waiting
    at most `wait` seconds (default: the shutdown timeout) for each; a process that has not
    answered by then counts as failed (status 1). In one process, `status` itself.

    `finished`: this process got to the end of its command, and `status` is the command's own
    (such as `imdb-jax train`'s 3, "did not learn"): the others go on to their own end rather
    than stopping as they do for a failure.
    """
    status = int(status)
    wait = timeout("shutdown", wait)
    if not is_initialized() or jax.process_count() == 1:
        return status
    client = _client()
    me = jax.process_index()
    try:
        client.key_value_set(f"{_STATUS_KEY}{me}", f"{_FINISHED if finished else ''}{status}")  # pyright: ignore[reportOptionalMemberAccess]
    except Exception:  # the coordinator is gone: the run has failed
        return status or 1
    if status:
        return status  # no need to wait for the others: the run has failed
    for other in range(jax.process_count()):
        if other == me:
            continue
        try:
            posted = client.blocking_key_value_get(f"{_STATUS_KEY}{other}", wait * 1000)  # pyright: ignore[reportOptionalMemberAccess]
            theirs = int(posted.removeprefix(_FINISHED))
        except Exception:
            return 1
        if theirs:
            return theirs
    return 0
