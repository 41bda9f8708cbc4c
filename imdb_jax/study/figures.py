"""The study's PNG figures: mean curves over seeds, each with a band from the lowest to the
highest seed (min-max, so every seed lies inside it), and a dot on each curve at its best epoch
(where its mean validation loss is lowest).

Per experiment, validation loss and validation accuracy (`experiment_figures`); per variant,
training against validation loss and accuracy as the seed plots them (`CURVE_FIGURES`); and the
best figures against depth (`DEPTH_FIGURE`, with a `layers` experiment). A penalised variant's
validation loss includes its penalty (Keras' number); where the histories record the plain
validation cross-entropy, the experiment's loss figure draws it too, dashed.

With early stopping a variant's seeds can end at different epochs: its mean curve and band end
where the first seed stopped (`statistics.mean_history`), each seed that went on is drawn alone
beyond that, thin and dotted, and a cross marks the epoch each stopped seed stopped after.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imdb_jax.study.conclusions import members, trained
from imdb_jax.study.statistics import PLAIN_VAL_LOSS, band, finite

BAND = "band: min-max over seeds"
DOT = "dot: best epoch (lowest mean val loss)"
STOP = "x: a seed stopped early (dotted: a seed alone, past the mean)"
CURVE_FIGURES = ("train_vs_val_loss.png", "train_vs_val_accuracy.png")
DEPTH_FIGURE = "depth.png"


def _curve(values: Any) -> list[float]:
    """A curve as floats, None (a diverged epoch in JSON) as NaN: a gap in the line."""
    return finite(values).tolist()


def _band(histories: Sequence[Mapping[str, list]], key: str) -> tuple[list[float], list[float]]:
    low, high = band(histories, key)
    return low.tolist(), high.tolist()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "experiment"


def experiment_figures(experiment: str) -> list[str]:
    """The file names of one experiment's figures, as `write_figures` names them."""
    names = [f"val_loss_{_slug(experiment)}.png", f"val_accuracy_{_slug(experiment)}.png"]
    return names + [DEPTH_FIGURE] if experiment == "layers" else names


def _seeds_note(summary: Mapping[str, Any]) -> str:
    seeds = summary["settings"].get("seeds", 1)
    return "1 seed" if seeds == 1 else f"mean of {seeds} seeds, {BAND}"


def _mark_best(ax: Any, lines: Sequence[Any], variants: Sequence[Mapping[str, Any]], key: str) -> None:
    """A dot on each curve at its variant's best epoch, and one legend entry saying what it is."""
    for line, variant in zip(lines, variants):
        values = variant["history"].get(key)
        if variant["best_epoch"] is not None and values is not None:
            ax.plot([variant["best_epoch"]], [values[variant["best_epoch"] - 1]], "o", color=line.get_color())
    ax.plot([], [], "o", color="0.3", label=DOT)
    ax.legend(fontsize="small")


def _mark_stops(ax: Any, lines: Sequence[Any], variants: Sequence[Mapping[str, Any]], key: str) -> None:
    """Each seed's curve past its variant's mean curve (thin, dotted) and a cross at each seed's
    stop epoch; nothing (no legend entry either) when no seed stopped early and every seed's
    history is as long as the mean curve."""
    marked = False
    for line, variant in zip(lines, variants):
        end = len(variant["history"].get(key, []))
        stops = variant.get("stopped_epochs") or [None] * len(variant["histories"])
        for history, stop in zip(variant["histories"], stops):
            values = _curve(history.get(key, []))
            if len(values) > end:  # from the mean's last epoch on, so the line joins the band
                start = max(end - 1, 0)
                ax.plot(range(start + 1, len(values) + 1), values[start:], ":", linewidth=1, color=line.get_color())
                marked = True
            if stop is not None and 0 < stop <= len(values):
                ax.plot([stop], [values[stop - 1]], "x", color=line.get_color())
                marked = True
    if marked:
        ax.plot([], [], "x:", color="0.3", label=STOP)


def _experiment_figure(
    summary: Mapping[str, Any], experiment: str, variants: Sequence[Mapping[str, Any]], key: str, path: Path
) -> Path:
    # Deferred: matplotlib (~0.4 s) is needed only when a figure is drawn; imdb-jax --help imports
    # imdb_jax.study (this module) and stays fast.
    from matplotlib.figure import Figure

    from imdb_jax.plots import plot_curves, save_figure

    label = "validation loss" if key == "val_loss" else "validation accuracy"
    # Constrained layout and a two-line title keep the whole title inside the figure.
    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = figure.add_subplot()
    curves = {variant["name"]: _curve(variant["history"][key]) for variant in variants}
    bands = {variant["name"]: _band(variant["histories"], key) for variant in variants if len(variant["histories"]) > 1}
    lines = plot_curves(ax, curves, ylabel=label, title=f"{experiment}: {label}\n({_seeds_note(summary)})", bands=bands)
    if key == "val_loss":
        penalised = [
            (line, variant)
            for line, variant in zip(lines, variants)
            if variant.get("penalised") and PLAIN_VAL_LOSS in variant["history"]
        ]
        for line, variant in penalised:
            values = finite(variant["history"][PLAIN_VAL_LOSS])
            ax.plot(
                range(1, values.size + 1),
                values,
                "--",
                color=line.get_color(),
                label=f"{variant['name']} without the penalty",
            )
        if penalised:
            ax.set_ylabel("validation loss (solid: with the penalty, dashed: without)")
        elif any(variant.get("penalised") for variant in variants):
            ax.set_ylabel("validation loss (L1/L2 variants: with the penalty)")
    _mark_stops(ax, lines, variants, key)
    _mark_best(ax, lines, variants, key)
    return save_figure(figure, path)


def _per_variant(summary: Mapping[str, Any], metric: str, path: Path) -> Path:
    """Training (dots) against validation (line) of one metric, one small plot per variant."""
    # Deferred: matplotlib (~0.4 s) is needed only when a figure is drawn; imdb-jax --help imports
    # imdb_jax.study (this module) and stays fast.
    from matplotlib.figure import Figure

    from imdb_jax.plots import HISTORY_STYLES, plot_curves, save_figure

    variants = summary["variants"]
    columns = min(3, len(variants))
    rows = math.ceil(len(variants) / columns)
    figure = Figure(figsize=(4.0 * columns, 3.0 * rows), layout="constrained")
    figure.suptitle(f"training vs validation {metric} ({_seeds_note(summary)})")
    for position, variant in enumerate(variants):
        curves = {
            "training": _curve(variant["history"][metric]),
            "validation": _curve(variant["history"][f"val_{metric}"]),
        }
        bands = {}
        if len(variant["histories"]) > 1:
            bands = {
                "training": _band(variant["histories"], metric),
                "validation": _band(variant["histories"], f"val_{metric}"),
            }
        plot_curves(
            figure.add_subplot(rows, columns, position + 1),
            curves,
            ylabel=metric,
            title=variant["name"],
            styles=HISTORY_STYLES,
            bands=bands,
        )
    return save_figure(figure, path)


def write_figures(summary: Mapping[str, Any], output_dir: Path) -> list[Path]:
    """Validation loss and accuracy per experiment, training vs validation loss and accuracy per
    variant (small multiples), and the best figures against depth (with a `layers` experiment).

    Args:
      summary: a study summary (what study.json holds).
      output_dir: where the PNGs go.

    Returns:
      The paths written: every experiment's loss figure first, then their accuracy figures, the
      per-variant figures, then the depth figure.
    """
    # Deferred: matplotlib (~0.4 s) is needed only when a figure is drawn; imdb-jax --help imports
    # imdb_jax.study (this module) and stays fast.
    from matplotlib.figure import Figure

    from imdb_jax.plots import save_figure

    paths = []
    for key in ("val_loss", "val_accuracy"):
        for experiment, indices in summary["experiments"].items():
            variants = [summary["variants"][index] for index in indices]
            name = experiment_figures(experiment)[0 if key == "val_loss" else 1]
            paths.append(_experiment_figure(summary, experiment, variants, key, output_dir / name))
    for name, metric in zip(CURVE_FIGURES, ("loss", "accuracy")):
        paths.append(_per_variant(summary, metric, output_dir / name))

    if "layers" in summary["experiments"]:
        done = sorted(trained(members(summary, "layers")), key=lambda variant: len(variant["spec"]["hidden_units"]))
        depths = [len(variant["spec"]["hidden_units"]) for variant in done]
        figure = Figure(figsize=(9.6, 4.0), layout="constrained")
        figure.suptitle("by depth: mean over seeds, bars ± 1 sample standard deviation")
        for position, (key, label) in enumerate(
            (("best_val_loss", "minimum validation loss"), ("best_val_accuracy", "maximum validation accuracy"))
        ):
            ax = figure.add_subplot(1, 2, position + 1)
            means = [variant["stats"][key]["mean"] for variant in done]
            errors = [variant["stats"][key]["sd"] or 0.0 for variant in done]
            ax.errorbar(depths, means, yerr=errors, fmt="o-", capsize=4)
            ax.set_xlabel("hidden layers")
            ax.set_ylabel(label)
            ax.set_xticks(depths)
        paths.append(save_figure(figure, output_dir / DEPTH_FIGURE))
    return paths
