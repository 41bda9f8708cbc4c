"""The package's training arithmetic pinned against an independent NumPy reference (tests/reference.py).

`fit_variants` trains a mixed study (widths 4-64, depths 1-3, L1, L2, decoupled weight decay,
learning rates 1e-3 and 1e-2, several seeds, no dropout: its random streams are the package's
own) for a few full-batch steps: the batch holds every training row, so each epoch is one step
and the shuffle cannot matter. Every variant's weights and history (loss, accuracy, val_loss,
val_accuracy) must then equal the float64 reference's from the same initial weights, to
float32 noise. The public one-model `train_step`, jitted, is held to the same reference.

Tolerances. A float32 run differs from float64 by the rounding of its sums (~1e-7 relative);
rmsprop divides by sqrt(nu + 1e-7), which can amplify an error in a tiny gradient (a rare word's)
by up to 1/sqrt(1e-7) ~ 3e3 times the learning rate. The bounds are `|got - want| <= ATOL +
RTOL |want|`: for weights RTOL = 1e-5, ATOL = 1e-6 (weights are ~0.1); for losses RTOL = 1e-5;
accuracies exactly (counts over the same rows). Measured when this was written (CPU, 5 steps):
weights within 9e-8, losses within 2e-7 relative, accuracies equal: the worst variant used
0.044 of its tolerance, so there is ~20x headroom for a refactor's different rounding. Each
variant's seed was chosen so that no reference pre-activation or logit comes within
`KINK_MARGIN` of 0 (`test_the_data_keeps_clear_of_kinks`): float32 rounding (~1e-7 on a
pre-activation here) cannot take the other side of a relu kink, which would change a rare
word's gradient outright and fail the comparison for no fault of the arithmetic. (Seen on 2,000
real IMDb reviews x 1,000 words, benchmarks/keras_reference.py: one variant's pre-activation is
2e-8 from a kink at the first step and float32 puts it on the other side; the package then
differs from the reference by 1.3e-3 after one step, and by 5e-8 once the reference's relu mask
is flipped at that one element.)

The comparison is not vacuous (`test_the_comparison_is_not_vacuous`: every kernel moves >= 1e3
tolerances, every loss changes step to step), and each wrong reference in `WRONG` fails it far
outside the tolerance on the weights or the loss, accuracies aside
(`test_a_wrong_reference_fails_the_comparison`). Tried by hand when this was written, the worst
violation of each as a multiple of the tolerance: epsilon outside the square root 1.3e5;
coupled weight decay (`wd p` added to the gradient before rmsprop) 1.6e5; weight decay not
scaled by the learning rate 2.6e5; the output kernel penalised too 3.0e4; the penalty left out
of the reported loss 4.2e4 (loss); rho 0.99 instead of 0.9 1.7e5; L2's gradient `l2 w` instead
of `2 l2 w` 5.0e4. Subtler ones too: epsilon 1e-8 instead of 1e-7 1.3e5, 1.2e-7 5.1e4, rho
0.9001 1.4e4.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
import scipy.sparse as sp

from imdb_jax import ModelConfig, Split, VariantSpec, create_train_state, fit_variants, train_step

NUM_WORDS = 300
EPOCHS = 5
BATCH = 256  # >= the training rows: every epoch is one full-batch step
WEIGHT_RTOL, WEIGHT_ATOL = 1e-5, 1e-6
LOSS_RTOL = 1e-5
KINK_MARGIN = 3e-6
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")

# A mixed study; the seeds are chosen for their margin from the relu kinks (see the docstring).
SPECS = [
    VariantSpec((4,), seed=4),
    VariantSpec((64,), l2=1e-3, learning_rate=1e-2, seed=8),
    VariantSpec((16, 8), l1=1e-4, seed=1),
    VariantSpec((32, 16, 8), weight_decay=0.1, learning_rate=1e-2, seed=11),
    VariantSpec((8, 8), l1=1e-4, l2=1e-3, weight_decay=0.3, learning_rate=1e-2, seed=10),
    VariantSpec((16, 16), learning_rate=1e-2, seed=5),
    VariantSpec((16, 16), weight_decay=0.3, seed=2),  # same block as the one above
    VariantSpec((16, 16), l2=1e-3, weight_decay=0.1, learning_rate=1e-2, seed=3),
    VariantSpec((64, 32, 4), l1=1e-4, seed=5),
]
# The one model trained with the public `train_step`: depth 3, every penalty, weight decay.
STEP_SPEC = VariantSpec((32, 16, 8), l1=1e-4, l2=1e-3, weight_decay=0.1, learning_rate=1e-2, seed=9)


def reviews(rows: int, seed: int) -> Split:
    """Multi-hot CSR rows: Zipf-frequent words (columns run from frequent to rare, as `load_imdb`
    orders them) plus a few sentiment words whose column parity is the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows).astype(np.float32)
    frequency = 1.0 / np.arange(1, NUM_WORDS + 1)
    frequency /= frequency.sum()
    indptr, indices = [0], []
    for label in labels:
        common = rng.choice(NUM_WORDS, rng.integers(5, 30), p=frequency)
        sentiment = 40 + 2 * rng.choice(100, rng.integers(2, 6)) + int(label)
        indices.extend(np.unique(np.concatenate([common, sentiment])))
        indptr.append(len(indices))
    x = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(rows, NUM_WORDS))
    return Split(x, labels)


TRAIN = reviews(200, seed=0)
VALIDATION = reviews(80, seed=1)


def settings(spec: VariantSpec) -> reference.Settings:
    return reference.Settings(spec.learning_rate, spec.weight_decay, spec.l1, spec.l2)


@functools.cache
def initial_params(hidden_units: tuple[int, ...], seed: int) -> dict[str, Any]:
    """The weights a variant starts from: `create_train_state` on the first half of its seed's
    split key (as `fit_variants` initialises it), as NumPy."""
    init_key, _ = jax.random.split(jax.random.key(seed))
    config = ModelConfig(num_words=NUM_WORDS, hidden_units=hidden_units)
    return jax.tree_util.tree_map(np.asarray, jax.device_get(create_train_state(init_key, config).params))


def expected(spec: VariantSpec) -> tuple[reference.Params, dict[str, list[float]]]:
    start = initial_params(spec.hidden_units, spec.seed)
    return reference.fit_full_batch(
        start, (TRAIN.x, TRAIN.y), (VALIDATION.x, VALIDATION.y), settings(spec), epochs=EPOCHS
    )


@functools.cache
def trained(first_layer: str | int):
    return fit_variants(
        SPECS, TRAIN, VALIDATION, epochs=EPOCHS, batch_size=BATCH, first_layer=first_layer, progress=False
    )


def violation(got: Any, want: Any, rtol: float, atol: float) -> float:
    """max |got - want| / (atol + rtol |want|): <= 1 within tolerance."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want) / (atol + rtol * np.abs(want))))


def violations(params: Any, history: dict[str, list], want_params: reference.Params, want_history: dict[str, list]):
    """{what: violation} for every parameter leaf and history key (accuracies exact)."""
    assert set(params) == set(want_params)
    found = {}
    for layer, values in want_params.items():
        assert set(params[layer]) == set(values)
        for name, value in values.items():
            found[f"{layer}/{name}"] = violation(params[layer][name], value, WEIGHT_RTOL, WEIGHT_ATOL)
    for key in want_history:
        if key.endswith("accuracy"):
            found[key] = 0.0 if list(history[key]) == list(want_history[key]) else np.inf
        else:
            found[key] = violation(history[key], want_history[key], LOSS_RTOL, 0.0)
    return found


def worst(found: dict[str, float]) -> tuple[str, float]:
    return max(found.items(), key=lambda item: item[1])


def describe(found: dict[str, float]) -> str:
    """The out-of-tolerance entries, worst first (at most 4)."""
    bad = sorted(((amount, what) for what, amount in found.items() if amount > 1.0), reverse=True)[:4]
    return ", ".join(
        f"{what} differs" if np.isinf(amount) else f"{what} {amount:.3g}x the tolerance" for amount, what in bad
    )


@pytest.mark.parametrize("first_layer", ["sparse", 64], ids=["embedding-bag", "dense-head+bag"])
def test_fit_variants_matches_the_reference(first_layer):
    result = trained(first_layer)
    failures = []
    for index, spec in enumerate(SPECS):
        want_params, want_history = expected(spec)
        assert not any(result.histories[index]["diverged"])
        found = violations(result.state(index).params, result.histories[index], want_params, want_history)
        if worst(found)[1] > 1.0:
            failures.append(f"{spec.name}: {describe(found)}")
    assert not failures, "\n".join(failures)


def test_the_comparison_is_not_vacuous():
    for spec in SPECS:
        start = initial_params(spec.hidden_units, spec.seed)
        want_params, want_history = expected(spec)
        moved = max(
            np.abs(want_params[layer][name] - start[layer][name]).max() for layer in start for name in start[layer]
        )
        assert moved > 1e4 * WEIGHT_ATOL, spec.name
        # Every layer's kernel moves, the output one too, and the loss changes from step to step.
        for layer in start:
            assert np.abs(want_params[layer]["kernel"] - start[layer]["kernel"]).max() > 1e3 * WEIGHT_ATOL, (
                spec.name,
                layer,
            )
        assert np.min(np.abs(np.diff(want_history["loss"])) / want_history["loss"][1:]) > 1e2 * LOSS_RTOL, spec.name
    # The penalties are large enough to be seen in the reported loss.
    for spec in SPECS:
        if spec.l1 or spec.l2:
            start = initial_params(spec.hidden_units, spec.seed)
            penalty = reference.kernel_penalty(reference.as_float64(start), spec.l1, spec.l2)
            assert penalty > 1e3 * LOSS_RTOL, spec.name


def test_the_data_keeps_clear_of_kinks():
    """No reference pre-activation or logit (training or validation rows, at any step) lies
    within KINK_MARGIN of 0 (`reference.smallest_margin`)."""
    for spec in [*SPECS, STEP_SPEC]:
        start = initial_params(spec.hidden_units, spec.seed)
        margin = reference.smallest_margin(
            start, (TRAIN.x, TRAIN.y), (VALIDATION.x, VALIDATION.y), settings(spec), epochs=EPOCHS
        )
        assert margin > KINK_MARGIN, f"{spec.name}: a value {margin:.2g} from a kink; choose another seed"


# Wrong references, each of which the comparison must reject.


def _eps_outside_sqrt(params, nu, grads, settings):
    new_params, new_nu = {}, {}
    for layer, values in params.items():
        new_params[layer], new_nu[layer] = {}, {}
        for name, p in values.items():
            g = grads[layer][name]
            v = new_nu[layer][name] = reference.RHO * nu[layer][name] + (1 - reference.RHO) * g**2
            new_params[layer][name] = p - settings.learning_rate * (
                g / (np.sqrt(v) + reference.EPSILON) + settings.weight_decay * p
            )
    return new_params, new_nu


def _coupled_decay(params, nu, grads, settings):
    coupled = {
        layer: {name: grads[layer][name] + settings.weight_decay * p for name, p in values.items()}
        for layer, values in params.items()
    }
    return _RMSPROP(params, nu, coupled, reference.Settings(settings.learning_rate, 0.0, settings.l1, settings.l2))


def _unscaled_decay(params, nu, grads, settings):
    new_params, new_nu = _RMSPROP(
        params, nu, grads, reference.Settings(settings.learning_rate, 0.0, settings.l1, settings.l2)
    )
    for layer, values in new_params.items():
        for name in values:
            values[name] = values[name] - settings.weight_decay * params[layer][name]
    return new_params, new_nu


def _half_l2_gradient(params, x, labels, settings):
    grads = _GRADIENTS(params, x, labels, settings)
    for layer in reference.penalised_layers(params):
        grads[layer]["kernel"] = grads[layer]["kernel"] - settings.l2 * params[layer]["kernel"]
    return grads


_RMSPROP = reference.rmsprop_update
_GRADIENTS = reference.gradients
WRONG = {
    "eps-outside-sqrt": ("rmsprop_update", _eps_outside_sqrt),
    "coupled-decay": ("rmsprop_update", _coupled_decay),
    "decay-not-scaled-by-lr": ("rmsprop_update", _unscaled_decay),
    "output-penalised": ("penalised_layers", lambda params: reference.layer_names(params)),
    "penalty-not-reported": ("kernel_penalty", lambda params, l1, l2: 0.0),
    "rho-0.99": ("RHO", 0.99),
    "epsilon-1e-8": ("EPSILON", 1e-8),
    "l2-gradient-halved": ("gradients", _half_l2_gradient),
}


@pytest.mark.parametrize("mistake", list(WRONG))
def test_a_wrong_reference_fails_the_comparison(mistake, monkeypatch):
    name, replacement = WRONG[mistake]
    monkeypatch.setattr(reference, name, replacement)
    result = trained("sparse")
    amounts = []
    for index, spec in enumerate(SPECS):
        found = violations(result.state(index).params, result.histories[index], *expected(spec))
        # Accuracies aside (one flipped prediction is infinitely far): weights or losses.
        amounts.append(worst({what: amount for what, amount in found.items() if "accuracy" not in what})[1])
    # Not a borderline miss: the wrong arithmetic is far outside the tolerance.
    assert max(amounts) > 100.0, (mistake, amounts)


def test_train_step_matches_the_reference():
    """The public pure step, jitted, on dense rows: every step's metrics (before its update)
    and the final weights."""
    init_key, _ = jax.random.split(jax.random.key(STEP_SPEC.seed))
    state = create_train_state(init_key, STEP_SPEC.config(NUM_WORDS))
    start = jax.tree_util.tree_map(np.asarray, jax.device_get(state.params))
    batch = {"inputs": jnp.asarray(TRAIN.x.toarray()), "labels": jnp.asarray(TRAIN.y)}
    step = jax.jit(train_step)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    for index in range(EPOCHS):
        state, sums = step(state, batch, jax.random.key(index))
        sums = jax.device_get(sums)
        history["loss"].append(float(sums["loss_sum"]) / float(sums["count"]))
        history["accuracy"].append(float(sums["correct"]) / float(sums["count"]))
    want_params, want_history = reference.fit_full_batch(
        start, (TRAIN.x, TRAIN.y), None, settings(STEP_SPEC), epochs=EPOCHS
    )
    found = violations(jax.device_get(state.params), history, want_params, want_history)
    assert worst(found)[1] <= 1.0, describe(found)
