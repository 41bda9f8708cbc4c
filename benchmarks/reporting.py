"""The benchmarks' output: one JSON record per measurement on stdout, targets, and the tables.

Output contract (see README.md): each measurement is ONE JSON line on stdout; progress, notes and
the readable table go to stderr, so `python benchmarks/bench_single.py > single.jsonl` collects
clean JSON lines while the table still shows on the terminal.

Every record carries:
  bench, what, name, config          what was measured, and how it was set up
  env                                devices, versions, CPU count, load average, date, git commit
and timing records also carry:
  median_s, min_s, max_s, q1_s, q3_s, repeats, samples_s   (`clocks.summarize`)
  compile_s                          (where there is a compilation) measured apart from the above
  vs                                 {baseline: {"baseline_s", "ratio", "speedup"}} with ratio =
                                     imdb_jax time / baseline time, measured in the same run
                                     (`yardsticks.compare`)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np
from machine_info import env_record

SCHEMA = 1


def log(*parts: Any) -> None:
    """A progress line on stderr (stdout is reserved for JSON records)."""
    print(*parts, file=sys.stderr, flush=True)


class Reporter:
    """Prints one JSON line per measurement to stdout and keeps them for the closing table."""

    def __init__(self, bench: str, args: argparse.Namespace | None = None):
        self.bench = bench
        self.records: list[dict[str, Any]] = []
        self.run = {} if args is None else {"quick": bool(getattr(args, "quick", False)), "argv": sys.argv[1:]}

    def emit(self, what: str, name: str, config: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Prints and keeps one record; `fields` may hold a `summarize` dict, compile_s, vs, ..."""
        record = {"schema": SCHEMA, "bench": self.bench, "what": what, "name": name, "config": config, **fields}
        record["run"] = self.run
        record["env"] = env_record()
        print(json.dumps(_jsonable(record), sort_keys=False), flush=True)
        self.records.append(record)
        return record

    def note(self, name: str, note: str, **fields: Any) -> dict[str, Any]:
        """A record that says something was not measured, and why (e.g. a baseline skipped)."""
        log(f"note: {name}: {note}")
        return self.emit("note", name, {}, note=note, **fields)

    def target(
        self,
        target: str,
        *,
        value: float | None,
        threshold: float | None,
        op: str,
        figure: str,
        config: dict[str, Any] | None = None,
        cited: bool = False,
        why_not: str | None = None,
        unit: str = "x",
    ) -> dict[str, Any]:
        """A record of one issue target: `value` (a ratio) against `threshold` by `op`.

        Args:
          target: the target as the issue states it.
          value: the measured ratio; None when it could not be measured (`why_not` says why).
          threshold: the bound (None with op "report").
          op: "<=" (value at most threshold), ">=", or "report" (a figure the issue asks to see,
            with no bound: `met` stays None).
          figure: the measured figures the ratio comes from, in words.
          cited: the ratio uses a cited reference figure, not one measured in this run.
          unit: how the value reads ("x" for a ratio, "" for a plain figure such as an accuracy).
        """
        if op not in ("<=", ">=", "report"):
            raise ValueError(f"op must be <=, >= or report, got {op!r}")
        met = None
        if value is not None and op != "report":
            if threshold is None:
                raise ValueError(f"op {op} needs a threshold")
            met = value <= threshold if op == "<=" else value >= threshold
        if value is None:
            log(f"target: {target}: not measured ({why_not})")
        elif op == "report":
            log(f"target: {target}: {value:.4g}{unit} ({figure})")
        else:
            log(f"target: {target}: {value:.4g}{unit} ({'met' if met else 'not met'}; {figure})")
        return self.emit(
            "target",
            target,
            config or {},
            value=value,
            threshold=threshold,
            op=op,
            met=met,
            figure=figure,
            cited=cited,
            why_not=why_not,
            unit=unit,
        )

    def table(self, file=None) -> None:
        print_table(self.records, file=file or sys.stderr)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, float) and value != value:
        return None
    return value


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value == 0:
        return "0"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.2f}"
    if value >= 0.01:
        return f"{value:.3f}"
    return f"{value * 1000:.2f}ms"


def _versus(record: dict[str, Any]) -> str:
    parts = []
    for baseline, figures in (record.get("vs") or {}).items():
        if figures:
            label = baseline + ("*" if figures.get("cited") else "")
            parts.append(f"{label} {figures['ratio']:.3g}x time ({figures['speedup']:.3g}x faster)")
    return "; ".join(parts)


def _extras(record: dict[str, Any]) -> str:
    parts = [_versus(record)]
    if record.get("roofline_pct") is not None:
        parts.append(f"roofline {record['roofline_s']:.3g} s = {record['roofline_pct']:.0f} %")
    if record.get("test_accuracy") is not None:
        parts.append(f"test accuracy {record['test_accuracy']:.4f}")
    if record.get("data_note"):
        parts.append(record["data_note"])
    return "; ".join(part for part in parts if part)


def table_rows(records: Iterable[dict[str, Any]]) -> list[list[str]]:
    """One row per timing record: name, what, median, spread, compile, peak MB, comparisons."""
    rows = []
    for record in records:
        if record.get("what") == "note":
            rows.append([record["name"], "not measured", "", "", "", "", record["note"]])
            continue
        if record.get("what") == "machine":
            value = record.get("bandwidth_gb_s")
            text = f"{value:.1f} GB/s" if value is not None else f"{record.get('matmul_gflop_s', 0):.1f} GFLOP/s"
            rows.append([record["name"], "machine", "", "", "", "", text])
            continue
        if "median_s" not in record:
            continue
        spread = f"{_seconds(record['min_s'])}-{_seconds(record['max_s'])} (n={record['repeats']})"
        peak = record.get("peak_rss_mb")
        rows.append(
            [
                record["name"],
                record["what"],
                _seconds(record["median_s"]),
                spread,
                _seconds(record.get("compile_s")),
                "" if peak is None else f"{peak:.0f}",
                _extras(record),
            ]
        )
    return rows


TABLE_HEADER = ["measurement", "what", "median s", "min-max s", "compile s", "peak MB", "vs baseline (same run)"]


def print_table(records: Iterable[dict[str, Any]], file=None) -> None:
    """A fixed-width table of `table_rows`."""
    file = file or sys.stderr
    records = list(records)
    rows = table_rows(records)
    if not rows and not target_rows(records):
        return
    widths = [max(len(str(row[index])) for row in rows + [TABLE_HEADER]) for index in range(len(TABLE_HEADER))]
    line = "  ".join(f"{{:<{width}}}" for width in widths)
    print(file=file)
    print(line.format(*TABLE_HEADER), file=file)
    print(line.format(*("-" * width for width in widths)), file=file)
    for row in rows:
        print(line.format(*row), file=file)
    targets = target_rows(records)
    if targets:
        widths = [max(len(str(row[index])) for row in targets + [TARGET_HEADER]) for index in range(len(TARGET_HEADER))]
        line = "  ".join(f"{{:<{width}}}" for width in widths)
        print(file=file)
        print(line.format(*TARGET_HEADER), file=file)
        print(line.format(*("-" * width for width in widths)), file=file)
        for row in targets:
            print(line.format(*row), file=file)
    if any("*" in row[-1] for row in rows) or any("*" in row[2] for row in targets):
        print("* cited reference figure (shared/DATA.md), not measured in this run", file=file)
    file.flush()


TARGET_HEADER = ["target", "measured", "ratio", "status"]


def target_rows(records: Iterable[dict[str, Any]]) -> list[list[str]]:
    """One row per target record: the target, the figures measured, the ratio, met or not."""
    rows = []
    for record in records:
        if record.get("what") != "target":
            continue
        if record["value"] is None:
            rows.append([record["name"], record.get("why_not") or "", "", "not measured"])
            continue
        unit = record.get("unit", "x")
        if record["op"] == "report":
            rows.append([record["name"], record["figure"], f"{record['value']:.3g}{unit}", "reported"])
            continue
        ratio = f"{record['value']:.4g}{unit} (target {record['op']} {record['threshold']:g}{unit})" + (
            "*" if record.get("cited") else ""
        )
        rows.append([record["name"], record["figure"], ratio, "met" if record["met"] else "not met"])
    return rows


def markdown_targets(records: Iterable[dict[str, Any]]) -> str:
    """The targets as a Markdown table."""
    rows = target_rows(records)
    lines = ["| " + " | ".join(TARGET_HEADER) + " |", "|" + "---|" * len(TARGET_HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_table(records: Iterable[dict[str, Any]]) -> str:
    """The same rows as a Markdown table (for README.md)."""
    rows = table_rows(records)
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
