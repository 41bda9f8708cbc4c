"""JAX's persistent compilation cache, on by default: a second process compiles nothing.

The compiled programs (XLA executables) are kept on disk beside the data cache, in
`<cache dir>/xla` (`imdb_jax.data.cache.default_cache_dir()`), so the second `imdb-jax train` or
`study` in a new process loads its programs instead of compiling them. Where it goes:

- `IMDB_JAX_COMPILE_CACHE=DIR` moves it; `IMDB_JAX_COMPILE_CACHE=off` (or `0`, `none`, `false`)
  turns it off; the CLI's `--compile-cache DIR|off` does the same for one command;
- a cache folder the user already gave JAX (`jax.config.update("jax_compilation_cache_dir", ...)`
  or `JAX_COMPILATION_CACHE_DIR`) is left as it is.

The cache is trusted code: keep it in a folder only you can write (JAX's own warning).

A process killed while JAX writes an entry leaves it truncated. JAX then warns "Error reading
persistent compilation cache entry" on every later run and never rewrites it (it skips a key whose
file exists), so `enable` first reads each entry it has not read before back whole and removes
the ones that fail (`remove_damaged_entries`); the next compilation writes them again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import zlib
from pathlib import Path

from imdb_jax.atomic import write_json
from imdb_jax.data.cache import default_cache_dir

ENVIRONMENT = "IMDB_JAX_COMPILE_CACHE"
OFF = ("off", "0", "none", "false", "no")

_enabled: Path | None = None
_decided = False

ENTRY_SUFFIX = "-cache"  # JAX's LRU cache: <name>-cache, and <name>-atime beside it
CHECKED_FILE = ".imdb-jax-checked.json"  # entries already read back whole: {file: [size, mtime_ns]}
SETTLE_S = 10.0  # an entry younger than this may still be being written by another process


def resolve(setting: str | os.PathLike | None = None) -> Path | None:
    """The folder the cache goes to for `setting` (a folder or "off"; None: the environment,
    else the default), or None when it is off."""
    if setting is None:
        setting = os.environ.get(ENVIRONMENT)
    if setting is None or str(setting) == "":
        return default_cache_dir() / "xla"
    if str(setting).strip().lower() in OFF:
        return None
    return Path(setting).expanduser()


def enable(setting: str | os.PathLike | None = None, *, force: bool = False) -> Path | None:
    """Turns the persistent compilation cache on (once per process) and returns its folder.

    Call before the first compilation; later calls are no-ops unless `force` (the CLI's explicit
    option). Does nothing when the user configured JAX's cache folder themselves.

    Args:
      setting: a folder, "off", or None for `$IMDB_JAX_COMPILE_CACHE` / the default.
      force: apply `setting` even if a default was already applied in this process.
    """
    global _enabled, _decided
    if _decided and not force:
        return _enabled
    # Deferred: JAX (~1.3 s) loads only after the options are checked; --help imports this module.
    import jax

    # Deferred: imports JAX (above).
    from imdb_jax.train import programs

    configured = jax.config.values.get("jax_compilation_cache_dir")
    if configured and not (_decided and configured == str(_enabled)):
        _decided, _enabled = True, Path(configured)
        return _enabled
    folder = resolve(setting)
    _decided = True
    if folder is None:
        if _enabled is not None:
            jax.config.update("jax_enable_compilation_cache", False)
        programs.enable(None)
        _enabled = None
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        _enabled = None  # an unwritable cache folder costs speed, never the run
        return None
    remove_damaged_entries(folder)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_enable_compilation_cache", True)
    # Cache every program: this package's epochs compile in ~1 s each, below JAX's 1 s default.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # Whole executables beside it: a warm start calls them without tracing (`programs`).
    programs.enable(folder / programs.FOLDER)
    _enabled = folder
    return folder


def remove_damaged_entries(folder: str | os.PathLike) -> list[str]:
    """Removes the compiled-program entries in `folder` that cannot be read back whole.

    An entry is decompressed as JAX reads it; one that fails (truncated, empty) is deleted with its
    access-time file. Entries read whole once are listed in `CHECKED_FILE` (by size and mtime)
    and not read again; entries younger than `SETTLE_S` are left for a later run, as another
    process may still be writing them.

    Returns:
      The names of the entries removed.
    """
    folder = Path(folder)
    record = folder / CHECKED_FILE
    try:
        checked = json.loads(record.read_text(encoding="utf-8"))
        checked = checked if isinstance(checked, dict) else {}
    except (OSError, ValueError):
        checked = {}
    decompress = _decompressor()
    now = time.time_ns()
    kept: dict[str, list[int]] = {}
    removed: list[str] = []
    try:
        entries = [entry for entry in os.scandir(folder) if entry.name.endswith(ENTRY_SUFFIX) and entry.is_file()]
    except OSError:
        return removed
    for entry in entries:
        try:
            stat = entry.stat()
        except OSError:
            continue
        seen = [stat.st_size, stat.st_mtime_ns]
        if checked.get(entry.name) == seen:
            kept[entry.name] = seen
            continue
        if now - stat.st_mtime_ns < SETTLE_S * 1e9:
            continue
        try:
            decompress(Path(entry.path).read_bytes())
        except OSError:
            continue
        except Exception:  # zlib.error, zstd's errors: not a whole entry
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(entry.name)
            with contextlib.suppress(OSError):
                os.unlink(entry.path[: -len(ENTRY_SUFFIX)] + "-atime")
            continue
        kept[entry.name] = seen
    if kept != checked:
        with contextlib.suppress(OSError):
            write_json(record, kept, indent=None)
    return removed


def _decompressor():
    """How JAX decompresses an entry (zstd where available, else zlib)."""
    try:
        # Deferred: JAX (~1.3 s) only when cache entries are read; --help imports this module.
        from jax._src.compilation_cache import decompress_executable
    except ImportError:
        return zlib.decompress
    return decompress_executable
