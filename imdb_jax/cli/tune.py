"""`imdb-jax tune`: search n-gram features and models on held-out reviews, retrain the choice on all, test once."""

from __future__ import annotations

import argparse
import dataclasses

from imdb_jax.cli import _checks as checks
from imdb_jax.cli import _interrupt
from imdb_jax.cli._common import add_data_options, check_data_options, default_output, plural, positive, print_json

BUDGET_HELP = {
    "quick": "2 feature sets, about 1.5 minutes on 2 CPU cores",
    "default": "4 feature sets, under 5 minutes on 2 CPU cores",
    "thorough": "6 feature sets and a wider grid, about 3 times longer",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="the most accurate model in a few minutes: n-gram features and models searched on held-out reviews",
        description=(__doc__ or "").splitlines()[0].split(": ", 1)[1].rstrip(".")
        + "; the search space and why: `pydoc imdb_jax.tune`",
    )
    parser.add_argument(
        "--output",
        help="model folder to write, with search.md, search.png and search.json (default: runs/tune-<timestamp>)",
    )
    parser.add_argument(
        "--budget",
        choices=tuple(BUDGET_HELP),
        default="default",
        help="search size: "
        + "; ".join(f"{name}: {text}" for name, text in BUDGET_HELP.items())
        + " (default: default)",
    )
    parser.add_argument(
        "--validation",
        type=int,
        default=10000,
        metavar="N",
        help="choose on the first N training reviews, held out of features and training (default: 10000)",
    )
    checks.add_overwrite_option(parser)
    add_data_options(parser, num_words=False)
    checks.add_compile_cache_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the text summary")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    positive("--validation", args.validation)
    check_data_options(args)
    # An earlier run in the folder is refused, or with --overwrite replaced whole once the
    # search is done (`checks.output_folder`): said now, not after minutes of searching.
    with checks.output_folder(args.output or default_output("tune"), overwrite=args.overwrite) as output:
        checks.enable_compile_cache(args)
        _interrupt.load_libraries("jax", "jax.numpy", "scipy.sparse")  # Ctrl-C held meanwhile
        # Deferred: imdb_jax.tune imports SciPy (~0.2 s), loaded once the options are checked and the
        # output folder claimed, so --help and option errors stay fast.
        from imdb_jax.tune.runner import tune
        from imdb_jax.tune.search import resolve_budget

        space = dataclasses.replace(resolve_budget(args.budget), validation=args.validation)
        result = tune(
            args.data_dir, args.cache_dir, budget=space, progress=not args.no_progress, output_dir=output.work
        )
    folder = output.path
    summary = result.summary
    members = [{key: member[key] for key in ("name", "weight", "epochs")} for member in summary["members"]]
    if args.json:
        print_json(
            {
                "output": str(folder),
                "budget": args.budget,
                "test_accuracy": result.test_accuracy,
                "test_loss": result.test_loss,
                "validation_accuracy": result.validation_accuracy,
                "ensemble": result.choice.ensemble,
                "members": members,
                "variants": len(result.candidates),
                "seconds": summary["seconds"],
                "features_cached": summary["features_cached"],
            }
        )
        return 0
    kind = f"an ensemble of {len(members)}" if result.choice.ensemble else "a single model"
    print(
        f"{plural(len(result.candidates), 'variant')} searched; chose {kind} (validation accuracy {result.validation_accuracy:.4f}):"
    )
    for member in members:
        print(
            f"  {member['weight']:.3f}  {member['name']}  ({plural(member['epochs'], 'epoch')} on all training reviews)"
        )
    print(
        f"test accuracy: {result.test_accuracy:.4f}  test loss: {result.test_loss:.4f}  (scored once, after the choice)"
    )
    seconds = summary["seconds"]
    stages = ", ".join(f"{stage} {value:.1f} s" for stage, value in seconds.items() if stage != "total")
    cached = "cached" if summary["features_cached"] else "built"
    print(f"time: {seconds['total']:.1f} s ({stages}; features {cached})")
    print(f"wrote {folder}: the model, search.md, search.png, search.json")
    return 0
