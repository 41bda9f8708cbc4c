"""Early stopping, Keras' way, per variant: a variant stopped in a fused run is bitwise the
variant trained alone with the same rule; the stopping epoch follows Keras' rule on its own
validation losses; the run ends when every variant has stopped; a resumed run stops alike."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_variants import BATCH, TRAIN, VALIDATION

from imdb_jax import VariantSpec, fit_variants
from imdb_jax.errors import ImdbJaxError
from imdb_jax.train.fit import fit

EPOCHS = 12
# The tiny set's validation loss falls for long, by ever less: min_delta makes the rule bite.
RULE = {"patience": 2, "min_delta": 0.01}
# Learning rates far apart: the fast ones overfit the tiny set and stop early, the slow one not.
SPECS = [
    VariantSpec((8, 8), learning_rate=3e-2, seed=0),
    VariantSpec((4,), learning_rate=1e-2, l2=0.01, seed=1),
    VariantSpec((8, 8), learning_rate=1e-4, seed=2),
]


def keras_stopped_epoch(val_loss: list[float], patience: int, min_delta: float = 0.0, start_from_epoch: int = 0):
    """Keras 3 EarlyStopping.on_epoch_end, written out: the 1-based epoch it stops after, or None."""
    best, wait = np.inf, 0
    for epoch, current in enumerate(val_loss):
        if epoch < start_from_epoch:
            continue
        wait += 1
        if current - (-min_delta) < best:  # Keras negates min_delta for mode "min"
            best, wait = current, 0
            continue
        if wait >= patience and epoch > 0:
            return epoch + 1
    return None


@pytest.fixture(scope="module")
def stopped():
    return fit_variants(SPECS, TRAIN, VALIDATION, epochs=EPOCHS, batch_size=BATCH, progress=False, **RULE)


def test_stopping_follows_keras_rule_on_each_variants_own_losses(stopped):
    full = fit_variants(SPECS, TRAIN, VALIDATION, epochs=EPOCHS, batch_size=BATCH, progress=False)
    expected = [keras_stopped_epoch(history["val_loss"], **RULE) for history in full.histories]
    assert [stopped.stopped_epoch(index) for index in range(len(SPECS))] == expected
    assert expected[0] is not None and expected[0] < EPOCHS  # the fast learner did stop early
    for index, epoch in enumerate(expected):
        length = EPOCHS if epoch is None else epoch
        assert len(stopped.histories[index]["val_loss"]) == length
        # Up to its stop, a variant's history is the uninterrupted run's, bit for bit.
        assert stopped.histories[index]["val_loss"] == full.histories[index]["val_loss"][:length]


def _alone(spec):
    return fit(
        spec.config(TRAIN.x.shape[1]),
        TRAIN,
        VALIDATION,
        epochs=EPOCHS,
        batch_size=BATCH,
        seed=spec.seed,
        shuffle_seed=0,
        progress=False,
        **RULE,
    )


def test_a_stopped_variant_is_bitwise_the_variant_alone(stopped):
    for index, spec in enumerate(SPECS):
        alone, history = _alone(spec)
        got = stopped.state(index)
        for mine, theirs in zip(
            jax.tree.leaves((got.params, got.opt_state)), jax.tree.leaves((alone.params, alone.opt_state))
        ):
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
        assert int(got.step) == int(alone.step)
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "diverged"):
            assert stopped.histories[index][key] == history[key], key


def test_validation_loss_is_bitwise_in_company(stopped):
    # It differed in the last bit until the output layer's products were kept from XLA:CPU's FMA
    # contraction (`imdb_jax.models.layers.rounded_products`): in company the product and the
    # tree sum's adds shared a fusion and were contracted, alone they did not.
    _, history = _alone(SPECS[0])
    assert stopped.histories[0]["val_loss"] == history["val_loss"]


def test_the_run_ends_when_every_variant_has_stopped():
    fast = [VariantSpec((8, 8), learning_rate=3e-2, seed=seed) for seed in (0, 1)]
    result = fit_variants(
        fast, TRAIN, VALIDATION, epochs=40, batch_size=BATCH, progress=False, patience=1, min_delta=0.01
    )
    last = max(result.stopped_epoch(index) for index in range(len(fast)))
    assert last < 40 and len(result.epoch_seconds) == last


def test_start_from_epoch_and_min_delta_follow_keras(stopped):
    del stopped
    full = fit_variants(SPECS[:1], TRAIN, VALIDATION, epochs=EPOCHS, batch_size=BATCH, progress=False)
    stops = []
    for settings in ({"min_delta": 0.05}, {"min_delta": 0.01, "start_from_epoch": 6}):
        result = fit_variants(
            SPECS[:1], TRAIN, VALIDATION, epochs=EPOCHS, batch_size=BATCH, progress=False, patience=1, **settings
        )
        stops.append(result.stopped_epoch(0))
        assert stops[-1] == keras_stopped_epoch(full.histories[0]["val_loss"], 1, **settings)  # pyright: ignore[reportArgumentType]
    assert None not in stops and stops[0] < stops[1]  # monitoring later stops later


def test_a_resumed_run_stops_where_an_uninterrupted_one_does(tmp_path, stopped):
    options = dict(epochs=EPOCHS, batch_size=BATCH, progress=False, checkpoint_dir=tmp_path, **RULE)
    first_stop = stopped.stopped_epoch(0)
    part = fit_variants(SPECS, TRAIN, VALIDATION, **{**options, "epochs": first_stop + 1})
    assert part.stopped_epoch(0) == first_stop
    resumed = fit_variants(SPECS, TRAIN, VALIDATION, **options, resume=True)
    assert resumed.histories == stopped.histories
    for index in range(len(SPECS)):
        for mine, theirs in zip(
            jax.tree.leaves(resumed.state(index).params), jax.tree.leaves(stopped.state(index).params)
        ):
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def test_early_stopping_needs_validation_and_sane_settings():
    with pytest.raises(ImdbJaxError, match="validation"):
        fit_variants(SPECS[:1], TRAIN, epochs=2, batch_size=BATCH, progress=False, patience=1)
    for settings in ({"patience": -1}, {"patience": 1, "min_delta": -0.1}, {"patience": 1, "start_from_epoch": 1.5}):
        with pytest.raises(ImdbJaxError):
            fit_variants(SPECS[:1], TRAIN, VALIDATION, epochs=2, batch_size=BATCH, progress=False, **settings)


def test_the_command_line_refuses_patience_without_validation_before_importing_jax():
    import subprocess
    import sys

    code = (
        "import sys; from imdb_jax.cli import main; status = main(['train', '--patience', '2']);"
        "print(status, 'jax' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert "--patience needs" in result.stderr and "--validation" in result.stderr
