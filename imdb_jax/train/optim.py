"""Gradients become updates: Keras-style rmsprop with decoupled weight decay, and kernel penalties.

Keras 3 `RMSprop` (rho 0.9, epsilon 1e-7, no momentum, not centred) updates
`v = 0.9 v + 0.1 g²; w -= lr * g / sqrt(v + 1e-7)`, with epsilon *inside* the square root and
`v` starting at zero: that is `optax.scale_by_rms(decay=0.9, eps=1e-7, eps_in_sqrt=True)`.
Decoupled weight decay (AdamW's, Keras' `weight_decay`) adds `wd * w` to that step before the
learning rate scales it.

`rmsprop()` is one Optax `GradientTransformation` for one model and for many fused ones: its
hyperparameters live in its state as arrays, in the manner of `optax.inject_hyperparams`, either
a scalar (one model) or a tree of arrays broadcastable to each parameter leaf (one value per
variant: a column of the fused first layer, a member of a block). Variants that differ only in
them share one compiled program.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from imdb_jax.models.layers import tree_sum

RMS_DECAY = 0.9
RMS_EPSILON = 1e-7
OPTIMISER_HYPERPARAMS = ("learning_rate", "weight_decay")


class RMSpropState(NamedTuple):
    """rmsprop's state.

    Attributes:
      count: int32 updates done.
      nu: the running mean of squared gradients, like the parameters.
      hyperparams: {"learning_rate", "weight_decay"}: each a float32 scalar or a tree like the
        parameters of arrays broadcastable to each leaf.
    """

    count: jax.Array
    nu: Any
    hyperparams: dict[str, Any]


_SCALE_BY_RMS = optax.scale_by_rms(decay=RMS_DECAY, eps=RMS_EPSILON, eps_in_sqrt=True)


def _like(value: Any, params: Any) -> Any:
    """A hyperparameter as a tree like `params` (a scalar serves every leaf)."""
    if jax.tree_util.tree_structure(value) == jax.tree_util.tree_structure(params):
        return value
    return jax.tree_util.tree_map(lambda _: value, params)


@functools.cache
def rmsprop() -> optax.GradientTransformation:
    """Keras rmsprop with decoupled weight decay: `update = -lr * (g / sqrt(nu + eps) + wd * w)`.

    One object is shared by every train state, so states made at different times have equal
    static parts (and `jax.jit` caches hit); a state's own learning rate and weight decay are
    set with `init_opt_state` (scalars) or per variant as trees.
    """

    def init(params: Any) -> RMSpropState:
        return init_opt_state(params, 1e-3, 0.0)

    def update(grads: Any, state: RMSpropState, params: Any = None) -> tuple[Any, RMSpropState]:
        if params is None:
            raise ValueError("rmsprop's decoupled weight decay needs the parameters")
        scaled, rms_state = _SCALE_BY_RMS.update(grads, optax.ScaleByRmsState(nu=state.nu))
        learning_rate = _like(state.hyperparams["learning_rate"], params)
        weight_decay = _like(state.hyperparams["weight_decay"], params)
        updates = jax.tree_util.tree_map(
            lambda u, p, lr, wd: (-lr) * (u + wd * p), scaled, params, learning_rate, weight_decay
        )
        return updates, state._replace(count=state.count + 1, nu=rms_state.nu)  # pyright: ignore[reportAttributeAccessIssue]

    return optax.GradientTransformation(init, update)  # type: ignore[arg-type]


def init_opt_state(params: Any, learning_rate: Any, weight_decay: Any) -> RMSpropState:
    """rmsprop state for `params` with these hyperparameters (scalars, or trees of per-leaf
    broadcastable arrays)."""
    as_array = functools.partial(jax.tree_util.tree_map, lambda value: jnp.asarray(value, jnp.float32))
    return RMSpropState(
        count=jnp.zeros((), jnp.int32),
        nu=jax.tree_util.tree_map(jnp.zeros_like, params),
        hyperparams={"learning_rate": as_array(learning_rate), "weight_decay": as_array(weight_decay)},
    )


def penalty_sums(first: jax.Array, hidden: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(sum|w|, sum w²) over each variant's hidden kernels, every sum a fixed `tree_sum`.

    Args:
      first: float32[num_words, variants, width]: the first-layer kernels, variant on axis 1.
      hidden: the later hidden kernels, each float32[variants, in, out].

    Returns:
      Two float32[variants] arrays.
    """
    return add_hidden_sums(first_layer_sums(first), hidden)


def first_layer_sums(first: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`penalty_sums`' first term: each column summed over the rows by a fixed tree, then each
    variant's columns."""
    return (
        tree_sum(tree_sum(jnp.abs(first), axis=0), axis=-1),
        tree_sum(tree_sum(jnp.square(first), axis=0), axis=-1),
    )


def add_hidden_sums(sums: tuple[jax.Array, jax.Array], hidden: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """`penalty_sums`' later terms: the hidden kernels' sums added, in order, to the first's."""
    abs_sum, square_sum = sums
    for kernel in hidden:
        flat = kernel.reshape(kernel.shape[0], -1)
        abs_sum = abs_sum + tree_sum(jnp.abs(flat), axis=1)
        square_sum = square_sum + tree_sum(jnp.square(flat), axis=1)
    return abs_sum, square_sum


def hidden_kernels(params: Any) -> list[jax.Array]:
    """One model's hidden kernels (`hidden_*`, in order), the ones Keras' regularisers apply to."""
    names = sorted((name for name in params if name.startswith("hidden_")), key=lambda name: int(name.split("_")[1]))
    return [params[name]["kernel"] for name in names]


def kernel_penalty(params: Any, l1: jax.Array | float, l2: jax.Array | float) -> jax.Array:
    """One model's `l1 * sum|w| + l2 * sum w²` over its hidden kernels (Keras
    `kernel_regularizer`; the output layer and biases are not penalised): `penalty_sums` of a
    single variant."""
    first, *rest = hidden_kernels(params)
    abs_sum, square_sum = penalty_sums(first[:, None, :], [kernel[None] for kernel in rest])
    return l1 * abs_sum[0] + l2 * square_sum[0]
