"""What the commands check before any work, each failure one line naming the option typed: a
batch size that fits in memory, an output folder that can be written, model settings, the
number of reviews held out; and the compilation-cache option."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from imdb_jax import atomic
from imdb_jax.cli._common import positive
from imdb_jax.config import MAX_BATCH_SIZE, ConfigError
from imdb_jax.errors import ImdbJaxError
from imdb_jax.train import compile_cache

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
        raise ImdbJaxError(
            f"--batch-size must be at most {MAX_BATCH_SIZE} (more than IMDb's 25,000 reviews in one batch), got {value}"
        )
    return value


def held_out(value: int, reviews: int, *, allow_none: bool) -> int:
    """`--validation` against the number of training reviews, once they are known."""
    low = 0 if allow_none else 1
    if not low <= value < reviews:
        raise ImdbJaxError(
            f"--validation must be between {low} and {reviews - 1} (the data has {reviews} training reviews), got {value}"
        )
    return value


@contextlib.contextmanager
def options_named() -> Iterator[None]:
    """Turns a `ConfigError` about a setting ("dropout_rate must be ...") into one about the
    option the user typed ("--dropout must be ...")."""
    try:
        yield
    except ConfigError as error:
        setting = error.setting or ""
        option = OPTIONS.get(setting)
        message = str(error)
        if option is None:
            raise
        if message.startswith(setting):
            message = option + message[len(setting) :]
        raise ImdbJaxError(message) from None


# What marks a folder as an earlier imdb-jax run's output (what `--overwrite` may replace), and how
# a refusal describes it.
EARLIER_RUN = {
    "study.json": "a study (study.json)",
    "model.json": "a model (model.json)",
    "ensemble.json": "a model (ensemble.json)",
    "search.json": "a tune search (search.json)",
    "checkpoint": "a killed run's checkpoint (checkpoint/)",
    "checkpoints": "a killed study's checkpoints (checkpoints/)",
}


class Output:
    """An `--output` folder claimed by this command (`output_folder`).

    Attributes:
      path: the folder the user named: what messages and results name.
      work: where this command writes: `path`, or when it replaces an earlier run there, the
        staging folder beside it (`imdb_jax.atomic.staging_folder`) that takes its place at
        `commit`.
    """

    def __init__(self, path: Path, work: Path):
        self.path, self.work = path, work
        self._committed = False

    @property
    def replacing(self) -> bool:
        return self.work != self.path

    def final(self, written: str | os.PathLike) -> Path:
        """Where `written` (a path under `work`) is once the command is done."""
        return self.path / Path(written).relative_to(self.work)

    def commit(self) -> None:
        """Every file is written: the staging folder (if any) takes the place of the earlier run.
        Called before the report is printed, so a closed standard output (`| head -1`) cannot
        stop it; `output_folder` calls it at the end otherwise."""
        if self.replacing and not self._committed:
            atomic.replace_folder(self.work, self.path)
        self._committed = True


def add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what an earlier run left in --output: the new run is written beside it and takes its place only when complete",
    )


def add_resume_anyway_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resume-anyway",
        action="store_true",
        help="--resume, also from a checkpoint written under another JAX or jaxlib version, backend or device "
        "count, which --resume refuses: the result may then differ from the uninterrupted one by float rounding",
    )


def resume_mode(args: argparse.Namespace, what: str) -> bool | str:
    """`--resume` and `--resume-anyway` (which implies it) as `fit_variants`' `resume`: False,
    True, or "force" (continue a checkpoint written under another JAX, jaxlib, backend or device
    count). `what` names the folder's contents in the message when --output is missing."""
    option = "--resume-anyway" if args.resume_anyway else "--resume" if args.resume else None
    if option is None:
        return False
    if not args.output:
        raise ImdbJaxError(f"{option} needs --output: the folder of the {what} to continue")
    if args.overwrite:
        raise ImdbJaxError(
            f"{option} and --overwrite contradict each other: {option} continues the run in --output, --overwrite starts a new one there"
        )
    return "force" if args.resume_anyway else True


@contextlib.contextmanager
def output_folder(path: str | Path, *, resume: bool | str = False, overwrite: bool = False) -> Iterator[Output]:
    """Claims the `--output` folder before any work: one writer at a time, one run per folder.

    - an absent or empty folder is created, proved writable and written in place;
    - with `resume`, the killed run there is continued in place (or, if it was replacing an
      earlier run, in its staging folder, which then takes the folder's place);
    - a folder holding an earlier run is refused, unless `overwrite`: then the new run is written
      to a staging folder beside it, and swapped in for the old one only once it is complete
      (`imdb_jax.atomic.replace_folder`), so the folder never mixes two runs' files;
    - a second command writing to the same folder at the same time is refused (`folder_lock`).

    If the command fails and a folder it created is still empty, that folder is removed again.

    Raises:
      ImdbJaxError: the folder cannot be written, is in use, or holds files this command must not
        mix with its own.
    """
    path = Path(path)
    if resume and overwrite:
        raise ImdbJaxError(
            "--resume and --overwrite contradict each other: --resume continues the run in --output, --overwrite starts a new one there"
        )
    if path.exists() and not path.is_dir():
        raise ImdbJaxError(f"--output {path} cannot be written: it exists and is not a folder")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(atomic.folder_lock(path))
        except atomic.FolderInUse as error:
            holder = f" ({error.holder})" if error.holder else ""
            raise ImdbJaxError(
                f"--output {path} is being written by another imdb-jax command{holder}; wait for it to end or choose another folder"
            ) from None
        except OSError as error:
            raise ImdbJaxError(f"--output {path} cannot be written: {error.strerror or error}") from None
        yield stack.enter_context(_claimed(path, atomic.staging_folder(path), resume=resume, overwrite=overwrite))


@contextlib.contextmanager
def _claimed(path: Path, staging: Path, *, resume: bool | str, overwrite: bool) -> Iterator[Output]:
    """The body of `output_folder`, with the lock held."""
    if resume:
        work = staging if staging.is_dir() else path  # a killed --overwrite run lives in its staging folder
    elif path.is_dir() and any(path.iterdir()):
        held = [described for name, described in EARLIER_RUN.items() if (path / name).exists()]
        if not held:
            raise ImdbJaxError(
                f"--output {path} holds files that imdb-jax did not write; choose another folder (an empty or new one)"
            )
        if overwrite and _holds_working_directory(path):
            raise ImdbJaxError(
                f"--output {path} holds the current folder, which --overwrite cannot replace; run from outside it"
            )
        if not overwrite:
            again = (
                ", --resume to continue it"
                if any(name.startswith("checkpoint") for name in EARLIER_RUN if (path / name).exists())
                else ""
            )
            raise ImdbJaxError(
                f"--output {path} already holds {held[0]}; choose another folder{again}, or pass --overwrite to replace it"
            )
        shutil.rmtree(staging, ignore_errors=True)  # a killed earlier attempt (we hold the lock)
        work = staging
    else:
        work = path
    existed = work.exists()
    try:
        atomic.writable_folder(work)
    except OSError as error:
        raise ImdbJaxError(f"--output {path} cannot be written: {error.strerror or error}") from None
    output = Output(path, work)
    try:
        yield output
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                work.rmdir()  # only when empty
        raise
    output.commit()


def _holds_working_directory(folder: Path) -> bool:
    cwd, target = Path.cwd().resolve(), folder.resolve()
    return cwd == target or target in cwd.parents


def model_folder(path: str | Path) -> Path:
    """`--model`, refused in one line when it names nothing or a file (before JAX is imported;
    what the folder holds is checked when the model is loaded)."""
    path = Path(path)
    if path.is_file():
        raise ImdbJaxError(
            f"{path} is a file, not a model folder: give the folder that `imdb-jax train` or `imdb-jax tune` wrote"
        )
    if not path.exists():
        raise ImdbJaxError(f"{path} is not a model folder (no such folder)")
    return path


def add_compile_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile-cache",
        metavar="DIR|off",
        help="keep compiled programs in DIR for the next run, or 'off' (default: $IMDB_JAX_COMPILE_CACHE, else <cache dir>/xla)",
    )


def enable_compile_cache(args: argparse.Namespace) -> None:
    """Applies `--compile-cache` (or the default) before anything compiles."""
    compile_cache.enable(args.compile_cache, force=args.compile_cache is not None)
