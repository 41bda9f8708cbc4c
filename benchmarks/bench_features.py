"""Features: imdb_jax's n-gram features (build time, cold and warm, and peak memory) and the
strongest scikit-learn references of issue 10 trained on them, accuracy and time side by side.

Feature sets (``load_imdb`` settings; ``--sets`` picks some):
  nb-1-3     1-3-grams seen at least twice in training, naive-Bayes log-count-ratio values
  tfidf-1-2  1-2-grams seen at least twice, sublinear tf-idf values, rows of unit length

For each set: a cold build (an empty cache folder), warm loads (``--repeats``), then the
validation build (the first ``--validation`` training reviews held out of the fit). scikit-learn's
``LogisticRegression`` is fitted on train[validation:] for each C of the set's grid, the C with the
best validation accuracy is refitted on all 25,000 training reviews (features fitted on all of
them) and scored once on the test set. With ``--sklearn-vectorizer``, scikit-learn's own
``CountVectorizer`` (the package's tokeniser, the same n-grams, ``min_df=2``) builds the nb set too,
so its build time stands beside imdb_jax's (ratio measured in the same run). Without
scikit-learn installed (it lives in the bench venv) the models are skipped with a note.

  python benchmarks/bench_features.py                       # both sets, C chosen on validation
  python benchmarks/bench_features.py --sets nb-1-3 --sklearn-vectorizer
  python benchmarks/bench_features.py --quick               # nb 1-2-grams, one C, 2,048 reviews for the model
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines  # noqa: E402
import cli_options  # noqa: E402
import clocks  # noqa: E402
import machine_info  # noqa: E402
import reporting  # noqa: E402
import review_data  # noqa: E402

FEATURE_SETS: dict[str, dict[str, Any]] = {
    "nb-1-3": {"ngrams": 3, "weighting": "nb", "min_count": 2, "num_words": None},
    "tfidf-1-2": {"ngrams": 2, "weighting": "tfidf", "min_count": 2, "num_words": None},
}
QUICK_SET = {"nb-1-2": {"ngrams": 2, "weighting": "nb", "min_count": 2, "num_words": None}}
C_GRID = {"nb": (0.1, 1.0, 10.0), "tfidf": (1.0, 10.0, 30.0)}
ISSUE_REFERENCE = {"nb-1-3": 0.9175, "tfidf-1-2": 0.909}  # scikit-learn test accuracy quoted in issue 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli_options.parser(__doc__)
    parser.add_argument(
        "--sets",
        default=",".join(FEATURE_SETS),
        help=f"comma-separated feature sets (default: {','.join(FEATURE_SETS)})",
    )
    parser.add_argument(
        "--validation", type=int, default=10000, help="first N training reviews held out to choose C (default: 10000)"
    )
    parser.add_argument("--C", type=float, default=None, help="one C for every set instead of the validation grid")
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="fit and score the model on the first ROWS reviews only (default: all; --quick: 2048)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="warm loads timed (default 3; --quick 1)")
    parser.add_argument(
        "--data-dir", default=None, help="the data (default: $TFDS_DATA_DIR, else ../shared/tensorflow_datasets)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="feature cache folder to use and keep (default: a fresh temporary one, so the first build is cold)",
    )
    parser.add_argument("--no-sklearn", action="store_true", help="build and time the features only")
    parser.add_argument(
        "--sklearn-vectorizer",
        action="store_true",
        help="also build the nb set with scikit-learn's CountVectorizer (slow: minutes)",
    )
    parser.add_argument("--quick", action="store_true", help="1-2-gram nb only, one C, 2,048 reviews for the model")
    parser.add_argument("--no-table", action="store_true", help="do not print the table on stderr")
    args = parser.parse_args(argv)
    args.feature_sets = dict(QUICK_SET) if args.quick else {}
    if not args.quick:
        for name in (part.strip() for part in args.sets.split(",") if part.strip()):
            if name not in FEATURE_SETS:
                parser.error(f"unknown feature set {name!r}; choose from {', '.join(FEATURE_SETS)}")
            args.feature_sets[name] = FEATURE_SETS[name]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.rows is None and args.quick:
        args.rows = 2048
    if args.quick and args.C is None:
        args.C = 1.0
    return args


def build_features(
    settings: dict[str, Any], held_out: int, args: argparse.Namespace, cache_dir: Path
) -> tuple[Any, float, dict[str, Any]]:
    """``load_imdb`` with these settings: (data, seconds, {"peak_rss_mb", "rss_before_mb"})."""
    from imdb_jax import load_imdb

    before = machine_info.megabytes(machine_info.current_rss_bytes())
    reset = machine_info.reset_peak_rss()
    start = time.perf_counter()
    data = load_imdb(**settings, held_out=held_out, data_dir=args.data_dir, cache_dir=cache_dir, progress=False)
    seconds = time.perf_counter() - start
    return (
        data,
        seconds,
        {
            "peak_rss_mb": machine_info.megabytes(machine_info.peak_rss_bytes()) if reset else None,
            "rss_before_mb": before,
        },
    )


def rows_of(split: Any, rows: int | None) -> tuple[Any, np.ndarray]:
    return (split.x, split.y) if rows is None else (split.x[:rows], split.y[:rows])


def logistic_regression(x_train, y_train, x_eval, y_eval, C: float) -> dict[str, Any]:
    """scikit-learn's LogisticRegression(C) (lbfgs, up to 1,000 iterations): fit time and accuracy."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        start = time.perf_counter()
        model.fit(x_train, y_train)
        fit_s = time.perf_counter() - start
    return {
        "C": C,
        "fit_s": fit_s,
        "accuracy": float(np.mean(model.predict(x_eval) == y_eval)),
        "n_iter": int(np.max(model.n_iter_)),
        "converged": not any(issubclass(item.category, ConvergenceWarning) for item in caught),
    }


def sklearn_vectorizer_nb(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    """scikit-learn's CountVectorizer with the package's tokeniser and NB ratios by hand: build time."""
    from sklearn.feature_extraction.text import CountVectorizer

    from imdb_jax.data import sources
    from imdb_jax.data.text import tokenize

    raw = sources.resolve_source(args.data_dir).read()
    start = time.perf_counter()
    # scikit-learn's type stubs are narrower than its documented API (token_pattern=None with a
    # tokenizer, a float dtype, sparse results).
    vectorizer = CountVectorizer(
        tokenizer=tokenize,
        lowercase=False,
        token_pattern=None,  # pyright: ignore[reportArgumentType]
        ngram_range=(1, settings["ngrams"]),
        min_df=settings["min_count"],
        binary=True,
        dtype=np.float32,  # pyright: ignore[reportArgumentType]
    )
    x_train: Any = vectorizer.fit_transform(raw.train_texts)
    x_test = vectorizer.transform(raw.test_texts)
    y = raw.train_labels
    p = 1.0 + np.asarray(x_train[y == 1].sum(axis=0)).ravel()
    q = 1.0 + np.asarray(x_train[y == 0].sum(axis=0)).ravel()
    ratio = (np.log(p / p.sum()) - np.log(q / q.sum())).astype(np.float32)
    x_train, x_test = x_train.multiply(ratio).tocsr(), x_test.multiply(ratio).tocsr()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "features": x_train.shape[1],
        "x_train": x_train,
        "x_test": x_test,
        "y_train": raw.train_labels.astype(np.float32),
        "y_test": raw.test_labels.astype(np.float32),
    }


def run_set(
    reporter: reporting.Reporter,
    args: argparse.Namespace,
    name: str,
    settings: dict[str, Any],
    cache_dir: Path,
    table: list[list[str]],
) -> None:
    reporting.log(f"{name}: building {settings} (cold) ...")
    tokens_cached = any(cache_dir.glob("imdb-*-tokens-*.cache"))  # an earlier set left the tokenised reviews
    data, cold_s, memory = build_features(settings, 0, args, cache_dir)
    peak_mb = memory["peak_rss_mb"]
    warm = [build_features(settings, 0, args, cache_dir)[1] for _ in range(args.repeats)]
    config = {
        **settings,
        "features": data.num_words,
        "train_nnz_per_review": round(data.x_train.nnz / len(data.train), 1),
        "cache_mb": None if data.cache_path is None else round(data.cache_path.stat().st_size / 2**20, 1),
    }
    reporter.emit(
        "features_cold",
        f"imdb_jax {name}",
        config,
        **clocks.summarize([cold_s]),
        from_cache=data.from_cache,
        tokens_cached=tokens_cached,
        **memory,
    )
    reporter.emit("features_warm", f"imdb_jax {name}", config, **clocks.summarize(warm))
    cold_note = " (cached)" if data.from_cache else " (tokens cached)" if tokens_cached else ""
    row = [
        name,
        f"{data.num_words:,}",
        f"{cold_s:.1f}{cold_note}",
        f"{np.median(warm):.2f}",
        "" if peak_mb is None else f"{peak_mb:.0f}",
    ]
    if args.no_sklearn or baselines.sklearn_missing():
        if not args.no_sklearn:
            reporter.note(f"sklearn_logreg {name}", baselines.sklearn_missing() or "")
        table.append(
            row + ["", "", "", "", "no model: " + ("--no-sklearn" if args.no_sklearn else "scikit-learn not installed")]
        )
        return

    if args.C is not None:
        chosen, grid = args.C, []
    else:
        reporting.log(
            f"{name}: validation build (first {args.validation} training reviews held out) and the C grid ..."
        )
        held, _, _ = build_features(settings, args.validation, args, cache_dir)
        train, validation = held.split_validation(args.validation)
        x_fit, y_fit = rows_of(train, args.rows)
        x_val, y_val = rows_of(validation, args.rows)
        grid = [logistic_regression(x_fit, y_fit, x_val, y_val, C) for C in C_GRID[settings["weighting"]]]
        chosen = max(grid, key=lambda result: result["accuracy"])["C"]  # first of the best on a tie
        del held, train, validation
    reporting.log(f"{name}: LogisticRegression(C={chosen}) on all training reviews ...")
    x_train, y_train = rows_of(data.train, args.rows)
    x_test, y_test = rows_of(data.test, args.rows)
    final = logistic_regression(x_train, y_train, x_test, y_test, chosen)
    best_val = max((result["accuracy"] for result in grid), default=None)
    reporter.emit(
        "sklearn_logreg",
        f"sklearn LogisticRegression on imdb_jax {name}",
        {**config, "rows": args.rows, "validation": args.validation},
        **clocks.summarize([final["fit_s"]]),
        C=chosen,
        test_accuracy=final["accuracy"],
        validation_accuracy=best_val,
        validation_grid=grid,
        n_iter=final["n_iter"],
        converged=final["converged"],
        issue_reference_accuracy=ISSUE_REFERENCE.get(name),
        sklearn_version=baselines._version("scikit-learn"),
    )
    table.append(
        row
        + [
            f"{chosen:g}",
            "" if best_val is None else f"{best_val:.4f}",
            f"{final['accuracy']:.4f}",
            f"{final['fit_s']:.1f}",
            f"{ISSUE_REFERENCE.get(name, '')}",
        ]
    )

    if args.sklearn_vectorizer and settings["weighting"] == "nb":
        reporting.log(f"{name}: scikit-learn CountVectorizer on the same reviews (slow) ...")
        theirs = sklearn_vectorizer_nb(args, settings)
        result = logistic_regression(theirs["x_train"], theirs["y_train"], theirs["x_test"], theirs["y_test"], chosen)
        reporter.emit(
            "features_cold",
            f"sklearn CountVectorizer {name}",
            {**settings, "min_df": settings["min_count"], "features": theirs["features"]},
            **clocks.summarize([theirs["seconds"]]),
            imdb_jax_cold_s=cold_s,
            imdb_jax_speedup=theirs["seconds"] / cold_s,
            test_accuracy=result["accuracy"],
            C=chosen,
        )
        table.append(
            [
                f"{name} (sklearn vectoriser)",
                f"{theirs['features']:,}",
                f"{theirs['seconds']:.1f}",
                "",
                "",
                f"{chosen:g}",
                "",
                f"{result['accuracy']:.4f}",
                f"{result['fit_s']:.1f}",
                "",
            ]
        )


TABLE_HEADER = [
    "features",
    "columns",
    "build cold s",
    "warm s",
    "peak RSS MB",
    "C",
    "val acc",
    "test acc",
    "fit s",
    "issue ref",
]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(str(row[index])) for row in rows + [TABLE_HEADER]) for index in range(len(TABLE_HEADER))]
    line = "  ".join(f"{{:<{width}}}" for width in widths)
    print(file=sys.stderr)
    print(line.format(*TABLE_HEADER), file=sys.stderr)
    print(line.format(*("-" * width for width in widths)), file=sys.stderr)
    for row in rows:
        print(line.format(*row), file=sys.stderr)
    print(
        "issue ref: scikit-learn test accuracy quoted in issue 10 (not measured in this run)",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data_dir is None:
        review_data.default_data_dir()
    reporter = reporting.Reporter("features", args)
    cache_dir = (
        args.cache_dir if args.cache_dir is not None else Path(tempfile.mkdtemp(prefix="imdb_jax_bench_features-"))
    )
    table: list[list[str]] = []
    try:
        for name, settings in args.feature_sets.items():
            run_set(reporter, args, name, settings, cache_dir, table)
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache_dir, ignore_errors=True)
    if not args.no_table:
        print_table(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
