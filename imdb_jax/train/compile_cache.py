"""JAX's persistent compilation cache, on by default: a second process compiles nothing.

The compiled programs (XLA executables) are kept on disk beside the data cache, in
`<cache dir>/xla` (`imdb_jax.data.cache.default_cache_dir()`), so the second `imdb-jax train` or
`study` in a new process loads its programs instead of compiling them. Where it goes:

- `IMDB_JAX_COMPILE_CACHE=DIR` moves it; `IMDB_JAX_COMPILE_CACHE=off` (or `0`, `none`, `false`)
  turns it off; the CLI's `--compile-cache DIR|off` does the same for one command;
- a cache folder the user already gave JAX (`jax.config.update("jax_compilation_cache_dir", ...)`
  or `JAX_COMPILATION_CACHE_DIR`) is left as it is.

The cache is trusted code: keep it in a folder only you can write (JAX's own warning).
"""

from __future__ import annotations

import os
from pathlib import Path

ENVIRONMENT = "IMDB_JAX_COMPILE_CACHE"
OFF = ("off", "0", "none", "false", "no")

_enabled: Path | None = None
_decided = False


def resolve(setting: str | os.PathLike | None = None) -> Path | None:
    """The folder the cache goes to for `setting` (a folder or "off"; None: the environment,
    else the default), or None when it is off."""
    if setting is None:
        setting = os.environ.get(ENVIRONMENT)
    if setting is None or str(setting) == "":
        from imdb_jax.data.cache import default_cache_dir

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
    import jax

    configured = jax.config.values.get("jax_compilation_cache_dir")
    if configured and not (_decided and configured == str(_enabled)):
        _decided, _enabled = True, Path(configured)
        return _enabled
    folder = resolve(setting)
    _decided = True
    if folder is None:
        if _enabled is not None:
            jax.config.update("jax_enable_compilation_cache", False)
        _enabled = None
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        _enabled = None  # an unwritable cache folder costs speed, never the run
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_enable_compilation_cache", True)
    # Cache every program: this package's epochs compile in ~1 s each, below JAX's 1 s default.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _enabled = folder
    return folder
