"""Pure steps: every parameter moves, the loss falls, one compilation, vmap equals each run alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imdb_jax.config import ModelConfig
from imdb_jax.models.layout import make_layout
from imdb_jax.train.optim import init_opt_state, kernel_penalty
from imdb_jax.train.steps import (
    _penalised_blocks_sums,
    create_train_state,
    eval_step,
    first_layer_penalty_sums,
    train_step,
)

CONFIG = ModelConfig(num_words=24, hidden_units=(8, 4), learning_rate=0.01)
BATCH_SIZE = 16


def _batch(seed: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    x = (rng.random((BATCH_SIZE, CONFIG.num_words)) < 0.3).astype(np.float32)
    # Learnable labels: sentiment carried by the first few words.
    y = (x[:, :4].sum(axis=1) > x[:, 4:8].sum(axis=1)).astype(np.float32)
    return {"inputs": jnp.asarray(x), "labels": jnp.asarray(y)}


@pytest.fixture(scope="module")
def state():
    return create_train_state(jax.random.key(0), CONFIG)


@pytest.fixture(scope="module")
def step():
    """One jitted train step shared by the tests (all states here share one structure)."""
    return jax.jit(train_step)


def _with_settings(state, *, seed=None, learning_rate=0.01, weight_decay=0.0, dropout_rate=0.0, l1=0.0, l2=0.0):
    """`state` with other initial weights and settings but the same tree structure (and so the
    same compiled step): the settings are traced arrays, not compile-time constants."""
    params = state.params if seed is None else create_train_state(jax.random.key(seed), CONFIG).params
    return state.replace(
        params=params,
        opt_state=init_opt_state(params, learning_rate, weight_decay),
        hparams={name: jnp.float32(value) for name, value in (("dropout_rate", dropout_rate), ("l1", l1), ("l2", l2))},
    )


def test_one_step_changes_every_parameter(state, step):
    new_state, metrics = step(state, _batch(0), jax.random.key(1))
    changed = jax.tree_util.tree_map(
        lambda new, old: bool(np.any(np.asarray(new) != np.asarray(old))), new_state.params, state.params
    )
    assert all(jax.tree_util.tree_leaves(changed)), changed
    assert int(new_state.step) == int(state.step) + 1
    assert float(metrics["count"]) == BATCH_SIZE


def test_loss_falls_on_a_fixed_batch(state, step):
    batch = _batch(0)
    losses = []
    for index in range(30):
        state, metrics = step(state, batch, jax.random.key(index))
        losses.append(float(metrics["loss_sum"] / metrics["count"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert sum(later < earlier for earlier, later in zip(losses, losses[1:])) >= 25, losses
    final = eval_step(state, batch)
    assert float(final["correct"]) == BATCH_SIZE  # the tiny batch is learnt


def test_jitted_step_compiles_once_for_many_batches(state, step):
    # `_cache_size` counts programs of every `jax.jit(train_step)` wrapper, so count growth.
    state, _ = step(state, _batch(0), jax.random.key(0))
    compiled = step._cache_size()
    for index in range(1, 6):
        state, _ = step(state, _batch(index), jax.random.key(index))
    other_settings = _with_settings(state, learning_rate=0.003, l2=0.01, dropout_rate=0.5)
    step(other_settings, _batch(9), jax.random.key(9))
    assert step._cache_size() == compiled


def test_training_loss_includes_the_kernel_penalty(state, step):
    batch = _batch(1)
    plain = _with_settings(state, seed=5)
    penalised = _with_settings(state, seed=5, l1=0.003, l2=0.02)
    _, plain_metrics = step(plain, batch, jax.random.key(0))
    _, penalised_metrics = step(penalised, batch, jax.random.key(0))
    penalty = float(kernel_penalty(plain.params, 0.003, 0.02))
    assert penalty > 0.01
    plain_loss = float(plain_metrics["loss_sum"]) / BATCH_SIZE
    assert float(penalised_metrics["loss_sum"]) / BATCH_SIZE == pytest.approx(plain_loss + penalty, rel=1e-5)
    # Evaluation reports the penalised loss as well (Keras' val_loss does).
    assert float(eval_step(penalised, batch)["loss_sum"]) == pytest.approx(
        float(penalised_metrics["loss_sum"]), rel=1e-5
    )


def test_vmapped_step_over_stacked_states_equals_each_alone(state, step):
    members = [
        _with_settings(state, seed=1, learning_rate=0.01, dropout_rate=0.5),
        _with_settings(state, seed=2, learning_rate=0.002, weight_decay=0.05, l1=0.001, l2=0.01),
    ]
    keys = jnp.stack([jax.random.key(10), jax.random.key(11)])
    batch = _batch(3)
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *members)
    vmapped = jax.jit(jax.vmap(train_step, in_axes=(0, None, 0)))
    stacked, stacked_metrics = vmapped(stacked, batch, keys)
    stacked, stacked_metrics = vmapped(stacked, batch, keys)  # twice: the optimiser state carries over
    for index, member in enumerate(members):
        alone, metrics = step(member, batch, keys[index])
        alone, metrics = step(alone, batch, keys[index])
        for got, expected in zip(jax.tree_util.tree_leaves(stacked.params), jax.tree_util.tree_leaves(alone.params)):
            np.testing.assert_allclose(np.asarray(got[index]), np.asarray(expected), rtol=1e-5, atol=1e-6)
        for name in ("loss_sum", "correct", "count"):
            np.testing.assert_allclose(np.asarray(stacked_metrics[name][index]), np.asarray(metrics[name]), rtol=1e-5)
    # The two members really differ, so equality above is per member, not by accident.
    assert not np.allclose(
        np.asarray(stacked.params["output"]["kernel"][0]), np.asarray(stacked.params["output"]["kernel"][1])
    )


def test_step_is_differentiable_with_respect_to_the_learning_rate(state):
    """A meta-gradient through one update: d(loss after the step)/d(learning rate)."""
    batch = _batch(4)

    def loss_after_step(learning_rate):
        start = state.replace(opt_state=init_opt_state(state.params, 0.0, 0.0))
        hyperparams = {**start.opt_state.hyperparams, "learning_rate": learning_rate}
        start = start.replace(opt_state=start.opt_state._replace(hyperparams=hyperparams))
        updated, _ = train_step(start, batch, jax.random.key(0))
        metrics = eval_step(updated, batch)
        return metrics["loss_sum"] / metrics["count"]

    value_and_grad = jax.jit(jax.value_and_grad(loss_after_step))
    loss, gradient = value_and_grad(jnp.float32(0.01))
    delta = 1e-3
    finite_difference = (
        value_and_grad(jnp.float32(0.01 + delta))[0] - value_and_grad(jnp.float32(0.01 - delta))[0]
    ) / (2 * delta)
    assert float(gradient) < 0  # a larger step lowers the loss here
    assert float(gradient) == pytest.approx(float(finite_difference), rel=0.05)


def test_the_first_layers_penalty_gradient_is_autodiffs_bit_for_bit():
    """`first_layer_penalty_sums` writes its gradient as one elementwise pass; it must be the
    bits autodiff gives through the `tree_sum`s, in penalised blocks, unpenalised ones (zero)
    and at weights of exactly zero (where |w|'s derivative takes the `w >= 0` side)."""
    layout, _ = make_layout(
        40, [((16, 16), False, True), ((16, 16), False, True), ((4,), False, False), ((8,), True, True)]
    )
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((layout.num_words, layout.width)).astype(np.float32)
    kernel[rng.random(kernel.shape) < 0.1] = 0.0
    kernel = jnp.asarray(kernel)
    sums = _penalised_blocks_sums(kernel, layout)
    cotangents = jax.tree_util.tree_map(lambda leaf: jnp.asarray(rng.random(leaf.shape).astype(np.float32)), sums)
    cotangents = ((cotangents[0][0].at[0].set(0.0), cotangents[0][1]), *cotangents[1:])

    def gradient(function):
        return jax.jit(lambda k: jax.vjp(lambda k: function(k, layout), k)[1](cotangents)[0])(kernel)

    ours, autodiff = np.asarray(gradient(first_layer_penalty_sums)), np.asarray(gradient(_penalised_blocks_sums))
    assert np.array_equal(ours.view(np.uint32), autodiff.view(np.uint32))
    unpenalised = layout.blocks[[block.penalty for block in layout.blocks].index(False)]
    assert not np.any(ours[:, unpenalised.offset : unpenalised.offset + unpenalised.columns])
    assert np.any(ours)
    forward = first_layer_penalty_sums(kernel, layout)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(forward), jax.tree_util.tree_leaves(sums))
    )
