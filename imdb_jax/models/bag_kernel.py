"""The embedding bag's loop as a kernel of our own on the CPU: `bag_kernel.cc`, an XLA FFI handler.

XLA:CPU runs the bag's scatter-add at about one float per nanosecond on one core; the same loop in
C++ (each occurrence adds one row into another, in occurrence order, the widest vector
instructions the CPU has) is 2-5.5x faster and bitwise equal, because every output float is the
same sum in the same order (benchmarks/bag_kernel.py measures both; benchmarks/README.md, "Issue
14: the bag kernel, wired in").

The handler is compiled once per machine with the system's C++ compiler (`$CXX`, else `c++`)
against the XLA FFI headers that ship with jaxlib, into `<cache dir>/kernels/` (named by a hash
of the source, jaxlib's version and the compiler), and registered with XLA as
`imdb_jax_add_rows`. Where that fails (no compiler, another platform) `available()` says why
once, in the log, and `embedding_bag` keeps XLA's loop: the results are the same bits either way,
only slower. `IMDB_JAX_BAG_KERNEL=off` turns the kernel off.

The kernel runs only on the CPU backend; a GPU or TPU traces XLA's loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from imdb_jax.data.cache import default_cache_dir

ENVIRONMENT = "IMDB_JAX_BAG_KERNEL"
OFF = ("off", "0", "none", "false", "no")
TARGET = "imdb_jax_add_rows"
SOURCE = Path(__file__).with_name("bag_kernel.cc")
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-w")

log = logging.getLogger(__name__)

_why_not: str | None = None  # why the kernel is not in use, once `available()` has decided
_turned_off = 0  # `turned_off()` blocks open


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def _build(folder: Path) -> Path:
    """The compiled handler library in `folder`, compiled there first if it is not yet."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler (set CXX, or install g++)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), jaxlib.version.__version__.encode(), version.encode(), " ".join(FLAGS).encode()):
        digest.update(part + b"\0")
    library = folder / f"bag_kernel-{digest.hexdigest()[:16]}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    # Written beside its final name, then renamed: processes compiling at once each rename a whole file.
    handle, partial = tempfile.mkstemp(dir=folder, suffix=".so.partial")
    os.close(handle)
    try:
        command = [compiler, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", partial]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr.strip()[-2000:]}")
        os.replace(partial, library)
    finally:
        Path(partial).unlink(missing_ok=True)
    return library


def _disabled() -> bool:
    return os.environ.get(ENVIRONMENT, "").strip().lower() in OFF


@functools.cache
def _load() -> bool:
    """Builds (once per machine) and registers the handler; False, with the reason kept, if it cannot."""
    global _why_not
    try:
        library = ctypes.cdll.LoadLibrary(str(_build(default_cache_dir() / "kernels")))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.ImdbJaxAddRows), platform="cpu")
    except Exception as error:  # no compiler, a failed build, an unloadable library
        _why_not = f"the bag kernel could not be built ({error}); using XLA's loop (same results, slower)"
        log.warning(_why_not)
        return False
    return True


def available() -> bool:
    """Whether the kernel is registered with XLA:CPU (built on first call; see the module notes)."""
    return not _disabled() and _load()


def why_not() -> str | None:
    """Why `available()` said no, or None."""
    if _disabled():
        return f"{ENVIRONMENT}={os.environ[ENVIRONMENT]}"
    return _why_not


def in_use() -> bool:
    """Whether a program traced now takes the kernel: it is available, JAX's backend is the CPU
    and no `turned_off()` block is open."""
    return not _turned_off and jax.default_backend() == "cpu" and available()


@contextlib.contextmanager
def turned_off():
    """Programs traced inside trace XLA's loop (to compare the two in one process)."""
    global _turned_off
    _turned_off += 1
    try:
        yield
    finally:
        _turned_off -= 1


def add_rows(
    source: jax.typing.ArrayLike,
    from_ids: jax.typing.ArrayLike,
    to_ids: jax.typing.ArrayLike,
    row_ids: jax.typing.ArrayLike,
    batch_size: int,
    rows: int,
) -> jax.Array:
    """float32[rows, width]: zeros, then `out[to_ids[i]] += source[from_ids[i]]` for each
    occurrence `i` in order whose `row_ids[i] < batch_size` (padding skipped). Call only where
    `in_use()`. Under `jax.vmap` the variants run one after another."""
    source = jnp.asarray(source, jnp.float32)
    call = jax.ffi.ffi_call(
        TARGET, jax.ShapeDtypeStruct((rows, source.shape[-1]), jnp.float32), vmap_method="sequential"
    )
    ids = [jnp.asarray(ids, jnp.int32) for ids in (from_ids, to_ids, row_ids)]
    return call(source, *ids, batch_size=np.int64(batch_size))  # pyright: ignore[reportReturnType]
