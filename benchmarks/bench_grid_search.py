"""Grid search: `FusedGridSearchCV` against scikit-learn's `GridSearchCV(SparseMLPClassifier)`,
the same 12-candidate grid x 3 folds on the IMDb training reviews, in one run.

The grid mixes everything one fused run can hold: widths and depths (16-16, 64, 32-32-32), L1
and L2 penalties, dropout and learning rates (`GRID`). Both searches use the same folds
(`StratifiedKFold(3, shuffle=True, random_state=0)`), seeds and epochs, score accuracy, and skip
the refit (`refit=False`: one ordinary fit, the same for both), so the timed part is the search
alone. Each search runs in a fresh process of its own with an empty compilation cache of its own,
so neither reuses a program the other compiled ("cold": a user's first search), then once more
in another fresh process on the programs its first run left on disk ("warm": every later
search; `--no-warm` skips it). The time is that of `search.fit(x, y)` (data loading and imports
excluded), `compile_s` the part of it JAX spent compiling (its compile events; with runs on
several devices at once, the time any compilation was under way). The two `cv_results_` are
compared: the mean test scores should be equal bitwise (`scores_equal`).

Devices: both searches' processes get one CPU device per core, as the command line sets up
(`imdb_jax.train.cpu_devices.use_every_core`; `--cpu-devices N` sets the count, 1 gives
everything one device). `FusedGridSearchCV` spreads each fold's candidates over them;
`GridSearchCV` fits one candidate at a time on the first, as `fit` does (`--grid-n-jobs N`
gives it N joblib workers instead, a baseline that uses every core too).

Output: one JSON record per search run and a summary record (`fused_s`, `grid_search_s`,
`speedup` = grid_search_s / fused_s, `target_speedup` 4, `met`, the warm figures) on stdout,
the summary also to `--json`; progress on stderr. The target is judged on the cold figures.

  python benchmarks/bench_grid_search.py                  # 25,000 reviews, 4 epochs, 3 folds
  python benchmarks/bench_grid_search.py --quick          # 2,048 reviews, 2 epochs: a smoke run
  python benchmarks/bench_grid_search.py --json runs/grid_search.json
  python benchmarks/bench_grid_search.py --cpu-devices 1        # one device, as before issue 17's work
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_SPEEDUP = 4.0

# 12 candidates: 8 of two shapes x L2 x dropout, 4 of a third, deeper shape x learning rate x L1.
GRID: list[dict[str, list[Any]]] = [
    {"hidden_units": [(16, 16), (64,)], "l2": [0.0, 1e-3], "dropout_rate": [0.0, 0.5]},
    {"hidden_units": [(32, 32, 32)], "learning_rate": [1e-3, 3e-4], "l1": [0.0, 1e-4]},
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="first 2,048 reviews and 2 epochs (a smoke run)")
    parser.add_argument("--rows", type=int, default=None, help="training reviews used (default: all 25,000)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per candidate (default: 4; --quick 2)")
    parser.add_argument("--folds", type=int, default=3, help="cross-validation folds (default: 3)")
    parser.add_argument("--batch-size", type=int, default=512, help="reviews per update (default: 512)")
    parser.add_argument("--num-words", type=int, default=10000, help="vocabulary size (default: 10000)")
    parser.add_argument("--searches", default="fused,grid", help="which searches to run (default: fused,grid)")
    parser.add_argument(
        "--cpu-devices", type=int, default=None, help="CPU devices per search process (default: one per core)"
    )
    parser.add_argument(
        "--grid-n-jobs", type=int, default=None, help="GridSearchCV's n_jobs (default: None, one fit at a time)"
    )
    parser.add_argument(
        "--no-warm", dest="warm", action="store_false", help="skip the second run of each search (programs cached)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the summary record to this file")
    parser.add_argument("--worker", choices=("fused", "grid"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = 2048 if args.quick else 25000
    if args.epochs is None:
        args.epochs = 2 if args.quick else 4
    return args


def _environment() -> dict[str, Any]:
    import numpy as np
    import scipy
    import sklearn

    try:
        from imdb_jax.train.cpu_devices import use_every_core

        use_every_core()  # the workers' devices
        import jax

        backend = {"jax": jax.__version__, "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}
    except Exception as error:  # the summary still says what it can
        backend = {"jax_error": str(error)}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = None
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        **backend,
        "commit": commit,
    }


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Loads the reviews, runs one search, and returns its record."""
    from imdb_jax.train.cpu_devices import use_every_core

    use_every_core()  # before JAX is imported: one CPU device per core (or IMDB_JAX_CPU_DEVICES)
    import jax.monitoring
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from imdb_jax import FusedGridSearchCV, SparseMLPClassifier, load_imdb

    data = load_imdb(num_words=args.num_words, progress=False)
    x, y = data.train.x[: args.rows], data.train.y[: args.rows]
    base = SparseMLPClassifier(epochs=args.epochs, batch_size=args.batch_size, random_state=0)
    cv = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=0)
    if args.worker == "fused":
        search = FusedGridSearchCV(base, GRID, cv=cv, refit=False)
    else:
        search = GridSearchCV(base, GRID, cv=cv, refit=False, n_jobs=args.grid_n_jobs)

    spans: list[tuple[float, float]] = []

    def listen(event: str, start_time: float, end_time: float, **_: Any) -> None:
        if event.startswith("/jax/core/compile/"):
            spans.append((start_time, end_time))

    jax.monitoring.register_event_time_span_listener(listen)  # pyright: ignore[reportArgumentType]
    started = time.perf_counter()
    search.fit(x, y)
    seconds = time.perf_counter() - started
    results = search.cv_results_
    return {
        "bench": "grid_search",
        "what": args.worker,
        "name": "FusedGridSearchCV" if args.worker == "fused" else "GridSearchCV(SparseMLPClassifier)",
        "seconds": seconds,
        "compile_s": _union_seconds(spans),
        # Where it went, from cv_results_: fits (the fused runs' shares summed back), scoring.
        "fit_s": float(sum(results["mean_fit_time"]) * args.folds),
        "score_s": float(sum(results["mean_score_time"]) * args.folds),
        "candidates": len(results["params"]),
        "devices": len(jax.devices()),
        "folds": args.folds,
        "fits": len(results["params"]) * args.folds,
        "mean_test_score": [float(score) for score in results["mean_test_score"]],
        "mean_test_score_hex": [float(score).hex() for score in results["mean_test_score"]],
        "best": {
            "params": _plain(results["params"][int(results["rank_test_score"].argmin())]),
            "mean_test_score": float(results["mean_test_score"].max()),
        },
        "config": {
            "rows": int(x.shape[0]),
            "num_words": args.num_words,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "grid_n_jobs": args.grid_n_jobs,
            "grid": _plain(GRID),
        },
    }


def _union_seconds(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the spans, overlaps (nested compile stages) counted once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        start = max(start, reach)
        if end > start:
            total += end - start
        reach = max(reach, end)
    return total


def _plain(value: Any) -> Any:
    """JSON-ready copies of grids and parameter dicts (tuples as lists)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def run_in_fresh_process(which: str, cache_state: str, cache: str, args: argparse.Namespace) -> dict[str, Any]:
    """One search in a new interpreter whose compilation cache is `cache`: empty ("cold"), or
    holding what that search's cold run left there ("warm")."""
    env = {**os.environ, "IMDB_JAX_COMPILE_CACHE": cache, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        __file__,
        "--worker",
        which,
        "--rows",
        str(args.rows),
        "--epochs",
        str(args.epochs),
        "--folds",
        str(args.folds),
        "--batch-size",
        str(args.batch_size),
        "--num-words",
        str(args.num_words),
        *(["--grid-n-jobs", str(args.grid_n_jobs)] if args.grid_n_jobs is not None else []),
    ]
    print(
        f"[bench_grid_search] running the {which} search ({cache_state} compilation cache) ...",
        file=sys.stderr,
        flush=True,
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {which} search failed ({done.returncode}):\n{done.stderr[-4000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["compile_cache"] = cache_state
    record["load_average_after"] = list(os.getloadavg())
    print(json.dumps(record), flush=True)
    print(
        f"[bench_grid_search] {record['name']}, {cache_state} cache, {record['devices']} devices: "
        f"{record['seconds']:.1f} s (compile {record['compile_s']:.1f} s)",
        file=sys.stderr,
        flush=True,
    )
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu_devices is not None:
        os.environ["IMDB_JAX_CPU_DEVICES"] = str(args.cpu_devices)  # this process's and the workers'
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0
    searches = [name.strip() for name in args.searches.split(",") if name.strip()]
    for which in searches:
        if which not in ("fused", "grid"):
            raise SystemExit(f"unknown search {which!r} (fused, grid)")
    # Cold runs of both, then warm runs of both: the two searches of a pair run close together,
    # so a change in other people's load shifts both.
    caches = {which: tempfile.mkdtemp(prefix=f"bench-grid-{which}-xla-") for which in searches}
    records: dict[str, list[dict[str, Any]]] = {which: [] for which in searches}
    try:
        for cache_state in ("cold", "warm") if args.warm else ("cold",):
            for which in searches:
                records[which].append(run_in_fresh_process(which, cache_state, caches[which], args))
    finally:
        for cache in caches.values():
            shutil.rmtree(cache, ignore_errors=True)
    if {"fused", "grid"} <= set(records):
        fused, grid = records["fused"][0], records["grid"][0]
        speedup = grid["seconds"] / fused["seconds"]
        summary = {
            "bench": "grid_search",
            "what": "target",
            "name": "FusedGridSearchCV speed-up over GridSearchCV(SparseMLPClassifier), cold compilation caches",
            "fused_s": fused["seconds"],
            "grid_search_s": grid["seconds"],
            "fused_compile_s": fused["compile_s"],
            "grid_search_compile_s": grid["compile_s"],
            "ratio": fused["seconds"] / grid["seconds"],
            "speedup": speedup,
            "target_speedup": TARGET_SPEEDUP,
            "met": speedup >= TARGET_SPEEDUP,
            "scores_equal": fused["mean_test_score_hex"] == grid["mean_test_score_hex"],
            "devices": fused["devices"],
            "best_params": fused["best"]["params"],
            "best_mean_test_score": fused["best"]["mean_test_score"],
            "config": fused["config"],
            "run": {"quick": args.quick, "argv": sys.argv[1:]},
            "env": _environment(),
        }
        if args.warm:
            warm_fused, warm_grid = records["fused"][1], records["grid"][1]
            summary.update(
                fused_warm_s=warm_fused["seconds"],
                grid_search_warm_s=warm_grid["seconds"],
                fused_warm_compile_s=warm_fused["compile_s"],
                grid_search_warm_compile_s=warm_grid["compile_s"],
                speedup_warm=warm_grid["seconds"] / warm_fused["seconds"],
            )
        print(json.dumps(summary))
        warm = f", warm caches {summary['speedup_warm']:.2f}x" if args.warm else ""
        print(
            f"[bench_grid_search] speed-up {speedup:.2f}x cold{warm} (target >= {TARGET_SPEEDUP:g}x cold: "
            f"{'met' if summary['met'] else 'not met'}); scores equal: {summary['scores_equal']}",
            file=sys.stderr,
            flush=True,
        )
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
