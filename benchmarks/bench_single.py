"""Single model: seconds per epoch of the seed model (16-16-1, batch 512) over the training reviews.

For each first layer (sparse embedding bag, dense per-batch matmul, and `auto`, the library's
own choice), the epochs of one `fit` are timed inside the library's loop:
  compile      tracing, lowering and XLA compilation inside the first epoch
  epoch_first  the whole first epoch: what a user waits for (Keras' first epoch also traces)
  epoch_steady the following epochs, each a fresh shuffle, median of --repeats
  fit_4_epochs whole `imdb_jax.train.fit(..., epochs=4)` calls after a first fit in the process
               (host work included; compile_inside_s says if one compiled again), with the
               test accuracy of the model it returns
and, in the same run, Keras 3 (TensorFlow and JAX backends) and scikit-learn's
LogisticRegression(C=0.05) on the same CSR vectors, with ratio = imdb_jax time / baseline time.

  python benchmarks/bench_single.py                  # all 25,000 reviews, all three first layers
  python benchmarks/bench_single.py --quick          # 2,048 reviews, 2 repeats
  python benchmarks/bench_single.py --first-layer sparse --no-baselines
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines  # noqa: E402
import common  # noqa: E402

FIT_EPOCHS = 4  # the seed's final model: 4 epochs on all training reviews


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    common.add_common_args(parser)
    parser.add_argument(
        "--first-layer",
        default="sparse,dense,auto",
        help="comma-separated first layers to time: sparse, dense, auto (the library's choice) (default: all three)",
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--fit-repeats", type=int, default=None, help="repeats of the whole 4-epoch fit (default 3; --quick 1; 0 skips it)")
    args = common.resolve_common_args(parser.parse_args(argv))
    args.first_layers = [value.strip() for value in args.first_layer.split(",") if value.strip()]
    if not args.first_layers or any(value not in ("sparse", "dense", "auto") for value in args.first_layers):
        parser.error("--first-layer takes sparse, dense and/or auto, comma-separated")
    if args.fit_repeats is None:
        args.fit_repeats = 1 if args.quick else 3
    return args


def time_single_model(reporter: common.Reporter, args: argparse.Namespace, dataset: common.Dataset, first_layer: str, figures: dict) -> None:
    from imdb_jax.config import ModelConfig
    from imdb_jax.train import evaluate, fit

    config = ModelConfig(num_words=dataset.num_words, hidden_units=(16, 16))
    path = common.first_layer_path(first_layer, dataset.train.x)
    label = f"imdb_jax {first_layer}" + (f"->{path}" if first_layer == "auto" and path else "")
    settings = {"model": "16-16-1", "batch_size": args.batch_size, "first_layer": first_layer, "path": path, **dataset.describe()}
    common.log(f"imdb_jax: 16-16-1, {label} first layer, fit for 1 + {args.repeats} epochs ...")

    # One fit of 1 + repeats epochs, every epoch timed inside the library's loop.
    with common.EpochTimer() as timer:
        fit(config, dataset.train, epochs=1 + args.repeats, batch_size=args.batch_size, first_layer=first_layer, progress=False)
    timing = timer.figures()
    if timing is None:
        reporter.note(label, "per-epoch timing unavailable: imdb_jax.train.fit no longer calls imdb_jax.train.train_epoch")
        return
    compile_s = timing["compile_s"]
    reporter.emit("compile", label, settings, **common.summarize([compile_s]))
    reporter.emit(
        "epoch_first",
        label,
        settings,
        **common.summarize([timing["first_epoch_s"]]),
        compile_s=compile_s,
        first_run_s=timing["first_run_s"],
        vs=common.versus(timing["first_epoch_s"], figures, "first_epoch_s", "keras_tensorflow_epoch_first_s", dataset),
    )
    steady = timing["steady"]
    reporter.emit(
        "epoch_steady",
        label,
        settings,
        **steady,
        compile_s=compile_s,
        recompiled=timing["recompiled"],
        reviews_per_s=dataset.train.x.shape[0] / steady["median_s"],
        vs=common.versus(steady["median_s"], figures, "steady_epoch_s", "keras_tensorflow_epoch_steady_s", dataset),
    )

    # Whole 4-epoch fits (data to the device, state creation, shuffles, metrics to the host), as a
    # user calls them after a first fit in the same process; compile_inside_s says how much of each
    # was compilation (non-zero when a new fit misses the jit cache).
    if args.fit_repeats < 1:
        return
    fit_times, compile_inside, state = [], [], None
    for _ in range(args.fit_repeats):
        wall, compiling, (state, _) = common.compile_seconds_during(
            lambda: fit(config, dataset.train, epochs=FIT_EPOCHS, batch_size=args.batch_size, first_layer=first_layer, progress=False)
        )
        fit_times.append(wall)
        compile_inside.append(round(compiling, 4))
    accuracy = evaluate(state, dataset.test, batch_size=args.batch_size, first_layer=first_layer)["accuracy"]
    fit_summary = common.summarize(fit_times)
    reporter.emit(
        f"fit_{FIT_EPOCHS}_epochs",
        label,
        {**settings, "epochs": FIT_EPOCHS},
        **fit_summary,
        compile_s=sorted(compile_inside)[len(compile_inside) // 2],
        compile_inside_s=compile_inside,
        test_accuracy=accuracy,
        note="whole fit() after a first fit in the process; a Keras fit includes its own tracing",
        vs=common.versus(fit_summary["median_s"], figures, "fit_s"),
    )


def sklearn_baseline(reporter: common.Reporter, args: argparse.Namespace, dataset: common.Dataset) -> dict:
    """Fits LogisticRegression(C=0.05) on the CSR matrix; returns {"sklearn_logreg": {"fit_s"}}."""
    if not args.baselines:
        reporter.note("sklearn_logreg", "baselines disabled (--no-baselines)")
        return {}
    cache = baselines.BaselineCache(args.baselines_cache)
    common.log("baseline: scikit-learn LogisticRegression(C=0.05) on the CSR matrix ...")
    result = cache.get_or_run(
        f"sklearn:logreg:{common.data_signature(dataset)}",
        lambda: baselines.sklearn_logreg(dataset.train, dataset.test, repeats=min(args.repeats, 3)),
    )
    if "skipped" in result:
        reporter.note("sklearn_logreg", result["skipped"], baseline="sklearn_logreg")
        return {}
    summary = common.summarize(result["fit_s"])
    config = {"model": "LogisticRegression(C=0.05)", "input": "CSR", **dataset.describe()}
    fields = {key: result[key] for key in ("test_accuracy", "n_iter", "converged", "version")}
    reporter.emit("fit", "sklearn_logreg", config, **summary, baseline="sklearn_logreg", **fields)
    # A different model: compared only with imdb_jax's whole 4-epoch fit, accuracies side by side.
    return {"sklearn_logreg": {"fit_s": summary["median_s"], "test_accuracy": result["test_accuracy"]}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reporter = common.Reporter("single", args)
    dataset = common.dataset_from_args(args)
    figures = common.keras_seed_baselines(reporter, args, dataset, epochs=FIT_EPOCHS)
    figures.update(sklearn_baseline(reporter, args, dataset))
    for first_layer in args.first_layers:
        time_single_model(reporter, args, dataset, first_layer, figures)
    if not args.no_table:
        reporter.table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
