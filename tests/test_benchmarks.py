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

import numpy as np
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
    "study": ("bench_study.py", ["--commands", "train", "--repeats", "1", "--budget", "0", "--rows", "256"]),
    "scaling": ("bench_scaling.py", ["--num-words", "2000"]),
    "roofline": ("roofline.py", ["--rows", "256", "--repeats", "1"]),
    "vmap": ("vmap_baseline.py", ["--variants", "2"]),
}
NUMBA_INSTALLED = importlib.util.find_spec("numba") is not None
if NUMBA_INSTALLED:  # the floor's loops need numba (the bench extra); without it see the skip-note test
    SCRIPTS["floor"] = ("floor.py", [])
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
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip(),
    }
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
    assert (
        0 < ours["compile"]["median_s"] <= ours["epoch_first"]["median_s"]
    )  # compiling happens inside the first epoch
    assert steady["roofline_pct"] > 0 and steady["roofline"]["fused_width"] == 16
    fitted = ours["fit_4_epochs"]
    correct = fitted["test_accuracy"] * fitted["config"]["test_reviews"]  # a count of test reviews, over all of them
    assert correct == pytest.approx(round(correct), abs=1e-6) and fitted["config"]["test_reviews"] == 512
    assert "reference_loop 16-16" in by_what(records, "epoch_steady")
    assert "reference_loop" in steady["vs"]
    targets = by_what(records, "target")
    reference = next(record for name, record in targets.items() if "reference_loop" in name)
    assert reference["value"] > 0 and reference["threshold"] == 1.25
    assert "imdb_jax sparse" in reference["figure"]


def test_variants_compare_each_variant_epoch_with_a_solo_epoch(runs):
    records = records_of(runs["variants"])
    fused = by_what(records, "variant_epoch")["imdb_jax 2x 16-16"]
    assert (
        fused["config"]["blocks"] == [{"hidden_units": [16, 16], "variants": 2}]
        and fused["config"]["fused_width"] == 32
    )
    assert "solo_epoch" in fused["vs"] and fused["peak_rss_mb"] > 0
    targets = by_what(records, "target")
    assert {"<=", ">="} == {record["op"] for record in targets.values()}
    assert any(record["value"] is not None and "solo" in name for name, record in targets.items())


def test_study_times_cold_and_warm_processes(runs):
    records = records_of(runs["study"])
    cold, warm = (
        by_what(records, "end_to_end_cold")["imdb-jax train"],
        by_what(records, "end_to_end_warm")["imdb-jax train"],
    )
    assert cold["config"]["data"] == "synthetic aclImdb" and cold["config"]["train_reviews"] == 256
    # The same command on the same data: the warm process (compiled programs from the cache) ends
    # with exactly the cold one's model; its accuracy is a count of the 256 test reviews.
    assert warm["test_accuracy"] == cold["test_accuracy"] and warm["cold_over_warm"] > 0
    assert warm["test_accuracy"] * 256 == pytest.approx(round(warm["test_accuracy"] * 256), abs=1e-6)
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


def test_floor_does_the_package_arithmetic_and_times_its_epochs(runs):
    if not NUMBA_INSTALLED:
        pytest.skip("numba is not installed (the bench extra)")
    records = records_of(runs["floor"])
    (check,) = by_what(records, "check").values()
    assert check["agrees"] is True and check["loss_rel_diff"] <= 1e-3 and check["weights_max_abs_diff"] <= 1e-4
    assert 0 < check["floor_loss"] < 1  # BCE of an untrained-ish model on balanced labels: about log 2
    steady = by_what(records, "epoch_steady")
    assert steady["floor numba 16-16"]["repeats"] == 2 and steady["floor numba 16-16"]["config"]["train_reviews"] == 512
    assert "floor" in steady["imdb_jax 16-16"]["vs"]
    (target,) = by_what(records, "target").values()
    assert target["op"] == "<=" and target["threshold"] == 1.0 and target["value"] > 0


def test_floor_without_numba_says_how_to_install_it():
    import floor

    missing = floor.numba_missing()
    assert (missing is None) == NUMBA_INSTALLED
    if missing is not None:
        assert missing.startswith("skipped:") and "[bench]" in missing


def test_vmap_baseline_trains_what_fit_trains_beside_the_fused_engine(runs):
    records = records_of(runs["vmap"])
    (check,) = by_what(records, "check").values()
    assert check["agrees"] is True and check["config"]["precision"] == "float32"
    variant = by_what(records, "variant_epoch")
    fused, vmap = variant["imdb_jax 2x 16-16"], variant["vmap 2x 16-16"]
    assert {"solo_epoch", "vmap"} <= fused["vs"].keys() and "solo_epoch" in vmap["vs"]
    assert fused["config"]["fused_width"] == 32 and vmap["config"]["variants"] == 2
    steady = by_what(records, "epoch_steady")["vmap 2x 16-16"]
    assert math.isclose(vmap["median_s"], steady["median_s"] / 2) and 0 <= steady["densify_s"] <= steady["median_s"]
    targets = by_what(records, "target")
    assert sorted((record["op"], record["threshold"]) for record in targets.values()) == [("<=", 0.25), (">=", 4.0)]


@pytest.mark.skipif(BASELINES_INSTALLED, reason="a baseline package is installed here; its skip note cannot be checked")
def test_missing_baselines_are_skipped_with_a_clear_note(runs):
    notes = {record["name"]: record["note"] for record in records_of(runs["single"]) if record["what"] == "note"}
    for name in ("keras_tensorflow", "keras_jax", "sklearn_logreg"):
        assert name in notes, notes
        assert notes[name].startswith("skipped:") and "not installed" in notes[name] and "[bench]" in notes[name]


# ---------------------------------------------------------------------------------------------
# The pieces, against figures worked out by hand.


def test_compile_clock_counts_overlapping_spans_once():
    from imdb_jax.train.compile_clock import CompileClock

    clock = CompileClock()
    clock.spans = [(0.0, 2.0, "outer"), (1.0, 3.0, "inner"), (5.0, 6.0, "later")]
    assert math.isclose(clock.seconds(), 4.0)
    assert math.isclose(clock.seconds(1.5, 5.5), 1.5 + 0.5)
    assert clock.seconds(3.0, 5.0) == 0.0


def test_roofline_cost_model_of_the_seed_model():
    import roofline

    from imdb_jax.models.layout import make_layout

    x = scipy.sparse.csr_matrix((np.random.default_rng(0).random((1000, 300)) < 0.1).astype(np.float32))
    layout, _ = make_layout(300, [((16, 16), False, False)])
    cost = roofline.epoch_cost(layout, x, batch_size=512)
    assert cost.steps == 2
    assert cost.bag_bytes == 2 * x.nnz * 16 * 4
    assert cost.optimizer_bytes == 6 * 300 * 16 * 4 * 2 and cost.penalty_bytes == 0 and cost.head_bytes == 0
    assert cost.flops == 6 * 512 * (16 * 16 + 16 * 1) * 2
    times = cost.seconds({"bandwidth_gb_s": 10.0, "matmul_gflop_s": 100.0})
    assert math.isclose(times["roofline_s"], cost.bytes / 10e9 + cost.flops / 100e9)
    fields = roofline.roofline_fields(
        layout, x, 2 * times["roofline_s"], {"bandwidth_gb_s": 10.0, "matmul_gflop_s": 100.0}
    )
    assert math.isclose(fields["roofline_pct"], 50.0)


def test_roofline_counts_penalised_columns_and_the_dense_head():
    import roofline

    from imdb_jax.models.layout import make_layout

    x = scipy.sparse.csr_matrix(np.eye(512, 100, dtype=np.float32))  # one word per row, words 0-99
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
    assert (
        reporter.target("unmeasured", value=None, threshold=25, op=">=", figure="", why_not="no Keras")["met"] is None
    )
    assert reporter.target("a share", value=34.0, threshold=None, op="report", figure="", unit=" %")["met"] is None
    rows = reporting.target_rows(reporter.records)
    assert [row[-1] for row in rows] == ["met", "not met", "met", "not measured", "reported"]
    with pytest.raises(ValueError):
        reporter.target("bad", value=1.0, threshold=1.0, op="<", figure="")
    capsys.readouterr()


def test_growth_line_through_epoch_times():
    import bench_variants

    line = bench_variants.growth([(1, 0.5), (4, 0.8), (16, 2.0)])
    assert math.isclose(line["fixed_s"], 0.4) and math.isclose(line["per_variant_s"], 0.1)  # pyright: ignore[reportOptionalSubscript]
    assert bench_variants.growth([(1, 0.5)]) is None


def test_variant_counts_beyond_the_budget_are_skipped():
    import bench_variants

    args = types.SimpleNamespace(budget=60.0, repeats=3)
    points = [(1, 0.1), (4, 0.4), (16, 1.6)]  # 0.1 s per variant
    assert bench_variants.repeats_for(64, points, args) == 3  # pyright: ignore[reportArgumentType]
    assert bench_variants.repeats_for(256, points, args) == 2  # 25.6 s per epoch: fewer repeats  # pyright: ignore[reportArgumentType]
    assert bench_variants.repeats_for(1024, points, args) == 0  # 102 s per epoch: not run  # pyright: ignore[reportArgumentType]


def test_baseline_availability_matches_what_is_installed():
    for backend in baselines.KERAS_BACKENDS:
        missing = baselines.keras_missing(backend)
        installed = all(importlib.util.find_spec(name) is not None for name in ("keras", backend))
        assert (missing is None) == installed
    assert (baselines.sklearn_missing() is None) == (importlib.util.find_spec("sklearn") is not None)
    assert baselines.keras_missing("torch").startswith("unknown Keras backend")  # pyright: ignore[reportOptionalMemberAccess]


def test_summary_statistics():
    summary = clocks.summarize([3.0, 1.0, 2.0, 10.0])
    assert (summary["median_s"], summary["min_s"], summary["max_s"], summary["repeats"]) == (2.5, 1.0, 10.0, 4)
    assert summary["samples_s"] == [3.0, 1.0, 2.0, 10.0]  # in the order measured
    assert clocks.summarize([0.5])["q1_s"] == clocks.summarize([0.5])["q3_s"] == 0.5
    figures = yardsticks.compare(0.1, 2.0)
    assert math.isclose(figures["ratio"], 0.05) and math.isclose(figures["speedup"], 20.0)  # pyright: ignore[reportOptionalSubscript]
    assert yardsticks.compare(0.1, None) is None


def test_cited_keras_figures_only_for_the_data_they_were_measured_on():
    small = review_data.load_dataset(1000, synthetic=True, rows=64)
    assert yardsticks.versus(0.2, {}, "steady_epoch_s", "keras_tensorflow_epoch_steady_s", small) == {}
    full = review_data.Dataset(
        types.SimpleNamespace(x=scipy.sparse.csr_matrix((25000, 10000), dtype="float32")), None, "imdb"
    )
    cited = yardsticks.versus(0.2, {}, "steady_epoch_s", "keras_tensorflow_epoch_steady_s", full)[
        "keras_tensorflow_cited"
    ]
    assert cited["cited"] is True and math.isclose(cited["speedup"], 1.8 / 0.2)
    measured = yardsticks.versus(
        0.2, {"keras_tensorflow": {"steady_epoch_s": 2.0}}, "steady_epoch_s", "keras_tensorflow_epoch_steady_s", full
    )
    assert set(measured) == {"keras_tensorflow"}


def test_script_parsers_read_description_and_examples_from_the_docstring():
    import cli_options

    parser = cli_options.parser("What it measures.\n\nMore words.\n\n  python it.py --quick")
    assert parser.description == "What it measures." and parser.epilog == "More words.\n\n  python it.py --quick"
    assert cli_options.parser(None).epilog is None


def test_device_check_script_parses():
    done = subprocess.run(["bash", "-n", str(BENCHMARKS / "device_check.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_device_summary_reads_steps_tests_and_targets(tmp_path):
    import device_summary

    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1" time="2.5">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="no"/></testcase>'
        '<testcase classname="tests.test_a" name="test_skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    steps = [
        {"step": "tests", "status": "ok", "seconds": 3, "limit_s": 150},
        {"step": "study", "status": "timeout", "seconds": 150, "limit_s": 150},
    ]
    target = {
        "bench": "vmap",
        "what": "target",
        "name": "fused >= 4x vmap",
        "value": 5.0,
        "threshold": 4.0,
        "op": ">=",
        "met": True,
        "figure": "5x",
    }
    steady = {
        "bench": "vmap",
        "what": "variant_epoch",
        "name": "vmap 64x 16-16",
        "median_s": 0.5,
        "config": {"variants": 64},
    }
    summary = device_summary.summarize(
        steps,
        [target, steady, {"bench": "single", "what": "note", "name": "x"}],
        {"jax_backend": "gpu"},
        device_summary.test_counts(junit),
        data="synthetic",
        budget=480,
        elapsed=300,
    )
    assert summary["tests"]["failed"] == ["tests.test_a::test_bad"] and summary["tests"]["skipped"] == 1
    assert [item["name"] for item in summary["targets"]] == ["fused >= 4x vmap"] and summary["records"] == 3
    assert [item["name"] for item in summary["figures"]] == ["vmap 64x 16-16"]
    text = "\n".join(summary["lines"])
    assert "step study: timeout" in text and "3 run, 1 failed" in text and "[met] fused >= 4x vmap" in text
    assert device_summary.test_counts(tmp_path / "missing.xml") is None


def test_bag_experiments_time_each_variant_beside_the_package_and_find_them_bitwise_equal():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bag_experiments.py"), "--widths", "16,256", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    # Per width: the bag, the backward, the segment sum, rmsprop; the tiles only where they fit.
    assert sum("the package's bag" in line for line in lines) == 2
    assert sum("tiled by" in line for line in lines) == 3  # 32, 64, 128 at width 256; none at 16
    checked = [line for line in lines if "bitwise" in line]
    assert len(checked) == 2 * 2 + 3 and all(line.endswith("bitwise True") for line in checked)
    assert sum("rmsprop update" in line and "loop fusion" in line for line in lines) == 2


def test_bag_kernel_benchmark_compares_like_for_like(capsys):
    """benchmarks/bag_kernel.py times XLA's loop, the package's C++ kernel and (with numba) plain
    loops: all add in occurrence order, so all must give the same bits, or a speed-up would not
    be a like-for-like figure."""
    import bag_kernel as bench

    from imdb_jax.models import bag_kernel

    assert bench.main(["--widths", "16", "40", "--repeats", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    measured = {record["name"]: record for record in records if record["what"] == "bag_kernel"}
    assert set(measured) == {"width_16", "width_40"}
    for record in measured.values():
        assert record["bitwise"] is True
        assert record["xla_forward_s"] > 0 and record["xla_backward_s"] > 0
        assert ("kernel_forward_s" in record) == bag_kernel.available()
        assert ("loop_forward_s" in record) == NUMBA_INSTALLED


def test_op_profile_sums_xlas_compute_thread_events_by_name(tmp_path):
    """op_profile.py counts the ops XLA's compute threads record, not the executor's spans around
    them nor the Python thread's."""
    import gzip

    import op_profile

    events = [
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 10, "args": {"name": "tf_XLAEigen/1"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 11, "args": {"name": "tf_XLAEigen/2"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 20, "args": {"name": "python"}},
        {"ph": "X", "name": "ThunkExecutor::Execute", "pid": 1, "tid": 10, "dur": 900.0},
        {"ph": "X", "name": "ffi_call.7", "pid": 1, "tid": 10, "dur": 300.0},
        {"ph": "X", "name": "ffi_call.7", "pid": 1, "tid": 11, "dur": 200.0},
        {"ph": "X", "name": "copy.3", "pid": 1, "tid": 11, "dur": 5.0},
        {"ph": "X", "name": "ffi_call.7", "pid": 1, "tid": 20, "dur": 1000.0},
        {"ph": "i", "name": "ffi_call.7", "pid": 1, "tid": 10},
    ]
    trace = tmp_path / "vm.trace.json.gz"
    with gzip.open(trace, "wt") as handle:
        json.dump({"traceEvents": events}, handle)
    assert op_profile.op_times(str(trace)) == {"ffi_call.7": (2, 500.0), "copy.3": (1, 5.0)}
