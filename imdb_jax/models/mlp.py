"""Multi-hot vectors become logits: the Flax `MLP`, and many of them fused into one `FusedMLP`.

One variant's layers are written once (`imdb_jax.models.layers`) and composed two ways:

- `MLP`: `MultiHotDense` (named `hidden_0`) → relu → `tower` (hidden layers `hidden_1 …`, then
  `output`): one model, one logit per review;
- `FusedMLP`: every variant's first layer as the columns of one `MultiHotDense` kernel (4 next
  to 512, no padding: one gather of a review's kernel rows and one scatter-add of their gradients
  serve every variant), then, per block of same-shape variants (`imdb_jax.models.layout`), the
  same `tower` lifted with `nn.vmap` over the block's variant axis (parameters on axis 0). A
  variant's numbers do not depend on which others are fused beside it.

Dropout is Keras' (after every hidden layer, inverted), with an explicit key per variant and step
so that a variant's masks are its own (`column_dropout`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imdb_jax.models.inputs import MultiHot, SparseMultiHot
from imdb_jax.models.layers import Dense, Logit, MultiHotDense, column_dropout
from imdb_jax.models.layout import Layout


def tower(h: jax.Array, hidden_units: tuple[int, ...], rate: Any = None, key: jax.Array | None = None) -> jax.Array:
    """A variant's layers after the first, called inside a compact Flax method.

    Args:
      h: float32[batch, hidden_units[0]], the first layer after its relu.
      hidden_units: the variant's widths.
      rate: dropout rate (a scalar), used when `key` is given.
      key: None (no dropout) or this step's PRNG key.

    Returns:
      float32[batch] logits.
    """
    if key is not None:
        h = column_dropout(h, rate, key, 0)
    for index, width in enumerate(hidden_units[1:], start=1):
        h = nn.relu(Dense(width, name=f"hidden_{index}")(h))
        if key is not None:
            h = column_dropout(h, rate, key, index)
    return Logit(name="output")(h)


class Tower(nn.Module):
    """`tower` as a module, so that `nn.vmap` can stack it over a block of variants."""

    hidden_units: tuple[int, ...]

    @nn.compact
    def __call__(self, h: jax.Array, rate: Any = None, key: jax.Array | None = None) -> jax.Array:
        return tower(h, self.hidden_units, rate, key)


class MLP(nn.Module):
    """Dense(relu) × len(hidden_units) → Dense(1): one sentiment logit per review.

    Layers are named `hidden_0 … hidden_{n-1}` and `output`, so a parameter's path says where
    it sits.

    Attributes:
      num_words: input width.
      hidden_units: width of each hidden layer.
    """

    num_words: int
    hidden_units: tuple[int, ...]

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array | SparseMultiHot | MultiHot,
        *,
        dropout_rate: jax.Array | float = 0.0,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Logits of a batch.

        Args:
          inputs: float32[batch, num_words] multi-hot rows, or the same as `SparseMultiHot` or
            `MultiHot`.
          dropout_rate: dropout after each hidden layer; applied only when `dropout_rng` is given.
          dropout_rng: PRNG key for dropout (training); None means inference.

        Returns:
          float32[batch] logits.
        """
        first = MultiHotDense(self.hidden_units[0], self.num_words, name="hidden_0")(inputs)
        return tower(nn.relu(first), self.hidden_units, dropout_rate, dropout_rng)


class FusedMLP(nn.Module):
    """Every variant of a layout as one model.

    Parameters: {"first": {"kernel": [num_words, width], "bias": [width]}, "block_<b>":
    {"hidden_1": {"kernel": [size, in, out], "bias": [size, out]}, ..., "output": {"kernel":
    [size, units, 1], "bias": [size, 1]}}}: block `b`'s member `m` owns first-layer columns
    `offset + m * units[0] …` and index `m` of its block's leaves.

    Attributes:
      layout: the static arrangement of the variants.
    """

    layout: Layout

    @nn.compact
    def __call__(self, inputs: MultiHot | SparseMultiHot | jax.Array, dropout: tuple[Any, Any] | None = None):
        """float32[slots, batch] logits of every variant.

        Args:
          inputs: the batch (`MultiHot`, as `imdb_jax.train.device_data.gather_batch` cuts it).
          dropout: None (inference) or (rates float32[slots], this step's keys [slots]).
        """
        layout = self.layout
        hidden = nn.relu(MultiHotDense(layout.width, layout.num_words, name="first")(inputs))
        batch_size = hidden.shape[0]
        logits = []
        for index, block in enumerate(layout.blocks):
            width = block.hidden_units[0]
            h = hidden[:, block.offset : block.offset + block.columns].reshape(batch_size, block.size, width)
            h = jnp.swapaxes(h, 0, 1)  # [size, batch, width]: the variant axis leads from here on
            rates = keys = None
            if dropout is not None and block.dropout:
                members = slice(block.start, block.start + block.size)
                rates, keys = dropout[0][members], dropout[1][members]
            towers = nn.vmap(
                Tower,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, 0, 0),  # pyright: ignore[reportArgumentType]
                axis_size=block.size,
            )
            logits.append(towers(block.hidden_units, name=f"block_{index}")(h, rates, keys))
        return jnp.concatenate(logits, axis=0)


def param_count(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
