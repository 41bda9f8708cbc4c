"""Runs every benchmark in one go and writes the targets table and the full table.

Each script runs in its own process, one after another, all sharing one baselines cache so each
Keras / scikit-learn baseline (and the machine's roofline ceilings) is measured once per run and
every ratio still comes from the same run. Output goes to runs/benchmarks-<UTC time>/
(git-ignored):
  <script>.jsonl   the JSON lines of each script
  results.jsonl    all of them
  table.md         for benchmarks/README.md: machine, date, load, command; every issue target
                   with the figures measured, the ratio and met / not met; then every record
and both tables are printed at the end.

  python benchmarks/run_all.py                       # the default suite, about 15-25 minutes
  python benchmarks/run_all.py --keras-study         # plus Keras' sequential study (+4 minutes)
  python benchmarks/run_all.py --quick               # a smoke run on small slices
  python benchmarks/run_all.py --only single,variants --no-baselines
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli_options  # noqa: E402
import machine_info  # noqa: E402
import reporting  # noqa: E402

SCRIPTS = ("single", "variants", "study", "scaling", "roofline", "floor", "vmap")
FILES = {name: f"bench_{name}.py" for name in SCRIPTS} | {
    "roofline": "roofline.py",
    "floor": "floor.py",
    "vmap": "vmap_baseline.py",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli_options.parser(__doc__)
    parser.add_argument("--only", default=",".join(SCRIPTS), help=f"comma-separated subset of {', '.join(SCRIPTS)}")
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--synthetic", action="store_true", help="pass --synthetic to every script")
    parser.add_argument("--no-baselines", action="store_true", help="skip the Keras and scikit-learn baselines")
    parser.add_argument("--keras-backends", default="tensorflow,jax", help="Keras backends (default: tensorflow,jax)")
    parser.add_argument(
        "--keras-study", action="store_true", help="also run the Keras study baseline (bench_study.py --keras-study)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/benchmarks-<UTC time>)")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(SCRIPTS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    return args


def unique(records: list[dict]) -> list[dict]:
    """Records minus repeats: a baseline measured once is reported by every script that uses it."""
    seen, kept = set(), []
    for record in records:
        key = (
            record["what"],
            record["name"],
            json.dumps(record["config"], sort_keys=True),
            record.get("median_s"),
            record.get("note"),
        )
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out or machine_info.REPO / "runs" / f"benchmarks-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    shared = ["--baselines-cache", str(out / "baselines.json"), "--keras-backends", args.keras_backends, "--no-table"]
    shared += ["--quick"] if args.quick else []
    shared += ["--synthetic"] if args.synthetic else []
    shared += ["--no-baselines"] if args.no_baselines else []
    records, failures, started = [], [], time.perf_counter()
    load_before = machine_info.env_record()["load_average"]
    for name in args.only:
        command = [sys.executable, str(Path(__file__).resolve().parent / FILES[name]), *shared]
        if name == "study" and args.keras_study:
            command.append("--keras-study")
        if name == "study" and not args.quick:  # issue 14: the default 4 seeds, and one core against two
            command += ["--default-seeds", "4", "--one-core"]
        reporting.log(f"== {FILES[name]} ==")
        start = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        (out / f"{name}.jsonl").write_text(done.stdout)
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        records += lines
        reporting.log(f"   {len(lines)} records in {time.perf_counter() - start:.0f} s")
        if done.returncode != 0:
            failures.append(f"{FILES[name]} exited {done.returncode}")
    total = time.perf_counter() - started
    (out / "results.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    env = machine_info.env_record()
    header = [
        f"Machine: {env['cpu']}, {env['cpus_usable']} usable CPUs, {env['memory_gb']} GB; JAX {env['versions']['jax']} on {', '.join(env['devices'])}.",
        f"Date: {env['date']}; commit {env['git']}; load average (1, 5, 15 min) at the start {load_before}, at the end {env['load_average']}.",
        f"Command: `python benchmarks/run_all.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip()
        + f" ({total / 60:.1f} minutes).",
        "",
    ]
    table = unique(records)
    markdown = (
        "\n".join(header)
        + "Targets (issue 8; ratios measured in this run unless marked *):\n\n"
        + reporting.markdown_targets(table)
    )
    markdown += "\n\nEvery measurement:\n\n" + reporting.markdown_table(table) + "\n"
    if any(
        record.get("cited") or any((figures or {}).get("cited") for figures in (record.get("vs") or {}).values())
        for record in table
    ):
        markdown += "\n`*` cited reference figure (shared/DATA.md), not measured in this run.\n"
    (out / "table.md").write_text(markdown)
    reporting.print_table(table, file=sys.stdout)
    reporting.log(f"\nwrote {out}/ (results.jsonl, table.md) in {total / 60:.1f} minutes")
    for failure in failures:
        reporting.log(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
