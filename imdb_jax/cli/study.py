"""`imdb-jax study`: train the seed's experiments (or your own variants) at once, report, retrain the best."""

from __future__ import annotations

import argparse

from imdb_jax.atomic import write_json
from imdb_jax.cli import _checks as checks
from imdb_jax.cli._common import (
    add_data_options,
    check_data_options,
    default_output,
    load_data,
    plural,
    positive,
    print_json,
)
from imdb_jax.cli._distributed import add_distributed_options, distributed_command
from imdb_jax.errors import ImdbJaxError
from imdb_jax.specs import load_specs
from imdb_jax.study import ALL, DEFAULT_SEEDS, EXPERIMENTS, RUNS, run_study, select_experiments
from imdb_jax.study.runner import STUDY_FILE


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    names = ", ".join([*EXPERIMENTS, ALL])
    parser = subparsers.add_parser(
        "study",
        help="train the seed's study (units, layers, epochs, regularization, dropout) as vmapped runs",
        description=(__doc__ or "").splitlines()[0].split(": ", 1)[1],
    )
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT", help=f"one or more of: {names}")
    parser.add_argument(
        "--spec", metavar="FILE", help="a JSON or TOML list of variant specs to study (experiment 'custom')"
    )
    parser.add_argument("--epochs", type=int, default=20, help="epochs per variant (default: 20)")
    parser.add_argument("--batch-size", type=int, default=512, help="reviews per update (default: 512)")
    parser.add_argument(
        "--validation",
        type=int,
        default=10000,
        metavar="N",
        help="hold out the first N training reviews (default: 10000)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=DEFAULT_SEEDS,
        metavar="N",
        help=f"train every variant with N seeds (initial weights and dropout) in the same run; the report compares means against the spread (default: {DEFAULT_SEEDS})",
    )
    parser.add_argument(
        "--shuffle-seed", type=int, default=0, help="seeds the batch order every variant shares (default: 0)"
    )
    parser.add_argument(
        "--first-layer", choices=("auto", "sparse", "dense"), default="auto", help="first layer kind (default: auto)"
    )
    parser.add_argument(
        "--runs",
        choices=RUNS,
        default="merged",
        help="one fit_variants run for everything, or one per experiment (default: merged)",
    )
    parser.add_argument(
        "--no-retrain", action="store_true", help="do not retrain the best variant on all training reviews"
    )
    parser.add_argument("--output", help="output folder (default: runs/study-<timestamp>)")
    parser.add_argument(
        "--logdir",
        metavar="DIR",
        help="also write TensorBoard logs: one run folder in DIR per variant and seed, with its epoch curves and settings (HParams)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the killed study in --output from its last finished epoch (same command otherwise); the result is the "
        "uninterrupted one (a checkpoint written under another JAX or jaxlib version, backend or device count is refused)",
    )
    checks.add_resume_anyway_option(parser)
    parser.add_argument(
        "--patience",
        type=int,
        metavar="N",
        help="early stopping (Keras' rule): stop each variant and seed after N epochs without a lower validation loss",
    )
    checks.add_overwrite_option(parser)
    add_data_options(parser)
    add_distributed_options(parser)
    checks.add_compile_cache_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON summary line instead of the text summary")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Every value is checked before JAX is imported (joining a multi-process run imports it),
    # and the output folder claimed before the data is loaded or anything compiles.
    return _run(args, _checked_variants(args))


def _checked_variants(args: argparse.Namespace) -> list:
    """The experiments and specs to study, once every option's value has been checked."""
    positive("--epochs", args.epochs)
    checks.batch_size(args.batch_size)
    positive("--validation", args.validation)
    positive("--seeds", args.seeds)
    if args.patience is not None and args.patience < 0:
        raise ImdbJaxError(
            "--patience needs a number >= 0: epochs without a lower validation loss before a variant stops"
        )
    check_data_options(args)
    args.resume = checks.resume_mode(args, "study")  # False, True or "force" (--resume-anyway)
    if not args.experiments and not args.spec:
        raise ImdbJaxError(
            "name at least one experiment (units, layers, epochs, regularization, dropout or all) or pass --spec FILE"
        )
    chosen = list(args.experiments) + (load_specs(args.spec) if args.spec else [])
    select_experiments(chosen)
    return chosen


@distributed_command
def _run(args: argparse.Namespace, chosen: list) -> int:
    with checks.output_folder(
        args.output or default_output("study"), resume=args.resume, overwrite=args.overwrite
    ) as output:
        return _study(args, chosen, output)


def _study(args: argparse.Namespace, chosen: list, output: checks.Output) -> int:
    checks.enable_compile_cache(args)
    data = load_data(args, args.num_words)
    checks.held_out(args.validation, len(data.train), allow_none=False)
    result = run_study(
        chosen,
        data,
        output_dir=output.work,
        validation=args.validation,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seeds=args.seeds,
        shuffle_seed=args.shuffle_seed,
        first_layer=args.first_layer,
        runs=args.runs,
        progress=not args.no_progress,
        retrain=not args.no_retrain,
        resume=args.resume,
        log_dir=args.logdir,
        patience=args.patience,
    )
    summary = result.summary
    if output.replacing:
        _name_final_paths(summary, output)
    output.commit()
    best = next((variant for variant in summary["variants"] if variant["name"] == summary["best_variant"]), None)
    retrain = summary["retrain"]
    if args.json:
        print_json(
            {
                "output": str(output.path),
                "experiments": {
                    name: [summary["variants"][index]["name"] for index in indices]
                    for name, indices in summary["experiments"].items()
                },
                "variants": len(summary["variants"]),
                "epochs": args.epochs,
                "seeds": args.seeds,
                "best": None
                if best is None
                else {
                    key: best[key]
                    for key in ("name", "best_epoch", "best_val_loss", "best_val_loss_sd", "val_accuracy_at_best")
                },
                "retrain": None
                if retrain is None
                else {
                    key: retrain[key]
                    for key in ("variant", "epochs", "test_loss", "test_accuracy", "model_dir", "wall_s")
                },
                "runs": [
                    {
                        key: record[key]
                        for key in ("label", "trained", "blocks", "first_layer", "wall_s", "compile_s", "train_s")
                    }
                    for record in summary["runs"]
                ],
                "training_s": summary["training_s"],
                "wall_s": summary["wall_s"],
                "devices": summary["devices"],
            }
        )
        return 0

    print(
        f"{plural(len(summary['variants']), 'variant')} x {plural(args.seeds, 'seed')}, {plural(args.epochs, 'epoch')}; {summary['settings']['train_reviews']} "
        f"training reviews, first {summary['settings']['validation_reviews']} held out; figures are means ± sd over seeds"
    )
    print(f"{'variant':<24} {'best epoch':>10} {'min val loss':>17} {'val acc':>17}  experiments")
    for variant in summary["variants"]:
        stats = variant["stats"]
        loss = "diverged" if variant["best_val_loss"] is None else _pm(stats["best_val_loss"])
        accuracy = "" if variant["val_accuracy_at_best"] is None else _pm(stats["val_accuracy_at_best"])
        print(
            f"{variant['name']:<24} {variant['best_epoch'] or '-':>10} {loss:>17} {accuracy:>17}  {', '.join(variant['experiments'])}"
        )
    for record in summary["runs"]:
        print(
            f"run {record['label']}: {record['wall_s']:.1f} s ({record['compile_s']:.1f} s compiling), first layer {record['first_layer']}"
        )
    if retrain is not None:
        print(
            f"retrained {retrain['variant']} for {plural(retrain['epochs'], 'epoch')} on {retrain['train_reviews']} reviews: test loss {retrain['test_loss']:.4f}, test accuracy {retrain['test_accuracy']:.4f}"
        )
    print(
        f"wall time {summary['wall_s']:.1f} s; wrote {output.path / 'study.json'}, {output.path / 'report.md'} and {plural(len(summary['figures']), 'figure')}"
    )
    return 0


def _name_final_paths(summary: dict, output: checks.Output) -> None:
    """study.json as written in the staging folder names the retrained model's folder there:
    name it where it will be once the staging folder takes the output folder's place."""
    retrain = summary.get("retrain")
    if retrain and retrain.get("model_dir"):
        retrain["model_dir"] = str(output.final(retrain["model_dir"]))
        write_json(output.work / STUDY_FILE, summary)


def _pm(stats: dict) -> str:
    """ "0.2800 ± 0.0010" (mean ± sd over seeds), or the mean alone with one seed."""
    return f"{stats['mean']:.4f}" if stats["sd"] is None else f"{stats['mean']:.4f} ± {stats['sd']:.4f}"
