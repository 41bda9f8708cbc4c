"""The study's Markdown report: every sentence is filled in from `conclusions`, so it says what
the numbers support: a variant "did best" only when its lead exceeds the noise between seeds
(`statistics.RULE`); otherwise the report says the variants are indistinguishable, or that one
seed cannot tell."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from imdb_jax.study.statistics import NOISE_SOURCES, SEPARATION, SHARED


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pm(mean: float | None, sd: float | None, digits: int = 4) -> str:
    """"0.2800 ± 0.0010", or the mean alone when the spread is unknown."""
    return _number(mean, digits) if sd is None or mean is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _and(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _seeds(count: int) -> str:
    return "1 seed" if count == 1 else f"{count} seeds"


def _margin(found: Mapping[str, Any]) -> str:
    return f"{_number(abs(found['difference']))} vs {SEPARATION:g} standard errors = {_number(SEPARATION * found['se'])}"


def leader_text(topic: str, found: Mapping[str, Any], name: Callable[[Any], str]) -> str:
    """The sentence on which variant did best, as far as the seeds can tell."""
    leader = name(found["best"])
    seeds = found["seeds"]
    figures = (
        f"mean minimum validation loss {_pm(found['best_val_loss'], found['best_val_loss_sd'])} over {_seeds(seeds)}; "
        f"mean curve lowest at epoch {found['best_epoch']}"
    )
    runner_up = found["runner_up"]
    if runner_up is None:
        return f"{topic}: {leader} ({figures})."
    if found["clear_best"] is True:
        return (
            f"{topic}: {leader} did best ({figures}); its lead over {name(runner_up['variant'])} is larger than the "
            f"noise ({_margin(runner_up)})."
        )
    if found["clear_best"] is False:
        tied = [name(row["variant"]) for row in found["tied_with_best"]]
        closest = min(found["tied_with_best"], key=lambda row: row["difference"])
        return (
            f"{topic}: {_and([leader, *tied])} are indistinguishable at {_seeds(seeds)}: {leader} has the lowest mean "
            f"({figures}), but its lead over {name(closest['variant'])} is within the noise ({_margin(closest)})."
        )
    return (
        f"{topic}: {leader} had the lowest minimum validation loss ({_number(found['best_val_loss'])} at epoch "
        f"{found['best_epoch']}), but with {_seeds(seeds)} the noise between runs is not measured, so the ranking "
        f"may be chance (train with --seeds 3 or more)."
    )


def _overfit_text(found: Mapping[str, Any], name: Callable[[Any], str], kinds: str) -> str:
    if not found["overfit_soonest"]:
        return f"No {kinds}'s mean validation loss turned up yet."
    soonest = _and([name(item) for item in found["overfit_soonest"]])
    return f"{soonest} overfit soonest (mean validation loss lowest at epoch {found['soonest_best_epoch']}, rising after)."


def units_text(found: Mapping[str, Any]) -> str:
    name = lambda width: f"{width} units"  # noqa: E731
    return (
        f"{leader_text('Width', found, name)} {_overfit_text(found, name, 'width')} "
        f"{name(found['least_fit'])} fit the training reviews least (mean lowest training loss {_number(found['least_fit_min_loss'])})."
    )


def layers_text(found: Mapping[str, Any]) -> str:
    name = lambda depth: f"{depth} hidden layer" + ("" if depth == 1 else "s")  # noqa: E731
    return f"{leader_text('Depth', found, name)} {_overfit_text(found, name, 'depth')}"


def turn_text(name: str, turn: Mapping[str, Any]) -> str:
    if not turn["rises"]:
        return f"The {name} model's mean validation loss is still at its lowest at the last epoch ({turn['last_epoch']}): no overfitting yet."
    return (
        f"The {name} model's mean validation loss is lowest at epoch {turn['best_epoch']} ({_number(turn['best_val_loss'])}) "
        f"and turns up after it: overfitting starts at epoch {turn['best_epoch'] + 1} "
        f"(mean validation loss {_number(turn['last_val_loss'])} by epoch {turn['last_epoch']})."
    )


def _loss_change(row: Mapping[str, Any], found: Mapping[str, Any], without: str) -> str:
    """How a variant's minimum validation loss compares with the baseline's, as a verb phrase."""
    figures = f"({_pm(row['best_val_loss'], row['best_val_loss_sd'])} vs {_pm(found['baseline_val_loss'], found['baseline_val_loss_sd'])} {without})"
    verdict = row["val_loss"]["verdict"]
    if verdict == "lower":
        return f"lowered the minimum validation loss {figures}"
    if verdict == "higher":
        return f"raised the minimum validation loss {figures}"
    if verdict == "indistinguishable":
        return f"did not change the minimum validation loss beyond the noise {figures}"
    direction = "lower" if row["lower_val_loss"] else "not lower"
    return f"gave a {direction} minimum validation loss {figures}, with the noise unmeasured (1 seed)"


def regularization_text(found: Mapping[str, Any]) -> str:
    if found["baseline"] is None:
        return f"Penalty: {found['best']} reached the lowest mean validation loss ({_number(found['best_val_loss'])})."
    parts = [f"{row['variant']} {_loss_change(row, found, 'without a penalty')}" for row in found["compared"]]
    text = "Penalty: " + "; ".join(parts) + ". "
    if found["helped"]:
        most = min((row for row in found["compared"] if row["variant"] in found["helped"]), key=lambda row: row["best_val_loss"])
        return text + f"{_and(found['helped'])} helped; {most['variant']} most."
    closest = min(found["compared"], key=lambda row: row["best_val_loss"], default=None)
    return text + "No penalty helped beyond the noise" + ("" if closest is None else f"; {closest['variant']} came closest") + "."


def _epoch_change(row: Mapping[str, Any], found: Mapping[str, Any]) -> str:
    change = row["best_epoch_change"]
    before, after = found["baseline_best_epoch_mean"], row["best_epoch_mean"]
    if change is None or change["verdict"] == "unmeasured":
        if row["best_epoch"] == found["baseline_best_epoch"]:
            return f"left the best epoch where it was ({row['best_epoch']})"
        return f"moved the best epoch {'later' if row['later_best_epoch'] else 'earlier'}, from {found['baseline_best_epoch']} to {row['best_epoch']}"
    if change["verdict"] == "indistinguishable":
        return f"left the best epoch where it was within the noise (mean {before:.1f} vs {after:.1f})"
    return f"moved the best epoch {'later' if change['verdict'] == 'higher' else 'earlier'}, from {before:.1f} to {after:.1f} on average"


def dropout_text(found: Mapping[str, Any]) -> str:
    if found["baseline"] is None:
        return f"Dropout: {found['best']} reached the lowest mean validation loss ({_number(found['best_val_loss'])})."
    parts = [
        f"dropout {row['variant']:g} {_epoch_change(row, found)}, and {_loss_change(row, found, 'without dropout')}"
        for row in found["compared"]
    ]
    return "Dropout: " + "; ".join(parts) + "."


def _table(variants: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| variant | seeds | best epoch | min val loss | val acc at best | max val acc | min train loss | diverged |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for variant in variants:
        stats = variant["stats"]
        diverged = "no"
        if variant["diverged"]:
            seeds = variant["diverged_seeds"]
            diverged = f"epoch {variant['diverged_epoch']} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
        epoch = "n/a" if stats["best_epoch"]["mean"] is None else _pm(stats["best_epoch"]["mean"], stats["best_epoch"]["sd"], 1)
        lines.append(
            f"| {variant['name']} | {stats['best_val_loss']['n']}/{len(variant['seeds'])} | {epoch} | "
            f"{_pm(stats['best_val_loss']['mean'], stats['best_val_loss']['sd'])} | "
            f"{_pm(stats['val_accuracy_at_best']['mean'], stats['val_accuracy_at_best']['sd'])} | "
            f"{_number(variant['best_val_accuracy'])} | {_number(variant['min_loss'])} | {diverged} |"
        )
    return lines


WRITERS = {"units": units_text, "layers": layers_text, "regularization": regularization_text, "dropout": dropout_text}


def report_markdown(summary: Mapping[str, Any]) -> str:
    """The study's report: settings, the noise the seeds measure, one section per experiment,
    the retrain result."""
    settings = summary["settings"]
    found = summary["conclusions"]
    seeds = settings.get("seeds", 1)
    lines = [
        "# Study report",
        "",
        f"{len(summary['variants'])} distinct variants, each trained with {_seeds(seeds)}; {settings['epochs']} epochs, "
        f"batch {settings['batch_size']}, {settings['train_reviews']} training reviews with the first "
        f"{settings['validation_reviews']} held out for validation; shuffle seed {settings['shuffle_seed']}.",
        "",
        f"The seeds vary the {_and(list(NOISE_SOURCES))}; the {_and(list(SHARED))} are shared, so the spread below "
        f"is the noise of those two sources only. Figures are means ± sample standard deviation over seeds of each "
        f"seed's minimum validation loss (its best epoch). A variant is called better only when its mean is lower by "
        f"more than {SEPARATION:g} standard errors of the difference (Welch); with one seed nothing is called better.",
        "",
    ]
    for experiment, indices in summary["experiments"].items():
        lines += [f"## {experiment}", ""]
        result = found[experiment]
        if result["best"] is None:
            lines.append("Every variant diverged; nothing to compare.")
        elif experiment in WRITERS:
            lines.append(WRITERS[experiment](result))
        elif len(indices) > 1:
            lines.append(leader_text("Ranking", result, str))
        for name, turn in result.get("turns_up", {}).items():
            lines.append(turn_text(name, turn))
        if result["diverged"]:
            lines.append(f"Diverged (on at least one seed): {', '.join(map(str, result['diverged']))}.")
        lines += ["", *_table([summary["variants"][index] for index in indices]), ""]
    retrain = summary.get("retrain")
    lines += ["## Retrained model", ""]
    if not retrain:
        lines.append("Not retrained (`retrain=False` / `--no-retrain`, or no variant finished without diverging).")
    else:
        lines.append(
            f"The variant with the lowest mean minimum validation loss, {retrain['variant']}, retrained (seed "
            f"{retrain['spec']['seed']}) for the epoch count where its mean validation loss is lowest ({retrain['epochs']}) "
            f"on all {retrain['train_reviews']} training reviews: test loss {_number(retrain['test_loss'])}, "
            f"test accuracy {_number(retrain['test_accuracy'])}."
        )
    lines += ["", f"Wall time {summary['wall_s']:.1f} s on {', '.join(summary['devices'])}."]
    return "\n".join(lines) + "\n"
