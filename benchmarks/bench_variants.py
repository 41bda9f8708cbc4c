"""Variants: seconds per epoch when K variants of 16-16 (different seeds) train together.

For K = 1, 4, 16, 64, 256 (`--variants`), the variants are planned and stacked the way
`imdb_jax.variants.fit_variants` does (`plan_groups`, `group_carry`) and their compiled epoch is
timed apart from its compilation:
  compile            trace + lower + XLA compile of one epoch of all K
  epoch_steady       one epoch of all K together (median of --repeats, each a fresh shuffle)
  variant_epoch      the same divided by K: the cost of one variant-epoch
  peak memory        the process's peak RSS while that K was built, compiled and run (the peak
                     mark is reset before each K, so peaks do not accumulate)
then a least-squares line epoch_s = fixed_s + per_variant_s * K (how the cost grows with K), and
a mixed-width study (one hidden layer of 4, 16 and 512 units) grouped as fit_variants would.
Each figure comes with its ratio to one Keras 16-16 epoch measured in the same run.

  python benchmarks/bench_variants.py                      # all 25,000 reviews
  python benchmarks/bench_variants.py --variants 1,64 --repeats 3
  python benchmarks/bench_variants.py --quick              # 2,048 reviews, K = 1, 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines  # noqa: E402
import common  # noqa: E402

DEFAULT_VARIANTS = "1,4,16,64,256"
QUICK_VARIANTS = "1,4"
MIXED_WIDTHS = (4, 16, 512)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    common.add_common_args(parser)
    parser.add_argument("--variants", default=None, help=f"comma-separated K values (default {DEFAULT_VARIANTS}; --quick {QUICK_VARIANTS})")
    parser.add_argument("--first-layer", choices=("auto", "sparse", "dense"), default="auto", help="first layer path (default: auto, as fit_variants)")
    parser.add_argument("--grouping", choices=("auto", "shape", "pad"), default="auto", help="grouping of the mixed-width study (default: auto)")
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed-width (4/16/512) study")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds of steady epochs to aim for per K: fewer repeats (at least 2) for a K whose epoch "
        "the earlier K predict to be slow (default 60; 0 always runs --repeats)",
    )
    args = common.resolve_common_args(parser.parse_args(argv), default_repeats=3)
    text = args.variants or (QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS)
    try:
        args.variants = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        parser.error(f"--variants must be comma-separated integers, got {text!r}")
    if not args.variants or min(args.variants) < 1:
        parser.error("--variants needs at least one K >= 1")
    return args


def repeats_for(count: int, points: list[tuple[int, float]], args: argparse.Namespace) -> int:
    """--repeats, or fewer (never under 2) when the line through the earlier K predicts this K's
    steady epochs would take more than --budget seconds."""
    if not args.budget or not points:
        return args.repeats
    line = growth(points) if len(points) >= 2 else {"fixed_s": 0.0, "per_variant_s": points[0][1] / points[0][0]}
    predicted = max(line["fixed_s"] + line["per_variant_s"] * count, 1e-3)
    return max(min(2, args.repeats), min(args.repeats, int(args.budget // predicted)))


def time_variants(specs, dataset: common.Dataset, args: argparse.Namespace, grouping: str, repeats: int | None = None) -> dict | None:
    """Trains `specs` together with `fit_variants` for 1 + repeats epochs, each epoch timed.

    Returns:
      `EpochTimer.figures()` plus "groups" (padded shape and size of each group), "path"
      (sparse/dense) and memory: "rss_before_mb", "peak_rss_mb" (the peak since this call began);
      None when the epochs could not be timed.
    """
    from imdb_jax.variants import fit_variants

    rss_before = common.current_rss_bytes()
    resettable = common.reset_peak_rss()
    with common.EpochTimer() as timer:
        result = fit_variants(
            specs,
            dataset.train,
            epochs=1 + (args.repeats if repeats is None else repeats),
            batch_size=args.batch_size,
            first_layer=args.first_layer,
            grouping=grouping,
            progress=False,
        )
    timing = timer.figures()
    if timing is None:
        return None
    timing.update(
        groups=[{"hidden_units": list(group.hidden_units), "variants": len(group.members)} for group in result.groups],
        path=common.variants_path(result),
        rss_before_mb=common.megabytes(rss_before),
        peak_rss_mb=common.megabytes(common.peak_rss_bytes()),
        peak_rss_scope="since this setting began" if resettable else "process lifetime (peak mark not resettable here)",
    )
    del result
    return timing


def growth(points: list[tuple[int, float]]) -> dict | None:
    """Least-squares epoch_s = fixed_s + per_variant_s * K over (K, epoch_s) points."""
    import numpy as np

    if len(points) < 2:
        return None
    counts = np.array([count for count, _ in points], float)
    seconds = np.array([value for _, value in points], float)
    per_variant, fixed = np.polyfit(counts, seconds, 1)
    return {"fixed_s": float(fixed), "per_variant_s": float(per_variant), "points": [[int(k), float(s)] for k, s in points]}


def emit_timing(reporter, name: str, settings: dict, timing: dict, count: int, figures: dict, dataset, all_figures: dict | None = None) -> None:
    """Emits compile, first epoch, steady epoch (of all `count` together, compared with
    `all_figures`) and per-variant epoch (compared with one Keras 16-16 epoch, `figures`, or the
    cited one when `dataset` is given and Keras TF did not run)."""
    compile_s = timing["compile_s"]
    memory = {key: timing[key] for key in ("rss_before_mb", "peak_rss_mb", "peak_rss_scope")}
    settings = {**settings, "path": timing["path"], "groups": timing["groups"]}
    steady = timing["steady"]
    reporter.emit("compile", name, settings, **common.summarize([compile_s]))
    reporter.emit("epoch_first", name, settings, **common.summarize([timing["first_epoch_s"]]), compile_s=compile_s, first_run_s=timing["first_run_s"])
    reporter.emit(
        "epoch_steady",
        name,
        settings,
        **steady,
        compile_s=compile_s,
        recompiled=timing["recompiled"],
        **memory,
        vs=common.versus(steady["median_s"], all_figures or {}, "steady_epoch_s"),
    )
    per_variant = {key: value / count for key, value in steady.items() if key.endswith("_s") and key != "samples_s"}
    per_variant.update(repeats=steady["repeats"], samples_s=[value / count for value in steady["samples_s"]])
    reporter.emit(
        "variant_epoch",
        name,
        settings,
        **per_variant,
        compile_s=compile_s,
        **memory,
        vs=common.versus(per_variant["median_s"], figures, "steady_epoch_s", "keras_tensorflow_epoch_steady_s" if dataset else None, dataset),
    )


def keras_mixed_baselines(reporter, args, dataset, epochs: int = 3) -> dict:
    """Keras fitting the mixed widths one after another (the seed's way): per backend, the sum of
    the models' steady epochs, {"keras_<backend>": {"steady_epoch_s": sum}}."""
    figures = {}
    if not args.baselines:
        return figures
    cache = baselines.BaselineCache(args.baselines_cache)
    models = [baselines.KerasModel((width,), epochs=epochs, name=str(width)) for width in MIXED_WIDTHS]
    for backend in args.keras_backends:
        label = f"keras_{backend}"
        key = f"keras:{backend}:mixed{MIXED_WIDTHS}:{epochs}ep:{common.data_signature(dataset)}"
        common.log(f"baseline: Keras ({backend} backend), widths {MIXED_WIDTHS} one after another, {epochs} epochs each" + (": reused" if key in cache else " ..."))
        result = cache.get_or_run(key, lambda: baselines.run_keras(backend, models, dataset.train))
        if "skipped" in result:
            reporter.note(f"{label} mixed", result["skipped"], baseline=label)
            continue
        per_model = [baselines.epoch_figures(model)["steady_epoch_s"] for model in result["models"]]
        total = sum(per_model)
        config = {"widths": list(MIXED_WIDTHS), "epochs": epochs, "backend": backend, "input": result["dense_input"], **dataset.describe()}
        reporter.emit(
            "epoch_steady",
            f"{label} mixed " + "/".join(str(width) for width in MIXED_WIDTHS),
            config,
            **common.summarize([total]),
            per_model_steady_epoch_s=dict(zip([str(width) for width in MIXED_WIDTHS], per_model)),
            baseline=label,
            baseline_versions=result["versions"],
            peak_rss_mb=common.megabytes(result["peak_rss_bytes"]),
            note="sum of the three models' steady epochs, fitted one after another",
        )
        figures[label] = {"steady_epoch_s": total}
    return figures


def main(argv: list[str] | None = None) -> int:
    from imdb_jax.variants import VariantSpec

    args = parse_args(argv)
    reporter = common.Reporter("variants", args)
    dataset = common.dataset_from_args(args)
    figures = common.keras_seed_baselines(reporter, args, dataset)
    base = {"batch_size": args.batch_size, "first_layer": args.first_layer, **dataset.describe()}

    points = []
    for count in args.variants:
        common.log(f"imdb_jax: {count} variants of 16-16 together ...")
        specs = [VariantSpec(hidden_units=(16, 16), seed=seed) for seed in range(count)]
        timing = time_variants(specs, dataset, args, "auto", repeats_for(count, points, args))
        if timing is None:
            reporter.note(f"imdb_jax {count}x 16-16", "per-epoch timing unavailable: fit_variants no longer calls imdb_jax.train.train_epoch")
            continue
        emit_timing(reporter, f"imdb_jax {count}x 16-16", {**base, "model": "16-16-1", "variants": count}, timing, count, figures, dataset)
        points.append((count, timing["steady"]["median_s"]))
    line = growth(points)
    if line is not None:
        reporter.emit("growth", "imdb_jax 16-16 epoch_s vs K", {**base, "model": "16-16-1", "variants": args.variants}, **line)
        common.log(f"growth: epoch_s = {line['fixed_s']:.3f} + {line['per_variant_s']:.4f} * K")

    if not args.no_mixed:
        common.log(f"imdb_jax: mixed widths {MIXED_WIDTHS}, grouping={args.grouping} ...")
        specs = [VariantSpec(hidden_units=(width,)) for width in MIXED_WIDTHS]
        timing = time_variants(specs, dataset, args, args.grouping)
        name = "imdb_jax mixed " + "/".join(str(width) for width in MIXED_WIDTHS)
        settings = {**base, "model": "one hidden layer", "widths": list(MIXED_WIDTHS), "grouping": args.grouping, "variants": len(specs)}
        mixed_figures = keras_mixed_baselines(reporter, args, dataset)
        if timing is None:
            reporter.note(name, "per-epoch timing unavailable")
        else:
            emit_timing(reporter, name, settings, timing, len(specs), {}, None, all_figures=mixed_figures)
    if not args.no_table:
        reporter.table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
