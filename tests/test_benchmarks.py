"""The benchmark scripts in --quick mode on small synthetic data: they run, print well-formed JSON
lines with the required keys, target records and a table, and say clearly when a baseline is not
installed; and the pieces they compute with (compile-time accounting, the roofline's cost model,
targets) give the figures worked out by hand."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import scipy.sparse

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import baselines  # noqa: E402
import clocks  # noqa: E402
import reporting  # noqa: E402
import review_data  # noqa: E402
import yardsticks  # noqa: E402

RECORD_KEYS = {"schema", "bench", "what", "name", "config", "run", "env"}
TIMING_KEYS = {"median_s", "min_s", "max_s", "q1_s", "q3_s", "repeats", "samples_s"}
TARGET_KEYS = {"value", "threshold", "op", "met", "figure", "cited"}
ENV_KEYS = {"date", "cpu_count", "versions", "devices", "backend", "load_average"}

# Small enough that the scripts, run side by side, finish in well under a minute on the 2-core
# machine. Most of that is XLA compilation, which these smoke runs ask to be cheap (their
# figures are not looked at, only their form).
QUICK = ["--quick", "--synthetic", "--rows", "512", "--repeats", "2"]
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
SCRIPTS = {
    "single": ("bench_single.py", ["--first-layer", "sparse", "--fit-repeats", "1"]),
    "variants": ("bench_variants.py", ["--variants", "1,2", "--no-mixed", "--no-roofline"]),
    "study": ("bench_study.py", ["--commands", "train", "--repeats", "1", "--rows", "256"]),
    "scaling": ("bench_scaling.py", ["--num-words", "2000"]),
    "roofline": ("roofline.py", ["--rows", "256", "--repeats", "1"]),
}
BASELINE_PACKAGES = ("keras", "tensorflow", "sklearn")
BASELINES_INSTALLED = any(importlib.util.find_spec(name) is not None for name in BASELINE_PACKAGES)


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    """Each script's records, stderr and exit status; the scripts run side by side.

    Where no baseline package is installed (the project's own venv) the baselines stay on, as by
    default, so their skip notes can be checked; where they are installed they are turned off,
    since running Keras would take minutes.
    """
    extra = ["--no-baselines"] if BASELINES_INSTALLED else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()}
    processes = {
        name: subprocess.Popen(
            [sys.executable, str(BENCHMARKS / script), *QUICK, *options, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, (script, options) in SCRIPTS.items()
    }
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        results[name] = {"returncode": process.returncode, "stdout": stdout, "stderr": stderr}
    return results


def records_of(run: dict) -> list[dict]:
    assert run["returncode"] == 0, run["stderr"][-3000:]
    lines = run["stdout"].splitlines()
    assert lines, "no output on stdout"
    return [json.loads(line) for line in lines]  # stdout holds JSON lines only


def by_what(records: list[dict], what: str) -> dict[str, dict]:
    return {record["name"]: record for record in records if record["what"] == what}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_quick_run_prints_json_records_and_a_table(runs, name):
    records = records_of(runs[name])
    assert [record for record in records if "median_s" in record], "no timing records"
    for record in records:
        assert RECORD_KEYS <= record.keys(), record
        assert record["bench"] == name and record["run"]["quick"] is True
        assert ENV_KEYS <= record["env"].keys()
        assert record["env"]["devices"] and record["env"]["versions"]["jax"]
        if "median_s" in record:
            assert TIMING_KEYS <= record.keys(), record
            assert record["min_s"] <= record["q1_s"] <= record["median_s"] <= record["q3_s"] <= record["max_s"]
            assert record["repeats"] == len(record["samples_s"]) >= 1
        if record["what"] == "target":
            assert TARGET_KEYS <= record.keys() and record["op"] in ("<=", ">=", "report")
            assert (record["value"] is None or record["op"] == "report") == (record["met"] is None)
    assert "measurement" in runs[name]["stderr"] and "median s" in runs[name]["stderr"]


def test_single_times_epochs_through_the_library_and_against_the_reference_loop(runs):
    records = records_of(runs["single"])
    ours = {record["what"]: record for record in records if record["name"] == "imdb_jax sparse"}
    assert {"compile", "epoch_first", "epoch_steady", "fit_4_epochs"} <= ours.keys()
    steady = ours["epoch_steady"]
    assert steady["repeats"] == 2 and steady["config"]["path"] == "sparse" and not steady["recompiled"]
    assert 0 < ours["compile"]["median_s"] <= ours["epoch_first"]["median_s"]  # compiling happens inside the first epoch
    assert steady["roofline_pct"] > 0 and steady["roofline"]["fused_width"] == 16
    assert 0.0 <= ours["fit_4_epochs"]["test_accuracy"] <= 1.0
    assert "reference_loop 16-16" in by_what(records, "epoch_steady")
    assert "reference_loop" in steady["vs"]
    targets = by_what(records, "target")
    reference = next(record for name, record in targets.items() if "reference_loop" in name)
    assert reference["value"] > 0 and reference["threshold"] == 1.25
    assert "imdb_jax sparse" in reference["figure"]


def test_variants_compare_each_variant_epoch_with_a_solo_epoch(runs):
    records = records_of(runs["variants"])
    fused = by_what(records, "variant_epoch")["imdb_jax 2x 16-16"]
    assert fused["config"]["blocks"] == [{"hidden_units": [16, 16], "variants": 2}] and fused["config"]["fused_width"] == 32
    assert "solo_epoch" in fused["vs"] and fused["peak_rss_mb"] > 0
    targets = by_what(records, "target")
    assert {"<=", ">="} == {record["op"] for record in targets.values()}
    assert any(record["value"] is not None and "solo" in name for name, record in targets.items())


def test_study_times_cold_and_warm_processes(runs):
    records = records_of(runs["study"])
    cold, warm = by_what(records, "end_to_end_cold")["imdb-jax train"], by_what(records, "end_to_end_warm")["imdb-jax train"]
    assert cold["config"]["data"] == "synthetic aclImdb" and cold["config"]["train_reviews"] == 256
    assert 0 <= warm["test_accuracy"] <= 1 and warm["cold_over_warm"] > 0
    targets = by_what(records, "target")
    first_run = targets["imdb-jax train, first run (empty compile cache) <= 1.3x the second"]
    assert first_run["value"] is not None
    accuracy = next(record for name, record in targets.items() if "accuracy" in name)
    assert accuracy["value"] is None and "25,000" in accuracy["why_not"]  # synthetic data: not the real protocol


def test_scaling_measures_each_setting_in_its_own_process(runs):
    (record,) = by_what(records_of(runs["scaling"]), "epoch_steady").values()
    assert record["config"]["num_words"] == 2000 and record["config"]["path"] == "sparse"
    assert record["peak_rss_mb"] >= record["train_peak_rss_mb"] > 0


def test_roofline_reports_the_machine_and_three_epochs(runs):
    records = records_of(runs["roofline"])
    machine = by_what(records, "machine")
    assert machine["memory bandwidth (jitted axpy)"]["bandwidth_gb_s"] > 0
    assert machine["matmul FLOP/s (jitted float32)"]["matmul_gflop_s"] > 0
    epochs = by_what(records, "epoch_steady")
    assert [record["config"]["variants"] for record in epochs.values()] == [1, 1, 9]
    widths = [record["roofline"]["fused_width"] for record in epochs.values()]
    assert widths == [16, 512, 4 + 16 + 512 + 6 * 16]
    assert all(record["roofline_pct"] > 0 for record in epochs.values())
    reported = by_what(records, "target")
    assert len(reported) == 3 and {record["op"] for record in reported.values()} == {"report"}


@pytest.mark.skipif(BASELINES_INSTALLED, reason="a baseline package is installed here; its skip note cannot be checked")
def test_missing_baselines_are_skipped_with_a_clear_note(runs):
    notes = {record["name"]: record["note"] for record in records_of(runs["single"]) if record["what"] == "note"}
    for name in ("keras_tensorflow", "keras_jax", "sklearn_logreg"):
        assert name in notes, notes
        assert notes[name].startswith("skipped:") and "not installed" in notes[name] and "[bench]" in notes[name]


# ---------------------------------------------------------------------------------------------
# The pieces, against figures worked out by hand.


def test_compile_clock_counts_overlapping_spans_once():
    clock = clocks.CompileClock()
    clock.spans = [(0.0, 2.0, "outer"), (1.0, 3.0, "inner"), (5.0, 6.0, "later")]
    assert math.isclose(clock.seconds(), 4.0)
    assert math.isclose(clock.seconds(1.5, 5.5), 1.5 + 0.5)
    assert clock.seconds(3.0, 5.0) == 0.0


def test_roofline_cost_model_of_the_seed_model():
    import roofline

    from imdb_jax.models.layout import make_layout

    x = scipy.sparse.random(1000, 300, density=0.1, format="csr", random_state=0, dtype="float32")
    layout, _ = make_layout(300, [((16, 16), False, False)])
    cost = roofline.epoch_cost(layout, x, batch_size=512)
    assert cost.steps == 2
    assert cost.bag_bytes == 2 * x.nnz * 16 * 4
    assert cost.optimizer_bytes == 6 * 300 * 16 * 4 * 2 and cost.penalty_bytes == 0 and cost.head_bytes == 0
    assert cost.flops == 6 * 512 * (16 * 16 + 16 * 1) * 2
    times = cost.seconds({"bandwidth_gb_s": 10.0, "matmul_gflop_s": 100.0})
    assert math.isclose(times["roofline_s"], cost.bytes / 10e9 + cost.flops / 100e9)
    fields = roofline.roofline_fields(layout, x, 2 * times["roofline_s"], {"bandwidth_gb_s": 10.0, "matmul_gflop_s": 100.0})
    assert math.isclose(fields["roofline_pct"], 50.0)


def test_roofline_counts_penalised_columns_and_the_dense_head():
    import roofline

    from imdb_jax.models.layout import make_layout

    x = scipy.sparse.csr_matrix(scipy.sparse.eye(512, 100, dtype="float32"))  # one word per row, words 0-99
    layout, _ = make_layout(100, [((4,), False, True), ((8,), False, False)])
    cost = roofline.epoch_cost(layout, x, batch_size=512, dense_words=10)
    assert cost.bag_bytes == 2 * 90 * 12 * 4  # the ten head words are multiplied, not gathered
    assert cost.penalty_bytes == 2 * 100 * 4 * 4
    assert cost.head_bytes == 512 * 10 * 4 * 2
    assert cost.flops == 6 * 512 * 4 + 6 * 512 * 8 + 4 * 512 * 10 * 12


def test_targets_are_met_by_the_side_of_the_threshold_they_fall(capsys):
    reporter = reporting.Reporter("test")
    assert reporter.target("at most", value=1.2, threshold=1.25, op="<=", figure="")["met"] is True
    assert reporter.target("at most", value=1.3, threshold=1.25, op="<=", figure="")["met"] is False
    assert reporter.target("at least", value=30.0, threshold=25, op=">=", figure="")["met"] is True
    assert reporter.target("unmeasured", value=None, threshold=25, op=">=", figure="", why_not="no Keras")["met"] is None
    assert reporter.target("a share", value=34.0, threshold=None, op="report", figure="", unit=" %")["met"] is None
    rows = reporting.target_rows(reporter.records)
    assert [row[-1] for row in rows] == ["met", "not met", "met", "not measured", "reported"]
    with pytest.raises(ValueError):
        reporter.target("bad", value=1.0, threshold=1.0, op="<", figure="")
    capsys.readouterr()


def test_growth_line_through_epoch_times():
    import bench_variants

    line = bench_variants.growth([(1, 0.5), (4, 0.8), (16, 2.0)])
    assert math.isclose(line["fixed_s"], 0.4) and math.isclose(line["per_variant_s"], 0.1)
    assert bench_variants.growth([(1, 0.5)]) is None


def test_variant_counts_beyond_the_budget_are_skipped():
    import bench_variants

    args = types.SimpleNamespace(budget=60.0, repeats=3)
    points = [(1, 0.1), (4, 0.4), (16, 1.6)]  # 0.1 s per variant
    assert bench_variants.repeats_for(64, points, args) == 3
    assert bench_variants.repeats_for(256, points, args) == 2  # 25.6 s per epoch: fewer repeats
    assert bench_variants.repeats_for(1024, points, args) == 0  # 102 s per epoch: not run


def test_baseline_availability_matches_what_is_installed():
    for backend in baselines.KERAS_BACKENDS:
        missing = baselines.keras_missing(backend)
        installed = all(importlib.util.find_spec(name) is not None for name in ("keras", backend))
        assert (missing is None) == installed
    assert (baselines.sklearn_missing() is None) == (importlib.util.find_spec("sklearn") is not None)
    assert baselines.keras_missing("torch").startswith("unknown Keras backend")


def test_summary_statistics():
    summary = clocks.summarize([3.0, 1.0, 2.0, 10.0])
    assert (summary["median_s"], summary["min_s"], summary["max_s"], summary["repeats"]) == (2.5, 1.0, 10.0, 4)
    assert summary["samples_s"] == [3.0, 1.0, 2.0, 10.0]  # in the order measured
    assert clocks.summarize([0.5])["q1_s"] == clocks.summarize([0.5])["q3_s"] == 0.5
    figures = yardsticks.compare(0.1, 2.0)
    assert math.isclose(figures["ratio"], 0.05) and math.isclose(figures["speedup"], 20.0)
    assert yardsticks.compare(0.1, None) is None


def test_cited_keras_figures_only_for_the_data_they_were_measured_on():
    small = review_data.load_dataset(1000, synthetic=True, rows=64)
    assert yardsticks.versus(0.2, {}, "steady_epoch_s", "keras_tensorflow_epoch_steady_s", small) == {}
    full = review_data.Dataset(types.SimpleNamespace(x=scipy.sparse.csr_matrix((25000, 10000), dtype="float32")), None, "imdb")
    cited = yardsticks.versus(0.2, {}, "steady_epoch_s", "keras_tensorflow_epoch_steady_s", full)["keras_tensorflow_cited"]
    assert cited["cited"] is True and math.isclose(cited["speedup"], 1.8 / 0.2)
    measured = yardsticks.versus(0.2, {"keras_tensorflow": {"steady_epoch_s": 2.0}}, "steady_epoch_s", "keras_tensorflow_epoch_steady_s", full)
    assert set(measured) == {"keras_tensorflow"}
