"""`imdb-jax predict`: the sentiment of raw reviews, given as arguments or one per line on standard input."""

from __future__ import annotations

import argparse
import sys
import unicodedata
from typing import Any

from imdb_jax.cli import _checks as checks
from imdb_jax.cli import _interrupt
from imdb_jax.cli._common import label_of, positive, print_json

PREVIEW_CHARS = 60
EMPTY = "empty review"
NO_KNOWN_WORDS = "no known words"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="probability and label (positive/negative) of raw reviews",
        description=(__doc__ or "").splitlines()[0].split(": ", 1)[1],
        usage="%(prog)s --model DIR [--json] [--explain [--top K]] [TEXT ...]",
    )
    parser.add_argument("--model", required=True, help="model folder written by `imdb-jax train` or `imdb-jax tune`")
    parser.add_argument(
        "texts",
        nargs="*",
        metavar="TEXT",
        help="reviews; without any, one review per line of standard input (every line, blank ones too, gets one output line; with --explain a 'why:' line follows each scored one)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also list the words or n-grams that moved each review's score most (gradient x input, in logits)",
    )
    parser.add_argument(
        "--top", type=int, default=5, metavar="K", help="terms listed per review with --explain (default: 5)"
    )
    checks.add_compile_cache_option(parser)
    parser.set_defaults(run=run)


def split_lines(data: bytes | str) -> list[str]:
    """One review per line: split on "\\n" only (a trailing "\\r" is dropped, so CRLF files
    work), every line kept, blank ones too; no line after a final "\\n". Bytes that are not
    UTF-8 become U+FFFD."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_stdin_reviews() -> list[str]:
    """The reviews on standard input, one per line (`split_lines`)."""
    stream = getattr(sys.stdin, "buffer", None)
    return split_lines(stream.read() if stream is not None else sys.stdin.read())


def printable(text: str) -> str:
    """`text` safe to show on a terminal: control and format characters, line and paragraph
    separators and lone surrogates written as escapes ("\\x1b", "\\t", "\\u2028")."""
    return "".join(
        char
        if char == " " or not (unicodedata.category(char).startswith("C") or unicodedata.category(char) in ("Zl", "Zp"))
        else ascii(char)[1:-1]
        for char in text
    )


def _preview(text: str) -> str:
    text = printable(text)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


def predictions(model: Any, texts: list[str], explain: int = 0) -> list[dict[str, Any]]:
    """One entry per review, in order: {"text", "probability", "label", "known_words", "note"};
    a review with no word of the model's vocabulary has no probability (None) and a note saying
    why, instead of the bias's constant. With `explain` > 0, also "explanation": up to that many
    {"term", "contribution"} (`imdb_jax.saved.explain`), largest first."""
    rows = model.vectorize(texts)
    known = rows.indptr[1:] - rows.indptr[:-1]
    probabilities = model.predict_rows(rows)
    reasons = [None] * len(texts)
    if explain and texts:
        # Deferred: imdb_jax.saved.explain imports JAX (~1.3 s); --help and option errors stay fast.
        from imdb_jax.saved.explain import explain_rows

        reasons = explain_rows(model, rows, top=explain)
    found = []
    for text, probability, count, reason in zip(texts, probabilities, known, reasons):
        entry = {"text": text, "probability": None, "label": None, "known_words": int(count), "note": None}
        if count:
            entry.update(probability=float(probability), label=label_of(probability))
        else:
            entry["note"] = EMPTY if not text.strip() else NO_KNOWN_WORDS
        if explain:
            entry["explanation"] = reason or []
        found.append(entry)
    return found


def _reasons(entry: dict[str, Any]) -> str:
    """ "why: +great (+1.23), -boring (-0.41)"."""
    parts = [
        f"{'+' if item['contribution'] > 0 else '-'}{printable(item['term'])} ({item['contribution']:+.2f})"
        for item in entry["explanation"]
    ]
    return f"{'':6}  why: " + (", ".join(parts) if parts else "(no term moved the score)")


def run(args: argparse.Namespace) -> int:
    if args.explain:
        positive("--top", args.top)
    checks.model_folder(args.model)
    checks.enable_compile_cache(args)
    _interrupt.load_libraries("jax", "jax.numpy", "scipy.sparse")  # Ctrl-C held meanwhile
    # Deferred: imdb_jax.saved.loading imports JAX (~1.3 s); --help and option errors stay fast.
    from imdb_jax.saved.loading import load_model

    model = load_model(args.model)
    texts = list(args.texts) if args.texts else read_stdin_reviews()
    found = predictions(model, texts, explain=args.top if args.explain else 0)
    if args.json:
        print_json({"model": str(args.model), "predictions": found})
        return 0
    if not found:
        print("no reviews given (pass them as arguments or one per line on standard input)", file=sys.stderr)
    for entry in found:
        if entry["probability"] is None:
            print(f"{'-':>6}  {'(' + entry['note'] + ')':<16}  {_preview(entry['text'])}")
        else:
            print(f"{entry['probability']:.4f}  {entry['label']:<16}  {_preview(entry['text'])}")
            if args.explain:
                print(_reasons(entry))
    return 0
