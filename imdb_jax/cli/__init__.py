"""`imdb-jax` command line: a thin dispatcher over one module per subcommand.

Each module in `COMMANDS` defines `add_parser(subparsers)` (registering its options) and
`run(args) -> int`. The logic lives in the library; these modules only parse and print.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from imdb_jax.errors import ImdbJaxError

COMMANDS = ("data", "train", "predict", "evaluate", "study")


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
    shown_by, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return _main(argv)
    finally:
        warnings.showwarning = shown_by


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ImdbJaxError as error:
        print(f"imdb-jax {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"imdb-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
