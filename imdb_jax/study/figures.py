"""The study's PNG figures: mean curves over seeds, each with a band from the lowest to the
highest seed (min-max, so every seed lies inside it)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

from imdb_jax.study.conclusions import members, trained
from imdb_jax.study.statistics import band, finite

BAND = "band: min-max over seeds"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "experiment"


def _seeds_note(summary: Mapping[str, Any]) -> str:
    seeds = summary["settings"].get("seeds", 1)
    return "1 seed" if seeds == 1 else f"mean of {seeds} seeds, {BAND}"


def write_figures(summary: Mapping[str, Any], output_dir: Path) -> list[Path]:
    """Validation loss per experiment, training vs validation loss per variant (small
    multiples), and the best figures against depth (with a `layers` experiment).

    Args:
      summary: a study summary (what study.json holds).
      output_dir: where the PNGs go.

    Returns:
      The paths written.
    """
    from matplotlib.figure import Figure

    from imdb_jax.plots import HISTORY_STYLES, plot_curves, save_figure

    note = _seeds_note(summary)
    paths = []
    for experiment, indices in summary["experiments"].items():
        variants = [summary["variants"][index] for index in indices]
        figure = Figure(figsize=(6.4, 4.8))
        ax = figure.add_subplot()
        curves = {variant["name"]: finite(variant["history"]["val_loss"]) for variant in variants}
        bands = {variant["name"]: band(variant["histories"], "val_loss") for variant in variants if len(variant["histories"]) > 1}
        lines = plot_curves(ax, curves, ylabel="validation loss", title=f"{experiment}: validation loss ({note})", bands=bands)
        for line, variant in zip(lines, variants):
            if variant["best_epoch"] is not None:
                ax.plot([variant["best_epoch"]], [variant["history"]["val_loss"][variant["best_epoch"] - 1]], "o", color=line.get_color())
        paths.append(save_figure(figure, output_dir / f"val_loss_{_slug(experiment)}.png"))

    variants = summary["variants"]
    columns = min(3, len(variants))
    rows = math.ceil(len(variants) / columns)
    figure = Figure(figsize=(4.0 * columns, 3.0 * rows), layout="constrained")
    figure.suptitle(f"training vs validation loss ({note})")
    for position, variant in enumerate(variants):
        curves = {"training": finite(variant["history"]["loss"]), "validation": finite(variant["history"]["val_loss"])}
        bands = {}
        if len(variant["histories"]) > 1:
            bands = {"training": band(variant["histories"], "loss"), "validation": band(variant["histories"], "val_loss")}
        plot_curves(figure.add_subplot(rows, columns, position + 1), curves, title=variant["name"], styles=HISTORY_STYLES, bands=bands)
    paths.append(save_figure(figure, output_dir / "train_vs_val_loss.png"))

    if "layers" in summary["experiments"]:
        done = sorted(trained(members(summary, "layers")), key=lambda variant: len(variant["spec"]["hidden_units"]))
        depths = [len(variant["spec"]["hidden_units"]) for variant in done]
        figure = Figure(figsize=(9.6, 4.0), layout="constrained")
        figure.suptitle("by depth: mean over seeds, bars ± 1 sample standard deviation")
        for position, (key, label) in enumerate((("best_val_loss", "minimum validation loss"), ("best_val_accuracy", "maximum validation accuracy"))):
            ax = figure.add_subplot(1, 2, position + 1)
            means = [variant["stats"][key]["mean"] for variant in done]
            errors = [variant["stats"][key]["sd"] or 0.0 for variant in done]
            ax.errorbar(depths, means, yerr=errors, fmt="o-", capsize=4)
            ax.set_xlabel("hidden layers")
            ax.set_ylabel(label)
            ax.set_xticks(depths)
        paths.append(save_figure(figure, output_dir / "depth.png"))
    return paths
