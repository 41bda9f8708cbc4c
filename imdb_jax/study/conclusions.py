"""What each experiment shows, computed from a study summary alone (so tests can hand-make the
numbers): which variant did best and whether its lead is larger than the noise between seeds,
which overfit soonest, which penalty or dropout rate helped.

Every comparison of two variants goes through `statistics.difference` (the two-standard-error
rule); a verdict of "unmeasured" (one seed) is reported as such, never as a finding.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from imdb_jax.study.statistics import difference, finite

Variant = Mapping[str, Any]


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
    if stats is not None:
        return stats[key]
    value = variant[key]  # a summary from before seeds: one value
    return {"mean": value, "sd": None, "min": value, "max": value, "n": 0 if value is None else 1}


def compare(a: Variant, b: Variant, key: str = "best_val_loss") -> dict[str, Any] | None:
    """`statistics.difference` of one seed figure between two variants (a minus b)."""
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
    against = [(variant, compare(variant, leader)) for variant in others]
    verdicts = [found["verdict"] for _, found in against]
    if not others:
        clear = None
    elif "unmeasured" in verdicts:
        clear = None
    else:
        clear = all(verdict == "higher" for verdict in verdicts)
    return {
        "best": None if leader is None else label(leader),
        "best_name": None if leader is None else leader["name"],
        "best_val_loss": None if leader is None else leader["best_val_loss"],
        "best_val_loss_sd": None if leader is None else _stats(leader, "best_val_loss")["sd"],
        "best_epoch": None if leader is None else leader["best_epoch"],
        "seeds": seeds_of(variants),
        "clear_best": clear,
        "tied_with_best": [
            {"variant": label(variant), "best_val_loss": variant["best_val_loss"], "best_val_loss_sd": _stats(variant, "best_val_loss")["sd"], **found}
            for variant, found in against
            if found["verdict"] == "indistinguishable"
        ],
        "runner_up": None if not against else {
            "variant": label(min(others, key=lambda variant: variant["best_val_loss"])),
            **compare(min(others, key=lambda variant: variant["best_val_loss"]), leader),
        },
        "soonest_best_epoch": soonest,
        "overfit_soonest": [label(variant) for variant in rising if variant["best_epoch"] == soonest],
        "least_fit": None if least_fit is None else label(least_fit),
        "least_fit_min_loss": None if least_fit is None else least_fit["min_loss"],
        "diverged": [label(variant) for variant in variants if variant["diverged"]],
    }


def against_baseline(variants: Sequence[Variant], is_baseline: Callable[[Mapping], bool], label) -> dict[str, Any]:
    """Each non-baseline variant's minimum validation loss and best epoch against the baseline's,
    with the verdict of each difference."""
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


def penalty_label(spec: Mapping[str, Any]) -> str:
    parts = [f"L1({spec['l1']:g})" if spec["l1"] else "", f"L2({spec['l2']:g})" if spec["l2"] else ""]
    return "+".join(part for part in parts if part) or "no penalty"


def _width(variant: Variant) -> str:
    return "-".join(map(str, variant["spec"]["hidden_units"]))


def conclusions(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per experiment, the comparisons the report states, from the recorded statistics only."""
    found: dict[str, dict[str, Any]] = {}
    for experiment in summary["experiments"]:
        variants = members(summary, experiment)
        if experiment == "units":
            found[experiment] = comparison(variants, _width)
        elif experiment == "layers":
            found[experiment] = comparison(variants, lambda variant: len(variant["spec"]["hidden_units"]))
        elif experiment == "regularization":
            label = lambda variant: penalty_label(variant["spec"])  # noqa: E731
            found[experiment] = {
                **comparison(variants, label),
                **against_baseline(variants, lambda spec: not spec["l1"] and not spec["l2"], label),
            }
            rows = found[experiment]["compared"]
            found[experiment]["helped"] = [row["variant"] for row in rows if _verdict(row) == "lower"]
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
    return found


def _verdict(row: Mapping[str, Any]) -> str | None:
    return (row.get("val_loss") or {}).get("verdict")
