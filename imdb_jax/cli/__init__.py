"""`imdb-jax` command line: a thin dispatcher over one module per subcommand.

Each module in `COMMANDS` defines `add_parser(subparsers)` (registering its options) and
`run(args) -> int`. The logic lives in the library; these modules only parse and print. Nothing
here or in `add_parser` imports JAX (each `run` does), so `--help` and option errors are instant.
A problem the user can fix ends with one line on stderr and exit status 2; Ctrl-C with one line
and status 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from imdb_jax.cli._interrupt import INTERRUPTED, Guard
from imdb_jax.errors import ImdbJaxError

COMMANDS = ("data", "train", "predict", "evaluate", "study", "tune")


class _Parser(argparse.ArgumentParser):
    """Exit status 2 with a one-line message for bad options (argparse's own behaviour)."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imdb-jax", description=__doc__.splitlines()[0])
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
    guard = Guard(hard=argv is None)
    shown_by, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        with guard:
            return _main(argv, guard)
    finally:
        warnings.showwarning = shown_by


def _main(argv: list[str] | None, guard: Guard) -> int:
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
