"""Where a fused epoch's time goes, op by op: XLA:CPU's own per-fusion trace events, summed.

Without help a CPU trace of a jitted epoch holds one event for the whole program. With
`--xla_cpu_enable_xprof_traceme=true` in `XLA_FLAGS` (this script sets it before JAX starts) XLA:CPU
records one event per fusion, custom call and loop, in `jax.profiler`'s trace. This runs
`fit_variants` on study `all`'s variants (`--seeds` copies each, one CPU device per core as the
command line does) for a warm-up, then traces `--epochs` more, and prints each op's milliseconds
per training step, validation's batches included (op names are the optimised HLO's: dump it with `--xla_dump_to` to see what each
computes) and the total against the epochs' wall time. The tracing itself slows the epochs
somewhat; the shares, not the absolute times, are the point.

  python benchmarks/op_profile.py                  # 1 seed (9 variants, one device)
  python benchmarks/op_profile.py --seeds 4 --top 30
  python benchmarks/op_profile.py --seed-model     # the 16-16 seed alone, all 25,000 reviews

benchmarks/README.md ("a step's time located") has the figures of one run.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import tempfile

FLAG = "--xla_cpu_enable_xprof_traceme=true"
BATCH = 512  # the study's batch size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1, help="copies of each study variant (default 1)")
    parser.add_argument("--epochs", type=int, default=2, help="traced epochs (default 2)")
    parser.add_argument("--top", type=int, default=20, help="ops to list (default 20)")
    parser.add_argument(
        "--seed-model",
        action="store_true",
        help="the seed model alone on all 25,000 training reviews, no validation (bench_single's epoch)",
    )
    return parser.parse_args(argv)


def op_times(trace_file: str) -> dict[str, tuple[int, float]]:
    """{op name: (events, microseconds)} over XLA's compute threads, without the executor's own
    spans (which contain the ops)."""
    with gzip.open(trace_file) as handle:
        events = json.load(handle)["traceEvents"]
    threads = {
        (event["pid"], event["tid"]): event["args"]["name"]
        for event in events
        if event.get("ph") == "M" and event.get("name") == "thread_name"
    }
    totals: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for event in events:
        if event.get("ph") != "X" or event["name"].startswith("ThunkExecutor"):
            continue
        if "Eigen" not in threads.get((event["pid"], event["tid"]), ""):
            continue
        totals[event["name"]][0] += 1
        totals[event["name"]][1] += event["dur"]
    return {name: (count, micros) for name, (count, micros) in totals.items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FLAG}".strip()
    from imdb_jax.train.cpu_devices import use_every_core

    use_every_core()
    import jax

    from imdb_jax import fit_variants, load_imdb
    from imdb_jax.specs import VariantSpec
    from imdb_jax.study.experiments import seed_replicas, select_experiments, union

    data = load_imdb(progress=False)
    if args.seed_model:
        train, held, specs = data.train, None, [VariantSpec()]
    else:
        train, held = data.split_validation(10000)
        specs, _ = seed_replicas(union(select_experiments(["all"]))[0], args.seeds)
    fit_variants(specs, train, held, epochs=2, batch_size=BATCH, progress=False)  # compiles, or loads, every program
    folder = tempfile.mkdtemp(prefix="imdb-jax-trace-")
    jax.profiler.start_trace(folder)
    result = fit_variants(specs, train, held, epochs=args.epochs, batch_size=BATCH, progress=False)
    jax.profiler.stop_trace()
    times = op_times(sorted(glob.glob(f"{folder}/plugins/profile/*/*.trace.json.gz"))[-1])
    steps = args.epochs * math.ceil(len(train) / BATCH)
    total = sum(micros for _, micros in times.values())
    wall = sum(result.epoch_seconds)
    print(
        json.dumps(
            {
                "bench": "op_profile",
                "variants": "seed model" if args.seed_model else f"study all x {args.seeds} seeds",
                "epochs": args.epochs,
                "op_ms": total / 1e3,
                "wall_s": wall,
            }
        )
    )
    print(
        f"{len(specs)} variants, {args.epochs} traced epochs: op time {total / 1e3:.0f} ms, epochs' wall {wall:.2f} s"
    )
    print(f"{'op':40s} {'events':>7s} {'ms/step':>8s} {'share':>6s}")
    for name, (count, micros) in sorted(times.items(), key=lambda item: -item[1][1])[: args.top]:
        print(f"{name:40s} {count:7d} {micros / 1e3 / steps:8.2f} {micros / total:6.1%}")
    kinds: dict[str, float] = collections.defaultdict(float)
    for name, (_, micros) in times.items():
        kinds[re.sub(r"\.\d+$", "", name)] += micros
    print(
        "by kind (ms an epoch): "
        + ", ".join(
            f"{kind} {micros / 1e3 / args.epochs:.0f}"
            for kind, micros in sorted(kinds.items(), key=lambda item: -item[1])[:8]
        )
    )


if __name__ == "__main__":
    main()
