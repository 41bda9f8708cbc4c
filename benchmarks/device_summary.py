"""The summary of one `device_check.sh` run: each step's status, the tests' counts, every target
record and the main figures, as one JSON object on stdout (with readable `lines`).

  python benchmarks/device_summary.py --steps STEPS.jsonl --results results.jsonl --env env.json \
      [--junit junit.xml] [--data synthetic] [--budget 480] [--elapsed 431]
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

# The figures worth a line of their own: (bench, what, name prefix).
MAIN_FIGURES = (
    ("roofline", "machine", ""),
    ("single", "epoch_steady", "imdb_jax"),
    ("single", "epoch_steady", "reference_loop"),
    ("variants", "variant_epoch", "imdb_jax"),
    ("vmap", "variant_epoch", ""),
    ("vmap", "check", ""),
    ("study", "end_to_end_warm", ""),
    ("study", "end_to_end_cold", ""),
)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (missing file: none; a broken line is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def test_counts(junit: Path | None) -> dict[str, Any] | None:
    """{"tests", "failures", "errors", "skipped", "seconds", "failed": [test ids]} from pytest's
    JUnit XML, or None when there is none (pytest cut off by its limit, or not run)."""
    if junit is None or not junit.is_file():
        return None
    root = ElementTree.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {
        key: sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors", "skipped")
    }
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return {**counts, "seconds": round(sum(float(suite.get("time", 0)) for suite in suites), 1), "failed": failed}


def figure(record: dict[str, Any]) -> dict[str, Any]:
    """The few fields of a record a summary keeps."""
    keys = (
        "median_s",
        "min_s",
        "max_s",
        "repeats",
        "compile_s",
        "bandwidth_gb_s",
        "matmul_gflop_s",
        "test_accuracy",
        "agrees",
        "loss_rel_diff",
        "vs",
    )
    kept = {key: record[key] for key in keys if key in record}
    config = record.get("config", {})
    kept["config"] = {
        key: config[key]
        for key in ("data", "train_reviews", "path", "variants", "fused_width", "precision")
        if key in config
    }
    return {"bench": record.get("bench"), "what": record.get("what"), "name": record.get("name"), **kept}


def summarize(
    steps: list[dict], results: list[dict], env: dict, tests: dict | None, *, data: str, budget: float, elapsed: float
) -> dict[str, Any]:
    """The summary object (see the module docstring)."""
    targets = [
        {key: record.get(key) for key in ("bench", "name", "value", "threshold", "op", "met", "figure", "why_not")}
        for record in results
        if record.get("what") == "target"
    ]
    figures = [
        figure(record)
        for record in results
        if any(
            record.get("bench") == bench
            and record.get("what") == what
            and str(record.get("name", "")).startswith(prefix)
            for bench, what, prefix in MAIN_FIGURES
        )
    ]
    test_step = next((step for step in steps if step.get("step") == "tests"), None)
    lines = [
        f"device check: {elapsed:.0f} s of a {budget:.0f} s budget; JAX {env.get('versions', {}).get('jax')} on {env.get('jax_backend')} "
        f"({', '.join(env.get('jax_devices', [])[:2])}); data: {data}",
    ]
    lines += [
        f"  step {step['step']}: {step['status']} ({step.get('seconds', 0)} s of {step.get('limit_s')} s)"
        for step in steps
    ]
    if tests is not None:
        lines.append(
            f"  tests: {tests['tests']} run, {tests['failures']} failed, {tests['errors']} errors, {tests['skipped']} skipped in {tests['seconds']} s"
        )
        lines += [f"    failed: {name}" for name in tests["failed"][:20]]
    elif test_step is not None:
        lines.append(f"  tests: no results ({test_step['status']}); tests.txt shows how far they got")
    for item in figures:
        value = item.get("median_s")
        shown = (
            f"{value:.4g} s"
            if value is not None
            else ", ".join(
                f"{key} {item[key]:.4g}" for key in ("bandwidth_gb_s", "matmul_gflop_s", "loss_rel_diff") if key in item
            )
        )
        lines.append(f"  {item['bench']}: {item['name']} {item['what']}: {shown}")
    for target in targets:
        status = (
            "not measured"
            if target["value"] is None
            else ("reported" if target["met"] is None else ("met" if target["met"] else "NOT met"))
        )
        value = "" if target["value"] is None else f"{target['value']:.4g} "
        said = target["why_not"] if target["value"] is None else target["figure"]
        lines.append(f"  target [{status}] {target['name']}: {value}({said})")
    return {
        "budget_s": budget,
        "elapsed_s": elapsed,
        "data": data,
        "env": env,
        "steps": steps,
        "tests": tests,
        "targets": targets,
        "figures": figures,
        "records": len(results),
        "lines": lines,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--steps", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--env", type=Path, required=True)
    parser.add_argument("--junit", type=Path, default=None)
    parser.add_argument("--data", default="unknown")
    parser.add_argument("--budget", type=float, default=0.0)
    parser.add_argument("--elapsed", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        env = json.loads(args.env.read_text())
    except (OSError, json.JSONDecodeError):
        env = {}
    summary = summarize(
        read_lines(args.steps),
        read_lines(args.results),
        env,
        test_counts(args.junit),
        data=args.data,
        budget=args.budget,
        elapsed=args.elapsed,
    )
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
