"""The study's Markdown report: every sentence is filled in from `conclusions`, so it says what
the numbers support: a variant "did best" only when its lead exceeds the noise between seeds
(`statistics.RULE`), and the sentence names the test (paired or Welch's t-test) that said so;
otherwise the report says the variants are indistinguishable, or that one seed cannot tell.
Each experiment's section embeds its figures (`figures.experiment_figures`) when they were
written."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from imdb_jax.study.conclusions import CAPACITY
from imdb_jax.study.figures import CURVE_FIGURES, DEPTH_FIGURE, experiment_figures
from imdb_jax.study.statistics import NOISE_SOURCES, PAIRED, SEPARATION, SHARED


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pm(mean: float | None, sd: float | None, digits: int = 4) -> str:
    """ "0.2800 ± 0.0010", or the mean alone when the spread is unknown."""
    return _number(mean, digits) if sd is None or mean is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _and(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _seeds(count: int) -> str:
    return "1 seed" if count == 1 else f"{count} seeds"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _margin(found: Mapping[str, Any]) -> str:
    """The test a verdict came from, the difference against the threshold, and the p-value:
    "Welch's t-test: 0.0100 vs 2 standard errors = 0.0016, p < 0.001"."""
    test = f"{PAIRED} over {_seeds(found['n'])}" if found["test"] == PAIRED else found["test"]
    return f"{test}: {_number(abs(found['difference']))} vs {SEPARATION:g} standard errors = {_number(SEPARATION * found['se'])}, {_p(found['p'])}"


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
    return (
        f"{soonest} overfit soonest (mean validation loss lowest at epoch {found['soonest_best_epoch']}, rising after)."
    )


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


def _sentence(text: str) -> str:
    """`text` with its first letter capitalised ("dropout 0.5 ..." starting a sentence)."""
    return text[:1].upper() + text[1:]


def _change(verdict: str, lower: str, higher: str, same: str) -> str:
    return {"lower": lower, "higher": higher}.get(verdict, same)


def _loss_change(row: Mapping[str, Any], found: Mapping[str, Any], without: str) -> str:
    """How a variant's minimum validation loss compares with the baseline's, as a verb phrase
    naming the test."""
    figures = f"{_pm(row['best_val_loss'], row['best_val_loss_sd'])} vs {_pm(found['baseline_val_loss'], found['baseline_val_loss_sd'])} {without}"
    change = row["val_loss"]
    if change["verdict"] == "unmeasured":
        direction = "lower" if row["lower_val_loss"] else "not lower"
        return f"gave a {direction} minimum validation loss ({figures}), with the noise unmeasured (1 seed)"
    verb = _change(
        change["verdict"],
        "lowered the minimum validation loss",
        "raised the minimum validation loss",
        "did not change the minimum validation loss beyond the noise",
    )
    return f"{verb} ({figures}; {_margin(change)})"


def _versus(change: Mapping[str, Any] | None, words: tuple[str, str, str]) -> str:
    """ ", lower (paired t-test ...)" for a comparison, from (lower, higher, same) words."""
    if change is None:
        return ""
    if change["verdict"] == "unmeasured":
        return ", the noise unmeasured (1 seed)"
    return f", {_change(change['verdict'], *words)} ({_margin(change)})"


def _penalty_row(row: Mapping[str, Any], penalty: Mapping[str, Any]) -> str:
    parts = []
    if row["plain_recorded"]:
        base = penalty["baseline_cross_entropy"]
        parts.append(
            f"minimum validation cross-entropy {_pm(row['cross_entropy']['mean'], row['cross_entropy']['sd'])} vs "
            f"{_pm(base['mean'], base['sd'])} without a penalty"
            + _versus(row.get("cross_entropy_change"), ("lower", "higher", "indistinguishable"))
        )
    else:
        parts.append("plain cross-entropy not recorded in these histories")
    base = penalty["baseline_accuracy"]
    parts.append(
        f"best validation accuracy {_pm(row['accuracy']['mean'], row['accuracy']['sd'])} vs {_pm(base['mean'], base['sd'])}"
        + _versus(row.get("accuracy_change"), ("lower", "higher", "indistinguishable"))
    )
    if row["penalty_at_best"] is not None:
        parts.append(f"the penalty adds {_number(row['penalty_at_best'])} to its validation loss at its best epoch")
    return f"{row['variant']}: " + "; ".join(parts)


def _curve_name(curve: str) -> str:
    return "plain validation cross-entropy" if curve == "val_cross_entropy" else "validation loss"


def slowed_text(name: str, overfit: Mapping[str, Any], without: str, penalised: bool = False) -> str:
    """Whether `name` slowed overfitting: how far each seed's validation curve climbed back after
    its minimum, against the baseline's, by the test that compared them. `penalised`: `name`'s
    validation loss includes a penalty (said so when that is the curve compared)."""
    curve = _curve_name(overfit["curve"])
    epochs = overfit["epochs"]
    rising = curve
    if penalised and overfit["curve"] == "val_loss":
        rising = f"{curve} (with the penalty, the plain cross-entropy not recorded)"
    if not overfit["baseline_rises"]:
        return f"{without.capitalize()}, the {curve} did not climb back after its minimum within {epochs} epochs: no overfitting for {name} to slow yet."
    rise, last = overfit["rise"], overfit["last"]
    base_rise, base_last = overfit["baseline_rise"], overfit["baseline_last"]
    # With early stopping the seeds end at different epochs: each "last" value is at its own.
    at = f"at epoch {epochs}" if overfit.get("same_end", True) else "at each seed's last epoch"
    figures = (
        f"its mean {rising} rose {_number(rise['mean'])} after its minimum, to {_number(last['mean'])} {at}, "
        f"against {_number(base_rise['mean'])}, to {_number(base_last['mean'])}, {without}"
    )
    change = overfit["rise_change"]
    if change is None or change["verdict"] == "unmeasured":
        return f"Overfitting with {name}: {figures}; with 1 seed the noise is not measured, so whether it slowed overfitting is open."
    verdict = _change(
        change["verdict"],
        f"{name} slowed overfitting",
        f"{name} sped overfitting up",
        f"{name} did not slow overfitting beyond the noise",
    )
    at_end = overfit["last_change"]
    ending = ""
    if at_end is not None and at_end["verdict"] != "unmeasured":
        ending = f"; {at} its {curve} is {_change(at_end['verdict'], 'lower', 'higher', 'indistinguishable from that')} ({_margin(at_end)})"
    return _sentence(f"{verdict}: {figures} (rise after the minimum, {_margin(change)}){ending}.")


def regularization_text(found: Mapping[str, Any]) -> str:
    if found["baseline"] is None:
        return f"Penalty: {found['best']} reached the lowest mean validation loss ({_number(found['best_val_loss'])})."
    keras = [f"{row['variant']} {_loss_change(row, found, 'without a penalty')}" for row in found["compared"]]
    penalty = found["penalty"]
    plain = all(row["plain_recorded"] for row in penalty["rows"])
    text = (
        "Penalty: the validation loss here is Keras' number, which includes the penalty (L1 times the sum of the "
        "hidden kernels' absolute values, L2 times the sum of their squares), so it is not the fit to the held-out "
        "reviews alone. With the penalty included, "
        + "; ".join(keras)
        + ". Without it: "
        + "; ".join(_penalty_row(row, penalty) for row in penalty["rows"])
        + ". "
    )
    if penalty["helped"]:
        text += f"{_and(penalty['helped'])} helped; {penalty['helped_most']} most."
    else:
        text += (
            "No penalty helped beyond the noise"
            + ("" if penalty["closest"] is None else f"; {penalty['closest']} came closest")
            + "."
        )
    basis = (
        "plain validation cross-entropy" if plain else "validation accuracy (the plain cross-entropy was not recorded)"
    )
    text += f" This verdict is drawn from the {basis}, not from the penalised loss."
    overfits = [slowed_text(row["variant"], row["overfitting"], "without a penalty", True) for row in found["compared"]]
    return text + " " + " ".join(overfits)


def _epoch_change(row: Mapping[str, Any], found: Mapping[str, Any]) -> str:
    change = row["best_epoch_change"]
    before, after = found["baseline_best_epoch_mean"], row["best_epoch_mean"]
    if change is None or change["verdict"] == "unmeasured":
        if row["best_epoch"] == found["baseline_best_epoch"]:
            return f"left the best epoch where it was ({row['best_epoch']})"
        return f"moved the best epoch {'later' if row['later_best_epoch'] else 'earlier'}, from {found['baseline_best_epoch']} to {row['best_epoch']}"
    if change["verdict"] == "indistinguishable":
        return (
            f"left the best epoch where it was within the noise (mean {before:.1f} vs {after:.1f}; {_margin(change)})"
        )
    return f"moved the best epoch {'later' if change['verdict'] == 'higher' else 'earlier'}, from {before:.1f} to {after:.1f} on average ({_margin(change)})"


def dropout_text(found: Mapping[str, Any]) -> str:
    if found["baseline"] is None:
        return f"Dropout: {found['best']} reached the lowest mean validation loss ({_number(found['best_val_loss'])})."
    parts = [
        f"dropout {row['variant']:g} {_epoch_change(row, found)}, and {_loss_change(row, found, 'without dropout')}"
        for row in found["compared"]
    ]
    overfits = [
        slowed_text(f"dropout {row['variant']:g}", row["overfitting"], "without dropout") for row in found["compared"]
    ]
    return "Dropout: " + "; ".join(parts) + ". " + " ".join(overfits)


def capacity_text(found: Mapping[str, Any]) -> str:
    """The best width and depth overall, and whether it is distinguishable from the seed's 16-16."""
    figures = f"mean minimum validation loss {_pm(found['best_val_loss'], found['best_val_loss_sd'])} over {_seeds(found['seeds'])}"
    text = f"Of the widths and depths trained ({', '.join(found['candidates'])}), "
    change = found["change"]
    if found["against"] is None:
        return text + f"{found['best']} has the lowest {figures}; the seed's 16-16 was not trained."
    other = f"{_pm(found['against_val_loss'], found['against_val_loss_sd'])}"
    if found["is_seed_model"]:
        text += f"the seed's own {found['best']} has the lowest {figures}; "
        if change["verdict"] == "unmeasured":
            return text + f"with 1 seed it cannot be told from the runner-up, {found['against']} ({other})."
        if change["verdict"] == "lower":
            return (
                text
                + f"its lead over the runner-up, {found['against']} ({other}), is larger than the noise ({_margin(change)})."
            )
        return text + f"it is indistinguishable from the runner-up, {found['against']} ({other}; {_margin(change)})."
    text += f"{found['best']} has the lowest {figures}; "
    if change["verdict"] == "unmeasured":
        return text + f"with 1 seed it cannot be told from the seed's {found['against']} ({other})."
    if change["verdict"] == "lower":
        return text + f"it is lower than the seed's {found['against']} ({other}) beyond the noise ({_margin(change)})."
    return text + f"it is indistinguishable from the seed's {found['against']} ({other}; {_margin(change)})."


def _stops(epochs: Sequence[int | None]) -> str:
    """ "5, 8, -" : each seed's stop epoch, "-" for a seed that trained every epoch."""
    return ", ".join("-" if epoch is None else str(epoch) for epoch in epochs)


def early_stopping_text(found: Mapping[str, Any], patience: Any) -> str:
    """The sentence on where early stopping stopped an experiment's seeds."""
    rule = "early stopping" if patience is None else f"early stopping (patience {patience})"
    stopped = [row for row in found["variants"] if any(epoch is not None for epoch in row["stopped_epochs"])]
    if not stopped:
        return f"With {rule} on, no seed stopped early: every one trained every epoch."
    parts = [
        f"{row['name']} after epoch{'s' if len(row['stopped_epochs']) > 1 else ''} {_stops(row['stopped_epochs'])}"
        for row in stopped
    ]
    return (
        f"{_sentence(rule)} stopped {found['stopped']} of {found['seeds']} seeds (per seed, in seed order; - trained "
        f"every epoch): {'; '.join(parts)}. A variant's mean curve and band end where its first seed stopped, and "
        f"each seed's last validation loss is at its own last epoch."
    )


def _table(variants: Sequence[Mapping[str, Any]], plain: bool = False) -> list[str]:
    """One row per variant; with `plain`, a column of the minimum plain validation cross-entropy;
    with early stopping (variants recording "stopped_epochs"), a column of each seed's stop."""
    stops = any(variant.get("stopped_epochs") is not None for variant in variants)
    extra = (" min val cross-entropy (no penalty) |" if plain else "") + (" stopped after epoch |" if stops else "")
    lines = [
        f"| variant | seeds | best epoch | min val loss | val acc at best | max val acc | min train loss | last val loss |{extra} diverged |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        + (" ---: |" if plain else "")
        + (" ---: |" if stops else "")
        + " --- |",
    ]
    for variant in variants:
        stats = variant["stats"]
        diverged = "no"
        if variant["diverged"]:
            seeds = variant["diverged_seeds"]
            diverged = (
                f"epoch {variant['diverged_epoch']} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
            )
        epoch = (
            "n/a"
            if stats["best_epoch"]["mean"] is None
            else _pm(stats["best_epoch"]["mean"], stats["best_epoch"]["sd"], 1)
        )
        last = stats.get("last_val_loss", {"mean": None, "sd": None})
        cells = ""
        if plain:
            cross = stats.get("best_val_cross_entropy", {"mean": None, "sd": None})
            cells = f" {_pm(cross['mean'], cross['sd'])} |"
        if stops:
            cells += f" {_stops(variant.get('stopped_epochs') or [])} |"
        lines.append(
            f"| {variant['name']} | {stats['best_val_loss']['n']}/{len(variant['seeds'])} | {epoch} | "
            f"{_pm(stats['best_val_loss']['mean'], stats['best_val_loss']['sd'])} | "
            f"{_pm(stats['val_accuracy_at_best']['mean'], stats['val_accuracy_at_best']['sd'])} | "
            f"{_number(variant['best_val_accuracy'])} | {_number(variant['min_loss'])} | {_pm(last['mean'], last['sd'])} |{cells} {diverged} |"
        )
    return lines


WRITERS = {"units": units_text, "layers": layers_text, "regularization": regularization_text, "dropout": dropout_text}
FIGURE_CAPTIONS = {
    "val_loss": "mean validation loss per epoch",
    "val_accuracy": "mean validation accuracy per epoch",
}


def _embed(names: Sequence[str], written: Sequence[str], caption: Callable[[str], str]) -> list[str]:
    """Markdown images of the figures that were written, one per line."""
    return [f"![{caption(name)}]({name})" for name in names if name in written]


def _experiment_caption(experiment: str) -> Callable[[str], str]:
    def caption(name: str) -> str:
        if name == DEPTH_FIGURE:
            return "minimum validation loss and maximum validation accuracy against depth"
        return f"{experiment}: {FIGURE_CAPTIONS['val_accuracy' if name.startswith('val_accuracy') else 'val_loss']}"

    return caption


def report_markdown(summary: Mapping[str, Any]) -> str:
    """The study's report: settings, the noise the seeds measure and how differences are tested,
    one section per experiment with its figures, the best capacity overall, every variant's
    curves, the retrain result."""
    settings = summary["settings"]
    found = summary["conclusions"]
    seeds = settings.get("seeds", 1)
    written = list(summary.get("figures") or [])
    lines = [
        "# Study report",
        "",
        f"{len(summary['variants'])} distinct variants, each trained with {_seeds(seeds)}; {settings['epochs']} epochs, "
        f"batch {settings['batch_size']}, {settings['train_reviews']} training reviews with the first "
        f"{settings['validation_reviews']} held out for validation; shuffle seed {settings['shuffle_seed']}.",
        "",
        f"The seeds vary the {_and(list(NOISE_SOURCES))}; the {_and(list(SHARED))} are shared, so the spread below "
        f"is the noise of those two sources only. Figures are means ± sample standard deviation over seeds of each "
        f"seed's minimum validation loss (its best epoch). A variant is called better only when it is lower by "
        f"more than {SEPARATION:g} standard errors: of the per-seed differences (a paired t-test) where two variants "
        f"share their shape and seeds, and so their initial weights and dropout streams; else of the difference of "
        f"the means (Welch's t-test). Each sentence names its test and gives the two-sided p-value beside the "
        f"margin; with one seed nothing is called better.",
        "",
        "The validation loss is Keras' number: for a variant with an L1 or L2 penalty it includes the penalty. "
        "The penalty verdict below is drawn from the plain validation cross-entropy and the validation accuracy.",
        "",
    ]
    if written:
        lines += [
            "In the figures each line is the mean over seeds, its band runs from the lowest to the highest seed, and "
            "the dot on each curve marks its best epoch, where its mean validation loss is lowest (the epoch count a "
            "retrain uses): on a validation-loss curve the dot is the curve's minimum.",
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
        if result.get("early_stopping") is not None:
            lines += ["", early_stopping_text(result["early_stopping"], settings.get("patience"))]
        figures = _embed(experiment_figures(experiment), written, _experiment_caption(experiment))
        if figures:
            lines += ["", *figures]
        table = _table([summary["variants"][index] for index in indices], plain=experiment == "regularization")
        lines += ["", *table, ""]
    if CAPACITY in found and CAPACITY not in summary["experiments"]:
        lines += ["## Capacity overall", "", capacity_text(found[CAPACITY]), ""]
    curves = _embed(
        CURVE_FIGURES,
        written,
        lambda name: "training and validation " + name.split("_")[-1].removesuffix(".png") + " of every variant",
    )
    if curves:
        lines += [
            "## Every variant's curves",
            "",
            "Training (dots) and validation (line) loss and accuracy per variant, as the seed plots them.",
            "",
            *curves,
            "",
        ]
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
