"""`imdb-jax train`: train one model (the seed's final run by default), score it on the test set, save it."""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
import time
from typing import Any

from imdb_jax.cli import _checks as checks
from imdb_jax.cli._common import (
    add_data_options,
    check_data_options,
    default_output,
    device_names,
    label_of,
    load_data,
    parse_hidden_units,
    plural,
    positive,
    print_json,
)
from imdb_jax.cli._distributed import add_distributed_options, distributed_command
from imdb_jax.config import ModelConfig
from imdb_jax.drawing import Drawing
from imdb_jax.errors import ImdbJaxError

CHECKPOINT = "checkpoint"  # inside --output while training: what --resume continues from

SAMPLE_PREDICTIONS = 10

# Exit status of a run that finished but did not learn (`learning_problems`); the model is saved
# all the same, for a look at what went wrong.
DID_NOT_LEARN = 3
# A final training loss this many times a constant guess's (or the run's own lowest) is one that
# grew by orders of magnitude: a learning rate far too high, typically.
LOSS_GROWTH = 100.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model, score it on the test reviews and save it",
        description=(__doc__ or "").splitlines()[0].split(": ", 1)[1],
        usage="%(prog)s [options]",
    )
    parser.add_argument("--hidden-units", default="16,16", help="hidden layer widths, first to last (default: 16,16)")
    parser.add_argument("--epochs", type=int, default=4, help="passes over the training reviews (default: 4)")
    parser.add_argument("--batch-size", type=int, default=512, help="reviews per update (default: 512)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="rmsprop step size (default: 0.001)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay (default: 0)")
    parser.add_argument("--l1", type=float, default=0.0, help="L1 penalty factor on hidden kernels (default: 0)")
    parser.add_argument("--l2", type=float, default=0.0, help="L2 penalty factor on hidden kernels (default: 0)")
    parser.add_argument(
        "--dropout", type=float, default=0.0, help="dropout after each hidden layer, in [0, 1) (default: 0)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the initial weights, dropout and shuffling (default: 0)"
    )
    parser.add_argument(
        "--validation",
        type=int,
        default=0,
        metavar="N",
        help="hold out the first N training reviews and report validation curves (default: 0, train on all)",
    )
    parser.add_argument(
        "--first-layer", choices=("auto", "sparse", "dense"), default="auto", help="first layer kind (default: auto)"
    )
    parser.add_argument("--output", help="model folder (default: runs/train-<timestamp>)")
    parser.add_argument(
        "--logdir",
        metavar="DIR",
        help="also write TensorBoard logs: a run folder in DIR with the epochs' loss and accuracy curves and the settings (HParams)",
    )
    parser.add_argument(
        "--restore-best",
        action="store_true",
        help="keep the weights of the epoch with the lowest validation loss (needs --validation), like Keras' EarlyStopping(restore_best_weights=True)",
    )
    parser.add_argument(
        "--patience",
        type=int,
        metavar="N",
        help="stop after N epochs without a lower validation loss (needs --validation), like Keras' EarlyStopping",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the killed run in --output from its last finished epoch (same command otherwise); the result is the "
        "uninterrupted one (a checkpoint written under another JAX or jaxlib version, backend or device count is refused)",
    )
    checks.add_resume_anyway_option(parser)
    checks.add_overwrite_option(parser)
    add_data_options(parser)
    add_distributed_options(parser)
    checks.add_compile_cache_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the report")
    parser.set_defaults(run=run)


def best_epochs(history: dict[str, list]) -> dict[str, Any]:
    """The epochs (1-based) with the lowest validation loss and the highest validation accuracy."""
    val_loss = [math.inf if math.isnan(value) else value for value in history["val_loss"]]
    val_accuracy = [-math.inf if math.isnan(value) else value for value in history["val_accuracy"]]
    by_loss = min(range(len(val_loss)), key=val_loss.__getitem__)
    by_accuracy = max(range(len(val_accuracy)), key=val_accuracy.__getitem__)
    return {
        "best_val_loss_epoch": by_loss + 1,
        "best_val_loss": history["val_loss"][by_loss],
        "val_accuracy_at_best_loss": history["val_accuracy"][by_loss],
        "best_val_accuracy_epoch": by_accuracy + 1,
        "best_val_accuracy": history["val_accuracy"][by_accuracy],
    }


def run(args: argparse.Namespace) -> int:
    # Every value is checked before JAX is imported (joining a multi-process run imports it),
    # and the output folder claimed before the data is loaded or anything compiles.
    return _run(args, _checked_config(args))


def _checked_config(args: argparse.Namespace) -> Any:
    """The model's `ModelConfig` from the options, once every option's value has been checked."""
    positive("--epochs", args.epochs)
    checks.batch_size(args.batch_size)
    check_data_options(args)
    if args.validation < 0:
        raise ImdbJaxError(f"--validation must be 0 (none) or a number of reviews to hold out, got {args.validation}")
    if args.restore_best and not args.validation:
        raise ImdbJaxError(
            "--restore-best needs --validation N: the best epoch is the one with the lowest validation loss"
        )
    if args.patience is not None and (args.patience < 0 or not args.validation):
        raise ImdbJaxError("--patience needs a number >= 0 and --validation N: it watches the validation loss")
    args.resume = checks.resume_mode(args, "run")  # False, True or "force" (--resume-anyway)
    with checks.options_named():
        config = ModelConfig(
            num_words=args.num_words,
            hidden_units=parse_hidden_units(args.hidden_units),
            dropout_rate=args.dropout,
            l1=args.l1,
            l2=args.l2,
            weight_decay=args.weight_decay,
            learning_rate=args.learning_rate,
        )
    return config


def learning_problems(history: dict[str, list], labels: Any) -> list[str]:
    """Why a finished run did not learn, one sentence each; empty when it did.

    A run did not learn when its last epoch diverged (NaN), when its final training accuracy is no
    better than always answering the training reviews' majority label, or when its final training
    loss is `LOSS_GROWTH` times (or more) the loss of a constant guess of the positive rate, or of
    the run's own lowest epoch (`--learning-rate 1e6` stays finite, and its loss ends ~1e20 times
    a constant guess's).

    Args:
      history: `fit`'s history ("loss", "accuracy", "diverged": one value per epoch).
      labels: float32[reviews] the training labels (0/1).
    """
    if history["diverged"][-1]:
        return ["the training loss became NaN or infinite (the run diverged)"]
    positive_rate = float(labels.sum()) / max(len(labels), 1)
    majority = max(positive_rate, 1.0 - positive_rate)
    accuracy, losses = history["accuracy"][-1], history["loss"]
    problems = []
    if accuracy <= majority:
        problems.append(
            f"its final training accuracy {accuracy:.4f} is no better than always answering the majority label ({majority:.4f})"
        )
    guess = -sum(rate * math.log(rate) for rate in (positive_rate, 1.0 - positive_rate) if rate > 0)
    reference = min([guess, *(loss for loss in losses if math.isfinite(loss))])
    if reference > 0 and losses[-1] >= LOSS_GROWTH * reference:
        problems.append(
            f"its final training loss {losses[-1]:.4g} is {losses[-1] / reference:.3g} times {'a constant guess' if reference == guess else 'its lowest'} ({reference:.4f})"
        )
    return problems


def _cell(value: float) -> str:
    """A number in a 12-character column: 4 decimals, or 4 significant digits when that is too wide."""
    text = f"{value:>12.4f}"
    return text if len(text) <= 12 else f"{value:>12.4g}"


@distributed_command
def _run(args: argparse.Namespace, config: Any) -> int:
    # Deferred: imdb_jax.train.distributed imports JAX (~1.3 s), loaded already here (the run has
    # been joined) but never by --help or an option error.
    from imdb_jax.train import distributed

    with checks.output_folder(
        args.output or default_output("train"), resume=args.resume, overwrite=args.overwrite
    ) as output:
        finished = not (output.work / CHECKPOINT).exists() and (output.work / "model.json").exists()
        # Across processes only process 0's output folder is the run's: every process stops if it is done.
        if args.resume and distributed.process_0s(finished):
            where = output.path if distributed.is_main() else "process 0's output folder"
            raise ImdbJaxError(
                f"the run in {where} is already finished (a saved model, no checkpoint): nothing to resume"
            )
        # Matplotlib (~0.4 s of imports) loads in a process of its own while the model trains, on
        # the other core, and draws the curves there (imdb_jax.drawing). On a thread it held the GIL
        # against this one's Python: a warm run took 0.3 s longer.
        with Drawing() as drawing:
            return _train(args, config, output, drawing)


def _train(args: argparse.Namespace, config: Any, output: checks.Output, drawing: Drawing) -> int:
    checks.enable_compile_cache(args)
    # Deferred: JAX (~1.3 s) loads only once the options are checked and the output folder
    # claimed, so --help and option errors stay fast.
    from imdb_jax.saved.model_folder import save_model
    from imdb_jax.train.fit import evaluate, fit, predict

    started = time.perf_counter()
    data = load_data(args, args.num_words)
    config = dataclasses.replace(config, num_words=data.num_words)  # fewer when the corpus has fewer words
    checks.held_out(args.validation, len(data.train), allow_none=True)
    if args.validation:
        train, validation = data.split_validation(args.validation)
    else:
        train, validation = data.train, None
    loaded = time.perf_counter()

    state, history = fit(
        config,
        train,
        validation,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        first_layer=args.first_layer,
        progress=not args.no_progress,
        restore_best=args.restore_best,
        checkpoint_dir=output.work / CHECKPOINT,
        resume=args.resume,
        log_dir=args.logdir,
        patience=args.patience,
    )
    trained = time.perf_counter()
    drawing.start("history", history=history, stem=output.work / "history")  # drawn while the test set is scored
    test = evaluate(state, data.test, batch_size=args.batch_size, first_layer=args.first_layer)
    evaluated = time.perf_counter()
    sample = min(SAMPLE_PREDICTIONS, len(data.test))
    probabilities = predict(state, data.test.x[:sample], first_layer=args.first_layer)

    metrics = {
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "num_train": len(train),
        "num_validation": 0 if validation is None else len(validation),
    }
    save_model(output.work, state, config, data.vocabulary, history, metrics)
    shutil.rmtree(output.work / CHECKPOINT, ignore_errors=True)  # the model is saved: nothing to resume
    plots = [output.final(path) for path in drawing.result()]
    output.commit()
    seconds = {
        "load_data": loaded - started,
        "fit": trained - loaded,
        "evaluate": evaluated - trained,
        "total": time.perf_counter() - started,
    }
    best = best_epochs(history) if validation is not None else {}
    problems = learning_problems(history, train.y)
    for problem in problems:
        print(f"imdb-jax train: warning: the model did not learn: {problem}", file=sys.stderr, flush=True)
    status = DID_NOT_LEARN if problems else 0

    if args.json:
        print_json(
            {
                **metrics,
                **best,
                "history": history,
                "output": str(output.path),
                "plots": [str(path) for path in plots],
                "config": config.to_dict(),
                "seconds": seconds,
                # Includes compilation, which the first epoch pays.
                "fit_seconds_per_epoch": seconds["fit"] / args.epochs,
                "devices": device_names(),
                "learned": not problems,
                "problems": problems,
                "exit_status": status,
            }
        )
        return status

    held_out = f", first {len(validation)} held out for validation" if validation is not None else ""
    print(
        f"data: {len(train)} training reviews{held_out}; {len(data.test)} test reviews; {data.num_words} words ({data.source})"
    )
    print(
        f"model: hidden {'-'.join(map(str, config.hidden_units))}, {plural(args.epochs, 'epoch')}, batch {args.batch_size}, "
        f"seed {args.seed}; trained in {seconds['fit']:.1f} s ({seconds['fit'] / args.epochs:.2f} s/epoch "
        f"including compilation) on {', '.join(device_names())}"
    )
    columns = ["loss", "accuracy"] + (["val_loss", "val_accuracy"] if validation is not None else [])
    print("epoch  " + "  ".join(f"{name:>12}" for name in columns))
    for epoch in range(args.epochs):
        print(f"{epoch + 1:>5}  " + "  ".join(_cell(history[name][epoch]) for name in columns))
    if best:
        print(
            f"best validation loss {best['best_val_loss']:.4f} at epoch {best['best_val_loss_epoch']} "
            f"(val accuracy {best['val_accuracy_at_best_loss']:.4f}); best validation accuracy "
            f"{best['best_val_accuracy']:.4f} at epoch {best['best_val_accuracy_epoch']}"
        )
    print(f"test loss: {test['loss']:.4f}  test accuracy: {test['accuracy']:.4f}")
    print(f"predictions on the first {sample} test reviews:")
    for probability, label in zip(probabilities, data.test.y[:sample]):
        print(f"  {probability:.4f}  {label_of(probability):<8}  (label: {label_of(label)})")
    print(f"model saved to {output.path}; plots: {', '.join(str(path) for path in plots)}")
    return status
