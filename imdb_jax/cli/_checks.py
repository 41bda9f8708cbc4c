"""What the commands check before any work, each failure one line naming the option typed: a
batch size that fits in memory, an output folder that can be written, model settings, the
number of reviews held out; and the compilation-cache option."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from imdb_jax.cli._common import positive
from imdb_jax.errors import ImdbJaxError

# More than IMDb's largest split (25,000 reviews) in one batch; a larger batch only costs memory
# (a dense first layer of 32,768 x 10,000 float32 is already 1.3 GB).
MAX_BATCH_SIZE = 1 << 15

# ModelConfig's setting names as the train command's options.
OPTIONS = {
    "hidden_units": "--hidden-units",
    "dropout_rate": "--dropout",
    "learning_rate": "--learning-rate",
    "weight_decay": "--weight-decay",
    "l1": "--l1",
    "l2": "--l2",
    "num_words": "--num-words",
}


def batch_size(value: int) -> int:
    """`--batch-size`, refused when not positive or larger than `MAX_BATCH_SIZE`."""
    positive("--batch-size", value)
    if value > MAX_BATCH_SIZE:
        raise ImdbJaxError(f"--batch-size must be at most {MAX_BATCH_SIZE} (more than IMDb's 25,000 reviews in one batch), got {value}")
    return value


def held_out(value: int, reviews: int, *, allow_none: bool) -> int:
    """`--validation` against the number of training reviews, once they are known."""
    low = 0 if allow_none else 1
    if not low <= value < reviews:
        raise ImdbJaxError(f"--validation must be between {low} and {reviews - 1} (the data has {reviews} training reviews), got {value}")
    return value


@contextlib.contextmanager
def options_named() -> Iterator[None]:
    """Turns a `ConfigError` about a setting ("dropout_rate must be ...") into one about the
    option the user typed ("--dropout must be ...")."""
    from imdb_jax.config import ConfigError

    try:
        yield
    except ConfigError as error:
        option = OPTIONS.get(error.setting)
        message = str(error)
        if option is None:
            raise
        if message.startswith(error.setting):
            message = option + message[len(error.setting):]
        raise ImdbJaxError(message) from None


@contextlib.contextmanager
def output_folder(path: str | Path) -> Iterator[Path]:
    """Creates the `--output` folder and proves it writable before any work; if the command then
    fails and the folder it created is still empty, removes it again."""
    from imdb_jax.atomic import writable_folder

    path = Path(path)
    existed = path.exists()
    try:
        folder = writable_folder(path)
    except OSError as error:
        raise ImdbJaxError(f"--output {path} cannot be written: {error.strerror or error}") from None
    try:
        yield folder
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        raise


def add_compile_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile-cache",
        metavar="DIR|off",
        help="keep compiled programs in DIR for the next run, or 'off' (default: $IMDB_JAX_COMPILE_CACHE, else <cache dir>/xla)",
    )


def enable_compile_cache(args: argparse.Namespace) -> None:
    """Applies `--compile-cache` (or the default) before anything compiles."""
    from imdb_jax.train import compile_cache

    compile_cache.enable(args.compile_cache, force=args.compile_cache is not None)
