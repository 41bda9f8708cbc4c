"""What each experiment shows, computed from a study summary alone (so tests can hand-make the
numbers): which variant did best and whether its lead is larger than the noise between seeds,
which overfit soonest, which penalty or dropout rate helped and whether it slowed overfitting,
and which capacity (width and depth) is best overall against the seed's 16-16.

Every comparison of two variants goes through `compare`: a paired t-test on the per-seed
differences where the two variants share their shape and seeds (so their initial weights and
dropout streams), Welch's t-test otherwise (`statistics`); a verdict of "unmeasured" (one seed)
is reported as such, never as a finding.

The validation loss of a penalised variant includes the penalty (Keras' `val_loss`), so the
penalty verdict is drawn from the plain validation cross-entropy (where the histories record
it) and the validation accuracy, never from the penalised loss alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from imdb_jax.study.statistics import difference, finite, paired_difference, plain_curve

Variant = Mapping[str, Any]
SEED_MODEL = {
    "hidden_units": [16, 16],
    "dropout_rate": 0.0,
    "l1": 0.0,
    "l2": 0.0,
    "weight_decay": 0.0,
    "learning_rate": 1e-3,
}
CAPACITY = "capacity"  # conclusions' key for the best width and depth over the units and layers experiments


def members(summary: Mapping[str, Any], experiment: str) -> list[Variant]:
    """The variant entries of one experiment."""
    return [summary["variants"][index] for index in summary["experiments"][experiment]]


def trained(variants: Sequence[Variant]) -> list[Variant]:
    """The variants with a minimum validation loss (not diverged on every seed)."""
    return [variant for variant in variants if variant["best_val_loss"] is not None]


def best(variants: Sequence[Variant]) -> Variant | None:
    """The variant with the lowest mean minimum validation loss."""
    candidates = trained(variants)
    return min(candidates, key=lambda variant: variant["best_val_loss"]) if candidates else None


def _stats(variant: Variant, key: str) -> Mapping[str, Any]:
    stats = variant.get("stats")
    if stats is not None and key in stats:
        return stats[key]
    value = variant.get(key)  # a summary from before seeds (one value), or before this figure (none)
    return {"mean": value, "sd": None, "min": value, "max": value, "n": 0 if value is None else 1}


def _per_seed(variant: Variant, key: str) -> dict[int, Any]:
    return {figures["seed"]: figures.get(key) for figures in variant.get("per_seed") or []}


def pairs_up(a: Variant, b: Variant, key: str = "best_val_loss") -> bool:
    """Whether the two variants' seeds pair up for `key`: the same hidden widths (so the same
    seed gives the same initial weights and dropout streams) and at least 2 seeds with a value
    on both sides."""
    if list(a["spec"]["hidden_units"]) != list(b["spec"]["hidden_units"]):
        return False
    mine, theirs = _per_seed(a, key), _per_seed(b, key)
    return sum(1 for seed in mine if seed in theirs and mine[seed] is not None and theirs[seed] is not None) >= 2


def compare(a: Variant, b: Variant, key: str = "best_val_loss") -> dict[str, Any] | None:
    """One seed figure of two variants, a minus b: `statistics.paired_difference` over their
    common seeds where they pair up (`pairs_up`), else `statistics.difference` (Welch)."""
    if pairs_up(a, b, key):
        mine, theirs = _per_seed(a, key), _per_seed(b, key)
        seeds = [seed for seed in mine if seed in theirs]
        return paired_difference([mine[seed] for seed in seeds], [theirs[seed] for seed in seeds])
    return difference(_stats(a, key), _stats(b, key))


def turn(variant: Variant) -> dict[str, Any]:
    """Where the (mean) validation loss stops falling: its best epoch and how far it rises after."""
    val_loss = finite(variant["history"]["val_loss"])
    last = int(np.flatnonzero(~np.isnan(val_loss))[-1]) + 1
    return {
        "best_epoch": variant["best_epoch"],
        "best_val_loss": float(val_loss[variant["best_epoch"] - 1]),
        "last_epoch": last,
        "last_val_loss": float(val_loss[last - 1]),
        "rises": variant["best_epoch"] < last,
    }


def seeds_of(variants: Sequence[Variant]) -> int:
    """The fewest seeds any of the variants finished with."""
    return min((_stats(variant, "best_val_loss")["n"] for variant in trained(variants)), default=0)


def comparison(variants: Sequence[Variant], label: Callable[[Variant], Any]) -> dict[str, Any]:
    """The figures every experiment's conclusion is made of.

    "best" is the variant with the lowest mean minimum validation loss; "clear_best" is True
    when it is lower than every other variant's beyond the noise, False when some variant is
    indistinguishable from it ("tied_with_best"), None when the noise is not measured (one seed).
    """
    done = trained(variants)
    leader = best(variants)
    rising = [variant for variant in done if turn(variant)["rises"]]  # overfitting: val loss turned up
    soonest = min(variant["best_epoch"] for variant in rising) if rising else None
    least_fit = max(done, key=lambda variant: variant["min_loss"]) if done else None
    others = [variant for variant in done if variant is not leader]
    against = [] if leader is None else [(variant, compare(variant, leader)) for variant in others]
    verdicts = [found["verdict"] for _, found in against if found is not None]
    if not others:
        clear = None
    elif "unmeasured" in verdicts:
        clear = None
    else:
        clear = all(verdict == "higher" for verdict in verdicts)
    runner_up = min(others, key=lambda variant: variant["best_val_loss"]) if others else None
    return {
        "best": None if leader is None else label(leader),
        "best_name": None if leader is None else leader["name"],
        "best_val_loss": None if leader is None else leader["best_val_loss"],
        "best_val_loss_sd": None if leader is None else _stats(leader, "best_val_loss")["sd"],
        "best_epoch": None if leader is None else leader["best_epoch"],
        "seeds": seeds_of(variants),
        "clear_best": clear,
        "tied_with_best": [
            {
                "variant": label(variant),
                "best_val_loss": variant["best_val_loss"],
                "best_val_loss_sd": _stats(variant, "best_val_loss")["sd"],
                **found,
            }
            for variant, found in against
            if found is not None and found["verdict"] == "indistinguishable"
        ],
        "runner_up": None
        if runner_up is None or leader is None
        else {"variant": label(runner_up), **(compare(runner_up, leader) or {})},
        "soonest_best_epoch": soonest,
        "overfit_soonest": [label(variant) for variant in rising if variant["best_epoch"] == soonest],
        "least_fit": None if least_fit is None else label(least_fit),
        "least_fit_min_loss": None if least_fit is None else least_fit["min_loss"],
        "diverged": [label(variant) for variant in variants if variant["diverged"]],
    }


def _figure(variant: Variant, key: str) -> dict[str, Any]:
    """{"mean", "sd", "n"} of one seed figure."""
    stats = _stats(variant, key)
    return {"mean": stats["mean"], "sd": stats["sd"], "n": stats["n"]}


def overfitting(variant: Variant, baseline: Variant, curve: str) -> dict[str, Any]:
    """Whether `variant` slowed overfitting against `baseline`, on one validation curve ("val_loss"
    or "val_cross_entropy"): each seed's value at the last epoch, and its rise after its own
    minimum (last minus lowest), compared seed by seed where they pair up.

    Returns:
      {"curve", "epochs" (the last epoch), "last" / "rise": the variant's {"mean", "sd", "n"},
      "baseline_last" / "baseline_rise": the baseline's, "last_change" / "rise_change": the
      `compare` results (variant minus baseline), "baseline_rises": whether the baseline's curve
      climbed back at all after its minimum (else there is no overfitting to slow yet),
      "slowed": True (rise lower beyond the noise), False (not), None (unmeasured or no
      overfitting yet), "last_epochs" / "baseline_last_epochs": the epoch each seed's history
      ends at, "same_end": whether every seed of both ended at the same epoch (not so when early
      stopping stopped some: "last" is then each seed's own last epoch, and "epochs" the latest)}.
    """
    last, rise = f"last_{curve}", f"{curve}_rise"
    rise_change = compare(variant, baseline, rise)
    baseline_rise = _figure(baseline, rise)
    rises = baseline_rise["mean"] is not None and baseline_rise["mean"] > 0
    slowed = None
    if rises and rise_change is not None and rise_change["verdict"] != "unmeasured":
        slowed = rise_change["verdict"] == "lower"
    ends = _last_epochs(variant)
    baseline_ends = _last_epochs(baseline)
    return {
        "curve": curve,
        "epochs": max(ends, default=len(variant["history"].get("val_loss", []))),
        "last_epochs": ends,
        "baseline_last_epochs": baseline_ends,
        "same_end": len(set(ends + baseline_ends)) <= 1,
        "last": _figure(variant, last),
        "rise": _figure(variant, rise),
        "baseline_last": _figure(baseline, last),
        "baseline_rise": baseline_rise,
        "last_change": compare(variant, baseline, last),
        "rise_change": rise_change,
        "baseline_rises": rises,
        "slowed": slowed,
    }


def _last_epochs(variant: Variant) -> list[int]:
    """The epoch each seed's history ends at (they differ when early stopping stopped some)."""
    return [len(history.get("val_loss", [])) for history in variant.get("histories") or []]


def early_stopping(variants: Sequence[Variant]) -> dict[str, Any] | None:
    """Where early stopping stopped each variant's seeds; None when it was off (no variant
    records "stopped_epochs").

    Returns:
      {"variants": [{"name", "seeds", "stopped_epochs" (per seed, None: trained every epoch),
      "mean_epochs" (where the mean curve ends: the first seed to stop)}], "stopped": seeds
      stopped, "seeds": seeds in all}.
    """
    recorded = [variant for variant in variants if variant.get("stopped_epochs") is not None]
    if not recorded:
        return None
    rows = [
        {
            "name": variant["name"],
            "seeds": list(variant["seeds"]),
            "stopped_epochs": list(variant["stopped_epochs"]),
            "mean_epochs": variant.get("mean_epochs"),
        }
        for variant in recorded
    ]
    epochs = [epoch for row in rows for epoch in row["stopped_epochs"]]
    return {"variants": rows, "stopped": sum(epoch is not None for epoch in epochs), "seeds": len(epochs)}


def plain_recorded(variant: Variant) -> bool:
    """Whether every seed of the variant has a plain validation cross-entropy (recorded, or the
    validation loss of an unpenalised variant)."""
    penalised = bool(variant["spec"].get("l1")) or bool(variant["spec"].get("l2"))
    return all(plain_curve(history, penalised) is not None for history in variant.get("histories") or [])


def against_baseline(
    variants: Sequence[Variant], is_baseline: Callable[[Mapping], bool], label, curve: str = "val_loss"
) -> dict[str, Any]:
    """Each non-baseline variant's minimum validation loss, best epoch and overfitting (on
    `curve`, see `overfitting`) against the baseline's, with the verdict of each difference."""
    baselines = trained([variant for variant in variants if is_baseline(variant["spec"])])
    baseline = baselines[0] if baselines else None
    rows = []
    for variant in trained([variant for variant in variants if not is_baseline(variant["spec"])]):
        row = {
            "variant": label(variant),
            "best_val_loss": variant["best_val_loss"],
            "best_val_loss_sd": _stats(variant, "best_val_loss")["sd"],
            "best_epoch": variant["best_epoch"],
            "best_epoch_mean": _stats(variant, "best_epoch")["mean"],
        }
        if baseline is not None:
            loss = compare(variant, baseline, "best_val_loss")
            epoch = compare(variant, baseline, "best_epoch")
            row.update(
                val_loss=loss,
                best_epoch_change=epoch,
                lower_val_loss=variant["best_val_loss"] < baseline["best_val_loss"],
                later_best_epoch=variant["best_epoch"] > baseline["best_epoch"],
                overfitting=overfitting(variant, baseline, curve),
            )
        rows.append(row)
    return {
        "baseline": None if baseline is None else label(baseline),
        "baseline_val_loss": None if baseline is None else baseline["best_val_loss"],
        "baseline_val_loss_sd": None if baseline is None else _stats(baseline, "best_val_loss")["sd"],
        "baseline_best_epoch": None if baseline is None else baseline["best_epoch"],
        "baseline_best_epoch_mean": None if baseline is None else _stats(baseline, "best_epoch")["mean"],
        "compared": rows,
    }


def penalty_verdicts(variants: Sequence[Variant], is_baseline: Callable[[Mapping], bool], label) -> dict[str, Any]:
    """The penalty verdict on what the penalty does not inflate: per penalised variant, the plain
    validation cross-entropy's minimum ("best_val_cross_entropy"; None where not recorded) and
    the best validation accuracy against the unpenalised baseline, and the penalty the
    validation loss carries at the variant's best epoch ("penalty_at_best": mean validation loss
    minus mean plain cross-entropy there; None where not recorded).

    "helped" lists the variants whose plain cross-entropy is lower beyond the noise or, where it
    was not recorded, whose best validation accuracy is higher beyond the noise ("judged_by"
    says which).
    """
    baselines = trained([variant for variant in variants if is_baseline(variant["spec"])])
    baseline = baselines[0] if baselines else None
    rows = []
    for variant in trained([variant for variant in variants if not is_baseline(variant["spec"])]):
        recorded = plain_recorded(variant)
        row: dict[str, Any] = {
            "variant": label(variant),
            "plain_recorded": recorded,
            "cross_entropy": _figure(variant, "best_val_cross_entropy") if recorded else None,
            "accuracy": _figure(variant, "best_val_accuracy"),
            "penalty_at_best": None,
            "judged_by": "cross-entropy" if recorded else "accuracy",
        }
        plain = variant["history"].get("val_cross_entropy")
        if recorded and plain is not None and variant["best_epoch"] is not None:
            at = variant["best_epoch"] - 1
            row["penalty_at_best"] = float(variant["history"]["val_loss"][at] - plain[at])
        if baseline is not None:
            row["cross_entropy_change"] = compare(variant, baseline, "best_val_cross_entropy") if recorded else None
            row["accuracy_change"] = compare(variant, baseline, "best_val_accuracy")
            deciding = row["cross_entropy_change"] if recorded else row["accuracy_change"]
            better = "lower" if recorded else "higher"
            row["helped"] = (
                None if deciding is None or deciding["verdict"] == "unmeasured" else deciding["verdict"] == better
            )
        rows.append(row)
    key = lambda row: row["cross_entropy"]["mean"] if row["plain_recorded"] else -row["accuracy"]["mean"]  # noqa: E731
    helped = [row for row in rows if row.get("helped")]
    return {
        "baseline": None if baseline is None else label(baseline),
        "baseline_cross_entropy": None if baseline is None else _figure(baseline, "best_val_cross_entropy"),
        "baseline_accuracy": None if baseline is None else _figure(baseline, "best_val_accuracy"),
        "rows": rows,
        "helped": [row["variant"] for row in helped],
        "helped_most": None if not helped else min(helped, key=key)["variant"],
        "closest": None if not rows else min(rows, key=key)["variant"],
    }


def penalty_label(spec: Mapping[str, Any]) -> str:
    parts = [f"L1({spec['l1']:g})" if spec["l1"] else "", f"L2({spec['l2']:g})" if spec["l2"] else ""]
    return "+".join(part for part in parts if part) or "no penalty"


def _width(variant: Variant) -> str:
    return "-".join(map(str, variant["spec"]["hidden_units"]))


def is_seed_model(spec: Mapping[str, Any]) -> bool:
    """The seed's model: 16-16, no penalty or dropout, default optimiser (any seed)."""
    return all(
        spec.get(key) == value if key != "hidden_units" else list(spec.get(key, ())) == value
        for key, value in SEED_MODEL.items()
    )


def capacity(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The best width and depth over the units and layers experiments (lowest mean minimum
    validation loss), and whether it is distinguishable from the seed's 16-16 (or, when 16-16 is
    the best, from the runner-up). None without a units or layers experiment.

    Returns:
      {"candidates": their names, "best": name, "best_val_loss", "best_val_loss_sd",
      "val_accuracy_at_best", "seeds", "seed_model": 16-16's name or None (not trained),
      "seed_model_val_loss", "seed_model_val_loss_sd", "is_seed_model": whether the best is
      16-16, "against": the name compared with, "change": `compare` of the best with it}.
    """
    indices = sorted({index for name in ("units", "layers") for index in summary["experiments"].get(name, [])})
    if not indices:
        return None
    candidates = trained([summary["variants"][index] for index in indices])
    leader = best(candidates)
    if leader is None:
        return None
    seed_models = trained([variant for variant in summary["variants"] if is_seed_model(variant["spec"])])
    seed_model = seed_models[0] if seed_models else None
    others = [variant for variant in candidates if variant is not leader]
    against = (
        seed_model
        if seed_model is not None and seed_model is not leader
        else best(others)
        if seed_model is leader
        else None
    )
    return {
        "candidates": [variant["name"] for variant in candidates],
        "best": leader["name"],
        "best_val_loss": leader["best_val_loss"],
        "best_val_loss_sd": _stats(leader, "best_val_loss")["sd"],
        "val_accuracy_at_best": leader["val_accuracy_at_best"],
        "seeds": _stats(leader, "best_val_loss")["n"],
        "seed_model": None if seed_model is None else seed_model["name"],
        "seed_model_val_loss": None if seed_model is None else seed_model["best_val_loss"],
        "seed_model_val_loss_sd": None if seed_model is None else _stats(seed_model, "best_val_loss")["sd"],
        "is_seed_model": seed_model is leader,
        "against": None if against is None else against["name"],
        "against_val_loss": None if against is None else against["best_val_loss"],
        "against_val_loss_sd": None if against is None else _stats(against, "best_val_loss")["sd"],
        "change": None if against is None else compare(leader, against),
    }


def conclusions(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per experiment, the comparisons the report states, from the recorded statistics only; and
    under "capacity" (unless an experiment has that name) the best width and depth overall."""
    found: dict[str, dict[str, Any]] = {}
    for experiment in summary["experiments"]:
        variants = members(summary, experiment)
        if experiment == "units":
            found[experiment] = comparison(variants, _width)
        elif experiment == "layers":
            found[experiment] = comparison(variants, lambda variant: len(variant["spec"]["hidden_units"]))
        elif experiment == "regularization":
            label = lambda variant: penalty_label(variant["spec"])  # noqa: E731
            unpenalised = lambda spec: not spec["l1"] and not spec["l2"]  # noqa: E731
            # Overfitting on the plain cross-entropy where every variant has it: the penalty's own
            # growth is not overfitting.
            curve = "val_cross_entropy" if all(plain_recorded(variant) for variant in trained(variants)) else "val_loss"
            found[experiment] = {
                **comparison(variants, label),
                **against_baseline(variants, unpenalised, label, curve),
                "penalty": penalty_verdicts(variants, unpenalised, label),
            }
            found[experiment]["helped"] = found[experiment]["penalty"]["helped"]
        elif experiment == "dropout":
            label = lambda variant: variant["spec"]["dropout_rate"]  # noqa: E731
            found[experiment] = {
                **comparison(variants, label),
                **against_baseline(variants, lambda spec: not spec["dropout_rate"], label),
            }
        else:
            found[experiment] = comparison(variants, lambda variant: variant["name"])
        if experiment not in ("units", "layers", "regularization", "dropout"):
            found[experiment]["turns_up"] = {variant["name"]: turn(variant) for variant in trained(variants)}
        stops = early_stopping(variants)
        if stops is not None:
            found[experiment]["early_stopping"] = stops
    if CAPACITY not in summary["experiments"]:
        overall = capacity(summary)
        if overall is not None:
            found[CAPACITY] = overall
    return found
