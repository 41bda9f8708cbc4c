"""`imdb-jax` command line: a thin dispatcher over one module per subcommand.

Each module in `COMMANDS` defines `add_parser(subparsers)` (registering its options) and
`run(args) -> int`. The logic lives in the library; these modules only parse and print. Nothing
here or in `add_parser` imports JAX, and each `run` checks every option's value before it does,
so `--help`, `--version` and option errors are instant.

Exit statuses: 0 done; 2 a problem the user can fix (one line on stderr); 3 `train` finished but
the model did not learn (diverged, no better than chance on its own training reviews, or a
training loss grown by orders of magnitude: a warning line says which; the model is saved); 130
Ctrl-C (one line); 141 standard output was closed early (`imdb-jax train | head -1`): the command
ends quietly, as Unix tools do; 1 a crash (a traceback: a bug).
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
import warnings

from imdb_jax import __version__
from imdb_jax.cli._interrupt import INTERRUPTED, Guard
from imdb_jax.errors import ImdbJaxError
from imdb_jax.train.cpu_devices import use_every_core

COMMANDS = ("data", "train", "predict", "evaluate", "study", "tune")
BROKEN_PIPE = 141  # 128 + SIGPIPE, what shells report for a writer whose reader went away


class _Parser(argparse.ArgumentParser):
    """Exit status 2 with a one-line message for bad options (argparse's own behaviour)."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imdb-jax", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--version", action="version", version=f"imdb-jax {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"imdb_jax.cli.{name}")
        module.add_parser(subparsers)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (a damaged cache being rebuilt, ...) as one plain line, not a source excerpt."""
    del filename, lineno, line
    print(f"imdb-jax: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    """Runs `imdb-jax ARGV` and returns its exit status.

    Args:
      argv: the arguments; None means the program's own (`sys.argv[1:]`), and then Ctrl-C ends
        the process at once with status 130 (`imdb_jax.cli._interrupt`).
    """
    use_every_core()  # before JAX is imported: one CPU device per core (imdb_jax.train.cpu_devices)
    guard = Guard(hard=argv is None)
    if guard.hard:
        atexit.register(_exit_without_teardown)  # first registered, so it runs last
    shown_by, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        with guard:
            status = _main(argv, guard)
            sys.stdout.flush()  # output buffered for a pipe meets a closed one here
    except BrokenPipeError:
        _silence_stdout()
        status = BROKEN_PIPE
    finally:
        warnings.showwarning = shown_by
    if guard.hard:
        _ending.append(status)
    return status


# The program's exit status once `main` has returned (program mode only).
_ending: list[int] = []


def _exit_without_teardown() -> None:
    """The program's last exit handler: once every other one has run (JAX's, logging's, weakref
    finalizers': all registered after this one), the process ends with `os._exit`, skipping the
    interpreter's teardown. That teardown (freeing every module and XLA's client and thread pools)
    took 0.4-0.5 s of a warm `imdb-jax train`'s 3 s, and nothing in it is the command's work:
    non-daemon threads have been joined (before exit handlers run) and the output is flushed
    here. A command that crashed (no status recorded) ends the usual way."""
    if not _ending:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can be written
            pass
    os._exit(_ending[-1])


def _silence_stdout() -> None:
    """The reader of standard output is gone (`| head -1`): point the stream at /dev/null so
    the interpreter's final flush does not print a second BrokenPipeError at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests' StringIO)
        pass


def _main(argv: list[str] | None, guard: Guard) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in COMMANDS:  # named already if Ctrl-C comes while the options are parsed
        guard.command = f"imdb-jax {words[0]}"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        guard.command = f"imdb-jax {args.command}"
        return int(args.run(args) or 0)
    except ImdbJaxError as error:
        print(f"{guard.command}: error: {error}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        guard.interrupted()
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
