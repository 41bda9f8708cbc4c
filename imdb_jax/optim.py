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
