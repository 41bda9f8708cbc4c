"""Running a study: every variant with N seeds in vmapped `fit_variants` runs, study.json
rewritten (atomically) after every epoch, then the summary, report, figures and the retrained
best variant."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imdb_jax.atomic import atomic_write, writable_folder, write_json
from imdb_jax.drawing import Drawing
from imdb_jax.errors import ImdbJaxError
from imdb_jax.specs import VariantSpec
from imdb_jax.study.conclusions import best, conclusions
from imdb_jax.study.experiments import (
    ALL,
    DEFAULT_SEEDS,
    EXPERIMENTS,
    RUNS,
    seed_replicas,
    select_experiments,
    union,
    unique_names,
)
from imdb_jax.study.report import report_markdown
from imdb_jax.study.statistics import NOISE_SOURCES, RULE, SHARED, variant_summary
from imdb_jax.tensorboard import TensorBoardLogger, spec_hparams
from imdb_jax.train.compile_clock import CompileClock

STUDY_FILE = "study.json"
REPORT_FILE = "report.md"


@dataclasses.dataclass
class StudyResult:
    """What `run_study` hands back.

    Attributes:
      summary: everything written to study.json.
      output_dir: the folder holding study.json, report.md, the figures and the retrained model.
      specs: the distinct variants, in the order of `summary["variants"]`.
      runs: one `VariantsResult` per `fit_variants` run.
      retrained: the retrained model's train state, or None.
      replicas: the copies trained (each variant with each of its seeds).
      replica_of: per variant, the indices into `replicas` of its seeds, in seed order.
    """

    summary: dict[str, Any]
    output_dir: Path
    specs: list[VariantSpec]
    runs: list[Any]
    retrained: Any = None
    replicas: list[VariantSpec] = dataclasses.field(default_factory=list)
    replica_of: list[list[int]] = dataclasses.field(default_factory=list)

    def variant_state(self, index: int, seed_index: int = 0):
        """Variant `index` (into `specs`) trained with its `seed_index`-th seed, as an ordinary
        trained model."""
        replica = self.replicas[self.replica_of[index][seed_index]] if self.replicas else self.specs[index]
        for result in self.runs:
            for position, spec in enumerate(result.specs):
                if spec is replica:
                    return result.state(position)
        raise IndexError(f"no variant {index}")


def run_plan(
    runs: str, experiments: Mapping[str, Sequence[VariantSpec]], specs: Sequence[VariantSpec], members
) -> list[tuple[str, list[int]]]:
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


def _first_layer_used(result: Any) -> str:
    """ "sparse", "dense", or "dense N + sparse" (the N most frequent words dense)."""
    dense_words = getattr(result, "dense_words", None)
    if dense_words is None:
        return "unknown"
    if dense_words == 0:
        return "sparse"
    return "dense" if dense_words >= result.num_words else f"dense {dense_words} + sparse"


def _blocks(result: Any, names: Sequence[str]) -> list[dict[str, Any]]:
    """How `fit_variants` laid the run's copies out: blocks of equal hidden widths."""
    layout = getattr(result, "layout", None)
    if layout is None:
        return []
    slots = layout.slots
    return [
        {
            "hidden_units": list(block.hidden_units),
            "variants": [
                names[index]
                for index, slot in enumerate(result.slot_of)
                if block.start <= slot % slots < block.start + block.size
            ],
        }
        for block in layout.blocks
    ]


def _count(count: int, noun: str) -> str:
    """ "1 seed", "4 seeds"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"study: {message}", file=sys.stderr, flush=True)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ImdbJaxError(f"{name} must be a positive integer, got {value!r}")
    return value


CHECKPOINTS = "checkpoints"  # per run, inside the output folder: what `resume` continues from


def run_study(
    names_or_specs: Any,
    data: Any,
    *,
    output_dir: str | Path,
    validation: int = 10000,
    epochs: int = 20,
    batch_size: int = 512,
    seeds: int = DEFAULT_SEEDS,
    shuffle_seed: int = 0,
    first_layer: str = "auto",
    runs: str = "merged",
    devices: Sequence[Any] | None = None,
    progress: bool = True,
    retrain: bool = True,
    figures: bool = True,
    resume: bool | str = False,
    log_dir: str | Path | None = None,
    patience: int | None = None,
) -> StudyResult:
    """Trains a study's variants with several seeds, writes study.json, report.md and figures,
    retrains the best.

    study.json is rewritten atomically after every epoch ("status": "running", the histories so
    far), so a study that dies still shows its curves; the final one has "status": "done".

    Args:
      names_or_specs: experiment names ("units", "layers", "epochs", "regularization",
        "dropout", "all"), `VariantSpec`s, or {name: specs} (see `select_experiments`).
      data: an `IMDbData` (anything with `split_validation(n)`, `train`, `test`, `vocabulary`).
      output_dir: folder for the results (created and checked for writing before training).
      validation: the first `validation` training reviews are held out.
      epochs, batch_size, shuffle_seed, first_layer, devices: as in `fit_variants`.
      seeds: copies of every variant, with seeds `spec.seed` ... `spec.seed + seeds - 1` (initial
        weights and dropout differ; the data order is shared), all in the same run(s). The
        report's comparisons use the spread over seeds (`statistics.RULE`).
      runs: "merged" trains every distinct variant in one `fit_variants` run (one compilation);
        "experiment" runs each experiment's not-yet-trained variants separately.
      progress: progress bars and one line per run on stderr.
      retrain: retrain the variant with the lowest mean minimum validation loss, for the epoch
        count where its mean validation loss is lowest, on all training reviews (its own seed),
        score it on `data.test` and save it to `output_dir/model`.
      figures: write the PNG figures.
      resume: continue a study that was killed: every run (and the retrain) checkpoints its
        state after every epoch in `output_dir/checkpoints/`, and with `resume` each picks up
        where its checkpoint stopped; the finished study is bitwise the uninterrupted one (all
        but its timings). A checkpoint written under another JAX, jaxlib, backend or device
        count is refused unless `resume="force"` (the CLI's --resume-anyway).
      log_dir: also write TensorBoard logs there (`imdb_jax.tensorboard`): one run folder per
        trained copy (variant and seed) as it trains, and the retrained model's under
        `retrain/` once it is done.
      patience: early stopping (Keras' rule on each copy's own validation loss, as in
        `fit_variants`); None trains every epoch. A stopped copy's history ends at its stop
        epoch, so the seeds of one variant can have histories of different lengths;
        study.json records each seed's stop epoch ("stopped_epoch" in its "per_seed" entry,
        None when it trained every epoch).

    Returns:
      The `StudyResult`; its `summary` is what study.json holds.

    Raises:
      ImdbJaxError: a bad setting or an output folder that cannot be written (before training).
    """
    # Deferred: JAX (~1.3 s) loads when a study runs; imdb-jax --help imports this module and stays fast.
    import jax

    from imdb_jax.train import distributed
    from imdb_jax.train.variants import fit_variants

    started = time.perf_counter()
    experiments = select_experiments(names_or_specs)
    _check_count("epochs", epochs)
    _check_count("seeds", seeds)
    if runs not in RUNS:
        raise ImdbJaxError(f"runs must be one of {', '.join(RUNS)}, got {runs!r}")
    reviews = len(data.train.y)
    if isinstance(validation, bool) or not isinstance(validation, int) or not 0 < validation < reviews:
        raise ImdbJaxError(
            f"validation must be between 1 and {reviews - 1} (reviews held out of the {reviews} training reviews), got {validation!r}"
        )
    specs, members = union(experiments)
    names = unique_names(specs)
    replicas, replica_of = seed_replicas(specs, seeds)
    replica_names = unique_names(replicas)
    train, held_out = data.split_validation(validation)
    try:
        output_dir = writable_folder(output_dir)
    except OSError as error:
        raise ImdbJaxError(f"cannot write the study to {output_dir}: {error.strerror or error}") from None
    # Across processes only process 0's output folder is the study's: every process stops if it is done.
    if resume and distributed.process_0s(_finished(output_dir)):
        where = output_dir if distributed.is_main() else "process 0's output folder"
        raise ImdbJaxError(f"the study in {where} is already finished: nothing to resume")

    membership = [[name for name, indices in members.items() if index in indices] for index in range(len(specs))]
    histories: list[dict[str, list]] = [{} for _ in replicas]
    stopped: list[int | None] = [None for _ in replicas]  # per copy: the epoch early stopping stopped it after
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "seeds": seeds,
        "shuffle_seed": shuffle_seed,
        "validation_reviews": len(held_out.y),
        "train_reviews": len(train.y),
        "num_words": int(train.x.shape[1]),
        "first_layer": first_layer,
        "runs": runs,
        "patience": patience,
    }
    noise = {"varied_by_seeds": list(NOISE_SOURCES), "shared": list(SHARED), "rule": RULE}
    device_names = [str(device) for device in (devices if devices is not None else jax.devices())]

    def summarise(status: str, run_records: list[dict[str, Any]]) -> dict[str, Any]:
        variants = [
            variant_summary(
                spec,
                name,
                [histories[copy] for copy in copies],
                experiment,
                [replicas[copy].seed for copy in copies],
                [stopped[copy] for copy in copies] if patience is not None else None,
            )
            for spec, name, copies, experiment in zip(specs, names, replica_of, membership)
        ]
        return {
            "status": status,
            "settings": settings,
            "noise": noise,
            "experiments": members,
            "variants": variants,
            "runs": run_records,
            "devices": device_names,
        }

    board = None
    if log_dir is not None:  # every copy's run folder, opened before training
        shared = {
            key: settings[key] for key in ("epochs", "batch_size", "shuffle_seed", "num_words", "validation_reviews")
        }
        board = TensorBoardLogger(log_dir, replica_names, [{**spec_hparams(replica), **shared} for replica in replicas])

    # Started now, so that it imports Matplotlib while the variants train (imdb_jax.drawing).
    drawing = Drawing() if figures else None
    try:
        results, run_records = [], []
        for label, indices in run_plan(runs, experiments, specs, members):
            todo = sorted({copy for index in indices for copy in replica_of[index] if not histories[copy]})
            if not todo:
                continue

            def epoch_done(epochs_done: int, run_histories: list[dict[str, list]], todo=todo) -> None:
                for position, copy in enumerate(todo):
                    histories[copy] = run_histories[position]
                snapshot = summarise("running", run_records)
                snapshot["epochs_done"] = {"run": len(run_records) + 1, "epochs": epochs_done}
                write_json(output_dir / STUDY_FILE, snapshot)
                if board is not None:
                    board.on_epoch_end(epochs_done, histories)

            run_started = time.perf_counter()
            with CompileClock() as clock:
                result = fit_variants(
                    [replicas[copy] for copy in todo],
                    train,
                    held_out,
                    epochs=epochs,
                    batch_size=batch_size,
                    shuffle_seed=shuffle_seed,
                    first_layer=first_layer,
                    devices=devices,
                    progress=progress,
                    description=f"study {label} ({_count(len(indices), 'variant')} x {_count(seeds, 'seed')})",
                    checkpoint_dir=output_dir / CHECKPOINTS / label,
                    resume=resume,
                    on_epoch_end=epoch_done,
                    patience=patience,
                )
            wall = time.perf_counter() - run_started
            for position, copy in enumerate(todo):
                histories[copy] = result.histories[position]
                stopped[copy] = result.stopped_epoch(position)
            results.append(result)
            blocks = _blocks(result, [replica_names[copy] for copy in todo])
            run_records.append(
                {
                    "label": label,
                    "variants": [names[index] for index in indices],
                    "trained": len(todo),
                    "blocks": blocks,
                    "first_layer": _first_layer_used(result),
                    "wall_s": wall,
                    "compile_s": clock.seconds(),
                    "train_s": wall - clock.seconds(),
                }
            )
            shapes = " | ".join(
                f"{'-'.join(map(str, block['hidden_units']))} x{len(block['variants'])}" for block in blocks
            )
            _say(
                progress,
                f"{label}: {_count(len(indices), 'variant')} x {_count(seeds, 'seed')} ({_count(len(todo), 'model')}) [{shapes}], {wall:.1f} s ({clock.seconds():.1f} s compiling)",
            )

        if board is not None:
            board.close()
        summary = summarise("done", run_records)
        summary["conclusions"] = conclusions(summary)
        leader = best(summary["variants"])
        summary["best_variant"] = None if leader is None else leader["name"]
        retrained = None
        summary["retrain"] = None
        # The figures need only the variants' results, not the retrain: drawn by their own process
        # (started with the study, so Matplotlib was imported while it trained) while the retrain
        # trains, on the other core; on a thread they held the GIL and outlasted the retrain.
        if drawing is not None:
            drawing.start("study", summary=summary, folder=output_dir)
        if retrain and leader is not None:
            spec = specs[names.index(leader["name"])]
            retrained, summary["retrain"] = _retrain(
                spec, leader, data, output_dir, batch_size, shuffle_seed, first_layer, progress, resume
            )
            if log_dir is not None:  # `fit` has no per-epoch hook: the finished curves are written at once
                hparams = {
                    **spec_hparams(spec),
                    "epochs": leader["best_epoch"],
                    "batch_size": batch_size,
                    "shuffle_seed": shuffle_seed,
                }
                with TensorBoardLogger(Path(log_dir) / "retrain", [leader["name"]], [hparams]) as retrain_board:
                    retrain_board.on_epoch_end(leader["best_epoch"], [summary["retrain"]["history"]])
        summary["training_s"] = sum(record["wall_s"] for record in run_records)
        summary["wall_s"] = time.perf_counter() - started  # the report shows it; figures come after
        summary["figures"], summary["figures_s"] = [], 0.0
        if drawing is not None:
            summary["figures"] = [path.name for path in drawing.result()]
            summary["figures_s"] = drawing.seconds
        atomic_write(output_dir / REPORT_FILE, report_markdown(summary).encode("utf-8"))
        summary["wall_s"] = time.perf_counter() - started
        write_json(output_dir / STUDY_FILE, summary)
        shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)  # done: the results are written
        return StudyResult(summary, output_dir, specs, results, retrained, replicas, replica_of)
    finally:
        if drawing is not None:
            drawing.close()


def _finished(output_dir: Path) -> bool:
    try:
        return json.loads((output_dir / STUDY_FILE).read_text(encoding="utf-8")).get("status") == "done"
    except (OSError, ValueError, AttributeError):
        return False


def _retrain(
    spec, leader, data, output_dir, batch_size, shuffle_seed, first_layer, progress, resume: bool | str = False
):
    """The best variant trained afresh (its own seed) for the epoch count where its mean
    validation loss is lowest, on every training review."""
    # Deferred: JAX (~1.3 s) loads when a study runs; imdb-jax --help imports this module and stays fast.
    from imdb_jax.saved.model_folder import save_model
    from imdb_jax.train.fit import evaluate, fit

    started = time.perf_counter()
    config = spec.config(int(data.train.x.shape[1]))
    with CompileClock() as clock:
        state, history = fit(
            config,
            data.train,
            epochs=leader["best_epoch"],
            batch_size=batch_size,
            seed=spec.seed,
            shuffle_seed=shuffle_seed,
            first_layer=first_layer,
            progress=progress,
            checkpoint_dir=output_dir / CHECKPOINTS / "retrain",
            resume=resume,
        )
        test = evaluate(state, data.test, batch_size=batch_size, first_layer=first_layer)
    record = {
        "variant": leader["name"],
        "spec": spec.to_dict(),
        "epochs": leader["best_epoch"],
        "train_reviews": len(data.train.y),
        "test_reviews": len(data.test.y),
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "history": history,
        "model_dir": None,
    }
    if getattr(data, "vocabulary", None) is not None:
        metrics = {"test_loss": test["loss"], "test_accuracy": test["accuracy"], "epochs": leader["best_epoch"]}
        record["model_dir"] = str(save_model(output_dir / "model", state, config, data.vocabulary, history, metrics))
    record["wall_s"] = time.perf_counter() - started
    record["compile_s"] = clock.seconds()
    _say(
        progress,
        f"retrained {leader['name']} for {_count(leader['best_epoch'], 'epoch')}: test accuracy {test['accuracy']:.4f} ({record['wall_s']:.1f} s)",
    )
    return state, record
