"""The embedding bag's loops as kernels of our own on the CPU: `bag_kernel.cc`, XLA FFI handlers.

XLA:CPU runs the bag's scatter-add at about one float per nanosecond on one core; the same loop in
C++ (each occurrence adds one row into another, in occurrence order, the widest vector
instructions the CPU has) is 2-5.5x faster and bitwise equal, because every output float is the
same sum in the same order (benchmarks/bag_kernel.py measures both; benchmarks/README.md, "Issue
14: the bag kernel, wired in"). Two more handlers feed it, each giving exactly the integers of the
XLA ops it replaces, so no number changes:

- `batch_pairs` cuts a batch of CSR rows into the bag's (word, row) pairs in one pass, where
  XLA's scatter, cumulative sum and gathers took ~0.45 ms of the seed model's ~1.7 ms step;
- `sort_values` is a stable radix sort, so `permutation` (each epoch's shuffle) gives
  `jax.random.permutation`'s order in ~1 ms instead of XLA's comparison sorts' ~12 ms.

The handlers are compiled once per machine with the system's C++ compiler (`$CXX`, else `c++`)
against the XLA FFI headers that ship with jaxlib, into `<cache dir>/kernels/` (named by a hash
of the source, jaxlib's version and the compiler), and registered with XLA (`TARGET`,
`PAIRS_TARGET`, `SORT_TARGET`). Where that fails (no compiler, another platform) `available()`
says why once, in the log, and the callers keep XLA's ops: the results are the same bits either
way, only slower. `IMDB_JAX_BAG_KERNEL=off` turns the kernels off.

The kernels run only on the CPU backend; a GPU or TPU traces XLA's ops.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import math
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
PAIRS_TARGET = "imdb_jax_batch_pairs"
SORT_TARGET = "imdb_jax_sort_values"
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
        jax.ffi.register_ffi_target(PAIRS_TARGET, jax.ffi.pycapsule(library.ImdbJaxBatchPairs), platform="cpu")
        jax.ffi.register_ffi_target(SORT_TARGET, jax.ffi.pycapsule(library.ImdbJaxSortValues), platform="cpu")
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


def batch_pairs(
    indptr: jax.Array,
    indices: jax.Array,
    lengths: jax.Array,
    rows: jax.Array,
    real_rows: jax.Array,
    capacity: int,
    with_positions: bool,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """int32[capacity] (words, row_ids, positions) of a batch of CSR rows: each row's words in
    order, rows in batch order, then padding (word 0, row `len(rows)`, position 0); the pairs
    `imdb_jax.train.device_data` cuts with XLA's ops, in one pass. `positions` (each pair's CSR
    position) is None unless `with_positions`. Call only where `in_use()`."""
    out = jax.ShapeDtypeStruct((capacity,), jnp.int32)
    call = jax.ffi.ffi_call(PAIRS_TARGET, (out, out, out), vmap_method="sequential")
    ids = [jnp.asarray(ids, jnp.int32) for ids in (indptr, indices, lengths, rows, real_rows)]
    words, row_ids, positions = call(*ids, with_positions=np.int64(with_positions))  # pyright: ignore[reportGeneralTypeIssues]
    return words, row_ids, positions if with_positions else None


def sort_values(keys: jax.typing.ArrayLike, values: jax.typing.ArrayLike) -> jax.Array:
    """int32[n]: `values` in the order of a stable sort by the uint32 `keys`, what
    `jax.lax.sort_key_val(keys, values, is_stable=True)[1]` gives, as a radix sort (XLA:CPU's
    comparison sort took ~6 ms for 25,000). Call only where `in_use()`."""
    keys, values = jnp.asarray(keys, jnp.uint32), jnp.asarray(values, jnp.int32)
    call = jax.ffi.ffi_call(SORT_TARGET, jax.ShapeDtypeStruct(values.shape, jnp.int32), vmap_method="sequential")
    return call(keys, values)  # pyright: ignore[reportReturnType]


def permutation(key: jax.Array, n: int) -> jax.Array:
    """int32[n]: `jax.random.permutation(key, n)`, the same numbers, its sorts done by
    `sort_values` where `in_use()` (JAX's own call elsewhere). JAX shuffles by `rounds` stable
    sorts of `jnp.arange(n)` by fresh random 32-bit keys, the key split before each round;
    tests/test_bag_kernel.py holds this to `jax.random.permutation` for many keys and sizes."""
    if not in_use():
        return jax.random.permutation(key, n).astype(jnp.int32)
    rounds = math.ceil(3 * math.log(max(1, n)) / math.log(np.iinfo(np.uint32).max))
    order = jnp.arange(n, dtype=jnp.int32)
    for _ in range(rounds):
        key, subkey = jax.random.split(key)
        order = sort_values(jax.random.bits(subkey, (n,), jnp.uint32), order)
    return order
