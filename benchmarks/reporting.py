"""What every benchmark script shares: data, timing, memory, environment, JSON lines and tables.

Output contract (see README.md): each measurement is ONE JSON line on stdout; progress, notes and
the readable table go to stderr, so `python benchmarks/bench_single.py > single.jsonl` collects
clean JSON lines while the table still shows on the terminal.

Every record carries:
  bench, what, name, config          what was measured, and how it was set up
  env                                devices, versions, CPU count, load average, date, git commit
and timing records also carry:
  median_s, min_s, max_s, q1_s, q3_s, repeats, samples_s
  compile_s                          (where there is a compilation) measured apart from the above
  vs                                 {baseline: {"baseline_s", "ratio", "speedup"}} with ratio =
                                     imdb_jax time / baseline time, measured in the same run
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import functools
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "tensorflow_datasets"
SCHEMA = 1


def log(*parts: Any) -> None:
    """A progress line on stderr (stdout is reserved for JSON records)."""
    print(*parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Data.


def default_data_dir() -> None:
    """Points TFDS at the shared prepared data when the caller has not chosen a folder."""
    if "TFDS_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
        os.environ["TFDS_DATA_DIR"] = str(SHARED_DATA)


def synthetic_split(num_rows: int, num_words: int, words_per_review: float = 129.0, seed: int = 0):
    """A `Split` of random multi-hot rows shaped like IMDb (Zipf-like word frequencies).

    Args:
      num_rows: reviews.
      num_words: columns.
      words_per_review: mean unique words per row (129 on the real training reviews).
      seed: NumPy seed.

    Returns:
      `imdb_jax.data.Split` with float32[num_rows, num_words] CSR x and float32[num_rows] y.
    """
    from imdb_jax.data import Split

    rng = np.random.default_rng(seed)
    # Draws repeat words (Zipf-like); 1.12x as many draws leaves about `words_per_review` unique.
    lengths = np.clip(rng.poisson(words_per_review * 1.12, num_rows), 1, None)
    weights = 1.0 / np.arange(10, num_words + 10)
    row_ids = np.repeat(np.arange(num_rows), lengths)
    word_ids = rng.choice(num_words, size=int(lengths.sum()), p=weights / weights.sum())
    x = sp.csr_matrix((np.ones(len(word_ids), np.float32), (row_ids, word_ids)), shape=(num_rows, num_words))
    x.sum_duplicates()
    x.data[:] = 1.0
    y = rng.integers(0, 2, num_rows).astype(np.float32)
    return Split(x, y)


class Dataset:
    """The train and test splits a benchmark runs on, and where they came from.

    Attributes:
      train, test: `imdb_jax.data.Split`s.
      source: "imdb" (the real reviews, possibly sliced) or "synthetic".
      vocabulary: the real data's `Vocabulary` (None for synthetic rows).
    """

    def __init__(self, train, test, source: str, vocabulary=None):
        self.train, self.test, self.source, self.vocabulary = train, test, source, vocabulary

    @property
    def num_words(self) -> int:
        return self.train.x.shape[1]

    def describe(self) -> dict[str, Any]:
        return {
            "data": self.source,
            "train_reviews": self.train.x.shape[0],
            "test_reviews": self.test.x.shape[0],
            "num_words": self.num_words,
            "words_per_review": round(self.train.x.nnz / self.train.x.shape[0], 2),
        }

    def split_validation(self, num_validation: int):
        """(train, validation): the FIRST `num_validation` training reviews held out (Keras study)."""
        from imdb_jax.data import Split

        x, y = self.train.x, self.train.y
        return Split(x[num_validation:], y[num_validation:]), Split(x[:num_validation], y[:num_validation])


def describe_split(split: Any, source: str) -> dict[str, Any]:
    """Rows, columns and density of one split (e.g. a study's training part)."""
    rows = split.x.shape[0]
    return {"data": source, "train_reviews": rows, "num_words": split.x.shape[1], "words_per_review": round(split.x.nnz / max(rows, 1), 2)}


def load_dataset(num_words: int = 10000, *, synthetic: bool = False, rows: int | None = None, words_per_review: float = 129.0) -> Dataset:
    """The real IMDb data (`load_imdb`, cached) or a synthetic stand-in, optionally sliced.

    Args:
      num_words: vocabulary size.
      synthetic: random rows of IMDb's density instead of the real reviews (no data needed).
      rows: keep only the first `rows` reviews of each split (None keeps all 25,000).
      words_per_review: mean unique words per synthetic row.
    """
    if synthetic:
        count = rows or 25000
        train = synthetic_split(count, num_words, words_per_review, seed=0)
        return Dataset(train, synthetic_split(count, num_words, words_per_review, seed=1), "synthetic")
    default_data_dir()
    from imdb_jax import load_imdb
    from imdb_jax.data import Split

    data = load_imdb(num_words=num_words, progress=False)
    train, test = data.train, data.test
    if rows is not None:
        train, test = Split(train.x[:rows], train.y[:rows]), Split(test.x[:rows], test.y[:rows])
    return Dataset(train, test, "imdb" if rows is None else f"imdb[:{rows}]", data.vocabulary)


# ---------------------------------------------------------------------------------------------
# Timing and statistics.


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


def compare(value_s: float, baseline_s: float | None, **extra: Any) -> dict[str, Any] | None:
    """{"baseline_s", "ratio" (ours / baseline), "speedup" (baseline / ours)}; None without a baseline."""
    if baseline_s is None or not value_s or not baseline_s:
        return None
    return {"baseline_s": baseline_s, "ratio": value_s / baseline_s, "speedup": baseline_s / value_s, **extra}


# ---------------------------------------------------------------------------------------------
# Memory. Peak RSS is the kernel's high-water mark (VmHWM); on Linux it can be reset by writing
# "5" to /proc/self/clear_refs, so one process can measure several settings one after another.


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return _status_bytes("VmRSS")


def reset_peak_rss() -> bool:
    """Resets the peak-RSS mark to the current RSS; False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's peak RSS since start (or since `reset_peak_rss`)."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def megabytes(count: int | None) -> float | None:
    return None if count is None else round(count / 2**20, 1)


# ---------------------------------------------------------------------------------------------
# Environment.


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


@functools.cache
def environment() -> dict[str, Any]:
    """Where the figures come from: date, machine, versions and JAX devices."""
    import jax

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    memory = None
    try:
        import psutil

        memory = psutil.virtual_memory().total
    except ImportError:
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
        memory = pages * os.sysconf("SC_PAGE_SIZE") if pages else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_gb": None if memory is None else round(memory / 2**30, 1),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "imdb_jax")},
        "backend": jax.default_backend(),
        "devices": [str(device) for device in jax.devices()],
        "git": _git_commit(),
    }


def env_record() -> dict[str, Any]:
    """The environment plus what changes during a run (load average)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {**environment(), "load_average": None if load is None else [round(value, 2) for value in load]}


# ---------------------------------------------------------------------------------------------
# Records and the table.


class Reporter:
    """Prints one JSON line per measurement to stdout and keeps them for the closing table."""

    def __init__(self, bench: str, args: argparse.Namespace | None = None):
        self.bench = bench
        self.records: list[dict[str, Any]] = []
        self.run = {} if args is None else {"quick": bool(getattr(args, "quick", False)), "argv": sys.argv[1:]}

    def emit(self, what: str, name: str, config: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Prints and keeps one record; `fields` may hold a `summarize` dict, compile_s, vs, ..."""
        record = {"schema": SCHEMA, "bench": self.bench, "what": what, "name": name, "config": config, **fields}
        record["run"] = self.run
        record["env"] = env_record()
        print(json.dumps(_jsonable(record), sort_keys=False), flush=True)
        self.records.append(record)
        return record

    def note(self, name: str, note: str, **fields: Any) -> dict[str, Any]:
        """A record that says something was not measured, and why (e.g. a baseline skipped)."""
        log(f"note: {name}: {note}")
        return self.emit("note", name, {}, note=note, **fields)

    def target(
        self,
        target: str,
        *,
        value: float | None,
        threshold: float | None,
        op: str,
        figure: str,
        config: dict[str, Any] | None = None,
        cited: bool = False,
        why_not: str | None = None,
        unit: str = "x",
    ) -> dict[str, Any]:
        """A record of one issue target: `value` (a ratio) against `threshold` by `op`.

        Args:
          target: the target as the issue states it.
          value: the measured ratio; None when it could not be measured (`why_not` says why).
          threshold: the bound (None with op "report").
          op: "<=" (value at most threshold), ">=", or "report" (a figure the issue asks to see,
            with no bound: `met` stays None).
          figure: the measured figures the ratio comes from, in words.
          cited: the ratio uses a cited reference figure, not one measured in this run.
          unit: how the value reads ("x" for a ratio, "" for a plain figure such as an accuracy).
        """
        if op not in ("<=", ">=", "report"):
            raise ValueError(f"op must be <=, >= or report, got {op!r}")
        met = None if value is None or op == "report" else (value <= threshold if op == "<=" else value >= threshold)
        if value is None:
            log(f"target: {target}: not measured ({why_not})")
        elif op == "report":
            log(f"target: {target}: {value:.4g}{unit} ({figure})")
        else:
            log(f"target: {target}: {value:.4g}{unit} ({'met' if met else 'not met'}; {figure})")
        return self.emit(
            "target", target, config or {}, value=value, threshold=threshold, op=op, met=met, figure=figure, cited=cited, why_not=why_not, unit=unit
        )

    def table(self, file=None) -> None:
        print_table(self.records, file=file or sys.stderr)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, float) and value != value:
        return None
    return value


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value == 0:
        return "0"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.2f}"
    if value >= 0.01:
        return f"{value:.3f}"
    return f"{value * 1000:.2f}ms"


def _versus(record: dict[str, Any]) -> str:
    parts = []
    for baseline, figures in (record.get("vs") or {}).items():
        if figures:
            label = baseline + ("*" if figures.get("cited") else "")
            parts.append(f"{label} {figures['ratio']:.3g}x time ({figures['speedup']:.3g}x faster)")
    return "; ".join(parts)


def _extras(record: dict[str, Any]) -> str:
    parts = [_versus(record)]
    if record.get("roofline_pct") is not None:
        parts.append(f"roofline {record['roofline_s']:.3g} s = {record['roofline_pct']:.0f} %")
    if record.get("test_accuracy") is not None:
        parts.append(f"test accuracy {record['test_accuracy']:.4f}")
    if record.get("data_note"):
        parts.append(record["data_note"])
    return "; ".join(part for part in parts if part)


def table_rows(records: Iterable[dict[str, Any]]) -> list[list[str]]:
    """One row per timing record: name, what, median, spread, compile, peak MB, comparisons."""
    rows = []
    for record in records:
        if record.get("what") == "note":
            rows.append([record["name"], "not measured", "", "", "", "", record["note"]])
            continue
        if record.get("what") == "machine":
            value = record.get("bandwidth_gb_s")
            text = f"{value:.1f} GB/s" if value is not None else f"{record.get('matmul_gflop_s', 0):.1f} GFLOP/s"
            rows.append([record["name"], "machine", "", "", "", "", text])
            continue
        if "median_s" not in record:
            continue
        spread = f"{_seconds(record['min_s'])}-{_seconds(record['max_s'])} (n={record['repeats']})"
        peak = record.get("peak_rss_mb")
        rows.append(
            [
                record["name"],
                record["what"],
                _seconds(record["median_s"]),
                spread,
                _seconds(record.get("compile_s")),
                "" if peak is None else f"{peak:.0f}",
                _extras(record),
            ]
        )
    return rows


TABLE_HEADER = ["measurement", "what", "median s", "min-max s", "compile s", "peak MB", "vs baseline (same run)"]


def print_table(records: Iterable[dict[str, Any]], file=None) -> None:
    """A fixed-width table of `table_rows`."""
    file = file or sys.stderr
    records = list(records)
    rows = table_rows(records)
    if not rows and not target_rows(records):
        return
    widths = [max(len(str(row[index])) for row in rows + [TABLE_HEADER]) for index in range(len(TABLE_HEADER))]
    line = "  ".join(f"{{:<{width}}}" for width in widths)
    print(file=file)
    print(line.format(*TABLE_HEADER), file=file)
    print(line.format(*("-" * width for width in widths)), file=file)
    for row in rows:
        print(line.format(*row), file=file)
    targets = target_rows(records)
    if targets:
        widths = [max(len(str(row[index])) for row in targets + [TARGET_HEADER]) for index in range(len(TARGET_HEADER))]
        line = "  ".join(f"{{:<{width}}}" for width in widths)
        print(file=file)
        print(line.format(*TARGET_HEADER), file=file)
        print(line.format(*("-" * width for width in widths)), file=file)
        for row in targets:
            print(line.format(*row), file=file)
    if any("*" in row[-1] for row in rows) or any("*" in row[2] for row in targets):
        print("* cited reference figure (shared/DATA.md), not measured in this run", file=file)
    file.flush()


TARGET_HEADER = ["target", "measured", "ratio", "status"]


def target_rows(records: Iterable[dict[str, Any]]) -> list[list[str]]:
    """One row per target record: the target, the figures measured, the ratio, met or not."""
    rows = []
    for record in records:
        if record.get("what") != "target":
            continue
        if record["value"] is None:
            rows.append([record["name"], record.get("why_not") or "", "", "not measured"])
            continue
        unit = record.get("unit", "x")
        if record["op"] == "report":
            rows.append([record["name"], record["figure"], f"{record['value']:.3g}{unit}", "reported"])
            continue
        ratio = f"{record['value']:.4g}{unit} (target {record['op']} {record['threshold']:g}{unit})" + ("*" if record.get("cited") else "")
        rows.append([record["name"], record["figure"], ratio, "met" if record["met"] else "not met"])
    return rows


def markdown_targets(records: Iterable[dict[str, Any]]) -> str:
    """The targets as a Markdown table."""
    rows = target_rows(records)
    lines = ["| " + " | ".join(TARGET_HEADER) + " |", "|" + "---|" * len(TARGET_HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_table(records: Iterable[dict[str, Any]]) -> str:
    """The same rows as a Markdown table (for README.md)."""
    rows = table_rows(records)
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command-line options shared by the scripts.


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small slice and fewer repeats (seconds, for smoke tests)")
    parser.add_argument("--synthetic", action="store_true", help="random IMDb-shaped rows instead of the real reviews (no data needed)")
    parser.add_argument("--rows", type=int, default=None, help="use only the first ROWS reviews of each split (default: all 25,000; --quick: 2048)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5; --quick 2)")
    parser.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the Keras and scikit-learn baselines in the same run where installed (default: on)",
    )
    parser.add_argument(
        "--keras-backends",
        default="tensorflow,jax",
        help="Keras backends to run as baselines, comma-separated (default: tensorflow,jax)",
    )
    parser.add_argument(
        "--baselines-cache",
        type=Path,
        default=None,
        help="JSON file to reuse baseline results from (and store them in), so a run_all.py run measures each baseline once",
    )
    parser.add_argument("--no-table", action="store_true", help="do not print the table on stderr")
    parser.add_argument(
        "--compile-cache",
        default=None,
        metavar="DIR|off",
        help="JAX's persistent compilation cache for this run (default: $IMDB_JAX_COMPILE_CACHE when set, else a "
        "fresh temporary folder, so every compile figure is a real compilation)",
    )


def resolve_common_args(args: argparse.Namespace, default_repeats: int = 5, quick_repeats: int = 2) -> argparse.Namespace:
    if args.repeats is None:
        args.repeats = quick_repeats if args.quick else default_repeats
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    if args.rows is None and args.quick:
        args.rows = 2048
    args.keras_backends = [name.strip() for name in args.keras_backends.split(",") if name.strip()]
    args.compile_cache = use_compile_cache(args.compile_cache)
    return args


def dataset_from_args(args: argparse.Namespace, num_words: int = 10000) -> Dataset:
    log(f"loading {'synthetic' if args.synthetic else 'IMDb'} data (num_words={num_words}, rows={args.rows or 'all'}) ...")
    start = time.perf_counter()
    dataset = load_dataset(num_words, synthetic=args.synthetic, rows=args.rows)
    log(f"  {dataset.describe()} in {time.perf_counter() - start:.1f} s")
    return dataset


# ---------------------------------------------------------------------------------------------
# Epoch timing: the library's own hook. `fit_variants` (and `fit`, a study of one) returns
# `epoch_seconds`, the wall time of each training epoch measured after its results are on the
# host, the first including compilation. Compilation is measured apart from JAX's own compile
# events (`jax.monitoring` time spans of tracing, lowering and XLA compiling), booked to the
# epoch whose window they fall in; the windows end at `on_epoch_end`, the library's callback.


class CompileClock:
    """Records JAX's compile events (`/jax/core/compile/...`) as time spans while open.

    Nested events (an inner function traced while its caller is) overlap; `seconds` counts the
    union of the spans, so nothing is counted twice.
    """

    PREFIX = "/jax/core/compile/"

    def __init__(self):
        self.spans: list[tuple[float, float, str]] = []

    def _listen(self, event: str, start: float, end: float, **kwargs: Any) -> None:
        if event.startswith(self.PREFIX):
            self.spans.append((start, end, str(kwargs.get("fun_name", ""))))

    def __enter__(self) -> "CompileClock":
        import jax.monitoring

        jax.monitoring.register_event_time_span_listener(self._listen)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_time_span_listener(self._listen)

    def seconds(self, begin: float = -math.inf, end: float = math.inf) -> float:
        """Compile seconds within [begin, end] (`time.time()` clock), overlaps counted once."""
        total, reach = 0.0, -math.inf
        for start, stop, _ in sorted(self.spans):
            start, stop = max(start, begin, reach), min(stop, end)
            if stop > start:
                total += stop - start
            reach = max(reach, stop)
        return total


def path_name(dense_words: int, num_words: int) -> str:
    """"dense", "sparse" or "hybrid:<n>" (the n most frequent columns dense, the rest sparse)."""
    if dense_words >= num_words:
        return "dense"
    return "sparse" if dense_words <= 0 else f"hybrid:{dense_words}"


def first_layer_path(first_layer: str | int, x: Any) -> str:
    """The path `fit(..., first_layer=first_layer)` takes on training rows `x`."""
    from imdb_jax.planning import choose_dense_words

    return path_name(choose_dense_words(first_layer, x), x.shape[1])


def time_fit_variants(specs, train, validation=None, *, epochs: int, batch_size: int = 512, first_layer: str | int = "auto", shuffle_seed: int = 0) -> dict[str, Any]:
    """Trains `specs` with `fit_variants` and times every epoch through the library's hook.

    Returns:
      {"result": the `VariantsResult`, "epochs_s": `result.epoch_seconds`, "compile_s": compile
      seconds inside the first epoch, "first_epoch_s", "first_epoch_excess_s": the first epoch
      less the steady median (compile time as the user sees it), "steady": `summarize` of the
      later epochs (None for one epoch), "recompiled": whether a later epoch compiled,
      "compile_fit_s": all compile seconds of the call (setup included), "wall_s", "path",
      "dense_words"}.
    """
    from imdb_jax.variants import fit_variants

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


# ---------------------------------------------------------------------------------------------
# Baselines as records.


def data_signature(dataset: Dataset) -> str:
    x = dataset.train.x
    return f"{dataset.source}:{x.shape[0]}x{x.shape[1]}:nnz={x.nnz}"


def keras_seed_baselines(
    reporter: Reporter, args: argparse.Namespace, dataset: Dataset, epochs: int = 4, backends: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Runs (or reuses, within one run) the seed model under Keras on each requested backend and
    emits its records.

    Args:
      backends: the Keras backends to run (default: --keras-backends).

    Returns:
      {"keras_<backend>": {"first_epoch_s", "steady_epoch_s", "fit_s", "final_run_s" (densify +
      build + fit + evaluate: the seed's final run), "test_accuracy"}} for the backends that ran;
      skipped ones are emitted as notes.
    """
    import baselines

    figures: dict[str, dict[str, Any]] = {}
    if not args.baselines:
        reporter.note("keras", "baselines disabled (--no-baselines)")
        return figures
    cache = baselines.BaselineCache(args.baselines_cache)
    for backend in args.keras_backends if backends is None else backends:
        label = f"keras_{backend}"
        key = f"keras:{backend}:seed16-16:{epochs}ep:{data_signature(dataset)}"
        log(f"baseline: Keras ({backend} backend), 16-16-1 for {epochs} epochs" + (": reused from this run" if key in cache else ", in a subprocess ..."))
        result = cache.get_or_run(
            key, lambda: baselines.run_keras(backend, [baselines.KerasModel(epochs=epochs, evaluate_test=True)], dataset.train, dataset.test)
        )
        if "skipped" in result:
            reporter.note(label, result["skipped"], baseline=label)
            continue
        model = result["models"][0]
        epoch = baselines.epoch_figures(model)
        config = {
            "model": "16-16-1",
            "batch_size": 512,
            "epochs": epochs,
            "backend": backend,
            "input": result["dense_input"],
            **dataset.describe(),
        }
        extra = {"baseline": label, "baseline_versions": result["versions"], "peak_rss_mb": megabytes(result["peak_rss_bytes"])}
        reporter.emit("epoch_first", f"{label} 16-16", config, **summarize(model["epoch_s"][:1]), **extra)
        if len(model["epoch_s"]) > 1:
            reporter.emit("epoch_steady", f"{label} 16-16", config, **summarize(model["epoch_s"][1:]), **extra)
        reporter.emit(
            f"fit_{epochs}_epochs",
            f"{label} 16-16",
            config,
            **summarize([model["fit_s"]]),
            test_accuracy=model.get("test_accuracy"),
            densify_s=result["densify_s"],
            **extra,
        )
        final_run_s = result["densify_s"] + model["build_s"] + model["fit_s"] + model.get("test_s", 0.0)
        reporter.emit(
            "final_run",
            f"{label} 16-16",
            config,
            **summarize([final_run_s]),
            test_accuracy=model.get("test_accuracy"),
            parts_s={"densify": result["densify_s"], "build": model["build_s"], "fit": model["fit_s"], "evaluate": model.get("test_s")},
            whole_process_s=result.get("total_s"),
            note="the seed's final run: densify, build, fit 4 epochs, evaluate on the test reviews (imports excluded)",
            **extra,
        )
        figures[label] = {**epoch, "fit_s": model["fit_s"], "final_run_s": final_run_s, "test_accuracy": model.get("test_accuracy")}
    return figures


def cited_applies(dataset: Dataset) -> bool:
    """The cited reference figures are for all 25,000 real training reviews at 10,000 words."""
    return dataset.source == "imdb" and dataset.train.x.shape == (25000, 10000)


def keras_speedup_target(
    reporter: "Reporter", target: str, ours_s: float, ours_label: str, threshold: float,
    figures: dict[str, dict[str, Any]], dataset: Dataset,
) -> None:
    """The target "`ours_s` is >= `threshold`x faster than one steady Keras TF epoch": against
    Keras measured in this run, else (all real reviews only) the cited figure, flagged."""
    import baselines

    keras = figures.get("keras_tensorflow", {}).get("steady_epoch_s")
    cited = keras is None and cited_applies(dataset)
    if cited:
        keras = baselines.CITED["keras_tensorflow_epoch_steady_s"]
    reporter.target(
        target,
        value=None if keras is None else keras / ours_s,
        threshold=threshold,
        op=">=",
        figure="" if keras is None else f"Keras TF {keras:.3f} s{' (cited)' if cited else ''} vs {ours_label}",
        cited=cited,
        why_not="Keras TF not measured (and the cited figure is for all 25,000 real reviews only)",
    )


def versus(
    value_s: float, figures: dict[str, dict[str, Any]], key: str, cited_key: str | None = None, dataset: Dataset | None = None
) -> dict[str, Any]:
    """Comparisons of one imdb_jax time against each measured baseline's `key`; when Keras TF was
    not measured in this run, `cited_key` is given and the data is the cited one (`dataset`),
    against the cited figure, flagged `cited`."""
    import baselines

    result = {}
    for label, baseline in figures.items():
        figure = compare(value_s, baseline.get(key))
        if figure:
            result[label] = figure
    if "keras_tensorflow" not in figures and cited_key and dataset is not None and cited_applies(dataset):
        result["keras_tensorflow_cited"] = compare(value_s, baselines.CITED[cited_key], cited=True, source=baselines.CITED_SOURCE)
    return result
