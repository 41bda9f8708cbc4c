"""imdb_jax against its baselines: ratios, the Keras seed-model baselines as records, and the
targets measured against Keras (or, on the data they were measured on, the cited figures)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from clocks import summarize
from machine_info import megabytes
from reporting import Reporter, log
from review_data import Dataset, cited_applies, data_signature


def compare(value_s: float, baseline_s: float | None, **extra: Any) -> dict[str, Any] | None:
    """{"baseline_s", "ratio" (ours / baseline), "speedup" (baseline / ours)}; None without a baseline."""
    if baseline_s is None or not value_s or not baseline_s:
        return None
    return {"baseline_s": baseline_s, "ratio": value_s / baseline_s, "speedup": baseline_s / value_s, **extra}


def keras_seed_baselines(
    reporter: Reporter,
    args: argparse.Namespace,
    dataset: Dataset,
    epochs: int = 4,
    backends: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Runs (or reuses, within one run) the seed model under Keras on each requested backend and
    emits its records.

    Args:
      backends: the Keras backends to run (default: --keras-backends).

    Returns:
      {"keras_<backend>": {"first_epoch_s", "steady_epoch_s", "fit_s", "final_run_s" (densify +
      build + fit + evaluate: the seed's final run), "test_accuracy"}} for the backends that ran;
      skipped ones are emitted as notes.
    """
    import baselines

    figures: dict[str, dict[str, Any]] = {}
    if not args.baselines:
        reporter.note("keras", "baselines disabled (--no-baselines)")
        return figures
    cache = baselines.BaselineCache(args.baselines_cache)
    for backend in args.keras_backends if backends is None else backends:
        label = f"keras_{backend}"
        key = f"keras:{backend}:seed16-16:{epochs}ep:{data_signature(dataset)}"
        log(
            f"baseline: Keras ({backend} backend), 16-16-1 for {epochs} epochs"
            + (": reused from this run" if key in cache else ", in a subprocess ...")
        )
        result = cache.get_or_run(
            key,
            lambda backend=backend: baselines.run_keras(
                backend, [baselines.KerasModel(epochs=epochs, evaluate_test=True)], dataset.train, dataset.test
            ),
        )
        if "skipped" in result:
            reporter.note(label, result["skipped"], baseline=label)
            continue
        model = result["models"][0]
        epoch = baselines.epoch_figures(model)
        config = {
            "model": "16-16-1",
            "batch_size": 512,
            "epochs": epochs,
            "backend": backend,
            "input": result["dense_input"],
            **dataset.describe(),
        }
        extra = {
            "baseline": label,
            "baseline_versions": result["versions"],
            "peak_rss_mb": megabytes(result["peak_rss_bytes"]),
        }
        reporter.emit("epoch_first", f"{label} 16-16", config, **summarize(model["epoch_s"][:1]), **extra)
        if len(model["epoch_s"]) > 1:
            reporter.emit("epoch_steady", f"{label} 16-16", config, **summarize(model["epoch_s"][1:]), **extra)
        reporter.emit(
            f"fit_{epochs}_epochs",
            f"{label} 16-16",
            config,
            **summarize([model["fit_s"]]),
            test_accuracy=model.get("test_accuracy"),
            densify_s=result["densify_s"],
            **extra,
        )
        final_run_s = result["densify_s"] + model["build_s"] + model["fit_s"] + model.get("test_s", 0.0)
        reporter.emit(
            "final_run",
            f"{label} 16-16",
            config,
            **summarize([final_run_s]),
            test_accuracy=model.get("test_accuracy"),
            parts_s={
                "densify": result["densify_s"],
                "build": model["build_s"],
                "fit": model["fit_s"],
                "evaluate": model.get("test_s"),
            },
            whole_process_s=result.get("total_s"),
            note="the seed's final run: densify, build, fit 4 epochs, evaluate on the test reviews (imports excluded)",
            **extra,
        )
        figures[label] = {
            **epoch,
            "fit_s": model["fit_s"],
            "final_run_s": final_run_s,
            "test_accuracy": model.get("test_accuracy"),
        }
    return figures


def keras_speedup_target(
    reporter: Reporter,
    target: str,
    ours_s: float,
    ours_label: str,
    threshold: float,
    figures: dict[str, dict[str, Any]],
    dataset: Dataset,
) -> None:
    """The target "`ours_s` is >= `threshold`x faster than one steady Keras TF epoch": against
    Keras measured in this run, else (all real reviews only) the cited figure, flagged."""
    import baselines

    keras = figures.get("keras_tensorflow", {}).get("steady_epoch_s")
    cited = keras is None and cited_applies(dataset)
    if cited:
        keras = baselines.CITED["keras_tensorflow_epoch_steady_s"]
    reporter.target(
        target,
        value=None if keras is None else keras / ours_s,
        threshold=threshold,
        op=">=",
        figure="" if keras is None else f"Keras TF {keras:.3f} s{' (cited)' if cited else ''} vs {ours_label}",
        cited=cited,
        why_not="Keras TF not measured (and the cited figure is for all 25,000 real reviews only)",
    )


def versus(
    value_s: float,
    figures: dict[str, dict[str, Any]],
    key: str,
    cited_key: str | None = None,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Comparisons of one imdb_jax time against each measured baseline's `key`; when Keras TF was
    not measured in this run, `cited_key` is given and the data is the cited one (`dataset`),
    against the cited figure, flagged `cited`."""
    import baselines

    result = {}
    for label, baseline in figures.items():
        figure = compare(value_s, baseline.get(key))
        if figure:
            result[label] = figure
    if "keras_tensorflow" not in figures and cited_key and dataset is not None and cited_applies(dataset):
        result["keras_tensorflow_cited"] = compare(
            value_s, baselines.CITED[cited_key], cited=True, source=baselines.CITED_SOURCE
        )
    return result
