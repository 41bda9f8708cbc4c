"""Variants: seconds per epoch when K variants of 16-16 (different seeds) train fused together.

For K = 1, 4, 16, 64, 256 (`--variants`), `imdb_jax.train.variants.fit_variants` trains the K variants
fused (first layers side by side in one kernel, later layers stacked) for 1 + --repeats epochs,
each epoch timed through the library's hook (`VariantsResult.epoch_seconds`):
  compile            JAX's compile events inside the first epoch (`jax.monitoring`)
  epoch_steady       one epoch of all K together (median of the later epochs, each a fresh
                     shuffle), with its share of the machine's roofline (benchmarks/roofline.py)
  variant_epoch      the same divided by K: one variant-epoch, against one solo epoch (K = 1 in
                     the same run) and one Keras 16-16 epoch
  peak memory        the process's peak RSS while that K was built, compiled and run (the peak
                     mark is reset before each K, so peaks do not accumulate)
then a least-squares line epoch_s = fixed_s + per_variant_s * K (how the cost grows with K), and
a mixed-width study (one hidden layer of 4, 16 and 512 units) fused, against Keras fitting the
three one after another.

Targets (issue 8), at K = 64: a variant-epoch at most 0.5x one solo epoch, and at least 40x
faster than one Keras (TensorFlow) epoch.

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
import cli_options  # noqa: E402
import clocks  # noqa: E402
import machine_info  # noqa: E402
import reporting  # noqa: E402
import review_data  # noqa: E402
import yardsticks  # noqa: E402

DEFAULT_VARIANTS = "1,4,16,64,256"
QUICK_VARIANTS = "1,4"
MIXED_WIDTHS = (4, 16, 512)
TARGET_VARIANTS = 64  # the targets are read at K = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli_options.parser(__doc__)
    cli_options.add_arguments(parser)
    parser.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated K values (default {DEFAULT_VARIANTS}; --quick {QUICK_VARIANTS})",
    )
    parser.add_argument(
        "--first-layer",
        choices=("auto", "sparse", "dense"),
        default="auto",
        help="first layer path (default: auto, as fit_variants)",
    )
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed-width (4/16/512) study")
    parser.add_argument("--no-roofline", action="store_true", help="do not measure the machine's roofline")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds of epochs to aim for per K: fewer repeats (at least 2) for a K whose epoch the earlier K "
        "predict to be slow, and no run at all where even 1 + 2 epochs would take over twice this (default 60; "
        "0: always --repeats)",
    )
    args = cli_options.resolve_arguments(parser.parse_args(argv), default_repeats=3)
    text = args.variants or (QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS)
    try:
        args.variants = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        parser.error(f"--variants must be comma-separated integers, got {text!r}")
    if not args.variants or min(args.variants) < 1:
        parser.error("--variants needs at least one K >= 1")
    return args


def predicted_epoch_s(count: int, points: list[tuple[int, float]]) -> float | None:
    """The steady epoch of K = `count` the earlier (K, epoch_s) points predict (None: no points)."""
    if not points:
        return None
    line = growth(points) or {"fixed_s": 0.0, "per_variant_s": points[0][1] / points[0][0]}
    return max(line["fixed_s"] + line["per_variant_s"] * count, 1e-3)


def repeats_for(count: int, points: list[tuple[int, float]], args: argparse.Namespace) -> int:
    """--repeats, or fewer (never under 2) when the earlier K predict this K's epochs would take
    more than --budget seconds; 0 when even 1 + 2 epochs would take over twice --budget."""
    predicted = predicted_epoch_s(count, points)
    if not args.budget or predicted is None:
        return args.repeats
    if 3 * predicted > 2 * args.budget:
        return 0
    return max(min(2, args.repeats), min(args.repeats, int(args.budget // predicted) - 1))


def time_variants(specs, dataset: review_data.Dataset, args: argparse.Namespace, repeats: int) -> dict:
    """Trains `specs` fused with `fit_variants` for 1 + repeats epochs, each epoch timed.

    Returns:
      `clocks.time_fit_variants`' figures plus "blocks" (widths and size of each fused block),
      "fused_width" and memory: "rss_before_mb", "peak_rss_mb" (the peak since this call began).
    """
    rss_before = machine_info.current_rss_bytes()
    resettable = machine_info.reset_peak_rss()
    timing = clocks.time_fit_variants(
        specs, dataset.train, epochs=1 + repeats, batch_size=args.batch_size, first_layer=args.first_layer
    )
    layout = timing["result"].layout
    timing.update(
        blocks=[{"hidden_units": list(block.hidden_units), "variants": block.size} for block in layout.blocks],
        fused_width=layout.width,
        rss_before_mb=machine_info.megabytes(rss_before),
        peak_rss_mb=machine_info.megabytes(machine_info.peak_rss_bytes()),
        peak_rss_scope="since this setting began" if resettable else "process lifetime (peak mark not resettable here)",
    )
    return timing


def growth(points: list[tuple[int, float]]) -> dict | None:
    """Least-squares epoch_s = fixed_s + per_variant_s * K over (K, epoch_s) points."""
    import numpy as np

    if len(points) < 2:
        return None
    counts = np.array([count for count, _ in points], float)
    seconds = np.array([value for _, value in points], float)
    per_variant, fixed = np.polyfit(counts, seconds, 1)
    return {
        "fixed_s": float(fixed),
        "per_variant_s": float(per_variant),
        "points": [[int(k), float(s)] for k, s in points],
    }


def emit_timing(
    reporter,
    name: str,
    settings: dict,
    timing: dict,
    count: int,
    dataset,
    machine: dict | None,
    keras: dict,
    solo_s: float | None = None,
    all_figures: dict | None = None,
) -> dict:
    """Emits compile, first epoch, steady epoch (of all `count` together, compared with
    `all_figures`) and per-variant epoch (compared with one solo epoch `solo_s` and with one
    Keras 16-16 epoch, `keras`, or the cited one on the full data when Keras TF did not run).

    Returns:
      The per-variant summary.
    """
    import roofline

    compile_s = timing["compile_s"]
    memory = {key: timing[key] for key in ("rss_before_mb", "peak_rss_mb", "peak_rss_scope")}
    settings = {**settings, "path": timing["path"], "blocks": timing["blocks"], "fused_width": timing["fused_width"]}
    steady = timing["steady"]
    reporter.emit(
        "compile", name, settings, **clocks.summarize([compile_s]), first_epoch_excess_s=timing["first_epoch_excess_s"]
    )
    reporter.emit("epoch_first", name, settings, **clocks.summarize([timing["first_epoch_s"]]), compile_s=compile_s)
    extra = {}
    if machine is not None:
        layout = timing["result"].layout
        extra = roofline.roofline_fields(
            layout,
            dataset.train.x,
            steady["median_s"],
            machine,
            batch_size=settings["batch_size"],
            dense_words=timing["dense_words"],
        )
    reporter.emit(
        "epoch_steady",
        name,
        settings,
        **steady,
        compile_s=compile_s,
        recompiled=timing["recompiled"],
        **memory,
        **extra,
        vs=yardsticks.versus(steady["median_s"], all_figures or {}, "steady_epoch_s"),
    )
    per_variant = {key: value / count for key, value in steady.items() if key.endswith("_s") and key != "samples_s"}
    per_variant.update(repeats=steady["repeats"], samples_s=[value / count for value in steady["samples_s"]])
    comparisons = (
        {}
        if all_figures is not None
        else yardsticks.versus(
            per_variant["median_s"], keras, "steady_epoch_s", "keras_tensorflow_epoch_steady_s", dataset
        )
    )
    if solo_s is not None and count > 1:
        comparisons["solo_epoch"] = yardsticks.compare(per_variant["median_s"], solo_s)
    reporter.emit("variant_epoch", name, settings, **per_variant, compile_s=compile_s, **memory, vs=comparisons)
    return per_variant


def emit_targets(reporter, dataset, count: int, per_variant_s: float | None, solo_s: float | None, keras: dict) -> None:
    """The issue's two fused-variants targets at K = `count`."""
    solo_target = f"{count} x 16-16 fused: per variant-epoch <= 0.5x one solo epoch"
    keras_target = f"{count} x 16-16 fused: per variant-epoch >= 40x faster than one Keras TF epoch"
    if per_variant_s is None:
        for target, threshold, op in ((solo_target, 0.5, "<="), (keras_target, 40, ">=")):
            reporter.target(
                target,
                value=None,
                threshold=threshold,
                op=op,
                figure="",
                why_not=f"K = {count} not run (--variants / --budget)",
            )
        return
    reporter.target(
        solo_target,
        value=None if solo_s is None else per_variant_s / solo_s,
        threshold=0.5,
        op="<=",
        figure="" if solo_s is None else f"{per_variant_s:.4f} s per variant-epoch vs solo {solo_s:.4f} s",
        why_not="K = 1 not run in this run",
    )
    yardsticks.keras_speedup_target(
        reporter, keras_target, per_variant_s, f"{per_variant_s:.4f} s per variant-epoch", 40, keras, dataset
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
        key = f"keras:{backend}:mixed{MIXED_WIDTHS}:{epochs}ep:{review_data.data_signature(dataset)}"
        reporting.log(
            f"baseline: Keras ({backend} backend), widths {MIXED_WIDTHS} one after another, {epochs} epochs each"
            + (": reused" if key in cache else " ...")
        )
        result = cache.get_or_run(key, lambda backend=backend: baselines.run_keras(backend, models, dataset.train))
        if "skipped" in result:
            reporter.note(f"{label} mixed", result["skipped"], baseline=label)
            continue
        per_model = [baselines.epoch_figures(model)["steady_epoch_s"] for model in result["models"]]
        total = sum(value for value in per_model if value is not None)  # each model ran 3 epochs: all steady
        config = {
            "widths": list(MIXED_WIDTHS),
            "epochs": epochs,
            "backend": backend,
            "input": result["dense_input"],
            **dataset.describe(),
        }
        reporter.emit(
            "epoch_steady",
            f"{label} mixed " + "/".join(str(width) for width in MIXED_WIDTHS),
            config,
            **clocks.summarize([total]),
            per_model_steady_epoch_s=dict(zip([str(width) for width in MIXED_WIDTHS], per_model)),
            baseline=label,
            baseline_versions=result["versions"],
            peak_rss_mb=machine_info.megabytes(result["peak_rss_bytes"]),
            note="sum of the three models' steady epochs, fitted one after another",
        )
        figures[label] = {"steady_epoch_s": total}
    return figures


def main(argv: list[str] | None = None) -> int:
    import roofline

    from imdb_jax.specs import VariantSpec

    args = parse_args(argv)
    reporter = reporting.Reporter("variants", args)
    dataset = cli_options.dataset_from_args(args)
    keras = yardsticks.keras_seed_baselines(reporter, args, dataset)
    machine = None if args.no_roofline else roofline.machine_figures(args)
    base = {"batch_size": args.batch_size, "first_layer": args.first_layer, **dataset.describe()}

    points, per_variant, solo_s = [], {}, None
    for count in args.variants:
        name = f"imdb_jax {count}x 16-16"
        repeats = repeats_for(count, points, args)
        if repeats == 0:
            reporter.note(
                name,
                f"not run: the earlier K predict {predicted_epoch_s(count, points):.0f} s per epoch, over --budget {args.budget:.0f} s",
            )
            continue
        reporting.log(f"imdb_jax: {count} variants of 16-16 fused, 1 + {repeats} epochs ...")
        specs = [VariantSpec(hidden_units=(16, 16), seed=seed) for seed in range(count)]
        timing = time_variants(specs, dataset, args, repeats)
        settings = {**base, "model": "16-16-1", "variants": count}
        per_variant[count] = emit_timing(reporter, name, settings, timing, count, dataset, machine, keras, solo_s)[
            "median_s"
        ]
        if count == 1:
            solo_s = timing["steady"]["median_s"]
        points.append((count, timing["steady"]["median_s"]))
        del timing
    line = growth(points)
    if line is not None:
        reporter.emit(
            "growth", "imdb_jax 16-16 epoch_s vs K", {**base, "model": "16-16-1", "variants": args.variants}, **line
        )
        reporting.log(f"growth: epoch_s = {line['fixed_s']:.3f} + {line['per_variant_s']:.4f} * K")

    if not args.no_mixed:
        reporting.log(f"imdb_jax: mixed widths {MIXED_WIDTHS} fused ...")
        specs = [VariantSpec(hidden_units=(width,)) for width in MIXED_WIDTHS]
        timing = time_variants(specs, dataset, args, args.repeats)
        name = "imdb_jax mixed " + "/".join(str(width) for width in MIXED_WIDTHS)
        settings = {**base, "model": "one hidden layer", "widths": list(MIXED_WIDTHS), "variants": len(specs)}
        mixed_keras = keras_mixed_baselines(reporter, args, dataset)
        emit_timing(reporter, name, settings, timing, len(specs), dataset, machine, {}, all_figures=mixed_keras)
    target_k = TARGET_VARIANTS if TARGET_VARIANTS in args.variants else max(args.variants)
    emit_targets(reporter, dataset, target_k, per_variant.get(target_k), solo_s, keras)
    if not args.no_table:
        reporter.table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
