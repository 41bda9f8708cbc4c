"""The command-line options every benchmark script takes, and the data they select."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from clocks import use_compile_cache
from reporting import log
from review_data import Dataset, load_dataset


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first line as the description, the rest after the
    first blank line (the usage examples) as the epilog, printed as written."""
    text = doc or ""
    epilog = text.split("\n\n", 1)[1] if "\n\n" in text else None
    return argparse.ArgumentParser(
        description=text.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="a small slice and fewer repeats (seconds, for smoke tests)"
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="random IMDb-shaped rows instead of the real reviews (no data needed)"
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="use only the first ROWS reviews of each split (default: all 25,000; --quick: 2048)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per measurement (default 5; --quick 2)"
    )
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


def resolve_arguments(args: argparse.Namespace, default_repeats: int = 5, quick_repeats: int = 2) -> argparse.Namespace:
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
    log(
        f"loading {'synthetic' if args.synthetic else 'IMDb'} data (num_words={num_words}, rows={args.rows or 'all'}) ..."
    )
    start = time.perf_counter()
    dataset = load_dataset(num_words, synthetic=args.synthetic, rows=args.rows)
    log(f"  {dataset.describe()} in {time.perf_counter() - start:.1f} s")
    return dataset
