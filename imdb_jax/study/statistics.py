"""A variant's figures over its seeds, and when a difference between two variants is real.

Every variant is trained with N seeds (`seed_replicas`): the seeds cover the initial weights and
the dropout masks; the data order is shared by every variant and seed of a run (`shuffle_seed`),
so the spread here says nothing about sensitivity to the data order.

Per seed, a history gives its best epoch (lowest validation loss), that loss, the validation
accuracy there, the best validation accuracy and the lowest training loss. Per variant, each of
these is summarised over the seeds that trained (`spread`: mean, sample standard deviation, min,
max, n). The variant's `history` is the mean curve over seeds, and its `best_epoch` the epoch
where that mean validation loss is lowest: the epoch count a retrain uses.

The rule for "A is better than B" (`difference`): the difference of the means exceeds
`SEPARATION` (2) standard errors of the difference, Welch-style: `sqrt(sd_A²/n_A + sd_B²/n_B)`.
With fewer than 2 seeds the noise is not measured and no difference is called real.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from imdb_jax.specs import VariantSpec

SEPARATION = 2.0
NOISE_SOURCES = ("initial weights", "dropout masks")
SHARED = ("data order (shuffle_seed)", "validation split")
RULE = (
    f"a difference counts when it exceeds {SEPARATION:g} standard errors of the difference of the means over seeds "
    "(Welch: sqrt(sd_a^2/n_a + sd_b^2/n_b)); with fewer than 2 seeds the noise is not measured"
)
SEED_FIGURES = ("best_epoch", "best_val_loss", "val_accuracy_at_best", "best_val_accuracy", "min_loss")
CURVES = ("loss", "accuracy", "val_loss", "val_accuracy")


def finite(values: Sequence[float | None]) -> np.ndarray:
    """float64 array of `values` with None (a diverged epoch in JSON) as NaN."""
    return np.array([math.nan if value is None else value for value in values], np.float64)


def seed_figures(history: Mapping[str, list]) -> dict[str, Any]:
    """One seed's figures: best epoch (1-based, lowest validation loss), that loss, the validation
    accuracy there, the highest validation accuracy, the lowest training loss, and divergence.
    Figures are None when no epoch has a finite validation loss (diverged, or not trained yet)."""
    val_loss = finite(history.get("val_loss", []))
    diverged = [bool(flag) for flag in history.get("diverged", [])]
    figures: dict[str, Any] = {key: None for key in SEED_FIGURES}
    figures.update(diverged=any(diverged), diverged_epoch=diverged.index(True) + 1 if any(diverged) else None)
    if val_loss.size and not np.all(np.isnan(val_loss)):
        best = int(np.nanargmin(val_loss))
        figures.update(
            best_epoch=best + 1,
            best_val_loss=float(val_loss[best]),
            val_accuracy_at_best=float(finite(history["val_accuracy"])[best]),
            best_val_accuracy=float(np.nanmax(finite(history["val_accuracy"]))),
            min_loss=float(np.nanmin(finite(history["loss"]))),
        )
    return figures


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """{"mean", "sd" (sample, ddof=1; None for n < 2), "min", "max", "n"} of the values that are
    not None; every figure None when there are none."""
    present = np.array([value for value in values if value is not None], np.float64)
    if present.size == 0:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(present.mean()),
        "sd": float(present.std(ddof=1)) if present.size > 1 else None,
        "min": float(present.min()),
        "max": float(present.max()),
        "n": int(present.size),
    }


def _stack(histories: Sequence[Mapping[str, list]], key: str) -> np.ndarray:
    """float64[seeds, epochs] of one curve, cut to the shortest history."""
    epochs = min((len(history.get(key, [])) for history in histories), default=0)
    return np.array([finite(history[key][:epochs]) for history in histories], np.float64).reshape(len(histories), epochs)


def mean_history(histories: Sequence[Mapping[str, list]]) -> dict[str, list]:
    """Per epoch, the mean over seeds of each curve (seeds diverged at that epoch left out; NaN
    where every seed diverged), and "diverged": whether any seed had diverged by then."""
    mean: dict[str, list] = {}
    for key in CURVES:
        if histories and key in histories[0]:
            stacked = _stack(histories, key)
            present = ~np.isnan(stacked)
            counts = present.sum(axis=0)
            totals = np.where(present, stacked, 0.0).sum(axis=0)
            mean[key] = [float(total / count) if count else math.nan for total, count in zip(totals, counts)]
    epochs = min((len(history.get("diverged", [])) for history in histories), default=0)
    mean["diverged"] = [any(bool(history["diverged"][epoch]) for history in histories) for epoch in range(epochs)]
    return mean


def band(histories: Sequence[Mapping[str, list]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Per epoch, the lowest and highest value of a curve over seeds (NaN where none is finite)."""
    stacked = _stack(histories, key)
    return np.fmin.reduce(stacked, axis=0), np.fmax.reduce(stacked, axis=0)


def variant_summary(
    spec: VariantSpec,
    name: str,
    histories: Sequence[Mapping[str, list]],
    experiments: list[str],
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """One variant's entry in study.json, from the histories of its seeds.

    Args:
      spec: the variant (its own seed is the first of `seeds`).
      name: its unique name in the study.
      histories: one history per seed (a single history dict is taken as one seed).
      experiments: the experiments it belongs to.
      seeds: the seed of each history (default: spec.seed, spec.seed + 1, ...).

    Returns:
      {"name", "spec", "experiments", "seeds", "histories" (every seed's), "history" (the mean
      curve), "per_seed" (`seed_figures` of each), "stats" (`spread` of each seed figure),
      "best_epoch" (where the mean validation loss is lowest), "best_val_loss",
      "val_accuracy_at_best", "best_val_accuracy", "min_loss" (means over seeds), "best_val_loss_sd",
      "diverged", "diverged_epoch" (earliest over seeds), "diverged_seeds"}.
    """
    if isinstance(histories, Mapping):
        histories = [histories]
    histories = [{key: list(values) for key, values in history.items()} for history in histories]
    seeds = list(seeds) if seeds is not None else [spec.seed + offset for offset in range(len(histories))]
    per_seed = [{"seed": seed, **seed_figures(history)} for seed, history in zip(seeds, histories)]
    stats = {key: spread([figures[key] for figures in per_seed]) for key in SEED_FIGURES}
    mean = mean_history(histories)
    mean_val_loss = finite(mean.get("val_loss", []))
    diverged_epochs = [figures["diverged_epoch"] for figures in per_seed if figures["diverged"]]
    best_epoch = None
    if stats["best_val_loss"]["n"] and mean_val_loss.size and not np.all(np.isnan(mean_val_loss)):
        best_epoch = int(np.nanargmin(mean_val_loss)) + 1
    return {
        "name": name,
        "spec": spec.to_dict(),
        "experiments": experiments,
        "seeds": seeds,
        "history": mean,
        "histories": histories,
        "per_seed": per_seed,
        "stats": stats,
        "best_epoch": best_epoch,
        "best_val_loss": stats["best_val_loss"]["mean"],
        "best_val_loss_sd": stats["best_val_loss"]["sd"],
        "val_accuracy_at_best": stats["val_accuracy_at_best"]["mean"],
        "best_val_accuracy": stats["best_val_accuracy"]["mean"],
        "min_loss": stats["min_loss"]["mean"],
        "diverged": bool(diverged_epochs),
        "diverged_epoch": min(diverged_epochs) if diverged_epochs else None,
        "diverged_seeds": [figures["seed"] for figures in per_seed if figures["diverged"]],
    }


def difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any] | None:
    """Whether `a`'s mean is lower or higher than `b`'s beyond the noise (`RULE`).

    Args:
      a, b: `spread` results of the same figure for two variants.

    Returns:
      None when either has no value; else {"difference": mean_a - mean_b, "se": the standard
      error of the difference (None with fewer than 2 seeds on either side), "verdict":
      "lower" | "higher" (beyond SEPARATION standard errors), "indistinguishable", or
      "unmeasured" (fewer than 2 seeds)}.
    """
    if not a["n"] or not b["n"]:
        return None
    delta = a["mean"] - b["mean"]
    if a["n"] < 2 or b["n"] < 2:
        return {"difference": delta, "se": None, "verdict": "unmeasured"}
    se = math.sqrt(a["sd"] ** 2 / a["n"] + b["sd"] ** 2 / b["n"])
    if delta < -SEPARATION * se:
        verdict = "lower"
    elif delta > SEPARATION * se:
        verdict = "higher"
    else:
        verdict = "indistinguishable"
    return {"difference": delta, "se": se, "verdict": verdict}
