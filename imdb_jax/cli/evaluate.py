"""`imdb-jax evaluate`: loss and accuracy of a saved model on the test reviews."""

from __future__ import annotations

import argparse
import time
from typing import Any

from imdb_jax.cli import _checks as checks
from imdb_jax.cli import _interrupt
from imdb_jax.cli._common import add_data_options, load_data, print_json
from imdb_jax.data.sources import resolve_source


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="loss and accuracy of a saved model on the test reviews",
        description=(__doc__ or "").splitlines()[0].split(": ", 1)[1],
        usage="%(prog)s --model DIR [options]",
    )
    parser.add_argument("--model", required=True, help="model folder written by `imdb-jax train` or `imdb-jax tune`")
    parser.add_argument("--batch-size", type=int, default=512, help="reviews per batch (default: 512)")
    add_data_options(parser, num_words=False)
    checks.add_compile_cache_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.set_defaults(run=run)


def scoring_split(model: Any, args: argparse.Namespace) -> tuple[Any, str]:
    """The test reviews vectorised with the model's own vocabulary, and how they were obtained.

    The cached matrices of `load_imdb(num_words=model's)` are used when their vocabulary is the
    model's (the usual case: same data, same tokeniser); otherwise the raw test reviews are read
    again and vectorised with the saved vocabulary, so a model is always scored on its own columns.
    N-gram or weighted features (`imdb-jax tune`'s), which no cached matrix of the data options
    holds, and an ensemble's (an `(EnsembleRows, labels)` pair) always take the second way.
    """
    # Deferred: imdb_jax.data.imdb imports SciPy and imdb_jax.saved.ensemble JAX, loaded only once
    # the options are checked, so --help and option errors stay fast.
    from imdb_jax.data.imdb import Split
    from imdb_jax.saved.ensemble import EnsembleModel

    ensemble = isinstance(model, EnsembleModel)
    if not ensemble and getattr(model.vocabulary, "plain", True):
        data = load_data(args, model.config.num_words)
        if data.vocabulary.words == model.vocabulary.words:
            return data.test, "the data's cached matrices (same vocabulary as the model)"
    raw = resolve_source(args.data_dir).read(progress=not args.no_progress)
    if ensemble:
        rows = model.vectorize(raw.test_texts)
        return (rows, raw.test_labels.astype("float32")), "the raw test reviews vectorised with each member's features"
    x = model.vocabulary.transform(raw.test_texts, progress=not args.no_progress, desc="tokenising test")
    return Split(x, raw.test_labels.astype("float32")), "the raw test reviews vectorised with the model's vocabulary"


def run(args: argparse.Namespace) -> int:
    checks.batch_size(args.batch_size)
    checks.model_folder(args.model)
    checks.enable_compile_cache(args)
    _interrupt.load_libraries("jax", "jax.numpy", "scipy.sparse")  # Ctrl-C held meanwhile
    # Deferred: these import JAX (~1.3 s), once the options are checked: --help stays fast.
    from imdb_jax.saved.ensemble import EnsembleModel
    from imdb_jax.saved.loading import load_model
    from imdb_jax.train.fit import evaluate

    model = load_model(args.model)
    started = time.perf_counter()
    test, how = scoring_split(model, args)
    if isinstance(model, EnsembleModel):
        metrics = model.evaluate_rows(*test, batch_size=args.batch_size)
        num_test = len(test[1])
        described = f"ensemble of {len(model.members)} models, probabilities averaged"
    else:
        metrics = evaluate(model.state, test, batch_size=args.batch_size)
        num_test = len(test)
        described = f"hidden {'-'.join(map(str, model.config.hidden_units))}, {model.config.num_words} words"
    seconds = time.perf_counter() - started
    if args.json:
        print_json(
            {
                "model": str(args.model),
                "test_loss": metrics["loss"],
                "test_accuracy": metrics["accuracy"],
                "num_test": num_test,
                "vectorised_with": how,
                "seconds": seconds,
            }
        )
        return 0
    print(f"model: {args.model} ({described})")
    print(f"test reviews: {num_test}, from {how}")
    print(f"test loss: {metrics['loss']:.4f}  test accuracy: {metrics['accuracy']:.4f}")
    return 0
