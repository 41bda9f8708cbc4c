"""Roofline: how close an epoch comes to what this machine's memory and arithmetic allow.

Two ceilings are measured on the machine itself, in the same run, with JAX:
  memory bandwidth   a jitted axpy `a * x + y` over 64 MiB float32 arrays (reads x and y,
                     writes y: 3 × 64 MiB per call), GB/s, median of several calls (the best
                     beside it: on a shared machine the median moves with other people's load,
                     and every % with it)
  matmul FLOP/s      a jitted 2048 × 2048 float32 matmul (2 · 2048³ FLOPs), median of several

and one epoch of the fused training (`imdb_jax.models.mlp`) is modelled as bytes moved and FLOPs:
  per step   the embedding bag gathers `occurrences × width × 4` bytes forward and scatter-adds
             as many into the kernel's gradient backward (width = the fused first-layer width,
             occurrences = the batch's (review, word) pairs in the sparse columns);
             rmsprop makes ~6 passes over the first-layer kernel `num_words × width × 4` bytes
             (zero the gradient, read kernel, gradient and nu, write nu and kernel);
             penalised blocks read their first-layer columns twice more (penalty, its gradient);
             a dense head multiplies `batch × dense_words × width` (FLOPs, forward and kernel
             gradient) and densifies its batch (bytes);
             later layers: 6 · batch · in · out FLOPs per layer and variant (forward, input
             gradient, kernel gradient), the output layer likewise
  per epoch  the divergence check copies and compares the kernel and nu (~8 passes).

`roofline_s = bytes / bandwidth + FLOPs / matmul rate` (the phases run one after another; each
at its own ceiling), and every measured epoch is reported as `roofline_s / measured_s` in %: 100 %
would be an epoch that moves only the bytes it must, at the machine's copy speed. The small
per-variant contractions never reach the 2048² matmul rate, and the bag's gathers are not
streaming copies, so the % is a bound to compare against, not a target to reach.

Reported (each a `fit_variants` run of 1 + --repeats epochs, first layer "auto"):
  the seed model (16-16-1) and the 512-wide variant (one hidden layer) on the training reviews,
  and the whole study's epoch: the 9 distinct variants of `imdb_jax.study`'s "all" experiments
  fused, on the study's training part (the first 10,000 reviews held out as validation).

  python benchmarks/roofline.py                  # all 25,000 reviews
  python benchmarks/roofline.py --quick          # 2,048 reviews
  python benchmarks/roofline.py --machine-only   # just the two ceilings
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli_options  # noqa: E402
import clocks  # noqa: E402
import machine_info  # noqa: E402
import reporting  # noqa: E402
import review_data  # noqa: E402

BANDWIDTH_FLOATS = 1 << 24  # 64 MiB per float32 array: far beyond any cache
MATMUL_SIZE = 2048
OPTIMIZER_PASSES = 6  # zero the kernel gradient; read kernel, gradient, nu; write nu, kernel
PENALTY_PASSES = 2  # penalised columns: |w| and w² summed forward, their gradient added back
EPOCH_PASSES = 8  # divergence check: copy kernel and nu, test finiteness, select per variant
STUDY_HOLDOUT = 10000


# ---------------------------------------------------------------------------------------------
# The machine's two ceilings.


def _median_seconds(call, repeats: int) -> list[float]:
    import jax

    jax.block_until_ready(call())  # compile and warm up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        samples.append(time.perf_counter() - start)
    return samples


def measure_bandwidth(floats: int = BANDWIDTH_FLOATS, repeats: int = 7) -> dict[str, Any]:
    """Bytes per second JAX moves in a jitted axpy `y = a * x + y` (y donated, so no new buffer).

    Returns:
      {"bandwidth_gb_s" (median), "samples_gb_s", "array_mib", "bytes_per_call"}.
    """
    import jax
    import jax.numpy as jnp

    axpy = jax.jit(lambda a, x, y: a * x + y, donate_argnums=(2,))
    x = jnp.ones((floats,), jnp.float32)
    state = {"y": jnp.zeros((floats,), jnp.float32)}
    a = jnp.float32(1.0001)

    def call():
        state["y"] = axpy(a, x, state["y"])
        return state["y"]

    moved = 3 * floats * 4
    samples = _median_seconds(call, repeats)
    rates = [moved / seconds / 1e9 for seconds in samples]
    return {
        "bandwidth_gb_s": statistics.median(rates),
        "best_gb_s": max(rates),
        "samples_gb_s": [round(rate, 2) for rate in rates],
        "array_mib": floats * 4 / 2**20,
        "bytes_per_call": moved,
    }


def measure_matmul(size: int = MATMUL_SIZE, repeats: int = 5) -> dict[str, Any]:
    """FLOP/s of a jitted float32 `size × size` matmul.

    Returns:
      {"matmul_gflop_s" (median), "samples_gflop_s", "size"}.
    """
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0))
    a = jax.random.normal(keys[0], (size, size), jnp.float32)
    b = jax.random.normal(keys[1], (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    samples = _median_seconds(lambda: matmul(a, b), repeats)
    rates = [2 * size**3 / seconds / 1e9 for seconds in samples]
    return {
        "matmul_gflop_s": statistics.median(rates),
        "best_gflop_s": max(rates),
        "samples_gflop_s": [round(rate, 1) for rate in rates],
        "size": size,
    }


def measure_machine(quick: bool = False) -> dict[str, Any]:
    """Both ceilings: {"bandwidth_gb_s", "matmul_gflop_s", "bandwidth": ..., "matmul": ...}."""
    bandwidth = measure_bandwidth(repeats=5 if quick else 9)
    matmul = measure_matmul(repeats=3 if quick else 7)
    return {
        "bandwidth_gb_s": bandwidth["bandwidth_gb_s"],
        "matmul_gflop_s": matmul["matmul_gflop_s"],
        "bandwidth": bandwidth,
        "matmul": matmul,
    }


def machine_figures(args: argparse.Namespace) -> dict[str, Any]:
    """The machine's ceilings, measured once per run (kept in --baselines-cache when given, so
    run_all.py's scripts share one measurement)."""
    import baselines

    cache = baselines.BaselineCache(args.baselines_cache)
    key = f"roofline:machine:{machine_info.environment()['backend']}"
    reporting.log(
        "roofline: measuring memory bandwidth and matmul FLOP/s"
        + (" (reused from this run)" if key in cache else " ...")
    )
    return cache.get_or_run(key, lambda: measure_machine(getattr(args, "quick", False)))


# ---------------------------------------------------------------------------------------------
# The model of one epoch.


@dataclasses.dataclass(frozen=True)
class EpochCost:
    """Bytes and FLOPs of one training epoch of a fused layout.

    Attributes:
      steps: batches per epoch.
      bag_bytes: embedding-bag gathers and scatter-adds.
      optimizer_bytes: rmsprop's passes over the first-layer kernel, every step.
      penalty_bytes: penalised blocks' extra passes over their first-layer columns.
      head_bytes: densified batches of the dense head (0 when all sparse).
      epoch_bytes: the once-per-epoch divergence check.
      flops: later layers, the output layer and the dense head.
    """

    steps: int
    bag_bytes: float
    optimizer_bytes: float
    penalty_bytes: float
    head_bytes: float
    epoch_bytes: float
    flops: float

    @property
    def bytes(self) -> float:
        return self.bag_bytes + self.optimizer_bytes + self.penalty_bytes + self.head_bytes + self.epoch_bytes

    def seconds(self, machine: dict[str, Any]) -> dict[str, float]:
        """{"memory_s", "compute_s", "roofline_s"} at the machine's ceilings."""
        memory = self.bytes / (machine["bandwidth_gb_s"] * 1e9)
        compute = self.flops / (machine["matmul_gflop_s"] * 1e9)
        return {"memory_s": memory, "compute_s": compute, "roofline_s": memory + compute}


def epoch_cost(layout: Any, x: Any, *, batch_size: int = 512, dense_words: int = 0) -> EpochCost:
    """The bytes and FLOPs of one epoch of `layout` over the training rows `x`.

    Args:
      layout: `imdb_jax.models.layout.Layout` (blocks of variants, fused first-layer width).
      x: float32[rows, num_words] CSR training rows (every row is seen once per epoch).
      batch_size: rows per step.
      dense_words: leading columns multiplied densely (`VariantsResult.dense_words`).
    """
    rows, num_words = x.shape
    width = layout.width
    steps = math.ceil(rows / batch_size)
    tail = int((x.indices >= dense_words).sum()) if dense_words else int(x.nnz)
    kernel_bytes = num_words * width * 4
    penalised = sum(block.columns for block in layout.blocks if block.penalty)
    flops = 0.0
    for block in layout.blocks:
        units = tuple(block.hidden_units) + (1,)
        per_member = sum(6 * batch_size * a * b for a, b in zip(units, units[1:]))
        flops += per_member * block.size * steps
    head_bytes = 0.0
    if dense_words:
        flops += 4 * batch_size * dense_words * width * steps  # forward and kernel gradient
        head_bytes = batch_size * dense_words * 4 * 2 * steps  # densified batch: written, read
    return EpochCost(
        steps=steps,
        bag_bytes=2 * tail * width * 4,
        optimizer_bytes=OPTIMIZER_PASSES * kernel_bytes * steps,
        penalty_bytes=PENALTY_PASSES * num_words * penalised * 4 * steps,
        head_bytes=head_bytes,
        epoch_bytes=EPOCH_PASSES * kernel_bytes,
        flops=flops,
    )


def roofline_fields(
    layout: Any, x: Any, measured_s: float, machine: dict[str, Any], *, batch_size: int = 512, dense_words: int = 0
) -> dict[str, Any]:
    """What a record carries about the roofline of one measured epoch: the model's bytes and
    FLOPs, the ceiling times and `roofline_pct` = roofline_s / measured_s in %."""
    cost = epoch_cost(layout, x, batch_size=batch_size, dense_words=dense_words)
    times = cost.seconds(machine)
    return {
        "roofline_s": times["roofline_s"],
        "roofline_pct": 100.0 * times["roofline_s"] / measured_s,
        "roofline": {
            "memory_s": times["memory_s"],
            "compute_s": times["compute_s"],
            "bytes": cost.bytes,
            "bag_bytes": cost.bag_bytes,
            "optimizer_bytes": cost.optimizer_bytes,
            "penalty_bytes": cost.penalty_bytes,
            "head_bytes": cost.head_bytes,
            "epoch_bytes": cost.epoch_bytes,
            "flops": cost.flops,
            "steps": cost.steps,
            "fused_width": layout.width,
            "bandwidth_gb_s": machine["bandwidth_gb_s"],
            "matmul_gflop_s": machine["matmul_gflop_s"],
        },
    }


# ---------------------------------------------------------------------------------------------
# The script.


def study_specs() -> list:
    """The 9 distinct variants of the study's "all" experiments (one seed each)."""
    from imdb_jax.study import select_experiments, union

    specs, _ = union(select_experiments("all"))
    return specs


def settings(dataset: review_data.Dataset) -> list[tuple[str, list, Any, dict[str, Any]]]:
    """(name, specs, training split, config) of the three measured epochs."""
    from imdb_jax.specs import VariantSpec

    rows = dataset.train.x.shape[0]
    holdout = STUDY_HOLDOUT if rows == 25000 else max(1, int(rows * STUDY_HOLDOUT / 25000))
    study_train, _ = dataset.split_validation(holdout)
    study = study_specs()
    return [
        ("imdb_jax seed 16-16", [VariantSpec((16, 16))], dataset.train, {"model": "16-16-1", "variants": 1}),
        ("imdb_jax 512", [VariantSpec((512,))], dataset.train, {"model": "512-1", "variants": 1}),
        (
            f"imdb_jax study all ({len(study)} variants)",
            study,
            study_train,
            {"model": "study all", "variants": len(study), "specs": [spec.name for spec in study], "holdout": holdout},
        ),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli_options.parser(__doc__)
    cli_options.add_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--first-layer", choices=("auto", "sparse", "dense"), default="auto")
    parser.add_argument("--machine-only", action="store_true", help="measure the two ceilings only")
    return cli_options.resolve_arguments(parser.parse_args(argv), default_repeats=3)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reporter = reporting.Reporter("roofline", args)
    machine = machine_figures(args)
    reporter.emit(
        "machine",
        "memory bandwidth (jitted axpy)",
        {"array_mib": machine["bandwidth"]["array_mib"], "bytes_per_call": machine["bandwidth"]["bytes_per_call"]},
        bandwidth_gb_s=machine["bandwidth_gb_s"],
        best_gb_s=machine["bandwidth"].get("best_gb_s"),
        samples_gb_s=machine["bandwidth"]["samples_gb_s"],
    )
    reporter.emit(
        "machine",
        "matmul FLOP/s (jitted float32)",
        {"size": machine["matmul"]["size"]},
        matmul_gflop_s=machine["matmul_gflop_s"],
        best_gflop_s=machine["matmul"].get("best_gflop_s"),
        samples_gflop_s=machine["matmul"]["samples_gflop_s"],
    )
    reporting.log(f"roofline: {machine['bandwidth_gb_s']:.1f} GB/s, {machine['matmul_gflop_s']:.1f} GFLOP/s")
    if not args.machine_only:
        dataset = cli_options.dataset_from_args(args)
        for name, specs, train, config in settings(dataset):
            reporting.log(f"{name}: 1 + {args.repeats} epochs ...")
            timing = clocks.time_fit_variants(
                specs, train, epochs=1 + args.repeats, batch_size=args.batch_size, first_layer=args.first_layer
            )
            steady = timing["steady"]
            layout = timing["result"].layout
            fields = roofline_fields(
                layout,
                train.x,
                steady["median_s"],
                machine,
                batch_size=args.batch_size,
                dense_words=timing["dense_words"],
            )
            reporter.emit(
                "epoch_steady",
                name,
                {
                    **config,
                    "batch_size": args.batch_size,
                    "first_layer": args.first_layer,
                    "path": timing["path"],
                    **review_data.describe_split(train, dataset.source),
                },
                **steady,
                compile_s=timing["compile_s"],
                **fields,
            )
            reporter.target(
                f"{name}: steady epoch as % of the measured roofline",
                value=fields["roofline_pct"],
                threshold=None,
                op="report",
                figure=f"{steady['median_s']:.3g} s measured vs roofline {fields['roofline_s']:.3g} s "
                f"({fields['roofline']['memory_s']:.3g} s of bytes at {machine['bandwidth_gb_s']:.1f} GB/s, "
                f"{fields['roofline']['compute_s']:.3g} s of FLOPs at {machine['matmul_gflop_s']:.0f} GFLOP/s)",
                unit=" %",
            )
    if not args.no_table:
        reporter.table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
