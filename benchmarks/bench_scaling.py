"""Scaling with the vocabulary: seconds per epoch and peak memory of the sparse first layer.

For num_words = 10,000, 100,000 and 1,000,000 the seed model (16-16-1, one variant, first layer
`sparse`: the embedding bag) is trained for 1 + --repeats epochs, each timed through the
library's hook (`VariantsResult.epoch_seconds`), in a FRESH PROCESS per setting so memory peaks
do not accumulate. Reported per setting:
  epoch_steady   median seconds per epoch over the training reviews (compile apart)
  peak memory    the process's peak RSS: loading the data, and training
The real reviews hold fewer distinct words than the larger settings ask for (81,117 with this
tokenisation): there the rows are synthetic, IMDb-shaped (as many reviews, the real reviews'
mean of distinct words per review over their whole vocabulary, Zipf-like word frequencies over
all num_words columns), and
the record says so (`config.data`, `data_note`). The data stay CSR throughout; as a dense float32
matrix the training reviews alone would take 25,000 × num_words × 4 bytes (93 GiB at a million
words). Keras runs at 10,000 words only (its dense input).

  python benchmarks/bench_scaling.py                        # 10k, 100k, 1M words
  python benchmarks/bench_scaling.py --num-words 10000,100000 --first-layer sparse,auto
  python benchmarks/bench_scaling.py --quick                # 2,048 reviews
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli_options  # noqa: E402
import clocks  # noqa: E402
import machine_info  # noqa: E402
import reporting  # noqa: E402
import review_data  # noqa: E402
import yardsticks  # noqa: E402

RESULT_MARK = "SCALING_WORKER_RESULT "
DEFAULT_NUM_WORDS = "10000,100000,1000000"
TARGET_NUM_WORDS, TARGET_PEAK_MB = 100000, 2048  # issue 5: peak memory at num_words=100,000 below 2 GB


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli_options.parser(__doc__)
    cli_options.add_arguments(parser)
    parser.add_argument(
        "--num-words", default=DEFAULT_NUM_WORDS, help=f"comma-separated vocabulary sizes (default {DEFAULT_NUM_WORDS})"
    )
    parser.add_argument(
        "--first-layer",
        default="sparse",
        help="comma-separated first layers to time: sparse, auto, dense (default sparse)",
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-data", choices=("real", "synthetic"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-density", type=float, default=129.0, help=argparse.SUPPRESS)
    args = cli_options.resolve_arguments(parser.parse_args(argv), default_repeats=3)
    try:
        args.num_words = [int(value) for value in args.num_words.split(",") if value.strip()]
    except ValueError:
        parser.error("--num-words must be comma-separated integers")
    args.first_layers = [value.strip() for value in args.first_layer.split(",") if value.strip()]
    if not args.first_layers or any(value not in ("auto", "sparse", "dense") for value in args.first_layers):
        parser.error("--first-layer takes sparse, auto and/or dense")
    return args


def real_vocabulary() -> tuple[int, float]:
    """(distinct words of the real training reviews, their mean unique words per review); the
    data cache of every word is built once if missing (untimed)."""
    review_data.default_data_dir()
    from imdb_jax import load_imdb

    data = load_imdb(num_words=None, progress=False)
    x = data.train.x
    return x.shape[1], x.nnz / x.shape[0]


def worker(args: argparse.Namespace) -> int:
    """One setting in this fresh process: load, train 1 + repeats epochs, report times and peaks."""
    from imdb_jax.specs import VariantSpec

    num_words = args.worker
    start = time.perf_counter()
    if args.worker_data == "synthetic":
        dataset = review_data.load_dataset(
            num_words, synthetic=True, rows=args.rows, words_per_review=args.worker_density
        )
    else:
        dataset = review_data.load_dataset(num_words, rows=args.rows)
    load_s = time.perf_counter() - start
    load_peak = machine_info.peak_rss_bytes()
    result = {
        "num_words": num_words,
        "load_s": load_s,
        "load_peak_rss_bytes": load_peak,
        "dataset": dataset.describe(),
        "layers": [],
    }
    for first_layer in args.first_layers:
        resettable = machine_info.reset_peak_rss()
        timing = clocks.time_fit_variants(
            [VariantSpec((16, 16))],
            dataset.train,
            epochs=1 + args.repeats,
            batch_size=args.batch_size,
            first_layer=first_layer,
        )
        result["layers"].append(
            {
                "first_layer": first_layer,
                "path": timing["path"],
                "steady": timing["steady"],
                "compile_s": timing["compile_s"],
                "first_epoch_s": timing["first_epoch_s"],
                "recompiled": timing["recompiled"],
                "train_peak_rss_bytes": machine_info.peak_rss_bytes(),
                "train_peak_scope": "since training began" if resettable else "process lifetime",
            }
        )
        del timing
    result["process_peak_rss_bytes"] = max([load_peak] + [layer["train_peak_rss_bytes"] for layer in result["layers"]])
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def _child(
    args: argparse.Namespace, num_words: int, data: str, density: float, timeout: float = 3600
) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        str(num_words),
        "--worker-data",
        data,
        "--repeats",
        str(args.repeats),
    ]
    command += ["--worker-density", str(density)]
    command += ["--first-layer", ",".join(args.first_layers), "--batch-size", str(args.batch_size)]
    command += ["--rows", str(args.rows)] if args.rows else []
    # Each setting compiles into an empty cache of its own (unless the cache is off).
    compile_cache = "off" if args.compile_cache == "off" else clocks.fresh_compile_cache()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "IMDB_JAX_COMPILE_CACHE": compile_cache}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args)
    reporter = reporting.Reporter("scaling", args)
    figures, reference = {}, None
    if 10000 in args.num_words:  # Keras (dense input) runs at 10,000 words only
        reference = cli_options.dataset_from_args(args, 10000)
        figures = yardsticks.keras_seed_baselines(reporter, args, reference, backends=["tensorflow"])
    vocabulary = density = None
    if not args.synthetic and any(num_words > 10000 for num_words in args.num_words):
        reporting.log("real vocabulary: loading every word's columns once (from the cache) ...")
        vocabulary, density = real_vocabulary()
        reporting.log(f"  {vocabulary:,} distinct words, {density:.1f} per review")
    for num_words in args.num_words:
        synthetic = args.synthetic or (vocabulary is not None and num_words > vocabulary)
        data_note = None
        if synthetic and not args.synthetic:
            data_note = (
                f"synthetic IMDb-shaped rows ({density:.0f} words per review, as the real reviews over all their words): "
                f"the real reviews hold {vocabulary:,} distinct words, fewer than {num_words:,}"
            )
        reporting.log(
            f"num_words={num_words:,}: fresh process, {'synthetic' if synthetic else 'real'} rows, 1 + {args.repeats} epochs ..."
        )
        done = _child(args, num_words, "synthetic" if synthetic else "real", density or 129.0)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
        if done.returncode != 0 or not lines:
            reporter.note(
                f"imdb_jax num_words={num_words}",
                f"worker failed (exit {done.returncode}): {done.stderr.strip()[-500:]}",
            )
            continue
        result = json.loads(lines[-1][len(RESULT_MARK) :])
        base = {
            "model": "16-16-1",
            "variants": 1,
            "batch_size": args.batch_size,
            **result["dataset"],
            "dense_equivalent_gib": round(result["dataset"]["train_reviews"] * num_words * 4 / 2**30, 2),
        }
        process_peak = machine_info.megabytes(result["process_peak_rss_bytes"])
        for layer in result["layers"]:
            name = f"imdb_jax {num_words:,} words {layer['first_layer']}" + (
                f"->{layer['path']}" if layer["first_layer"] == "auto" else ""
            )
            settings = {**base, "first_layer": layer["first_layer"], "path": layer["path"]}
            reporter.emit(
                "epoch_steady",
                name,
                settings,
                **layer["steady"],
                compile_s=layer["compile_s"],
                first_epoch_s=layer["first_epoch_s"],
                recompiled=layer["recompiled"],
                load_s=result["load_s"],
                load_peak_rss_mb=machine_info.megabytes(result["load_peak_rss_bytes"]),
                train_peak_rss_mb=machine_info.megabytes(layer["train_peak_rss_bytes"]),
                peak_rss_mb=process_peak,
                data_note=data_note,
                vs=yardsticks.versus(
                    layer["steady"]["median_s"],
                    figures if num_words == 10000 else {},
                    "steady_epoch_s",
                    "keras_tensorflow_epoch_steady_s",
                    reference if num_words == 10000 else None,
                ),
            )
        if num_words == TARGET_NUM_WORDS:
            reporter.target(
                "peak memory at num_words = 100,000 below 2 GB (issue 5), MB",
                value=process_peak,
                threshold=TARGET_PEAK_MB,
                op="<=",
                figure=f"peak RSS {process_peak:.0f} MB (loading and training, one process)"
                + (f"; {data_note}" if data_note else ""),
                unit="",
            )
        if num_words != 10000 and args.baselines:
            reporter.note(
                f"keras at {num_words:,} words",
                f"not run: Keras' dense input would take {base['dense_equivalent_gib']:.1f} GiB for the training reviews alone",
            )
    if not args.no_table:
        reporter.table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
