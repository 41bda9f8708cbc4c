"""The seed's study of overfitting, trained as vmapped runs: experiments, figures and report.

The Keras study this package grows from trains thirteen models one after another, each for 20
epochs on 15,000 reviews with the first 10,000 held out: hidden units 4 / 16 / 512; 1 to 4
hidden layers of 16; the 16-16 model alone to see where overfitting starts; no penalty / L1 /
L2 on the hidden kernels; dropout 0.5 or none. Then it retrains the chosen model on every
training review and scores the test set.

Here each experiment is a list of `VariantSpec`s. `run_study` trains the deduplicated union of
the chosen experiments (a variant shared by several experiments, such as 16-16, trains once) in
one `fit_variants` run by default, writes `study.json`, PNG figures and a Markdown report whose
statements are computed from the histories, and retrains the best variant at its best epoch on
all training reviews.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from imdb_jax.checkpoint import save_model, to_json_value
from imdb_jax.errors import ImdbJaxError
from imdb_jax.variants import VariantSpec, VariantsResult, fit_variants

EXPERIMENTS: dict[str, tuple[VariantSpec, ...]] = {
    "units": (VariantSpec((4,)), VariantSpec((16,)), VariantSpec((512,))),
    "layers": (VariantSpec((16,)), VariantSpec((16, 16)), VariantSpec((16, 16, 16)), VariantSpec((16, 16, 16, 16))),
    "epochs": (VariantSpec((16, 16)),),
    "regularization": (VariantSpec((16, 16)), VariantSpec((16, 16), l1=0.001), VariantSpec((16, 16), l2=0.001)),
    "dropout": (VariantSpec((16, 16)), VariantSpec((16, 16), dropout_rate=0.5)),
}
ALL = "all"
CUSTOM = "custom"  # the experiment name of specs passed directly (or from --spec)
RUNS = ("merged", "experiment")


# ---------------------------------------------------------------------------------------------
# Which variants to train.


def select_experiments(names_or_specs: Any) -> dict[str, tuple[VariantSpec, ...]]:
    """{experiment name: its specs} from experiment names, "all", specs, or such a dict.

    Args:
      names_or_specs: a name ("units", ..., "all"), a `VariantSpec`, a list mixing both (the
        specs form one experiment called "custom"), or a {name: [specs]} mapping.

    Raises:
      ImdbJaxError: an unknown experiment name, or nothing to train.
    """
    if isinstance(names_or_specs, Mapping):
        chosen = {str(name): tuple(specs) for name, specs in names_or_specs.items()}
    else:
        items = [names_or_specs] if isinstance(names_or_specs, (str, VariantSpec)) else list(names_or_specs)
        chosen, custom = {}, []
        for item in items:
            if isinstance(item, VariantSpec):
                custom.append(item)
            elif item == ALL:
                chosen.update(EXPERIMENTS)
            elif item in EXPERIMENTS:
                chosen[item] = EXPERIMENTS[item]
            else:
                known = ", ".join([*EXPERIMENTS, ALL])
                raise ImdbJaxError(f"unknown experiment {item!r} (known: {known})")
        if custom:
            chosen[CUSTOM] = tuple(custom)
        # Keep the seed's order whatever order the names came in.
        chosen = {name: chosen[name] for name in sorted(chosen, key=[*EXPERIMENTS, CUSTOM].index)}
    if not chosen or not all(chosen.values()):
        raise ImdbJaxError("the study has no variants to train")
    for name, specs in chosen.items():
        for spec in specs:
            if not isinstance(spec, VariantSpec):
                raise ImdbJaxError(f"experiment {name!r} holds {spec!r}, not a VariantSpec")
    return chosen


def _identity(spec: VariantSpec) -> tuple:
    """What makes two specs train identically: every setting but the name."""
    return tuple((key, str(value)) for key, value in sorted(spec.to_dict().items()) if key != "name")


def union(experiments: Mapping[str, Sequence[VariantSpec]]) -> tuple[list[VariantSpec], dict[str, list[int]]]:
    """The distinct specs of all experiments (first occurrence first) and, per experiment, the
    indices of its variants among them."""
    specs: list[VariantSpec] = []
    seen: dict[tuple, int] = {}
    members: dict[str, list[int]] = {}
    for name, experiment in experiments.items():
        members[name] = []
        for spec in experiment:
            key = _identity(spec)
            if key not in seen:
                seen[key] = len(specs)
                specs.append(spec)
            if seen[key] not in members[name]:
                members[name].append(seen[key])
    return specs, members


def _unique_names(specs: Sequence[VariantSpec]) -> list[str]:
    names: list[str] = []
    for spec in specs:
        name, copy = spec.name, 1
        while name in names:
            copy += 1
            name = f"{spec.name} #{copy}"
        names.append(name)
    return names


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling while the context is open (from
    `jax.monitoring`'s compile events), so a run's wall time splits into compile and training."""

    PREFIX = "/jax/core/compile/"

    def __enter__(self) -> "CompileClock":
        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        del kwargs
        if event.startswith(self.PREFIX):
            self.seconds += duration

    def __exit__(self, *exc_info) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)


# ---------------------------------------------------------------------------------------------
# Per-variant figures.


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([math.nan if value is None else value for value in values], np.float64)


def variant_summary(spec: VariantSpec, name: str, history: Mapping[str, list], experiments: list[str]) -> dict[str, Any]:
    """One variant's entry in study.json: spec, history and the figures the report uses.

    `best_epoch` is the 1-based epoch of the lowest validation loss; `val_accuracy_at_best` is the
    validation accuracy there and `best_val_accuracy` the highest over all epochs. Figures of a
    variant that diverged in every epoch are None.
    """
    val_loss, val_accuracy, loss = (_finite(history[key]) for key in ("val_loss", "val_accuracy", "loss"))
    diverged = [bool(flag) for flag in history["diverged"]]
    entry: dict[str, Any] = {
        "name": name,
        "spec": spec.to_dict(),
        "experiments": experiments,
        "history": {key: list(values) for key, values in history.items()},
        "diverged": any(diverged),
        "diverged_epoch": diverged.index(True) + 1 if any(diverged) else None,
        "best_epoch": None,
        "best_val_loss": None,
        "val_accuracy_at_best": None,
        "best_val_accuracy": None,
        "min_loss": None,
    }
    if not np.all(np.isnan(val_loss)):
        best = int(np.nanargmin(val_loss))
        entry.update(
            best_epoch=best + 1,
            best_val_loss=float(val_loss[best]),
            val_accuracy_at_best=float(val_accuracy[best]),
            best_val_accuracy=float(np.nanmax(val_accuracy)),
            min_loss=float(np.nanmin(loss)),
        )
    return entry


# ---------------------------------------------------------------------------------------------
# Conclusions, computed from the summary alone (so tests can hand-make the numbers).


def _members(summary: Mapping[str, Any], experiment: str) -> list[dict[str, Any]]:
    return [summary["variants"][index] for index in summary["experiments"][experiment]]


def _trained(variants: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [variant for variant in variants if variant["best_val_loss"] is not None]


def _best(variants: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    trained = _trained(variants)
    return min(trained, key=lambda variant: variant["best_val_loss"]) if trained else None


def _penalty_label(spec: Mapping[str, Any]) -> str:
    parts = [f"L1({spec['l1']:g})" if spec["l1"] else "", f"L2({spec['l2']:g})" if spec["l2"] else ""]
    return "+".join(part for part in parts if part) or "no penalty"


def _comparison(variants: Sequence[Mapping[str, Any]], label) -> dict[str, Any]:
    """The figures every experiment's conclusion is made of."""
    trained = _trained(variants)
    best = _best(variants)
    rising = [variant for variant in trained if _turn(variant)["rises"]]  # overfitting: val loss turned up
    soonest = min(variant["best_epoch"] for variant in rising) if rising else None
    least_fit = max(trained, key=lambda variant: variant["min_loss"]) if trained else None
    return {
        "best": None if best is None else label(best),
        "best_name": None if best is None else best["name"],
        "best_val_loss": None if best is None else best["best_val_loss"],
        "best_epoch": None if best is None else best["best_epoch"],
        "soonest_best_epoch": soonest,
        "overfit_soonest": [label(variant) for variant in rising if variant["best_epoch"] == soonest],
        "least_fit": None if least_fit is None else label(least_fit),
        "least_fit_min_loss": None if least_fit is None else least_fit["min_loss"],
        "diverged": [label(variant) for variant in variants if variant["diverged"]],
    }


def _against_baseline(variants, is_baseline, label) -> dict[str, Any]:
    """Each non-baseline variant's minimum validation loss and best epoch against the baseline's."""
    baselines = _trained([variant for variant in variants if is_baseline(variant["spec"])])
    baseline = baselines[0] if baselines else None
    rows = []
    for variant in _trained([variant for variant in variants if not is_baseline(variant["spec"])]):
        row = {"variant": label(variant), "best_val_loss": variant["best_val_loss"], "best_epoch": variant["best_epoch"]}
        if baseline is not None:
            row["lower_val_loss"] = variant["best_val_loss"] < baseline["best_val_loss"]
            row["later_best_epoch"] = variant["best_epoch"] > baseline["best_epoch"]
        rows.append(row)
    return {
        "baseline": None if baseline is None else label(baseline),
        "baseline_val_loss": None if baseline is None else baseline["best_val_loss"],
        "baseline_best_epoch": None if baseline is None else baseline["best_epoch"],
        "compared": rows,
    }


def conclusions(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per experiment, the comparisons the report states, from the recorded histories only."""
    found: dict[str, dict[str, Any]] = {}
    for experiment in summary["experiments"]:
        variants = _members(summary, experiment)
        if experiment == "units":
            found[experiment] = _comparison(variants, lambda variant: "-".join(map(str, variant["spec"]["hidden_units"])))
        elif experiment == "layers":
            found[experiment] = _comparison(variants, lambda variant: len(variant["spec"]["hidden_units"]))
        elif experiment == "regularization":
            found[experiment] = {
                **_comparison(variants, lambda variant: _penalty_label(variant["spec"])),
                **_against_baseline(variants, lambda spec: not spec["l1"] and not spec["l2"], lambda v: _penalty_label(v["spec"])),
            }
            helped = [row for row in found[experiment]["compared"] if row.get("lower_val_loss")]
            found[experiment]["helped"] = [row["variant"] for row in helped]
        elif experiment == "dropout":
            found[experiment] = {
                **_comparison(variants, lambda variant: variant["spec"]["dropout_rate"]),
                **_against_baseline(variants, lambda spec: not spec["dropout_rate"], lambda v: v["spec"]["dropout_rate"]),
            }
        else:
            found[experiment] = _comparison(variants, lambda variant: variant["name"])
        if experiment == "epochs" or experiment not in ("units", "layers", "regularization", "dropout"):
            found[experiment]["turns_up"] = {
                variant["name"]: _turn(variant) for variant in _trained(variants)
            }
    return found


def _turn(variant: Mapping[str, Any]) -> dict[str, Any]:
    """Where the validation loss stops falling: its best epoch and how far it rises after."""
    val_loss = _finite(variant["history"]["val_loss"])
    last = int(np.flatnonzero(~np.isnan(val_loss))[-1]) + 1
    return {
        "best_epoch": variant["best_epoch"],
        "best_val_loss": variant["best_val_loss"],
        "last_epoch": last,
        "last_val_loss": float(val_loss[last - 1]),
        "rises": variant["best_epoch"] < last,
    }


# ---------------------------------------------------------------------------------------------
# The Markdown report.


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(variants: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| variant | best epoch | min val loss | val acc at best | max val acc | min train loss | diverged |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for variant in variants:
        diverged = f"epoch {variant['diverged_epoch']}" if variant["diverged"] else "no"
        lines.append(
            f"| {variant['name']} | {variant['best_epoch'] or 'n/a'} | {_number(variant['best_val_loss'])} | "
            f"{_number(variant['val_accuracy_at_best'])} | {_number(variant['best_val_accuracy'])} | "
            f"{_number(variant['min_loss'])} | {diverged} |"
        )
    return lines


def _units_text(found: Mapping[str, Any]) -> str:
    text = (
        f"Width: {found['best']} units did best (lowest validation loss {_number(found['best_val_loss'])} at "
        f"epoch {found['best_epoch']}). "
    )
    if found["overfit_soonest"]:
        soonest = " and ".join(f"{width} units" for width in found["overfit_soonest"])
        text += f"{soonest} overfit soonest (validation loss lowest at epoch {found['soonest_best_epoch']}, rising after); "
    else:
        text += "No width's validation loss turned up yet; "
    return text + f"{found['least_fit']} units fit the training reviews least (lowest training loss {_number(found['least_fit_min_loss'])})."


def _layers_text(found: Mapping[str, Any]) -> str:
    layers = "hidden layer" if found["best"] == 1 else "hidden layers"
    text = f"Depth: {found['best']} {layers} did best (lowest validation loss {_number(found['best_val_loss'])} at epoch {found['best_epoch']})"
    if not found["overfit_soonest"]:
        return text + "; no depth's validation loss turned up yet."
    soonest = " and ".join(map(str, found["overfit_soonest"]))
    return text + f"; {soonest} hidden layers overfit soonest (validation loss lowest at epoch {found['soonest_best_epoch']}, rising after)."


def _turn_text(name: str, turn: Mapping[str, Any]) -> str:
    if not turn["rises"]:
        return f"The {name} model's validation loss is still at its lowest at the last epoch ({turn['last_epoch']}): no overfitting yet."
    return (
        f"The {name} model's validation loss is lowest at epoch {turn['best_epoch']} ({_number(turn['best_val_loss'])}) "
        f"and turns up after it: overfitting starts at epoch {turn['best_epoch'] + 1} "
        f"(validation loss {_number(turn['last_val_loss'])} by epoch {turn['last_epoch']})."
    )


def _regularization_text(found: Mapping[str, Any]) -> str:
    if found["baseline"] is None:
        return f"Penalty: {found['best']} reached the lowest validation loss ({_number(found['best_val_loss'])})."
    parts = []
    for row in found["compared"]:
        verb = "lowered" if row["lower_val_loss"] else "did not lower"
        parts.append(f"{row['variant']} {verb} the minimum validation loss ({_number(row['best_val_loss'])} vs {_number(found['baseline_val_loss'])} without a penalty)")
    text = "Penalty: " + "; ".join(parts) + ". "
    if found["helped"]:
        best = min((row for row in found["compared"] if row["lower_val_loss"]), key=lambda row: row["best_val_loss"])
        return text + f"{' and '.join(found['helped'])} helped; {best['variant']} most."
    closest = min(found["compared"], key=lambda row: row["best_val_loss"], default=None)
    return text + "No penalty helped" + ("" if closest is None else f"; {closest['variant']} came closest") + "."


def _dropout_text(found: Mapping[str, Any]) -> str:
    if found["baseline"] is None:
        return f"Dropout: {found['best']} reached the lowest validation loss ({_number(found['best_val_loss'])})."
    parts = []
    for row in found["compared"]:
        if row["best_epoch"] == found["baseline_best_epoch"]:
            timing = f"left the best epoch where it was ({row['best_epoch']})"
        else:
            timing = f"moved the best epoch {'later' if row['later_best_epoch'] else 'earlier'}, from {found['baseline_best_epoch']} to {row['best_epoch']}"
        outcome = "lower" if row["lower_val_loss"] else "not lower"
        parts.append(
            f"dropout {row['variant']:g} {timing}, and its minimum validation loss was {outcome} than without "
            f"dropout ({_number(row['best_val_loss'])} vs {_number(found['baseline_val_loss'])})"
        )
    return "Dropout: " + "; ".join(parts) + "."


def report_markdown(summary: Mapping[str, Any]) -> str:
    """The study's report: settings, one section per experiment, the retrain result."""
    settings = summary["settings"]
    found = summary["conclusions"]
    lines = [
        "# Study report",
        "",
        f"{len(summary['variants'])} distinct variants, {settings['epochs']} epochs, batch {settings['batch_size']}, "
        f"{settings['train_reviews']} training reviews with the first {settings['validation_reviews']} held out "
        f"for validation; shuffle seed {settings['shuffle_seed']}. Every figure below is the lowest validation "
        f"loss of a variant (its best epoch), read from `study.json`.",
        "",
    ]
    writers = {"units": _units_text, "layers": _layers_text, "regularization": _regularization_text, "dropout": _dropout_text}
    for experiment, indices in summary["experiments"].items():
        lines += [f"## {experiment}", ""]
        result = found[experiment]
        if result["best"] is None:
            lines.append("Every variant diverged; nothing to compare.")
        elif experiment in writers:
            lines.append(writers[experiment](result))
        elif len(indices) > 1:
            lines.append(f"Best: {result['best']} (lowest validation loss {_number(result['best_val_loss'])} at epoch {result['best_epoch']}).")
        for name, turn in result.get("turns_up", {}).items():
            lines.append(_turn_text(name, turn))
        if result["diverged"]:
            lines.append(f"Diverged: {', '.join(map(str, result['diverged']))}.")
        lines += ["", *_table([summary["variants"][index] for index in indices]), ""]
    retrain = summary.get("retrain")
    lines += ["## Retrained model", ""]
    if not retrain:
        lines.append("Not retrained (`retrain=False` / `--no-retrain`, or no variant finished without diverging).")
    else:
        lines.append(
            f"The variant with the lowest validation loss, {retrain['variant']}, retrained for its best epoch count "
            f"({retrain['epochs']}) on all {retrain['train_reviews']} training reviews: test loss "
            f"{_number(retrain['test_loss'])}, test accuracy {_number(retrain['test_accuracy'])}."
        )
    lines += ["", f"Wall time {summary['wall_s']:.1f} s on {', '.join(summary['devices'])}."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Figures.


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "experiment"


def write_figures(summary: Mapping[str, Any], output_dir: Path) -> list[Path]:
    """The seed's figures as PNGs: validation loss per experiment, training vs validation loss
    per variant (small multiples), and the best figures against depth (with a `layers` run)."""
    from matplotlib.figure import Figure

    from imdb_jax.plots import HISTORY_STYLES, plot_curves, save_figure

    paths = []
    for experiment, indices in summary["experiments"].items():
        variants = [summary["variants"][index] for index in indices]
        figure = Figure(figsize=(6.4, 4.8))
        ax = figure.add_subplot()
        curves = {variant["name"]: _finite(variant["history"]["val_loss"]) for variant in variants}
        for line, variant in zip(plot_curves(ax, curves, ylabel="validation loss", title=f"{experiment}: validation loss"), variants):
            if variant["best_epoch"] is not None:
                ax.plot([variant["best_epoch"]], [variant["best_val_loss"]], "o", color=line.get_color())
        paths.append(save_figure(figure, output_dir / f"val_loss_{_slug(experiment)}.png"))

    variants = summary["variants"]
    columns = min(3, len(variants))
    rows = math.ceil(len(variants) / columns)
    figure = Figure(figsize=(4.0 * columns, 3.0 * rows), layout="constrained")
    for position, variant in enumerate(variants):
        curves = {"training": _finite(variant["history"]["loss"]), "validation": _finite(variant["history"]["val_loss"])}
        plot_curves(figure.add_subplot(rows, columns, position + 1), curves, title=variant["name"], styles=HISTORY_STYLES)
    paths.append(save_figure(figure, output_dir / "train_vs_val_loss.png"))

    if "layers" in summary["experiments"]:
        trained = _trained(_members(summary, "layers"))
        trained.sort(key=lambda variant: len(variant["spec"]["hidden_units"]))
        depths = [len(variant["spec"]["hidden_units"]) for variant in trained]
        figure = Figure(figsize=(9.6, 4.0), layout="constrained")
        for position, (key, label) in enumerate((("best_val_loss", "minimum validation loss"), ("best_val_accuracy", "maximum validation accuracy"))):
            ax = figure.add_subplot(1, 2, position + 1)
            ax.plot(depths, [variant[key] for variant in trained], "o-")
            ax.set_xlabel("hidden layers")
            ax.set_ylabel(label)
            ax.set_xticks(depths)
        paths.append(save_figure(figure, output_dir / "depth.png"))
    return paths


# ---------------------------------------------------------------------------------------------
# Running a study.


@dataclasses.dataclass
class StudyResult:
    """What `run_study` hands back.

    Attributes:
      summary: everything written to study.json.
      output_dir: the folder holding study.json, report.md, the figures and the retrained model.
      specs: the distinct variants, in the order of `summary["variants"]`.
      runs: one `VariantsResult` per `fit_variants` run.
      retrained: the retrained model's train state, or None.
    """

    summary: dict[str, Any]
    output_dir: Path
    specs: list[VariantSpec]
    runs: list[VariantsResult]
    retrained: Any = None

    def variant_state(self, index: int):
        """Variant `index` (into `specs`) as an ordinary trained model."""
        for result in self.runs:
            for position, spec in enumerate(result.specs):
                if spec is self.specs[index]:
                    return result.state(position)
        raise IndexError(f"no variant {index}")


def _run_plan(runs: str, experiments: Mapping[str, Sequence[VariantSpec]], specs, members) -> list[tuple[str, list[int]]]:
    """(label, variant indices) per `fit_variants` run; each distinct variant trains once."""
    if runs == "merged":
        return [("+".join(experiments) if len(experiments) < len(EXPERIMENTS) else ALL, list(range(len(specs))))]
    plan, done = [], set()
    for name in experiments:
        todo = [index for index in members[name] if index not in done]
        done.update(todo)
        if todo:
            plan.append((name, todo))
    return plan


def _first_layer_used(result: VariantsResult) -> str:
    """"dense", "sparse", or "dense N + sparse" (the N most frequent words dense)."""
    dense_words = getattr(result, "dense_words", None)
    if dense_words is None:
        return str(result.first_layer)
    if dense_words == 0:
        return "sparse"
    return "dense" if dense_words >= result.num_words else f"dense {dense_words} + sparse"


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"study: {message}", file=sys.stderr, flush=True)


def run_study(
    names_or_specs: Any,
    data: Any,
    *,
    output_dir: str | Path,
    validation: int = 10000,
    epochs: int = 20,
    batch_size: int = 512,
    shuffle_seed: int = 0,
    first_layer: str = "auto",
    grouping: str = "auto",
    runs: str = "merged",
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
    retrain: bool = True,
    figures: bool = True,
) -> StudyResult:
    """Trains a study's variants, writes study.json, report.md and figures, retrains the best.

    Args:
      names_or_specs: experiment names ("units", "layers", "epochs", "regularization",
        "dropout", "all"), `VariantSpec`s, or {name: specs} (see `select_experiments`).
      data: an `IMDbData` (anything with `split_validation(n)`, `train`, `test`, `vocabulary`).
      output_dir: folder for the results (created).
      validation: the first `validation` training reviews are held out.
      epochs, batch_size, shuffle_seed, first_layer, grouping, devices: as in `fit_variants`.
      runs: "merged" trains every distinct variant in one `fit_variants` run (one compilation);
        "experiment" runs each experiment's not-yet-trained variants separately.
      progress: progress bars and one line per run on stderr.
      retrain: retrain the variant with the lowest validation loss at its best epoch count on
        all training reviews, score it on `data.test` and save it to `output_dir/model`.
      figures: write the PNG figures.

    Returns:
      The `StudyResult`; its `summary` is what study.json holds.
    """
    started = time.perf_counter()
    experiments = select_experiments(names_or_specs)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
        raise ImdbJaxError(f"epochs must be a positive integer, got {epochs!r}")
    if runs not in RUNS:
        raise ImdbJaxError(f"runs must be one of {', '.join(RUNS)}, got {runs!r}")
    specs, members = union(experiments)
    names = _unique_names(specs)
    train, held_out = data.split_validation(validation)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    histories: list[dict | None] = [None] * len(specs)
    results, run_records = [], []
    for label, indices in _run_plan(runs, experiments, specs, members):
        run_started = time.perf_counter()
        with CompileClock() as clock:
            result = fit_variants(
                [specs[index] for index in indices],
                train,
                held_out,
                epochs=epochs,
                batch_size=batch_size,
                shuffle_seed=shuffle_seed,
                first_layer=first_layer,
                grouping=grouping,
                devices=devices,
                progress=progress,
                description=f"study {label} ({len(indices)} variants)",
            )
        wall = time.perf_counter() - run_started
        for position, index in enumerate(indices):
            histories[index] = result.histories[position]
        results.append(result)
        groups = [
            {"hidden_units": list(group.hidden_units), "variants": [names[indices[member]] for member in group.members]}
            for group in result.groups
        ]
        run_records.append(
            {
                "label": label,
                "variants": [names[index] for index in indices],
                "groups": groups,
                "first_layer": _first_layer_used(result),
                "wall_s": wall,
                "compile_s": clock.seconds,
                "train_s": wall - clock.seconds,
            }
        )
        shapes = " | ".join(f"{'-'.join(map(str, group['hidden_units']))} x{len(group['variants'])}" for group in groups)
        _say(progress, f"{label}: {len(indices)} variants in groups [{shapes}], {wall:.1f} s ({clock.seconds:.1f} s compiling)")

    membership = [[name for name, indices in members.items() if index in indices] for index in range(len(specs))]
    summary: dict[str, Any] = {
        "settings": {
            "epochs": epochs,
            "batch_size": batch_size,
            "shuffle_seed": shuffle_seed,
            "validation_reviews": len(held_out.y),
            "train_reviews": len(train.y),
            "num_words": int(train.x.shape[1]),
            "first_layer": first_layer,
            "grouping": grouping,
            "runs": runs,
        },
        "experiments": members,
        "variants": [variant_summary(spec, name, history, experiment) for spec, name, history, experiment in zip(specs, names, histories, membership)],
        "runs": run_records,
        "devices": [str(device) for device in (devices if devices is not None else jax.devices())],
    }
    summary["conclusions"] = conclusions(summary)
    best = _best(summary["variants"])
    summary["best_variant"] = None if best is None else best["name"]

    retrained = None
    summary["retrain"] = None
    if retrain and best is not None:
        retrained, summary["retrain"] = _retrain(specs[names.index(best["name"])], best, data, output_dir, batch_size, shuffle_seed, first_layer, progress)
    summary["training_s"] = sum(record["wall_s"] for record in run_records)
    summary["wall_s"] = time.perf_counter() - started  # the report shows it; figures come after
    figure_started = time.perf_counter()
    summary["figures"] = [path.name for path in write_figures(summary, output_dir)] if figures else []
    summary["figures_s"] = time.perf_counter() - figure_started
    (output_dir / "report.md").write_text(report_markdown(summary), encoding="utf-8")
    summary["wall_s"] = time.perf_counter() - started
    _write_json(output_dir / "study.json", summary)
    return StudyResult(summary, output_dir, specs, results, retrained)


def _retrain(spec, best, data, output_dir, batch_size, shuffle_seed, first_layer, progress):
    """The best variant trained afresh for its best epoch count on every training review."""
    from imdb_jax.train import evaluate, fit

    started = time.perf_counter()
    config = spec.config(int(data.train.x.shape[1]))
    with CompileClock() as clock:
        state, history = fit(
            config,
            data.train,
            epochs=best["best_epoch"],
            batch_size=batch_size,
            seed=spec.seed,
            shuffle_seed=shuffle_seed,
            first_layer=first_layer,
            progress=progress,
        )
        test = evaluate(state, data.test, batch_size=batch_size, first_layer=first_layer)
    record = {
        "variant": best["name"],
        "spec": spec.to_dict(),
        "epochs": best["best_epoch"],
        "train_reviews": len(data.train.y),
        "test_reviews": len(data.test.y),
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "history": history,
        "model_dir": None,
    }
    if getattr(data, "vocabulary", None) is not None:
        metrics = {"test_loss": test["loss"], "test_accuracy": test["accuracy"], "epochs": best["best_epoch"]}
        record["model_dir"] = str(save_model(output_dir / "model", state, config, data.vocabulary, history, metrics))
    record["wall_s"] = time.perf_counter() - started
    record["compile_s"] = clock.seconds
    _say(progress, f"retrained {best['name']} for {best['best_epoch']} epochs: test accuracy {test['accuracy']:.4f} ({record['wall_s']:.1f} s)")
    return state, record


def _write_json(path: Path, summary: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(to_json_value(summary), indent=1, allow_nan=False) + "\n", encoding="utf-8")
