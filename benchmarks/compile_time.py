"""Where a cold run's time goes: XLA's compile seconds of a fused run, and its steady epochs, under
different `XLA_FLAGS`, in one run.

Each setting runs `fit_variants` in a fresh process of its own with JAX's compilation cache and the
package's program store off, so every program compiles; the process reports the seconds XLA spent
compiling (JAX's `/jax/core/compile/backend_compile_duration` events, all programs), the number
of programs, the first and the steady (median from the third) training epochs, and every variant's
last validation loss as hex, so the settings can be checked bitwise against the first one.

Variant sets: `grid` (8 of the grid search's candidates: 16-16 and 64 wide, with and without L2
and dropout: 8 blocks), `study` (the study's `all`, `--seeds` copies each, on one CPU device per
core). On the real IMDb reviews (15,000 training, 10,000 held out).

  python benchmarks/compile_time.py                                  # grid, default vs -O1
  python benchmarks/compile_time.py --variants study --seeds 4 --epochs 5
  python benchmarks/compile_time.py --flags "" "--xla_backend_optimization_level=1"

The verdicts are in benchmarks/README.md ("Issue 14 and 17: compiling, measured").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

DEFAULT_FLAGS = ["", "--xla_backend_optimization_level=1"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", choices=("grid", "study"), default="grid")
    parser.add_argument("--seeds", type=int, default=1, help="copies of each study variant (default 1)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per run (default 6)")
    parser.add_argument("--flags", nargs="+", default=DEFAULT_FLAGS, help="XLA_FLAGS settings to compare")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(args: argparse.Namespace) -> dict:
    from imdb_jax.train.cpu_devices import use_every_core

    use_every_core()
    import jax.monitoring

    from imdb_jax import VariantSpec, fit_variants, load_imdb
    from imdb_jax.study.experiments import seed_replicas, select_experiments, union

    spans: list[float] = []

    def listen(event: str, duration_secs: float, **_: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            spans.append(duration_secs)

    jax.monitoring.register_event_duration_secs_listener(listen)
    train, held = load_imdb(progress=False).split_validation(10000)
    if args.variants == "grid":
        specs = [
            VariantSpec(units, l2=l2, dropout_rate=rate, seed=0)
            for units in ((16, 16), (64,))
            for l2 in (0.0, 1e-3)
            for rate in (0.0, 0.5)
        ]
    else:
        specs, _ = seed_replicas(union(select_experiments(["all"]))[0], args.seeds)
    started = time.perf_counter()
    result = fit_variants(specs, train, held, epochs=args.epochs, progress=False)
    epochs = result.epoch_seconds
    return {
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "variants": len(specs),
        "fit_s": time.perf_counter() - started,
        "compile_s": sum(spans),
        "programs": len(spans),
        "first_epoch_s": epochs[0],
        "steady_epoch_s": statistics.median(epochs[2:]) if len(epochs) > 2 else None,
        "val_loss_hex": [float(history["val_loss"][-1]).hex() for history in result.histories],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    records = []
    for flags in args.flags:
        env = {**os.environ, "IMDB_JAX_COMPILE_CACHE": "off", "JAX_ENABLE_COMPILATION_CACHE": "false"}
        env["XLA_FLAGS"] = flags
        command = [sys.executable, __file__, "--worker", "--variants", args.variants]
        command += ["--seeds", str(args.seeds), "--epochs", str(args.epochs)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"compile_time.py: the run with XLA_FLAGS={flags!r} failed:\n{done.stderr[-3000:]}")
        record = json.loads(done.stdout.splitlines()[-1])
        record["bitwise_as_first"] = not records or record["val_loss_hex"] == records[0]["val_loss_hex"]
        records.append(record)
        print(json.dumps({"bench": "compile_time", **record}), flush=True)
        steady = record["steady_epoch_s"]
        print(
            f"[compile_time] XLA_FLAGS={flags!r}: compile {record['compile_s']:.1f} s over {record['programs']} programs, "
            f"first epoch {record['first_epoch_s']:.2f} s, steady {steady if steady is None else round(steady, 3)} s, "
            f"bitwise as the first: {record['bitwise_as_first']}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
