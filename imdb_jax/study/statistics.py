"""A variant's figures over its seeds, and when a difference between two variants is real.

Every variant is trained with N seeds (`seed_replicas`): the seeds cover the initial weights and
the dropout masks; the data order is shared by every variant and seed of a run (`shuffle_seed`),
so the spread here says nothing about sensitivity to the data order.

Per seed, a history gives its best epoch (lowest validation loss), that loss, the validation
accuracy there, the best validation accuracy, the lowest training loss, the validation loss at
the last epoch and how far it rose after its minimum (overfitting). The validation loss is
Keras' number: for a variant with an L1/L2 penalty it includes the penalty. The same figures of
the plain validation cross-entropy are kept beside it (`plain_curve`): the history's
"val_cross_entropy" where the training loop records it, the validation loss itself for a
variant without a penalty, else None. Per variant, each figure is summarised over the seeds that
trained (`spread`: mean, sample standard deviation, min, max, n). The variant's `history` is the
mean curve over seeds, and its `best_epoch` the epoch where that mean validation loss is lowest:
the epoch count a retrain uses.

With early stopping (`run_study(patience=N)`) each seed's history ends at the epoch it stopped
after ("stopped_epoch" in its `per_seed` entry), so the seeds of one variant can have histories
of different lengths. Each seed's own figures use its whole history (its "last" epoch is the one
it stopped after). The mean curve and the min-max band stop where the first seed stopped: every
point of them is over the same seeds, so a bend in the mean curve is never a seed leaving the
average (the seeds still training at later epochs are those whose validation loss was still
falling, and averaging them alone would pull the curve down). The best epoch, hence the retrain's
epoch count, is therefore one that every seed reached.

The rule for "A is lower or higher than B": the difference exceeds `SEPARATION` (2) standard
errors. Two variants of the same shape trained with the same seeds start from the same weights
and draw the same dropout streams, so their seeds pair up: the test is then a paired t-test on
the per-seed differences (`paired_difference`, standard error `sd(a_i - b_i) / sqrt(n)`).
Otherwise it is Welch's t-test on the means (`difference`, standard error
`sqrt(sd_A²/n_A + sd_B²/n_B)`). Both report the t statistic's two-sided p-value beside the
verdict (Student's t with n - 1 or Welch-Satterthwaite degrees of freedom). With fewer than 2
seeds the noise is not measured and no difference is called real.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from imdb_jax.specs import VariantSpec

SEPARATION = 2.0
NOISE_SOURCES = ("initial weights", "dropout masks")
SHARED = ("data order (shuffle_seed)", "validation split")
PAIRED = "paired t-test"
WELCH = "Welch's t-test"
RULE = (
    f"a difference counts when it exceeds {SEPARATION:g} standard errors: of the mean per-seed difference "
    f"({PAIRED}) where two variants share their shape and seeds, hence their initial weights and dropout streams; "
    f"else of the difference of the means over seeds ({WELCH}: sqrt(sd_a^2/n_a + sd_b^2/n_b)); "
    "with fewer than 2 seeds the noise is not measured"
)
# The plain (unpenalised) validation cross-entropy per epoch, when the training loop records it.
PLAIN_VAL_LOSS = "val_cross_entropy"
SEED_FIGURES = (
    "best_epoch",
    "best_val_loss",
    "val_accuracy_at_best",
    "best_val_accuracy",
    "min_loss",
    "last_val_loss",
    "val_loss_rise",
    "best_val_cross_entropy",
    "last_val_cross_entropy",
    "val_cross_entropy_rise",
)
CURVES = ("loss", "accuracy", "val_loss", "val_accuracy", "cross_entropy", PLAIN_VAL_LOSS)


def finite(values: Sequence[float | None]) -> np.ndarray:
    """float64 array of `values` with None (a diverged epoch in JSON) as NaN."""
    return np.array([math.nan if value is None else value for value in values], np.float64)


def has_penalty(spec: Mapping[str, Any] | VariantSpec | None) -> bool:
    """Whether a variant's validation loss includes an L1 or L2 penalty."""
    if spec is None:
        return False
    values = spec.to_dict() if isinstance(spec, VariantSpec) else spec
    return bool(values.get("l1")) or bool(values.get("l2"))


def plain_curve(history: Mapping[str, list], penalised: bool) -> list | None:
    """The validation cross-entropy without the penalty, per epoch: the recorded
    "val_cross_entropy", else the validation loss of a variant without a penalty (the same
    number), else None (a penalised variant whose plain loss was not recorded)."""
    if history.get(PLAIN_VAL_LOSS) is not None:
        return list(history[PLAIN_VAL_LOSS])
    if not penalised and history.get("val_loss") is not None:
        return list(history["val_loss"])
    return None


def _curve_figures(values: Sequence[float | None] | None, prefix: str) -> dict[str, float | None]:
    """best_<prefix>, last_<prefix> and <prefix>_rise (last minus lowest; how far the curve
    climbed back after its minimum) of one validation curve; None where not finite."""
    figures: dict[str, float | None] = {f"best_{prefix}": None, f"last_{prefix}": None, f"{prefix}_rise": None}
    curve = finite(values or [])
    if curve.size and not np.all(np.isnan(curve)):
        lowest = float(np.nanmin(curve))
        figures[f"best_{prefix}"] = lowest
        if not math.isnan(curve[-1]):  # a seed that diverged has no last epoch to compare
            figures[f"last_{prefix}"] = float(curve[-1])
            figures[f"{prefix}_rise"] = float(curve[-1]) - lowest
    return figures


def seed_figures(history: Mapping[str, list], penalised: bool = False) -> dict[str, Any]:
    """One seed's figures: best epoch (1-based, lowest validation loss), that loss, the validation
    accuracy there, the highest validation accuracy, the lowest training loss, the last epoch's
    validation loss and its rise after the minimum, the same of the plain cross-entropy
    (`plain_curve`; None when `penalised` and not recorded), and divergence. Figures are None
    when no epoch has a finite validation loss (diverged, or not trained yet)."""
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
        figures.update(_curve_figures(history["val_loss"], "val_loss"))
        figures.update(_curve_figures(plain_curve(history, penalised), "val_cross_entropy"))
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
    """float64[seeds, epochs] of one curve, cut to the shortest history (the first seed early
    stopping stopped; see the module docstring)."""
    epochs = min((len(history.get(key, [])) for history in histories), default=0)
    return np.array([finite(history[key][:epochs]) for history in histories], np.float64).reshape(
        len(histories), epochs
    )


def mean_history(histories: Sequence[Mapping[str, list]]) -> dict[str, list]:
    """Per epoch, the mean over seeds of each curve (seeds diverged at that epoch left out; NaN
    where every seed diverged), and "diverged": whether any seed had diverged by then. Histories
    of different lengths (early stopping) are cut to the shortest: every epoch's mean is over
    every seed."""
    mean: dict[str, list] = {}
    for key in CURVES:
        if histories and all(key in history for history in histories):
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
    stopped_epochs: Sequence[int | None] | None = None,
) -> dict[str, Any]:
    """One variant's entry in study.json, from the histories of its seeds.

    Args:
      spec: the variant (its own seed is the first of `seeds`).
      name: its unique name in the study.
      histories: one history per seed (a single history dict is taken as one seed).
      experiments: the experiments it belongs to.
      seeds: the seed of each history (default: spec.seed, spec.seed + 1, ...).
      stopped_epochs: with early stopping, per seed the 1-based epoch it stopped after (None:
        it trained every epoch); None when early stopping was off.

    Returns:
      {"name", "spec", "experiments", "seeds", "histories" (every seed's), "history" (the mean
      curve), "per_seed" (`seed_figures` of each), "stats" (`spread` of each seed figure),
      "best_epoch" (where the mean validation loss is lowest), "best_val_loss",
      "val_accuracy_at_best", "best_val_accuracy", "min_loss" (means over seeds), "best_val_loss_sd",
      "penalised" (its validation loss includes a penalty), "diverged", "diverged_epoch"
      (earliest over seeds), "diverged_seeds", and with `stopped_epochs` "stopped_epochs" (per
      seed, also "stopped_epoch" in each `per_seed` entry) and "mean_epochs" (how far the mean
      curve goes: the shortest history)}.
    """
    if isinstance(histories, Mapping):
        histories = [histories]
    histories = [{key: list(values) for key, values in history.items()} for history in histories]
    seeds = list(seeds) if seeds is not None else [spec.seed + offset for offset in range(len(histories))]
    penalised = has_penalty(spec)
    per_seed = [{"seed": seed, **seed_figures(history, penalised)} for seed, history in zip(seeds, histories)]
    if stopped_epochs is not None:
        stopped_epochs = list(stopped_epochs)
        if len(stopped_epochs) != len(histories):
            raise ValueError(f"{len(stopped_epochs)} stop epochs for {len(histories)} seeds")
        for figures, epoch in zip(per_seed, stopped_epochs):
            figures["stopped_epoch"] = epoch
    stats = {key: spread([figures[key] for figures in per_seed]) for key in SEED_FIGURES}
    mean = mean_history(histories)
    mean_val_loss = finite(mean.get("val_loss", []))
    diverged_epochs = [figures["diverged_epoch"] for figures in per_seed if figures["diverged"]]
    best_epoch = None
    if stats["best_val_loss"]["n"] and mean_val_loss.size and not np.all(np.isnan(mean_val_loss)):
        best_epoch = int(np.nanargmin(mean_val_loss)) + 1
    early_stopping = {}
    if stopped_epochs is not None:
        early_stopping = {
            "stopped_epochs": stopped_epochs,
            "mean_epochs": min((len(history.get("val_loss", [])) for history in histories), default=0),
        }
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
        "penalised": penalised,
        "diverged": bool(diverged_epochs),
        "diverged_epoch": min(diverged_epochs) if diverged_epochs else None,
        "diverged_seeds": [figures["seed"] for figures in per_seed if figures["diverged"]],
        **early_stopping,
    }


def two_sided_p(delta: float, se: float, df: float | None) -> float:
    """P(|T| >= |delta / se|) for Student's t with `df` degrees of freedom; 0 or 1 when the
    standard error is 0 (every seed gave the same difference)."""
    if se == 0.0 or df is None:
        return 1.0 if delta == 0.0 else 0.0
    # Deferred: SciPy (~0.2 s) only for a p-value; --help imports this module (imdb_jax.study).
    from scipy.special import stdtr  # scipy.special, not scipy.stats: a fraction of the import time

    return float(2.0 * stdtr(df, -abs(delta) / se))


def _verdict(delta: float, se: float) -> str:
    if delta < -SEPARATION * se:
        return "lower"
    if delta > SEPARATION * se:
        return "higher"
    return "indistinguishable"


def difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any] | None:
    """Welch's t-test: whether `a`'s mean is lower or higher than `b`'s beyond the noise (`RULE`),
    for samples that do not pair up.

    Args:
      a, b: `spread` results of the same figure for two variants.

    Returns:
      None when either has no value; else {"test": WELCH, "difference": mean_a - mean_b, "se":
      the standard error of the difference, "df" (Welch-Satterthwaite), "p" (two-sided), "n":
      [n_a, n_b] and "verdict": "lower" | "higher" (beyond SEPARATION standard errors),
      "indistinguishable", or "unmeasured" (fewer than 2 seeds on either side; se, df and p None)}.
    """
    if not a["n"] or not b["n"]:
        return None
    delta = a["mean"] - b["mean"]
    found: dict[str, Any] = {
        "test": WELCH,
        "difference": delta,
        "se": None,
        "df": None,
        "p": None,
        "n": [a["n"], b["n"]],
    }
    if a["n"] < 2 or b["n"] < 2:
        return {**found, "verdict": "unmeasured"}
    va, vb = a["sd"] ** 2 / a["n"], b["sd"] ** 2 / b["n"]
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1)) if se > 0 else None
    return {**found, "se": se, "df": df, "p": two_sided_p(delta, se, df), "verdict": _verdict(delta, se)}


def paired_difference(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, Any] | None:
    """The paired t-test: whether `a` is lower or higher than `b` beyond the noise (`RULE`), from
    per-seed values of the same seeds (position i of both is seed i).

    Args:
      a, b: one figure per seed for two variants, None where that seed has none; only seeds with
        a value on both sides count.

    Returns:
      None when no seed has both; else {"test": PAIRED, "difference": the mean of a_i - b_i,
      "se": sd(a_i - b_i) / sqrt(n), "df": n - 1, "p" (two-sided), "n": the pairs, "verdict"
      as in `difference` ("unmeasured" with one pair)}.
    """
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        return None
    deltas = np.array([x - y for x, y in pairs], np.float64)
    delta = float(deltas.mean())
    found: dict[str, Any] = {"test": PAIRED, "difference": delta, "se": None, "df": None, "p": None, "n": len(pairs)}
    if len(pairs) < 2:
        return {**found, "verdict": "unmeasured"}
    se = float(deltas.std(ddof=1)) / math.sqrt(len(pairs))
    df = len(pairs) - 1
    return {**found, "se": se, "df": df, "p": two_sided_p(delta, se, df), "verdict": _verdict(delta, se)}
