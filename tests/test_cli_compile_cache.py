"""The compiled-program cache: an entry a killed process left truncated is removed, not warned
about on every later run."""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

from conftest import run_python

from imdb_jax.train import compile_cache

REPO = Path(__file__).resolve().parents[1]

# One small program compiled with the cache in argv[1]; prints the cache warnings JAX gave.
COMPILE_ONCE = """
import sys, warnings
from imdb_jax.train import compile_cache
compile_cache.enable(sys.argv[1], force=True)
import jax, jax.numpy as jnp
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
print("WARNINGS", [str(w.message) for w in caught if "compilation cache" in str(w.message)])
"""


def _compile_once(cache: Path) -> str:
    return run_python(COMPILE_ONCE, str(cache), timeout=120).splitlines()[-1]


def _age(path: Path, seconds: float = 3600.0) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_truncated_entry_is_removed_and_written_again(tmp_path):
    cache = tmp_path / "xla"
    assert _compile_once(cache) == "WARNINGS []"
    entries = sorted(cache.glob("*-cache"))
    assert entries, list(cache.iterdir())
    whole = {entry.name: entry.read_bytes() for entry in entries}
    for entry in entries:  # what a process killed while JAX wrote them leaves
        entry.write_bytes(whole[entry.name][: len(whole[entry.name]) // 2])
        _age(entry)
    # Without the removal JAX warns "Error reading persistent compilation cache entry" here, and
    # on every run after (it never rewrites a key whose file exists).
    assert _compile_once(cache) == "WARNINGS []"
    assert {entry.name: entry.read_bytes() for entry in cache.glob("*-cache")} == whole


def test_remove_damaged_entries_reads_each_entry_once(tmp_path, monkeypatch):
    program = zlib.compress(b"a compiled program" * 100)
    (tmp_path / "good-cache").write_bytes(program)
    (tmp_path / "cut-cache").write_bytes(program[:20])
    (tmp_path / "cut-atime").write_bytes(b"12345678")
    (tmp_path / "young-cache").write_bytes(program[:20])  # perhaps still being written
    (tmp_path / "other.txt").write_bytes(b"not an entry")
    for name in ("good-cache", "cut-cache"):
        _age(tmp_path / name)
    monkeypatch.setattr(compile_cache, "_decompressor", lambda: zlib.decompress)
    assert compile_cache.remove_damaged_entries(tmp_path) == ["cut-cache"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        compile_cache.CHECKED_FILE,
        "good-cache",
        "other.txt",
        "young-cache",
    ]

    read = []
    monkeypatch.setattr(compile_cache, "_decompressor", lambda: lambda data: read.append(data) or zlib.decompress(data))
    assert compile_cache.remove_damaged_entries(tmp_path) == []
    assert read == []  # the good entry was read back whole already; the young one is still young
    _age(tmp_path / "young-cache")
    assert compile_cache.remove_damaged_entries(tmp_path) == ["young-cache"] and len(read) == 1
