"""Study: wall time of the seed's whole study end to end, compilation included.

The seed's study is 13 models × 20 epochs on 15,000 training reviews with the first 10,000 held
out for validation (widths 4/16/512 with one hidden layer; 1-4 hidden layers of 16; 16-16;
16-16 without penalty / with L1 0.001 / with L2 0.001; 16-16 without / with dropout 0.5), then
the final 16-16 model for 4 epochs on all training reviews, scored on the test reviews.

Each repeat is a fresh process (so every repeat compiles, as a user's run does):
  end_to_end   the whole process: Python start, imports, data (from the cache), the 13 models
               together (`imdb_jax.study.run_study` when it exists, else `fit_variants`), the
               final model and its test accuracy
  study        the 13 models only (inside the process), with the compile time inside it
and, when present, `imdb-jax study all` timed the same way. Keras running the study one model
after another is measured with --keras-study (about 8 minutes); otherwise the 486 s from
shared/DATA.md is shown as a cited reference, not measured in this run.

  python benchmarks/bench_study.py                     # up to 3 fresh-process repeats (--budget)
  python benchmarks/bench_study.py --keras-study       # and Keras' sequential study (slow)
  python benchmarks/bench_study.py --quick             # 2,048 reviews, 2 epochs, 1 repeat
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines  # noqa: E402
import common  # noqa: E402

RESULT_MARK = "STUDY_WORKER_RESULT "
EPOCHS, HOLDOUT, FINAL_EPOCHS = 20, 10000, 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    common.add_common_args(parser)
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs per study model (default {EPOCHS}; --quick 2)")
    parser.add_argument("--keras-study", action="store_true", help="also run the study with Keras (TensorFlow backend), one model after another (slow)")
    parser.add_argument("--models", type=int, default=13, help="only the first MODELS of the 13 study models (smoke tests; default 13)")
    parser.add_argument(
        "--via",
        choices=("auto", "run_study", "fit_variants"),
        default="auto",
        help="the library's run_study (auto: when it exists) or fit_variants + fit",
    )
    parser.add_argument("--no-cli", action="store_true", help="do not time the `imdb-jax study all` command")
    parser.add_argument("--cli-repeats", type=int, default=1, help="runs of `imdb-jax study all` (default 1: the fresh-process repeats above already time the same study)")
    parser.add_argument(
        "--budget",
        type=float,
        default=300.0,
        help="seconds: start another repeat only if the repeats so far predict it ends within this (default 300; 0: always --repeats)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = common.resolve_common_args(parser.parse_args(argv), default_repeats=3, quick_repeats=1)
    if args.epochs is None:
        args.epochs = 2 if args.quick else EPOCHS
    return args


def holdout_for(dataset: common.Dataset) -> int:
    """10,000 on the full data; the same 40% share on a slice."""
    rows = dataset.train.x.shape[0]
    return HOLDOUT if rows == 25000 else max(1, int(rows * HOLDOUT / 25000))


def study_specs():
    """The seed's 13 study models as `VariantSpec`s; each its own seed, as each Keras model starts
    from its own random weights."""
    from imdb_jax.variants import VariantSpec

    settings = [dict(hidden_units=(width,)) for width in (4, 16, 512)]
    settings += [dict(hidden_units=(16,) * depth) for depth in (1, 2, 3, 4)]
    settings += [dict(), dict(), dict(l1=0.001), dict(l2=0.001), dict(), dict(dropout_rate=0.5)]
    return [VariantSpec(**{"hidden_units": (16, 16), **values}, seed=seed) for seed, values in enumerate(settings)]


def study_library() -> object | None:
    """`imdb_jax.study.run_study` when the library has it (with the signature used here)."""
    try:
        from imdb_jax.study import run_study
    except ImportError:
        return None
    return run_study if "output_dir" in inspect.signature(run_study).parameters else None


def run_imdb_study(dataset: common.Dataset, epochs: int, models: int = 13, via: str = "auto") -> dict:
    """The study in this process.

    With `run_study` ("imdb-jax study all" in Python): the seed's experiments, each distinct
    variant trained once in one `fit_variants` run, report and figures written, the best variant
    retrained on all training reviews. Without it (or via="fit_variants"): the 13 models with
    `fit_variants`, then the final 16-16 model for 4 epochs with `fit`.
    """
    run_study = study_library() if via in ("auto", "run_study") else None
    if via == "run_study" and run_study is None:
        raise SystemExit("--via run_study: imdb_jax.study.run_study is not available")
    holdout = holdout_for(dataset)
    common.CompileClock.install()
    compile_before = common.CompileClock.total_s
    if run_study is not None:
        selection = "all" if models == 13 else study_specs()[:models]
        with tempfile.TemporaryDirectory(prefix="bench-study-") as output:
            start = time.perf_counter()
            result = run_study(selection, dataset, output_dir=output, validation=holdout, epochs=epochs, progress=False)
            wall = time.perf_counter() - start
        summary = result.summary
        retrain = summary.get("retrain") or {}
        runs = summary.get("runs", [])
        study_s = summary.get("training_s", wall)
        return {
            "via": "imdb_jax.study.run_study",
            "models": len(summary.get("variants", [])),
            "groups": [group for run in runs for group in run.get("groups", [])],
            "first_layer": runs[0].get("first_layer") if runs else None,
            "study_s": study_s,
            "study_compile_s": sum(run.get("compile_s", 0.0) for run in runs),
            "final_s": retrain.get("wall_s"),
            "test_accuracy": retrain.get("test_accuracy"),
            "best_epochs": [variant.get("best_epoch") for variant in summary.get("variants", [])],
            "report_s": wall - study_s - (retrain.get("wall_s") or 0.0),
            "compile_s": common.CompileClock.total_s - compile_before,
        }

    from imdb_jax.config import ModelConfig
    from imdb_jax.train import evaluate, fit
    from imdb_jax.variants import fit_variants

    train, validation = dataset.split_validation(holdout)
    specs = study_specs()[:models]
    start = time.perf_counter()
    result = fit_variants(specs, train, validation, epochs=epochs, progress=False)
    study_s = time.perf_counter() - start
    study_compile_s = common.CompileClock.total_s - compile_before
    start = time.perf_counter()
    state, _ = fit(ModelConfig(num_words=dataset.num_words), dataset.train, epochs=FINAL_EPOCHS, progress=False)
    accuracy = evaluate(state, dataset.test)["accuracy"]
    final_s = time.perf_counter() - start
    return {
        "via": "fit_variants + fit",
        "models": len(specs),
        "groups": [{"hidden_units": list(group.hidden_units), "variants": len(group.members)} for group in result.groups],
        "first_layer": common.variants_path(result),
        "study_s": study_s,
        "study_compile_s": study_compile_s,
        "final_s": final_s,
        "test_accuracy": accuracy,
        "best_epochs": [result.best_epoch(index) for index in range(len(specs))],
        "report_s": 0.0,
        "compile_s": common.CompileClock.total_s - compile_before,
    }


def worker(args: argparse.Namespace) -> int:
    """One cold study in this fresh process; prints its result as one marked JSON line."""
    started = time.perf_counter()
    importlib.import_module("imdb_jax.variants")  # jax, flax, optax: timed as the imports
    import_s = time.perf_counter() - started
    start = time.perf_counter()
    dataset = common.load_dataset(10000, synthetic=args.synthetic, rows=args.rows)
    data_s = time.perf_counter() - start
    result = run_imdb_study(dataset, args.epochs, args.models, args.via)
    result.update(import_s=import_s, data_s=data_s, in_process_s=time.perf_counter() - started, peak_rss_bytes=common.peak_rss_bytes())
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def _run_child(command: list[str], timeout: float = 3600) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return time.perf_counter() - start, done


def within_budget(walls: list[float], args: argparse.Namespace) -> bool:
    """Whether one more repeat, as long as the mean so far, still ends within --budget."""
    if not walls or not args.budget:
        return True
    return sum(walls) + sum(walls) / len(walls) <= args.budget


def cold_repeats(args: argparse.Namespace) -> tuple[list[float], list[dict]]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--epochs", str(args.epochs), "--models", str(args.models), "--via", args.via]
    command += ["--synthetic"] if args.synthetic else []
    command += ["--rows", str(args.rows)] if args.rows else []
    walls, results = [], []
    for repeat in range(args.repeats):
        if not within_budget(walls, args):
            common.log(f"imdb_jax study: stopping after {repeat} repeats (--budget {args.budget:.0f} s)")
            break
        common.log(f"imdb_jax study: fresh process {repeat + 1}/{args.repeats} ...")
        wall, done = _run_child(command)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
        if done.returncode != 0 or not lines:
            raise SystemExit(f"the study worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        walls.append(wall)
        results.append(json.loads(lines[-1][len(RESULT_MARK):]))
    return walls, results


def cli_study(args: argparse.Namespace) -> tuple[list[str] | None, str]:
    """The `imdb-jax study all` command line, or None and why it is not timed."""
    if args.no_cli:
        return None, "--no-cli"
    if args.synthetic or args.rows or args.epochs != EPOCHS or args.models != 13:
        return None, "the CLI runs the full study on the real data only (not with --quick/--synthetic/--rows/--epochs/--models)"
    from imdb_jax.cli import COMMANDS

    if "study" not in COMMANDS or study_library() is None:
        return None, "the `imdb-jax study` command does not exist yet"
    executable = shutil.which("imdb-jax") or None
    command = [executable] if executable else [sys.executable, "-m", "imdb_jax"]
    return command + ["study", "all", "--no-progress"], ""


def keras_study(reporter, args, dataset) -> dict:
    if not args.baselines:
        return {}
    if not args.keras_study:
        return {}
    holdout = holdout_for(dataset)
    models = baselines.seed_study_models(epochs=args.epochs, holdout=holdout, final_epochs=FINAL_EPOCHS)
    models = models[: args.models] + models[-1:]
    common.log(f"baseline: Keras (tensorflow backend), the study's {len(models)} fits one after another ...")
    cache = baselines.BaselineCache(args.baselines_cache)
    key = f"keras:tensorflow:study:{args.models}models:{args.epochs}ep:{common.data_signature(dataset)}"
    result = cache.get_or_run(key, lambda: baselines.run_keras("tensorflow", models, dataset.train, dataset.test, timeout=7200))
    if "skipped" in result:
        reporter.note("keras_tensorflow study", result["skipped"], baseline="keras_tensorflow")
        return {}
    fits = sum(model["fit_s"] + model["build_s"] for model in result["models"])
    study_s = fits + result["densify_s"]
    final = result["models"][-1]
    config = {"models": len(models), "epochs": args.epochs, "holdout": holdout, "final_epochs": FINAL_EPOCHS, "input": result["dense_input"], **dataset.describe()}
    reporter.emit(
        "study",
        "keras_tensorflow study",
        config,
        **common.summarize([study_s]),
        whole_process_s=result["total_s"],
        per_model_fit_s={model["name"]: round(model["fit_s"], 3) for model in result["models"]},
        test_accuracy=final.get("test_accuracy"),
        peak_rss_mb=common.megabytes(result["peak_rss_bytes"]),
        baseline="keras_tensorflow",
        baseline_versions=result["versions"],
        note="densify + build + fit of every model (TensorFlow import excluded)",
    )
    return {"keras_tensorflow": {"study_s": study_s}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    reporter = common.Reporter("study", args)
    dataset = common.dataset_from_args(args)
    if not 1 <= args.models <= 13:
        raise SystemExit("--models must be between 1 and 13")
    config = {
        "models": args.models,
        "epochs": args.epochs,
        "holdout": holdout_for(dataset),
        "final_epochs": FINAL_EPOCHS,
        **dataset.describe(),
    }
    figures = keras_study(reporter, args, dataset)
    if args.baselines and not args.keras_study:
        reporter.note(
            "keras_tensorflow study",
            "not run (add --keras-study, about 8 minutes); the reference is the cited 486 s of shared/DATA.md "
            "(full study, Keras TF backend, not measured in this run), compared only on the full protocol",
        )
    full_protocol = common.cited_applies(dataset) and args.epochs == EPOCHS and args.models == 13

    walls, results = cold_repeats(args)
    wall = common.summarize(walls)
    study = common.summarize([result["study_s"] for result in results])
    last = results[-1]
    config.update(via=last["via"], variants_trained=last["models"], groups=last["groups"], first_layer=last["first_layer"])
    details = {
        key: [None if result[key] is None else round(result[key], 3) for result in results]
        for key in ("import_s", "data_s", "study_s", "study_compile_s", "final_s", "report_s", "in_process_s")
    }
    compile_s = common.summarize([result["compile_s"] for result in results])["median_s"]
    reporter.emit(
        "end_to_end",
        "imdb_jax study (fresh process)",
        config,
        **wall,
        compile_s=compile_s,
        breakdown_s=details,
        test_accuracy=last["test_accuracy"],
        best_epochs=last["best_epochs"],
        peak_rss_mb=common.megabytes(max(result["peak_rss_bytes"] for result in results)),
        vs=common.versus(wall["median_s"], figures, "study_s", "keras_tensorflow_study_s" if full_protocol else None, dataset),
    )
    reporter.emit(
        "study",
        f"imdb_jax study training ({last['models']} variants together)",
        config,
        **study,
        compile_s=common.summarize([result["study_compile_s"] for result in results])["median_s"],
        vs=common.versus(study["median_s"], figures, "study_s", "keras_tensorflow_study_s" if full_protocol else None, dataset),
    )

    command, why_not = cli_study(args)
    if command is None:
        reporter.note("imdb-jax study all", f"not timed: {why_not}")
    else:
        cli_walls = []
        for repeat in range(args.cli_repeats):
            if not within_budget(cli_walls, args):
                break
            common.log(f"imdb-jax study all: run {repeat + 1}/{args.cli_repeats} ...")
            with tempfile.TemporaryDirectory(prefix="bench-study-cli-") as output:
                seconds, done = _run_child(command + ["--output", output])
            if done.returncode != 0:
                reporter.note("imdb-jax study all", f"failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
                break
            cli_walls.append(seconds)
        if cli_walls:
            summary = common.summarize(cli_walls)
            reporter.emit(
                "end_to_end",
                "imdb-jax study all",
                {**config, "command": " ".join(command)},
                **summary,
                vs=common.versus(summary["median_s"], figures, "study_s", "keras_tensorflow_study_s", dataset),
            )
    if not args.no_table:
        reporter.table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
