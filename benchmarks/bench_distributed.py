"""Distributed: seconds per variant-epoch when one study runs in 1 process or over 2 processes.

K variants of 16-16 (different seeds, `--variants`) train with `fit_variants` for 1 + --repeats
epochs in each setting, every setting in FRESH processes on this machine:
  1 process x 1 device    today's default
  1 process x 2 devices   the variant axis split over 2 (forced) CPU devices of one process
  2 processes x 1 device  the same split over 2 processes joined by `jax.distributed`
                          (coordinator on 127.0.0.1), each reading the data itself
Reported per setting (process 0's figures):
  epoch_steady   median seconds of one training epoch of all K (the library's own epoch timing,
                 which ends when every process holds the epoch's metrics), first epoch apart
  variant_epoch  the same divided by K
  agrees         whether the histories are bitwise those of the 1 x 1 run
On one machine the processes share its cores, so no speed-up is expected: the point is that
the run works and agrees. Across hosts each process brings its own cores (README).

  python benchmarks/bench_distributed.py                 # 25,000 real reviews, K = 16
  python benchmarks/bench_distributed.py --variants 64 --repeats 5
  python benchmarks/bench_distributed.py --quick         # 2,048 reviews, K = 4
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli_options  # noqa: E402
import clocks  # noqa: E402
import reporting  # noqa: E402
import review_data  # noqa: E402

RESULT_MARK = "DISTRIBUTED_WORKER_RESULT "
# (processes, CPU devices per process)
SETTINGS = ((1, 1), (1, 2), (2, 1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli_options.parser(__doc__)
    cli_options.add_arguments(parser)
    parser.add_argument(
        "--variants", type=int, default=None, help="K, variants trained together (default 16; --quick 4)"
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "COORDINATOR,PROCESSES,PROCESS_ID"
    args = cli_options.resolve_arguments(parser.parse_args(argv), default_repeats=3)
    if args.variants is None:
        args.variants = 4 if args.quick else 16
    if args.variants < 1:
        parser.error("--variants must be at least 1")
    return args


def worker(args: argparse.Namespace) -> int:
    """One process of one setting: join (when several), train, print process 0's figures."""
    from imdb_jax.train import distributed

    coordinator, processes, process_id = args.worker.split(",")
    if int(processes) > 1:
        distributed.initialize(coordinator, int(processes), int(process_id))
    import jax

    from imdb_jax.specs import VariantSpec
    from imdb_jax.train.variants import fit_variants

    dataset = review_data.load_dataset(10000, synthetic=args.synthetic, rows=args.rows)
    specs = [VariantSpec((16, 16), seed=seed) for seed in range(args.variants)]
    result = fit_variants(specs, dataset.train, epochs=1 + args.repeats, batch_size=args.batch_size, progress=False)
    if jax.process_index() == 0:
        report = {
            "epoch_seconds": result.epoch_seconds,
            "histories": result.histories,
            "devices": [str(device) for device in jax.devices()],
            "dataset": dataset.describe(),
        }
        print(RESULT_MARK + json.dumps(report), flush=True)
    return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_setting(args: argparse.Namespace, processes: int, devices: int) -> tuple[dict | None, str]:
    """Starts the setting's processes and returns process 0's report (or None) and the errors."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "IMDB_JAX_COMPILE_CACHE": "off",  # every setting compiles afresh; compile time is reported apart
    }
    coordinator = f"127.0.0.1:{_free_port()}"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--repeats",
        str(args.repeats),
        "--variants",
        str(args.variants),
        "--batch-size",
        str(args.batch_size),
    ]
    command += ["--synthetic"] if args.synthetic else []
    command += ["--rows", str(args.rows)] if args.rows else []
    children = [
        subprocess.Popen(
            [*command, "--worker", f"{coordinator},{processes},{rank}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(processes)
    ]
    outputs = [child.communicate(timeout=3600) for child in children]
    errors = "; ".join(
        f"process {rank} exited {child.returncode}: {err.strip()[-500:]}"
        for rank, (child, (_, err)) in enumerate(zip(children, outputs))
        if child.returncode
    )
    lines = [line for line in outputs[0][0].splitlines() if line.startswith(RESULT_MARK)]
    return (json.loads(lines[-1][len(RESULT_MARK) :]) if lines and not errors else None), errors


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args)
    reporter = reporting.Reporter("distributed", args)
    if not args.synthetic:
        reporting.log("making sure the data cache exists (untimed) ...")
        review_data.load_dataset(10000, rows=args.rows)
    reference = None
    for processes, devices in SETTINGS:
        name = f"imdb_jax {args.variants}x 16-16, {processes} process{'es' if processes > 1 else ''} x {devices} device{'s' if devices > 1 else ''}"
        reporting.log(f"{name}: fresh process{'es' if processes > 1 else ''}, 1 + {args.repeats} epochs ...")
        started = time.perf_counter()
        report, errors = run_setting(args, processes, devices)
        if report is None:
            reporter.note(name, f"failed: {errors}")
            continue
        if reference is None and (processes, devices) == (1, 1):
            reference = report["histories"]
        steady = clocks.summarize(report["epoch_seconds"][1:]) if len(report["epoch_seconds"]) > 1 else None
        settings = {
            "model": "16-16-1",
            "variants": args.variants,
            "processes": processes,
            "devices_per_process": devices,
            "batch_size": args.batch_size,
            **report["dataset"],
        }
        agrees = None if reference is None else report["histories"] == reference
        wall_s = time.perf_counter() - started
        reporting.log(f"  histories bitwise those of 1 process x 1 device: {agrees}; {wall_s:.1f} s in all")
        if steady is None:
            reporter.note(name, "one epoch only: no steady figure (use --repeats >= 1)")
            continue
        reporter.emit(
            "epoch_steady",
            name,
            settings,
            **steady,
            first_epoch_s=report["epoch_seconds"][0],
            agrees=agrees,
            wall_s=wall_s,
        )
        per_variant = clocks.summarize([seconds / args.variants for seconds in report["epoch_seconds"][1:]])
        reporter.emit("variant_epoch", name, settings, **per_variant, agrees=agrees)
    if not args.no_table:
        reporter.table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
