"""A checksummed, atomically written on-disk store for named NumPy arrays.

File layout: ``MAGIC``, the payload length (8 bytes, little endian), the SHA-256 of the payload
(32 bytes), then the payload: an uncompressed ``.npz`` of the arrays plus a ``__meta__`` JSON
entry. A file that is truncated, has flipped bytes or was made for other settings fails
``load_arrays`` with ``CacheError``; the caller reports it and rebuilds.

Writes go through `imdb_jax.atomic.atomic_write` (a fsynced temporary file ``os.replace``d into
place), so a killed run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from imdb_jax.atomic import atomic_write

CACHE_FORMAT_VERSION = 1
MAGIC = b"IMDBJAX-CACHE\n"
_HEADER = len(MAGIC) + 8 + 32
_META = "__meta__"


class CacheError(Exception):
    """A cache file cannot be used (truncated, corrupted, or for other settings)."""


class CacheWarning(UserWarning):
    """A cache file was unusable and is being rebuilt, or could not be written."""


def default_cache_dir() -> Path:
    """``$IMDB_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/imdb_jax``, else ``~/.cache/imdb_jax``."""
    if os.environ.get("IMDB_JAX_CACHE_DIR"):
        return Path(os.environ["IMDB_JAX_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imdb_jax"


def cache_key(fields: dict[str, Any]) -> str:
    """SHA-256 hex digest of the JSON of everything that changes the cached arrays."""
    text = json.dumps({"cache_format": CACHE_FORMAT_VERSION, **fields}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_arrays(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Writes ``arrays`` and the JSON-serialisable ``meta`` to ``path`` atomically.

    Args:
        path: the cache file; its folder is created if needed.
        arrays: name -> array (no object arrays; nothing is pickled).
        meta: small JSON-serialisable facts stored with the arrays (``load_arrays`` checks them).
    """
    buffer = io.BytesIO()
    meta_bytes = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    np.savez(buffer, **arrays, **{_META: meta_bytes})  # pyright: ignore[reportArgumentType]
    payload = buffer.getbuffer()
    header = MAGIC + len(payload).to_bytes(8, "little") + hashlib.sha256(payload).digest()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, header, payload)


def load_arrays(path: Path, expected_meta: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads a file written by ``save_arrays`` and checks it.

    Args:
        path: the cache file.
        expected_meta: entries the stored meta must contain with equal values.

    Returns:
        ``(arrays, meta)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CacheError: bad header, truncated, checksum mismatch, or meta not as expected.
    """
    blob = path.read_bytes()
    if not blob.startswith(MAGIC):
        raise CacheError("not an imdb_jax cache file (bad header)")
    if len(blob) < _HEADER:
        raise CacheError(f"truncated: {len(blob)} bytes, shorter than the header")
    length = int.from_bytes(blob[len(MAGIC) : len(MAGIC) + 8], "little")
    digest = blob[len(MAGIC) + 8 : _HEADER]
    payload = memoryview(blob)[_HEADER:]
    if len(payload) != length:
        raise CacheError(f"truncated or padded: payload is {len(payload)} bytes, the header says {length}")
    if hashlib.sha256(payload).digest() != digest:
        raise CacheError("checksum mismatch: the file was modified or corrupted")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(arrays.pop(_META).tobytes().decode("utf-8"))
    except Exception as error:  # a valid checksum over an unreadable payload: written by a bug
        raise CacheError(f"unreadable payload: {error}") from error
    wrong = sorted(key for key, value in expected_meta.items() if meta.get(key) != value)
    if wrong:
        raise CacheError(f"made for other settings ({', '.join(wrong)} differ)")
    return arrays, meta
