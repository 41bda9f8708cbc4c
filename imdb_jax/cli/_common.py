"""Options and helpers shared by the model commands (`train`, `predict`, `evaluate`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from imdb_jax.atomic import to_json_value
from imdb_jax.errors import ImdbJaxError

# `imdb_jax.data.features`' WEIGHTINGS and MAX_NGRAMS, restated: importing that module imports
# SciPy, which would double the time an option error takes (tests check they agree).
WEIGHTINGS = ("binary", "tfidf", "nb")
MAX_NGRAMS = 8


def add_data_options(parser: argparse.ArgumentParser, *, num_words: bool = True) -> None:
    """--data-dir, --cache-dir, [--num-words, --ngrams, --weighting, --min-count,] --no-progress."""
    parser.add_argument(
        "--data-dir", help="TFDS data_dir, aclImdb folder or aclImdb_v1.tar.gz (default: $TFDS_DATA_DIR)"
    )
    parser.add_argument("--cache-dir", help="cache folder (default: $IMDB_JAX_CACHE_DIR or ~/.cache/imdb_jax)")
    if num_words:
        parser.add_argument(
            "--num-words", type=int, default=10000, help="features kept, the most frequent (default: 10000)"
        )
        parser.add_argument(
            "--ngrams", type=int, default=1, metavar="N", help="word n-grams up to N as features (default: 1, words)"
        )
        parser.add_argument(
            "--weighting",
            choices=WEIGHTINGS,
            default="binary",
            help="feature values: binary, tf-idf or naive-Bayes ratios (default: binary)",
        )
        parser.add_argument(
            "--min-count",
            type=int,
            default=1,
            metavar="K",
            help="drop features seen fewer than K times in training (default: 1)",
        )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def load_data(args: argparse.Namespace, num_words: int) -> Any:
    """`load_imdb` with the data options of `args`. N-gram or weighted features are fitted without
    the first `args.validation` training reviews (when the command has that option), so the
    validation reviews stay unseen."""
    # Deferred: imdb_jax.data.imdb imports SciPy (~0.2 s), which --help and option errors never load.
    from imdb_jax.data.imdb import load_imdb

    ngrams, weighting = getattr(args, "ngrams", 1), getattr(args, "weighting", "binary")
    plain = ngrams == 1 and weighting == "binary"
    return load_imdb(
        num_words=num_words,
        ngrams=ngrams,
        weighting=weighting,
        min_count=getattr(args, "min_count", 1),
        held_out=0 if plain else getattr(args, "validation", 0) or 0,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
    )


def check_data_options(args: argparse.Namespace) -> None:
    """The data options' values (`add_data_options`), each refused naming the option typed,
    before anything is loaded or imported."""
    if getattr(args, "num_words", None) is not None:
        positive("--num-words", args.num_words)
    ngrams = getattr(args, "ngrams", 1)
    if not 1 <= ngrams <= MAX_NGRAMS:
        raise ImdbJaxError(f"--ngrams must be from 1 to {MAX_NGRAMS}, got {ngrams}")
    positive("--min-count", getattr(args, "min_count", 1))


def plural(count: int, noun: str) -> str:
    """ "1 epoch", "4 epochs"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def positive(name: str, value: int) -> int:
    """`value`, or an `ImdbJaxError` naming the option when it is not a positive integer."""
    if value <= 0:
        raise ImdbJaxError(f"{name} must be a positive integer, got {value}")
    return value


def parse_hidden_units(text: str) -> tuple[int, ...]:
    """ "16,16" -> (16, 16). Widths are checked by `ModelConfig`."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ImdbJaxError(f"--hidden-units must be comma-separated integers such as 16,16, got {text!r}") from None


def print_json(value: Any) -> None:
    """Prints `value` as exactly one line of strict JSON (NaN becomes null)."""
    print(json.dumps(to_json_value(value), sort_keys=True, allow_nan=False), flush=True)


def device_names() -> list[str]:
    # Deferred: JAX (~1.3 s) loads only once a command has checked its options; --help stays fast.
    import jax

    return [f"{device.platform}:{device.id} ({device.device_kind})" for device in jax.devices()]


def label_of(probability: float) -> str:
    """The sentiment a probability stands for (the accuracy's threshold: logit > 0)."""
    return "positive" if probability > 0.5 else "negative"


def default_output(kind: str) -> Path:
    """A fresh `runs/<kind>-<timestamp>[-n]` folder name (not created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, suffix = Path("runs") / f"{kind}-{stamp}", 1
    while path.exists():
        suffix += 1
        path = Path("runs") / f"{kind}-{stamp}-{suffix}"
    return path
