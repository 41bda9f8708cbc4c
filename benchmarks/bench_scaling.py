"""Scaling with the data: seconds per epoch and peak memory of the seed model as num_words grows.

For num_words = 10,000, 30,000 and 100,000 the 16-16-1 model is fitted (first layer as `fit`
chooses it, or --first-layer) for 1 + --repeats epochs, each epoch timed inside the library's
loop, in a FRESH PROCESS per setting so memory peaks do not accumulate. Reported per setting:
  epoch_steady   median seconds per epoch over the 25,000 training reviews (compile apart)
  peak memory    the process's peak RSS: loading the data (from the cache), and training
The data stay CSR throughout; as a dense float32 matrix the 50,000 reviews would take
50,000 × num_words × 4 bytes (18.6 GiB at 100,000 words). The cache for each num_words is
built first (tokenising once, untimed) when missing. Keras runs at 10,000 words only: its dense
input would need 2.8 GiB of training data at 30,000 words and 9.3 GiB at 100,000.

  python benchmarks/bench_scaling.py                   # 10k, 30k, 100k words, real data
  python benchmarks/bench_scaling.py --num-words 10000,100000 --first-layer dense
  python benchmarks/bench_scaling.py --quick           # 2,048 reviews
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

import common  # noqa: E402

RESULT_MARK = "SCALING_WORKER_RESULT "
DEFAULT_NUM_WORDS = "10000,30000,100000"
TARGET_PEAK_MB = 2048  # issue 5: peak memory at num_words=100,000 below 2 GB


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    common.add_common_args(parser)
    parser.add_argument("--num-words", default=DEFAULT_NUM_WORDS, help=f"comma-separated vocabulary sizes (default {DEFAULT_NUM_WORDS})")
    parser.add_argument("--first-layer", default="auto", help="comma-separated first layers to time: auto, sparse, dense (default auto)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", type=int, default=None, help=argparse.SUPPRESS)
    args = common.resolve_common_args(parser.parse_args(argv), default_repeats=3)
    try:
        args.num_words = [int(value) for value in args.num_words.split(",") if value.strip()]
    except ValueError:
        parser.error("--num-words must be comma-separated integers")
    args.first_layers = [value.strip() for value in args.first_layer.split(",") if value.strip()]
    if any(value not in ("auto", "sparse", "dense") for value in args.first_layers):
        parser.error("--first-layer takes auto, sparse and/or dense")
    return args


def worker(args: argparse.Namespace) -> int:
    """One setting in this fresh process: load, fit 1 + repeats epochs, report times and peaks."""
    from imdb_jax.config import ModelConfig
    from imdb_jax.train import fit

    num_words = args.worker
    start = time.perf_counter()
    dataset = common.load_dataset(num_words, synthetic=args.synthetic, rows=args.rows)
    load_s = time.perf_counter() - start
    load_peak = common.peak_rss_bytes()
    result = {"num_words": num_words, "load_s": load_s, "load_peak_rss_bytes": load_peak, "dataset": dataset.describe(), "layers": []}
    config = ModelConfig(num_words=dataset.num_words, hidden_units=(16, 16))
    for first_layer in args.first_layers:
        path = common.first_layer_path(first_layer, dataset.train.x)
        resettable = common.reset_peak_rss()
        with common.EpochTimer() as timer:
            fit(config, dataset.train, epochs=1 + args.repeats, batch_size=args.batch_size, first_layer=first_layer, progress=False)
        result["layers"].append(
            {
                "first_layer": first_layer,
                "path": path,
                "timing": timer.figures(),
                "train_peak_rss_bytes": common.peak_rss_bytes(),
                "train_peak_scope": "since training began" if resettable else "process lifetime",
            }
        )
    result["process_peak_rss_bytes"] = max([load_peak] + [layer["train_peak_rss_bytes"] for layer in result["layers"]])
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def prepare(args: argparse.Namespace) -> int:
    """Builds the data cache for one num_words (tokenising once), so the timed run reads it."""
    common.load_dataset(args.prepare, synthetic=False)
    return 0


def _child(args: argparse.Namespace, *extra: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    command = [sys.executable, str(Path(__file__).resolve()), *extra, "--repeats", str(args.repeats)]
    command += ["--first-layer", ",".join(args.first_layers), "--batch-size", str(args.batch_size)]
    command += ["--synthetic"] if args.synthetic else []
    command += ["--rows", str(args.rows)] if args.rows else []
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args)
    if args.prepare is not None:
        return prepare(args)
    reporter = common.Reporter("scaling", args)
    figures, reference = {}, None
    if 10000 in args.num_words:  # Keras (dense input) runs at 10,000 words only
        reference = common.dataset_from_args(args, 10000)
        figures = common.keras_seed_baselines(reporter, args, reference)
    for num_words in args.num_words:
        if not args.synthetic:
            common.log(f"num_words={num_words}: making sure the data cache exists ...")
            start = time.perf_counter()
            done = _child(args, "--prepare", str(num_words))
            if done.returncode != 0:
                raise SystemExit(f"preparing the data for num_words={num_words} failed:\n{done.stderr[-3000:]}")
            common.log(f"  ready in {time.perf_counter() - start:.1f} s (untimed)")
        common.log(f"num_words={num_words}: fresh process, fit 1 + {args.repeats} epochs ...")
        done = _child(args, "--worker", str(num_words))
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
        if done.returncode != 0 or not lines:
            reporter.note(f"imdb_jax num_words={num_words}", f"worker failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
            continue
        result = json.loads(lines[-1][len(RESULT_MARK):])
        rows = result["dataset"]["train_reviews"] + result["dataset"]["test_reviews"]
        base = {
            "model": "16-16-1",
            "batch_size": args.batch_size,
            **result["dataset"],
            "dense_equivalent_gib": round(rows * num_words * 4 / 2**30, 2),
        }
        process_peak = common.megabytes(result["process_peak_rss_bytes"])
        for layer in result["layers"]:
            timing = layer["timing"]
            name = f"imdb_jax {num_words // 1000}k words {layer['first_layer']}" + (f"->{layer['path']}" if layer["first_layer"] == "auto" and layer["path"] else "")
            settings = {**base, "first_layer": layer["first_layer"], "path": layer["path"]}
            if timing is None:
                reporter.note(name, "per-epoch timing unavailable: fit no longer calls imdb_jax.train.train_epoch")
                continue
            compare_to = figures if num_words == 10000 else {}
            reporter.emit(
                "epoch_steady",
                name,
                settings,
                **timing["steady"],
                compile_s=timing["compile_s"],
                first_epoch_s=timing["first_epoch_s"],
                recompiled=timing["recompiled"],
                load_s=result["load_s"],
                load_peak_rss_mb=common.megabytes(result["load_peak_rss_bytes"]),
                train_peak_rss_mb=common.megabytes(layer["train_peak_rss_bytes"]),
                peak_rss_mb=process_peak,
                target_peak_mb=TARGET_PEAK_MB,
                meets_peak_target=process_peak is not None and process_peak < TARGET_PEAK_MB,
                vs=common.versus(
                    timing["steady"]["median_s"],
                    compare_to,
                    "steady_epoch_s",
                    "keras_tensorflow_epoch_steady_s",
                    reference if num_words == 10000 else None,
                ),
            )
        if num_words != 10000 and args.baselines:
            reporter.note(f"keras at {num_words // 1000}k words", f"not run: Keras' dense input would take {base['dense_equivalent_gib'] / 2:.1f} GiB for the training reviews alone")
    if not args.no_table:
        reporter.table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
