"""The benchmark scripts in --quick mode on small synthetic data: they run, print well-formed JSON
lines with the required keys and a table, and say clearly when a baseline is not installed."""

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
import common  # noqa: E402

RECORD_KEYS = {"schema", "bench", "what", "name", "config", "run", "env"}
TIMING_KEYS = {"median_s", "min_s", "max_s", "q1_s", "q3_s", "repeats", "samples_s"}
ENV_KEYS = {"date", "cpu_count", "versions", "devices", "backend", "load_average"}

# Small enough that the four scripts, run side by side, take about 20-30 s on a quiet 2-core
# machine. Most of that is XLA compilation, which these smoke runs ask to be cheap (their
# figures are not looked at, only their form).
QUICK = ["--quick", "--synthetic", "--rows", "512", "--repeats", "2"]
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
SCRIPTS = {
    "single": ["--first-layer", "sparse", "--fit-repeats", "1"],
    "variants": ["--variants", "2", "--no-mixed"],
    "study": ["--models", "2", "--epochs", "2"],
    "scaling": ["--num-words", "2000"],
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
            [sys.executable, str(BENCHMARKS / f"bench_{name}.py"), *QUICK, *options, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, options in SCRIPTS.items()
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


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_quick_run_prints_json_records_and_a_table(runs, name):
    records = records_of(runs[name])
    timings = [record for record in records if "median_s" in record]
    assert timings, "no timing records"
    for record in records:
        assert RECORD_KEYS <= record.keys(), record
        assert record["bench"] == name and record["run"]["quick"] is True
        assert ENV_KEYS <= record["env"].keys()
        assert record["env"]["devices"] and record["env"]["versions"]["jax"]
    for record in timings:
        assert TIMING_KEYS <= record.keys(), record
        assert record["min_s"] <= record["q1_s"] <= record["median_s"] <= record["q3_s"] <= record["max_s"]
        assert record["repeats"] == len(record["samples_s"]) >= 1
        for figures in (record.get("vs") or {}).values():
            assert math.isclose(figures["ratio"] * figures["speedup"], 1.0, rel_tol=1e-9)
    assert "measurement" in runs[name]["stderr"] and "median s" in runs[name]["stderr"]


def test_single_reports_compile_apart_from_steady_epochs(runs):
    records = {record["what"]: record for record in records_of(runs["single"]) if record["name"] == "imdb_jax sparse"}
    assert {"compile", "epoch_first", "epoch_steady", "fit_4_epochs"} <= records.keys()
    steady = records["epoch_steady"]
    assert steady["repeats"] == 2 and steady["compile_s"] > 0 and steady["config"]["path"] == "sparse"
    assert records["epoch_first"]["median_s"] >= records["compile"]["median_s"]
    assert 0.0 <= records["fit_4_epochs"]["test_accuracy"] <= 1.0


def test_variants_report_per_variant_cost_and_memory(runs):
    records = records_of(runs["variants"])
    by_key = {(record["what"], record["name"]): record for record in records}
    together, alone = by_key[("epoch_steady", "imdb_jax 2x 16-16")], by_key[("variant_epoch", "imdb_jax 2x 16-16")]
    assert math.isclose(alone["median_s"] * 2, together["median_s"], rel_tol=1e-9)
    assert together["peak_rss_mb"] > 0 and together["config"]["groups"] == [{"hidden_units": [16, 16], "variants": 2}]


def test_growth_line_through_epoch_times():
    import bench_variants

    line = bench_variants.growth([(1, 0.5), (4, 0.8), (16, 2.0)])
    assert math.isclose(line["fixed_s"], 0.4) and math.isclose(line["per_variant_s"], 0.1)
    assert bench_variants.growth([(1, 0.5)]) is None


def test_study_times_fresh_processes_end_to_end(runs):
    records = {record["what"]: record for record in records_of(runs["study"]) if record["what"] != "note"}
    end_to_end, study = records["end_to_end"], records["study"]
    assert end_to_end["median_s"] > study["median_s"] > 0 and study["name"] == "imdb_jax study training (2 variants together)"
    assert end_to_end["config"]["models"] == 2 and len(end_to_end["best_epochs"]) == end_to_end["config"]["variants_trained"] == 2
    assert set(end_to_end["breakdown_s"]) >= {"import_s", "data_s", "study_s", "final_s"}


def test_scaling_measures_each_setting_in_its_own_process(runs):
    (record,) = [record for record in records_of(runs["scaling"]) if record["what"] == "epoch_steady"]
    assert record["config"]["num_words"] == 2000
    assert record["peak_rss_mb"] >= record["train_peak_rss_mb"] > 0


@pytest.mark.skipif(BASELINES_INSTALLED, reason="a baseline package is installed here; its skip note cannot be checked")
def test_missing_baselines_are_skipped_with_a_clear_note(runs):
    notes = {record["name"]: record["note"] for record in records_of(runs["single"]) if record["what"] == "note"}
    for name in ("keras_tensorflow", "keras_jax", "sklearn_logreg"):
        assert name in notes, notes
        assert notes[name].startswith("skipped:") and "not installed" in notes[name] and "[bench]" in notes[name]
    study_notes = [record for record in records_of(runs["study"]) if record["what"] == "note"]
    assert any("--keras-study" in record["note"] and "cited 486 s" in record["note"] for record in study_notes)


def test_baseline_availability_matches_what_is_installed():
    for backend in baselines.KERAS_BACKENDS:
        missing = baselines.keras_missing(backend)
        installed = all(importlib.util.find_spec(name) is not None for name in ("keras", backend))
        assert (missing is None) == installed
    assert (baselines.sklearn_missing() is None) == (importlib.util.find_spec("sklearn") is not None)
    assert baselines.keras_missing("torch").startswith("unknown Keras backend")


def test_summary_statistics_and_ratios():
    summary = common.summarize([3.0, 1.0, 2.0, 10.0])
    assert (summary["median_s"], summary["min_s"], summary["max_s"], summary["repeats"]) == (2.5, 1.0, 10.0, 4)
    assert summary["samples_s"] == [3.0, 1.0, 2.0, 10.0]  # in the order measured
    assert common.summarize([0.5])["q1_s"] == common.summarize([0.5])["q3_s"] == 0.5
    figures = common.compare(0.1, 2.0)
    assert math.isclose(figures["ratio"], 0.05) and math.isclose(figures["speedup"], 20.0)
    assert common.compare(0.1, None) is None


def test_cited_keras_figures_only_for_the_data_they_were_measured_on():
    small = common.load_dataset(1000, synthetic=True, rows=64)
    assert common.versus(0.2, {}, "steady_epoch_s", "keras_tensorflow_epoch_steady_s", small) == {}
    full = common.Dataset(types.SimpleNamespace(x=scipy.sparse.csr_matrix((25000, 10000), dtype="float32")), None, "imdb")
    cited = common.versus(0.2, {}, "steady_epoch_s", "keras_tensorflow_epoch_steady_s", full)["keras_tensorflow_cited"]
    assert cited["cited"] is True and math.isclose(cited["speedup"], 1.8 / 0.2)
    measured = common.versus(0.2, {"keras_tensorflow": {"steady_epoch_s": 2.0}}, "steady_epoch_s", "keras_tensorflow_epoch_steady_s", full)
    assert set(measured) == {"keras_tensorflow"}
