"""Gradients become updates: Keras-style rmsprop with decoupled weight decay, and kernel penalties.

Keras 3 `RMSprop` (rho 0.9, epsilon 1e-7, no momentum, not centred) updates
`v = 0.9 v + 0.1 g²; w -= lr * g / sqrt(v + 1e-7)`, with epsilon *inside* the square root and
`v` starting at zero: that is `optax.scale_by_rms(decay=0.9, eps=1e-7, eps_in_sqrt=True)`.
The learning rate and weight decay are injected hyperparameters, so they live in the optimiser
state as arrays: variants that differ only in them share one compiled program.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from imdb_jax.models.layers import tree_sum
from imdb_jax.models.layout import Layout

RMS_DECAY = 0.9
RMS_EPSILON = 1e-7


def _rmsprop_with_decay(learning_rate, weight_decay) -> optax.GradientTransformation:
    return optax.chain(
        optax.scale_by_rms(decay=RMS_DECAY, eps=RMS_EPSILON, eps_in_sqrt=True),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


@functools.cache
def rmsprop() -> optax.GradientTransformation:
    """The one optimiser object every train state shares.

    It is built once so that states created at different times have equal static parts (and
    `jax.jit` caches hit); each state's own learning rate and weight decay are set with
    `init_opt_state`.
    """
    return optax.inject_hyperparams(_rmsprop_with_decay)(learning_rate=1e-3, weight_decay=0.0)


def init_opt_state(params: Any, learning_rate: float, weight_decay: float) -> Any:
    """rmsprop state for `params` with this model's learning rate and weight decay."""
    state = rmsprop().init(params)
    hyperparams = dict(state.hyperparams)
    hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    hyperparams["weight_decay"] = jnp.asarray(weight_decay, jnp.float32)
    return state._replace(hyperparams=hyperparams)


def hidden_kernels(tree: Any) -> list[jax.Array]:
    """The kernels of the hidden layers (`hidden_*`), the ones Keras' regularisers apply to."""
    return [layer["kernel"] for name, layer in sorted(tree.items()) if name.startswith("hidden_")]


def kernel_penalty(params: Any, l1: jax.Array | float, l2: jax.Array | float, mask: Any = None) -> jax.Array:
    """`l1 * sum|w| + l2 * sum w²` over the hidden kernels (Keras `kernel_regularizer`).

    Args:
      params: the model's `params` collection.
      l1, l2: penalty factors (scalars, traced or not).
      mask: optional pytree like `params` of 0/1; masked-out (padded) weights add nothing, and
        their gradient is zero even though d|w|/dw at 0 is +1 in JAX.
    """
    kernels = hidden_kernels(params)
    if mask is not None:
        kernels = [kernel * kernel_mask for kernel, kernel_mask in zip(kernels, hidden_kernels(mask))]
    l1_sum = sum(jnp.sum(jnp.abs(kernel)) for kernel in kernels)
    l2_sum = sum(jnp.sum(jnp.square(kernel)) for kernel in kernels)
    return l1 * l1_sum + l2 * l2_sum


def penalties(params: Any, layout: Layout, l1: jax.Array, l2: jax.Array) -> jax.Array:
    """float32[slots]: each variant's `l1 * sum|w| + l2 * sum w**2` over its hidden kernels
    (Keras' kernel regularisers; the output layer is not penalised)."""
    kernel = params["first"]["kernel"]
    abs_sums, square_sums = [], []
    for block, block_params in zip(layout.blocks, params["blocks"]):
        if not block.penalty:
            abs_sums.append(jnp.zeros((block.size,), jnp.float32))
            square_sums.append(jnp.zeros((block.size,), jnp.float32))
            continue
        # Each column summed over the rows by a fixed tree, then each variant's columns.
        columns = kernel[:, block.offset : block.offset + block.columns]
        width = block.hidden_units[0]
        abs_sum = tree_sum(tree_sum(jnp.abs(columns), axis=0).reshape(block.size, width), axis=1)
        square_sum = tree_sum(tree_sum(jnp.square(columns), axis=0).reshape(block.size, width), axis=1)
        for layer in block_params["hidden"]:
            flat = layer["kernel"].reshape(block.size, -1)
            abs_sum = abs_sum + tree_sum(jnp.abs(flat), axis=1)
            square_sum = square_sum + tree_sum(jnp.square(flat), axis=1)
        abs_sums.append(abs_sum)
        square_sums.append(square_sum)
    return l1 * jnp.concatenate(abs_sums) + l2 * jnp.concatenate(square_sums)
