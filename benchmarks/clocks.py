"""Timing: repeated samples summarised, epochs timed through the library's own hook, JAX's
compile time measured apart, and a fresh compilation cache per script.

Epoch timing: `fit_variants` (and `fit`, a study of one) returns `epoch_seconds`, the wall time
of each training epoch measured after its results are on the host, the first including
compilation. Compilation is measured apart from JAX's own compile events (`jax.monitoring` time
spans of tracing, lowering and XLA compiling), booked to the epoch whose window they fall in; the
windows end at `on_epoch_end`, the library's callback.
"""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from imdb_jax.train.compile_clock import CompileClock


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, min/max and quartiles of repeated timings (seconds)."""
    values = sorted(float(value) for value in samples)
    if not values:
        raise ValueError("no samples")
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {
        "median_s": statistics.median(values),
        "min_s": values[0],
        "max_s": values[-1],
        "q1_s": q1,
        "q3_s": q3,
        "repeats": len(values),
        "samples_s": [round(value, 6) for value in samples],
    }


def path_name(dense_words: int, num_words: int) -> str:
    """ "dense", "sparse" or "hybrid:<n>" (the n most frequent columns dense, the rest sparse)."""
    if dense_words >= num_words:
        return "dense"
    return "sparse" if dense_words <= 0 else f"hybrid:{dense_words}"


def first_layer_path(first_layer: str | int, x: Any) -> str:
    """The path `fit(..., first_layer=first_layer)` takes on training rows `x`."""
    from imdb_jax.models.dense_head import choose_dense_words

    return path_name(choose_dense_words(first_layer, x), x.shape[1])


def time_fit_variants(
    specs,
    train,
    validation=None,
    *,
    epochs: int,
    batch_size: int = 512,
    first_layer: str | int = "auto",
    shuffle_seed: int = 0,
) -> dict[str, Any]:
    """Trains `specs` with `fit_variants` and times every epoch through the library's hook.

    Returns:
      {"result": the `VariantsResult`, "epochs_s": `result.epoch_seconds`, "compile_s": compile
      seconds inside the first epoch, "first_epoch_s", "first_epoch_excess_s": the first epoch
      less the steady median (compile time as the user sees it), "steady": `summarize` of the
      later epochs (None for one epoch), "recompiled": whether a later epoch compiled,
      "compile_fit_s": all compile seconds of the call (setup included), "wall_s", "path",
      "dense_words"}.
    """
    from imdb_jax import fit_variants

    ends: list[float] = []
    started = time.perf_counter()
    with CompileClock() as clock:
        result = fit_variants(
            specs,
            train,
            validation,
            epochs=epochs,
            batch_size=batch_size,
            shuffle_seed=shuffle_seed,
            first_layer=first_layer,
            progress=False,
            on_epoch_end=lambda done, histories: ends.append(time.time()),
        )
    wall = time.perf_counter() - started
    seconds = list(result.epoch_seconds)
    # An epoch's window: its training time, back from the moment the library handed it over
    # (its validation pass, when there is one, comes in between and is counted with it).
    windows = [(end - train - (val or 0.0), end) for end, train, val in zip(ends, seconds, result.val_seconds)]
    per_epoch = [clock.seconds(begin, end) for begin, end in windows]
    steady = summarize(seconds[1:]) if len(seconds) > 1 else None
    return {
        "result": result,
        "epochs_s": seconds,
        "compile_s": per_epoch[0] if per_epoch else 0.0,
        "compile_per_epoch_s": [round(value, 4) for value in per_epoch],
        "first_epoch_s": seconds[0],
        "first_epoch_excess_s": None if steady is None else seconds[0] - steady["median_s"],
        "steady": steady,
        "recompiled": any(value > 0.05 for value in per_epoch[1:]),
        "compile_fit_s": clock.seconds(),
        "wall_s": wall,
        "path": path_name(result.dense_words, result.num_words),
        "dense_words": result.dense_words,
    }


def compile_seconds_during(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, JAX compile seconds inside, result) of `fn()`, stopped after block_until_ready."""
    import jax

    with CompileClock() as clock:
        start = time.perf_counter()
        result = fn()
        jax.block_until_ready(result)
        wall = time.perf_counter() - start
    return wall, clock.seconds(), result


# ---------------------------------------------------------------------------------------------
# Compilation cache: each script compiles into a fresh folder of its own by default, so the
# compile figures are real compilations, never programs an earlier run left on disk.


def fresh_compile_cache() -> str:
    """A new empty folder for JAX's compilation cache, removed when this process exits."""
    folder = tempfile.mkdtemp(prefix="bench-xla-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def use_compile_cache(setting: str | None) -> str:
    """Sets `IMDB_JAX_COMPILE_CACHE` for this process and its children (before anything
    compiles) and returns it: `setting` ("off" or a folder); else what the environment already
    says (a parent script's choice); else a fresh temporary folder removed at exit."""
    if setting is None:
        setting = os.environ.get("IMDB_JAX_COMPILE_CACHE") or fresh_compile_cache()
    os.environ["IMDB_JAX_COMPILE_CACHE"] = setting
    return setting
