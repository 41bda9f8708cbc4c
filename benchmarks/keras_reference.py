"""Keras itself as the reference: `fit_variants` and Keras 3 trained from the same initial weights.

A mixed study (widths 4-64, depths 1-3, L1, L2, decoupled weight decay, learning rates 1e-3 and
1e-2, several seeds, no dropout: its random streams differ between libraries) is trained for a
few full-batch steps (the batch holds every training row, so each epoch is one step and the
shuffle cannot matter) twice:

- by `imdb_jax.fit_variants`, each variant from `create_train_state(init_key, ...)` with
  `init_key, _ = jax.random.split(jax.random.key(seed))`, as `fit_variants` initialises it;
- by Keras: `Dense(relu, kernel_regularizer=L1L2(l1, l2))` x depth, `Dense(1)` (a logit),
  `BinaryCrossentropy(from_logits=True)`, `RMSprop(learning_rate, rho=0.9, epsilon=1e-7,
  weight_decay)`, `BinaryAccuracy(threshold=0)`, its weights set to the same initial weights,
  `model.fit(..., batch_size=rows, shuffle=False)`.

It prints JSON: per variant and overall, the largest weight difference after training (absolute,
and as a multiple of the float32-noise tolerance `1e-6 + 1e-5 |w|` that tests/test_reference.py
holds the package to against its float64 NumPy reference), the largest relative difference of
the history's losses (loss, val_loss), the most predictions counted differently in any epoch's
accuracy or val_accuracy (0: the same accuracies), and how far the weights moved from their
start (so that a small difference means something). When tests/reference.py is found, the same figures against its float64 reference are given for both
libraries, with each variant's `kink_margin`: the smallest non-zero |pre-activation| or |logit|
the reference meets. Where it is at float32 rounding's scale (~1e-7) a float32 run may take the
other side of a relu kink, which changes a gradient outright: a difference far beyond rounding
there is not an error in either library (tests/test_reference.py chooses its seeds to avoid it).

Measured (CPU, Keras 3.15.1 on TensorFlow 2.21, 5 steps, the commit that added this script):
- synthetic (200 x 300, validation 80): package vs Keras, weights within 1.5e-7 (0.09 of the
  tolerance), losses within 1.6e-7 relative, the same accuracies; Keras vs float64 1.3e-7
  (0.08), package vs float64 8.9e-8 (0.03); the weights moved >= 1.2e-2.
- `--data imdb --rows 2000 --val-rows 1000 --words 1000`: 8 of 9 variants as close (package vs
  Keras within 1.8e-7, 0.13 of the tolerance, losses 3.9e-7); the ninth (16-16 l2 wd seed 3)
  has a pre-activation 2.0e-8 from a kink at the first step, which the package's float32 puts on
  the other side while Keras' happens to agree with float64: it ends 3.3e-2 apart (21
  predictions), and agrees with the reference to 5e-8 after one step once the reference's relu
  mask is flipped at that one element.

Needs the `bench` extra (TensorFlow, Keras 3). Keras' backend is its own setting
(`KERAS_BACKEND`, default tensorflow).

  python benchmarks/keras_reference.py                     # synthetic multi-hot rows, 5 steps
  python benchmarks/keras_reference.py --data imdb --rows 2000 --words 1000
  python benchmarks/keras_reference.py --out keras_reference.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
DOC = __doc__ or ""
WEIGHT_RTOL, WEIGHT_ATOL = 1e-5, 1e-6  # tests/test_reference.py's float32-noise bound

# (hidden_units, l1, l2, weight_decay, learning_rate, seed): the study of tests/test_reference.py.
STUDY = [
    ((4,), 0.0, 0.0, 0.0, 1e-3, 4),
    ((64,), 0.0, 1e-3, 0.0, 1e-2, 8),
    ((16, 8), 1e-4, 0.0, 0.0, 1e-3, 1),
    ((32, 16, 8), 0.0, 0.0, 0.1, 1e-2, 11),
    ((8, 8), 1e-4, 1e-3, 0.3, 1e-2, 10),
    ((16, 16), 0.0, 0.0, 0.0, 1e-2, 5),
    ((16, 16), 0.0, 0.0, 0.3, 1e-3, 2),
    ((16, 16), 0.0, 1e-3, 0.1, 1e-2, 3),
    ((64, 32, 4), 1e-4, 0.0, 0.0, 1e-3, 5),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=DOC.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=DOC.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--data",
        choices=("synthetic", "imdb"),
        default="synthetic",
        help="synthetic rows (default) or the first IMDb reviews",
    )
    parser.add_argument("--rows", type=int, default=200, help="training rows (one full batch; default 200)")
    parser.add_argument("--val-rows", type=int, default=80, help="validation rows (default 80)")
    parser.add_argument("--words", type=int, default=300, help="columns: the most frequent words (default 300)")
    parser.add_argument("--epochs", type=int, default=5, help="full-batch steps (default 5)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if min(args.rows, args.val_rows, args.words, args.epochs) <= 0:
        parser.error("--rows, --val-rows, --words and --epochs must be positive")
    return args


def synthetic_rows(rows: int, words: int, seed: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Multi-hot CSR rows as in tests/test_reference.py: Zipf-frequent words plus a few sentiment
    words whose column parity is the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows).astype(np.float32)
    frequency = 1.0 / np.arange(1, words + 1)
    frequency /= frequency.sum()
    sentiment_words = max((words - 40) // 2 - 10, 1)
    indptr, indices = [0], []
    for label in labels:
        common = rng.choice(words, rng.integers(5, 30), p=frequency)
        sentiment = np.minimum(40 + 2 * rng.choice(sentiment_words, rng.integers(2, 6)) + int(label), words - 1)
        indices.extend(np.unique(np.concatenate([common, sentiment])))
        indptr.append(len(indices))
    return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(rows, words)), labels


Rows = tuple[sp.csr_matrix, np.ndarray]


def imdb_rows(args: argparse.Namespace) -> tuple[Rows, Rows]:
    """The first training and test reviews over the `--words` most frequent words."""
    from imdb_jax import load_imdb

    data = load_imdb(num_words=max(args.words, 10000), progress=False)
    train = (data.train.x[: args.rows, : args.words].tocsr(), np.asarray(data.train.y[: args.rows], np.float32))
    validation = (
        data.test.x[: args.val_rows, : args.words].tocsr(),
        np.asarray(data.test.y[: args.val_rows], np.float32),
    )
    return train, validation


def train_package(study, train, validation, epochs: int):
    """Each variant's initial weights, trained weights and history from `fit_variants`."""
    import jax

    from imdb_jax import ModelConfig, Split, VariantSpec, create_train_state, fit_variants

    words = train[0].shape[1]
    specs = [
        VariantSpec(units, l1=l1, l2=l2, weight_decay=decay, learning_rate=rate, seed=seed)
        for units, l1, l2, decay, rate, seed in study
    ]
    starts = []
    for spec in specs:
        init_key, _ = jax.random.split(jax.random.key(spec.seed))
        params = create_train_state(init_key, ModelConfig(num_words=words, hidden_units=spec.hidden_units)).params
        starts.append(jax.tree_util.tree_map(np.asarray, jax.device_get(params)))
    result = fit_variants(
        specs,
        Split(*train),
        Split(*validation),
        epochs=epochs,
        batch_size=train[0].shape[0],
        first_layer="sparse",
        progress=False,
    )
    trained = [
        jax.tree_util.tree_map(np.asarray, jax.device_get(result.state(index).params)) for index in range(len(specs))
    ]
    histories = [
        {key: list(history[key]) for key in ("loss", "accuracy", "val_loss", "val_accuracy")}
        for history in result.histories
    ]
    return [spec.name for spec in specs], starts, trained, histories


def layer_names(params: dict[str, Any]) -> list[str]:
    return [*(f"hidden_{index}" for index in range(len(params) - 1)), "output"]


def train_keras(variant, start, train, validation, epochs: int):
    """Trained weights ({"hidden_0": {"kernel", "bias"}, ..., "output"}) and history of one Keras model."""
    import keras

    units, l1, l2, decay, rate, _ = variant
    words = train[0].shape[1]
    regulariser = keras.regularizers.L1L2(l1=l1, l2=l2) if (l1 or l2) else None
    inputs = keras.Input((words,))
    hidden = inputs
    for width in units:
        hidden = keras.layers.Dense(width, activation="relu", kernel_regularizer=regulariser)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    dense_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    for layer, name in zip(dense_layers, layer_names(start)):
        layer.set_weights([start[name]["kernel"], start[name]["bias"]])
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=rate, rho=0.9, epsilon=1e-7, weight_decay=decay or None),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)],
    )
    train_x, train_y = train[0].toarray(), train[1][:, None]
    val_x, val_y = validation[0].toarray(), validation[1][:, None]
    quiet: dict[str, Any] = {"verbose": 0}  # typed "auto" | int at run time, str in Keras' annotations
    fitted = model.fit(
        train_x, train_y, validation_data=(val_x, val_y), epochs=epochs, batch_size=len(train_y), shuffle=False, **quiet
    ).history
    trained = {
        name: dict(zip(("kernel", "bias"), layer.get_weights()))
        for layer, name in zip(dense_layers, layer_names(start))
    }
    history = {
        "loss": fitted["loss"],
        "accuracy": fitted["binary_accuracy"],
        "val_loss": fitted["val_loss"],
        "val_accuracy": fitted["val_binary_accuracy"],
    }
    return trained, history


def compare(params, history, other_params, other_history, rows: dict[str, int]) -> dict[str, Any]:
    """The largest differences of two trained models and their histories.

    Args:
      params, history: one trained model and its history; other_params, other_history: the other's.
      rows: {"accuracy": training rows, "val_accuracy": validation rows}, to compare accuracies
        as counts of correct predictions (Keras reports them in float32: 0.535 is 0.5350000262).
    """
    absolute, in_tolerances = 0.0, 0.0
    for layer, values in other_params.items():
        for name, want in values.items():
            got, want = np.asarray(params[layer][name], np.float64), np.asarray(want, np.float64)
            difference = np.abs(got - want)
            absolute = max(absolute, float(difference.max()))
            in_tolerances = max(in_tolerances, float((difference / (WEIGHT_ATOL + WEIGHT_RTOL * np.abs(want))).max()))
    losses = [
        abs(got - want) / abs(want)
        for key in ("loss", "val_loss")
        for got, want in zip(history[key], other_history[key], strict=True)
    ]
    return {
        "weights_max_abs_diff": absolute,
        "weights_max_diff_in_tolerances": in_tolerances,
        "losses_max_rel_diff": max(losses),
        "predictions_differing_max": max(
            int(abs(round(got * count) - round(want * count)))
            for key, count in rows.items()
            for got, want in zip(history[key], other_history[key], strict=True)
        ),
    }


def moved(start, trained) -> float:
    return max(
        float(np.abs(np.asarray(trained[layer][name], np.float64) - start[layer][name]).max())
        for layer in start
        for name in start[layer]
    )


def summary(per_variant: list[dict[str, Any]], key: str) -> dict[str, Any]:
    figures = [variant[key] for variant in per_variant]
    return {
        "weights_max_abs_diff": max(figure["weights_max_abs_diff"] for figure in figures),
        "weights_max_diff_in_tolerances": max(figure["weights_max_diff_in_tolerances"] for figure in figures),
        "losses_max_rel_diff": max(figure["losses_max_rel_diff"] for figure in figures),
        "predictions_differing_max": max(figure["predictions_differing_max"] for figure in figures),
    }


def float64_reference():
    """tests/reference.py (the NumPy float64 reference), or None where it is not in the tree."""
    path = REPO / "tests" / "reference.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
    except ImportError:
        sys.exit("Keras 3 is not installed: pip install -e '.[bench]'")
    if args.data == "imdb":
        train, validation = imdb_rows(args)
    else:
        train, validation = (
            synthetic_rows(args.rows, args.words, seed=0),
            synthetic_rows(args.val_rows, args.words, seed=1),
        )
    names, starts, package_params, package_histories = train_package(STUDY, train, validation, args.epochs)
    reference = float64_reference()
    rows = {"accuracy": len(train[1]), "val_accuracy": len(validation[1])}
    per_variant = []
    for index, variant in enumerate(STUDY):
        keras_params, keras_history = train_keras(variant, starts[index], train, validation, args.epochs)
        figures: dict[str, Any] = {
            "variant": names[index],
            "weights_moved": moved(starts[index], keras_params),
            "package_vs_keras": compare(
                package_params[index], package_histories[index], keras_params, keras_history, rows
            ),
        }
        if reference is not None:
            units, l1, l2, decay, rate, _ = variant
            want = reference.fit_full_batch(
                starts[index], train, validation, reference.Settings(rate, decay, l1, l2), epochs=args.epochs
            )
            figures["keras_vs_float64"] = compare(keras_params, keras_history, want[0], want[1], rows)
            # Where this is at float32 rounding's scale (~1e-7), a float32 run may take the other
            # side of a relu kink and differ by far more than rounding, with no error in it.
            figures["kink_margin"] = reference.smallest_margin(
                starts[index], train, validation, reference.Settings(rate, decay, l1, l2), epochs=args.epochs
            )
            figures["package_vs_float64"] = compare(
                package_params[index], package_histories[index], want[0], want[1], rows
            )
        per_variant.append(figures)
    report: dict[str, Any] = {
        "data": {
            "source": args.data,
            "rows": len(train[1]),
            "val_rows": len(validation[1]),
            "words": int(train[0].get_shape()[1]),
        },
        "steps": args.epochs,
        "keras": f"{keras.__version__} ({keras.backend.backend()})",
        "tolerance": {"weights_rtol": WEIGHT_RTOL, "weights_atol": WEIGHT_ATOL},
        "overall": {key: summary(per_variant, key) for key, value in per_variant[0].items() if isinstance(value, dict)},
        "smallest_weights_moved": min(variant["weights_moved"] for variant in per_variant),
        "variants": per_variant,
    }
    if reference is not None:
        report["smallest_kink_margin"] = min(variant["kink_margin"] for variant in per_variant)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
