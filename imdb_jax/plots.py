"""Histories become PNG figures: per-epoch loss and accuracy curves.

Figures are drawn on `matplotlib.figure.Figure` objects rendered by the Agg canvas directly, never
through `pyplot`: no global backend is switched, no window can open, and nothing is left in
pyplot's figure registry, so the library is safe to call from scripts, tests and notebooks.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from imdb_jax.atomic import atomic_write

# The seed's (Keras book) styles: training as blue dots, validation as a solid blue line.
HISTORY_STYLES = {
    "training": {"linestyle": "none", "marker": "o", "color": "tab:blue"},
    "validation": {"color": "tab:blue"},
}


def plot_curves(
    ax: Any,
    curves: Mapping[str, Sequence[float]],
    *,
    ylabel: str = "loss",
    title: str | None = None,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> list[Any]:
    """Draws several named per-epoch curves on one axes, epoch 1 first, each optionally with a
    shaded band (e.g. the lowest and highest value over seeds) in its colour.

    Args:
      ax: a matplotlib `Axes`.
      curves: {legend name: values, one per epoch}; NaN values (diverged epochs) leave gaps.
      ylabel: the y-axis label.
      title: optional axes title.
      styles: optional {legend name: keyword arguments of `ax.plot`}; unnamed curves get
        matplotlib's colour cycle.
      bands: optional {legend name: (low, high) per epoch}, shaded around that curve.

    Returns:
      The `Line2D` objects, in the order of `curves`.
    """
    styles = styles or {}
    lines = []
    for name, values in curves.items():
        values = np.asarray(values, np.float64)
        epochs = np.arange(1, values.size + 1)
        (line,) = ax.plot(epochs, values, label=name, **dict(styles.get(name, {})))
        if bands and name in bands:
            low, high = (np.asarray(edge, np.float64) for edge in bands[name])
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        lines.append(line)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title)
    if curves:
        ax.legend()
    return lines


def save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    """Renders `figure` with the Agg canvas to a PNG at `path`, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return atomic_write(path, buffer.getvalue())


def plot_history(history: Mapping[str, Sequence[float]], path_prefix: str | os.PathLike) -> list[Path]:
    """Writes the seed's two figures: training vs validation loss, and accuracy, per epoch.

    Args:
      history: `fit`'s history: "loss" and "accuracy", and "val_loss" / "val_accuracy" when
        there was a validation split (otherwise only the training curves are drawn).
      path_prefix: where to write; `<path_prefix>_loss.png` and `<path_prefix>_accuracy.png`.

    Returns:
      The two PNG paths, loss first.
    """
    prefix = os.fspath(path_prefix)
    paths = []
    for metric in ("loss", "accuracy"):
        curves = {"training": history[metric]}
        if history.get(f"val_{metric}") is not None:
            curves["validation"] = history[f"val_{metric}"]
        figure = Figure(figsize=(6.4, 4.8))
        title = f"Training and validation {metric}" if "validation" in curves else f"Training {metric}"
        plot_curves(figure.add_subplot(), curves, ylabel=metric, title=title, styles=HISTORY_STYLES)
        paths.append(save_figure(figure, f"{prefix}_{metric}.png"))
    return paths
