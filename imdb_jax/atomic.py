"""Files written whole or not at all, and the package's one way of writing JSON.

`atomic_write` puts the bytes in a temporary file in the target's folder, fsyncs it, `os.replace`s
it into place and fsyncs the folder: a reader (or a run killed at any moment) sees the old file or
the new one, never part of one. `to_json_value` turns what the package computes (NumPy and JAX
numbers and arrays, tuples, paths, NaN) into strict JSON values; `json_bytes` and `write_json`
encode and write them. The data cache, model folders, study.json and figures all go through here.

Whole folders: `folder_lock` makes one process at a time the writer of an output folder (a lock
file beside it, holding the writer's pid), and `replace_folder` puts a folder written beside the
target (`staging_folder`) in its place in one rename, so a reader sees the old folder or the new
one, never a mix of two runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import math
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def current_umask() -> int:
    """The process's umask (read by setting and restoring it: there is no other way)."""
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
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes 0600; these are ordinary files
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
    return (json.dumps(to_json_value(value), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n").encode(
        "utf-8"
    )


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


# ---------------------------------------------------------------------------------------------
# Whole folders: one writer at a time, replaced in one rename.


class FolderInUse(OSError):
    """Another live process holds the lock of the folder.

    Attributes:
      holder: what the lock file says about its holder ("pid 1234 on host"), or "" if unknown.
    """

    def __init__(self, path: str | os.PathLike, holder: str):
        super().__init__(errno.EBUSY, "in use by another process", os.fspath(path))
        self.holder = holder


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of folder `path`: `.NAME.lock` beside it (so it covers the folder and its
    staging folder alike, and outlives neither a swap nor a removal of the folder)."""
    path = Path(os.path.abspath(path))  # "." and "runs/a/.." have a name only once made absolute
    return path.parent / f".{path.name}.lock"


def staging_folder(path: str | os.PathLike) -> Path:
    """Where a folder that is to replace `path` is written first: `.NAME.partial` beside it (same
    file system, so the final rename is atomic)."""
    path = Path(os.path.abspath(path))
    return path.parent / f".{path.name}.partial"


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Holds the lock of folder `path` (`lock_path`) while the context is open.

    The lock is an `flock` on the lock file, which also holds the holder's pid and host: the
    kernel releases it when the holder dies (even by `kill -9`), so a lock left by a killed run
    never blocks the next one, and two processes never both hold it. Where the file system has no
    locks (some network file systems), the folder is used unlocked.

    Raises:
      FolderInUse: another process holds the lock.
      OSError: the lock file cannot be created (the parent folder is not writable, ...).
    """
    target = lock_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
            os.close(fd)
            raise FolderInUse(path, holder) from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            locked = False
        else:
            locked = True
        # The holder before us removes the file as it lets go; if it did so after we opened it,
        # we hold a lock on a file nobody else will open: try again with the file at the path.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(target))
        except FileNotFoundError:
            same = False
        if same or not locked:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield target
    finally:
        with contextlib.suppress(OSError):
            os.unlink(target)  # while still holding it: see the check above
        os.close(fd)


def replace_folder(new: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Puts the complete folder `new` at `path` and removes what was there.

    With Linux's `renameat2(RENAME_EXCHANGE)` the two folders swap in one step, so `path` holds
    the old folder or the new one at every moment; elsewhere two renames a moment apart stand in
    (a kill between them leaves the old folder in `.NAME.old-*` beside `path`, and `path` absent).

    Returns:
      `path` as a `Path`.
    """
    new, path = Path(new), Path(path)
    if not path.exists():
        os.rename(new, path)
        fsync_folder(path.parent)
        return path
    if exchange(new, path):
        old = new
    else:
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.rmdir(old)
        os.rename(path, old)
        os.rename(new, path)
    fsync_folder(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def exchange(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Swaps two existing paths atomically with Linux's renameat2(RENAME_EXCHANGE); False where the
    platform, C library or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), os.fspath(first))
