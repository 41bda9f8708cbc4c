"""Files written whole or not at all, and the package's one way of writing JSON.

`atomic_write` puts the bytes in a temporary file in the target's folder, fsyncs it, `os.replace`s
it into place and fsyncs the folder: a reader (or a run killed at any moment) sees the old file or
the new one, never part of one. `to_json_value` turns what the package computes (NumPy and JAX
numbers and arrays, tuples, paths, NaN) into strict JSON values; `json_bytes` and `write_json`
encode and write them. The data cache, model folders, study.json and figures all go through here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_folder(folder: str | os.PathLike) -> None:
    """Makes a rename in `folder` durable; a platform that cannot open folders is harmless."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, *chunks: bytes | bytearray | memoryview) -> Path:
    """Writes the concatenation of `chunks` to `path` atomically.

    Args:
      path: the file; its folder must exist.
      chunks: bytes-like pieces written one after another (so a header and a large payload need
        not be joined in memory first).

    Returns:
      `path` as a `Path`.

    Raises:
      OSError: the folder is not writable, the disk is full, ...; no temporary file is left.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; these are ordinary files
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_folder(path.parent)
    return path


def to_json_value(value: Any) -> Any:
    """A strict-JSON version of `value`: NumPy and JAX scalars and arrays become numbers and
    lists, tuples become lists, paths become strings, NaN and infinities become null."""
    if isinstance(value, Mapping):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str) or value is None:
        return value
    if hasattr(value, "__array__"):  # np.ndarray, jax.Array (without importing JAX)
        return to_json_value(np.asarray(value).tolist())
    return value


def json_bytes(value: Any, *, indent: int | None = None, sort_keys: bool = False) -> bytes:
    """`value` as UTF-8 strict JSON (see `to_json_value`) ending in a newline."""
    return (json.dumps(to_json_value(value), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n").encode("utf-8")


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 1) -> Path:
    """Writes `value` as strict JSON to `path` atomically."""
    return atomic_write(path, json_bytes(value, indent=indent))


def writable_folder(path: str | os.PathLike) -> Path:
    """Creates `path` (and its parents) if needed and proves a file can be written in it.

    Call it before long work whose results go there, so a bad folder fails at once.

    Returns:
      `path` as a `Path`.

    Raises:
      OSError: it cannot be created, is not a folder, or a file cannot be written in it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", os.fspath(path))
    path.mkdir(parents=True, exist_ok=True)
    handle, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
    os.close(handle)
    os.unlink(probe)
    return path
