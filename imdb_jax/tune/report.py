"""The report of a ``tune`` search: ``search.md`` (every variant in a table) and ``search.png``
(validation accuracy against each setting), both drawn from the summary ``search.json`` holds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from imdb_jax.atomic import atomic_write

SETTINGS = (
    ("features", "feature set", lambda c: c["features_name"]),
    ("hidden_units", "hidden units", lambda c: "-".join(str(width) for width in c["spec"]["hidden_units"])),
    ("dropout_rate", "dropout", lambda c: f"{c['spec']['dropout_rate']:g}"),
    ("learning_rate", "learning rate", lambda c: f"{c['spec']['learning_rate']:g}"),
    ("weight_decay", "weight decay", lambda c: f"{c['spec']['weight_decay']:g}"),
    ("seed", "seed", lambda c: str(c["spec"]["seed"])),
)


def _number(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(summary: Mapping[str, Any]) -> str:
    """The report's Markdown text."""
    choice = summary["choice"]
    candidates = summary["candidates"]
    members = summary["members"]
    space = summary["space"]
    kind = (
        "a single model" if not choice["ensemble"] else f"an ensemble of {len(members)} models (probabilities averaged)"
    )
    single, greedy = choice["single_validation"], choice["ensemble_validation"]
    if len(set(choice["picks"])) == 1:
        ensemble_text = (
            "no other variant lowered the validation log loss of an average with it, so no ensemble was formed."
        )
    else:
        verdict = (
            "kept: its validation accuracy beat"
            if choice["ensemble"]
            else "not kept: its validation accuracy did not beat"
        )
        ensemble_text = (
            f"the greedy ensemble of {len(choice['picks'])} picks, validation accuracy {_number(greedy['accuracy'])} (log loss "
            f"{_number(greedy['loss'])}), was {verdict} the single variant's."
        )
    lines = [
        "# imdb-jax tune: the search",
        "",
        f"**Test accuracy {_number(summary['test_accuracy'])}** (loss {_number(summary['test_loss'])}) of {kind}, "
        f"scored once on the {summary['test_reviews']:,} test reviews after everything was chosen.",
        "",
        f"Chosen on the first {space['validation']:,} training reviews only (held out of the features and the training): "
        f"best single variant {candidates[choice['single']]['name']}, validation accuracy {_number(single['accuracy'])} "
        f"(log loss {_number(single['loss'])}); {ensemble_text}",
        "",
        "## The final model",
        "",
        "| member | weight | epochs | trained on | feature columns |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for member in members:
        lines.append(
            f"| {member['name']} | {member['weight']:.3f} | {member['epochs']} | {member['train_reviews']:,} | {member['columns']:,} |"
        )
    lines += [
        "",
        f"## Every variant (validation figures at each variant's best epoch, of {space['epochs']})",
        "",
        "| # | round | features | hidden | dropout | learning rate | weight decay | seed | best epoch | val loss | val accuracy | chosen |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    weights = {member["candidate"]: member["weight"] for member in members}
    order = sorted(range(len(candidates)), key=lambda index: (-(candidates[index]["val_accuracy"] or 0.0), index))
    for index in order:
        candidate = candidates[index]
        values = [getter(candidate) for _, _, getter in SETTINGS]
        mark = ""
        if index in weights:
            mark = f"weight {weights[index]:.3f}"
        elif index == choice["single"]:
            mark = "best single"
        lines.append(
            f"| {index} | {candidate['round']} | {' | '.join(values)} | {candidate['best_epoch'] or '-'} | "
            f"{_number(candidate['val_loss'])} | {_number(candidate['val_accuracy'])} | {mark} |"
        )
    lines += ["", "## Time", "", "| stage | seconds |", "| --- | ---: |"]
    for stage, seconds in summary.get("seconds", {}).items():
        lines.append(f"| {stage} | {seconds:.1f} |")
    cached = "all from the cache" if summary["features_cached"] else "built (some or all) in this run"
    lines += ["", f"Features: {cached}.", "", "![validation accuracy against each setting](search.png)", ""]
    return "\n".join(lines)


def figure(summary: Mapping[str, Any]) -> Any:
    """A matplotlib ``Figure``: validation accuracy (best epoch) of every variant against each
    setting, one panel per setting; the final model's members ringed, the best single starred."""
    # Deferred: matplotlib (~0.4 s) loads only when the figure is drawn, not with this module.
    from matplotlib.figure import Figure

    candidates = summary["candidates"]
    members = {member["candidate"] for member in summary["members"]}
    single = summary["choice"]["single"]
    rng = np.random.default_rng(0)  # jitter, so equal settings do not hide each other
    result = Figure(figsize=(13.0, 7.0), layout="constrained")
    result.suptitle(
        f"validation accuracy at the best epoch, first {summary['space']['validation']:,} training reviews "
        f"(test accuracy of the final model: {_number(summary['test_accuracy'])})"
    )
    colours = {"features": "tab:blue", "models": "tab:orange"}
    for position, (_, label, getter) in enumerate(SETTINGS):
        ax = result.add_subplot(2, 3, position + 1)
        levels = sorted({getter(candidate) for candidate in candidates}, key=_level_order)
        at = {level: number for number, level in enumerate(levels)}
        for index, candidate in enumerate(candidates):
            if candidate["val_accuracy"] is None:
                continue
            x = at[getter(candidate)] + rng.uniform(-0.15, 0.15)
            y = candidate["val_accuracy"]
            ax.plot(x, y, "o", color=colours.get(candidate["round"], "tab:gray"), alpha=0.7, markersize=5)
            if index in members:
                ax.plot(
                    x, y, "o", markerfacecolor="none", markeredgecolor="tab:red", markersize=11, markeredgewidth=1.5
                )
            if index == single:
                ax.plot(x, y, "*", color="tab:red", markersize=12)
        ax.set_xticks(range(len(levels)), levels, rotation=20 if label == "feature set" else 0)
        ax.set_xlim(-0.5, len(levels) - 0.5)
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy")
        ax.grid(axis="y", alpha=0.3)
    handles = [
        result.axes[0].plot([], [], "o", color=colour, label=f"{name} round")[0] for name, colour in colours.items()
    ] + [
        result.axes[0].plot([], [], "o", markerfacecolor="none", markeredgecolor="tab:red", label="in the final model")[
            0
        ],
        result.axes[0].plot([], [], "*", color="tab:red", label="best single")[0],
    ]
    result.legend(handles=handles, loc="outside lower center", ncols=4)
    return result


def _level_order(level: str) -> tuple:
    try:
        return (0, float(level), level)
    except ValueError:
        return (1, 0.0, level)


def write_report(summary: Mapping[str, Any], folder: str | Path) -> list[Path]:
    """Writes ``search.md`` and ``search.png`` into ``folder``; returns their paths."""
    # Deferred: imdb_jax.plots imports matplotlib (~0.4 s), only when the report is written.
    from imdb_jax.plots import save_figure

    folder = Path(folder)
    report = atomic_write(folder / "search.md", markdown(summary).encode("utf-8"))
    return [report, save_figure(figure(summary), folder / "search.png")]
