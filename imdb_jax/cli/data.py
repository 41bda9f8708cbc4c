"""`imdb-jax data`: load (or build the cache of) the IMDb data and summarise it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from imdb_jax.cli._common import add_data_options, check_data_options
from imdb_jax.data.sources import SOURCES
from imdb_jax.errors import ImdbJaxError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="load the IMDb reviews (building the cache if needed) and summarise them",
        description=(__doc__ or "").splitlines()[0].split(": ", 1)[1],
    )
    add_data_options(parser)
    parser.add_argument(
        "--held-out",
        type=int,
        default=0,
        metavar="N",
        help="fit the features without the first N training reviews (default: 0)",
    )
    parser.add_argument("--source", choices=SOURCES, default="auto", help="where to read from (default: auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the summary")
    parser.set_defaults(run=run)


def summarise(data: Any) -> dict[str, Any]:
    """The figures `imdb-jax data` reports, from an ``IMDbData``."""
    summary: dict[str, Any] = {}
    for name, split in (("train", data.train), ("test", data.test)):
        positive = int(split.y.sum())
        summary[f"{name}_reviews"] = len(split)
        summary[f"{name}_positive"] = positive
        summary[f"{name}_negative"] = len(split) - positive
        summary[f"{name}_mean_unique_words"] = round(split.x.nnz / max(len(split), 1), 2)
    features = data.features
    summary.update(
        num_words=data.num_words,
        ngrams=features.ngrams,
        weighting=features.weighting,
        held_out=data.held_out,
        source=data.source,
        cache_path=None if data.cache_path is None else str(data.cache_path),
        from_cache=data.from_cache,
        load_seconds=round(data.load_seconds, 3),
    )
    return summary


def run(args: argparse.Namespace) -> int:
    check_data_options(args)
    if args.held_out < 0:
        raise ImdbJaxError(f"--held-out must be 0 (none) or a number of training reviews, got {args.held_out}")
    # Deferred: imdb_jax.data.imdb imports SciPy (~0.2 s), which --help and option errors never load.
    from imdb_jax.data.imdb import load_imdb

    data = load_imdb(
        num_words=args.num_words,
        ngrams=args.ngrams,
        weighting=args.weighting,
        min_count=args.min_count,
        held_out=args.held_out,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        source=args.source,
        progress=not args.no_progress,
    )
    summary = summarise(data)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    cache_note = "read from the cache" if data.from_cache else "tokenised, cache written"
    if summary["cache_path"] is None:
        cache_note = "tokenised, no cache"
    print(f"source:        {summary['source']}")
    plain = data.features is None or data.features.plain
    unit = "words" if plain else "features"
    for name in ("train", "test"):
        print(
            f"{name + ':':<14} {summary[f'{name}_reviews']:>6} reviews  "
            f"({summary[f'{name}_positive']} positive, {summary[f'{name}_negative']} negative), "
            f"{summary[f'{name}_mean_unique_words']:.1f} unique {unit} per review on average"
        )
    if plain:
        print(f"vocabulary:    {summary['num_words']} words (most frequent in train)")
    else:
        print(
            f"features:      {summary['num_words']} 1- to {summary['ngrams']}-grams (most frequent in train), "
            f"{summary['weighting']} values"
        )
    if data.held_out:
        print(f"held out:      the first {data.held_out} training reviews took no part in fitting them")
    print(f"cache:         {summary['cache_path']} ({cache_note})")
    print(f"load time:     {summary['load_seconds']:.2f} s")
    return 0
