"""`imdb-jax predict`: the sentiment of raw reviews, given as arguments or one per line on standard input."""

from __future__ import annotations

import argparse
import sys

from imdb_jax.cli._common import label_of, print_json

PREVIEW_CHARS = 60


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="probability and label (positive/negative) of raw reviews",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        usage="%(prog)s --model DIR [--json] [TEXT ...]",
    )
    parser.add_argument("--model", required=True, help="model folder written by `imdb-jax train`")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="reviews; without any, one review per line of standard input")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.set_defaults(run=run)


def read_stdin_reviews() -> list[str]:
    """Non-blank lines of standard input, decoded as UTF-8 with invalid bytes replaced."""
    stream = getattr(sys.stdin, "buffer", None)
    raw = stream.read() if stream is not None else sys.stdin.read()
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return [line for line in text.splitlines() if line.strip()]


def _preview(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


def run(args: argparse.Namespace) -> int:
    from imdb_jax.checkpoint import load_model

    model = load_model(args.model)
    texts = list(args.texts) if args.texts else read_stdin_reviews()
    probabilities = model.predict_texts(texts)
    predictions = [
        {"text": text, "probability": float(probability), "label": label_of(probability)}
        for text, probability in zip(texts, probabilities)
    ]
    if args.json:
        print_json({"model": str(args.model), "predictions": predictions})
        return 0
    if not predictions:
        print("no reviews given (pass them as arguments or one per line on standard input)", file=sys.stderr)
    for prediction in predictions:
        print(f"{prediction['probability']:.4f}  {prediction['label']:<8}  {_preview(prediction['text'])}")
    return 0
