"""Multi-hot vectors become logits: the Flax MLP and its sparse-or-dense first layer.

Initialisation matches Keras `Dense`: glorot-uniform kernels and zero biases (Flax's own
`nn.Dense` default is lecun-normal, so the initialiser is set explicitly).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imdb_jax.models.inputs import MultiHot, SparseMultiHot
from imdb_jax.models.layers import (
    MultiHotDense,
    add_bias,
    bag_chunk,
    column_dropout,
    embedding_bag,
    glorot_uniform,
    output_logits,
)
from imdb_jax.models.layout import Block, Layout


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
        h = inputs
        for index, width in enumerate(self.hidden_units):
            if index == 0:
                layer_out = MultiHotDense(width, self.num_words, name="hidden_0")(h)
            else:
                layer_out = nn.Dense(width, kernel_init=glorot_uniform, name=f"hidden_{index}")(h)
            layer_out = nn.relu(layer_out)
            if dropout_rng is not None:
                layer_out = column_dropout(layer_out, dropout_rate, dropout_rng, index)
            h = layer_out
        return nn.Dense(1, kernel_init=glorot_uniform, name="output")(h)[..., 0]


def param_count(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))


def first_layer(params: Any, inputs: MultiHot, layout: Layout) -> jax.Array:
    """float32[batch, width]: every variant's first layer before its activation.

    The tail (sparse part) is an embedding bag (`embedding_bag`): each (row, word, value) triple
    adds `value * kernel[word]` to its row, in the batch's fixed order; its gradient is the
    matching scatter-add into the kernel's rows. The optional head is a matmul over the leading columns.
    """
    kernel = params["first"]["kernel"]
    batch_size = inputs.tail.batch_size if inputs.tail is not None else inputs.head.shape[0]
    summed = jnp.zeros((batch_size, layout.width), kernel.dtype)
    if inputs.tail is not None:
        tail = inputs.tail
        chunk = bag_chunk(tail.word_ids.shape[0])
        summed = summed + embedding_bag(kernel, tail.word_ids, tail.row_ids, tail.values, batch_size, chunk)
    if inputs.head is not None:
        summed = summed + inputs.head @ kernel[: inputs.head.shape[-1]]
    return add_bias(summed, params["first"]["bias"])


def _block_dropout(h, block: Block, rates, keys, layer: int):
    if not block.dropout:
        return h
    return jax.vmap(column_dropout, in_axes=(0, 0, 0, None))(h, rates, keys, layer)


def apply(params: Any, inputs: MultiHot, layout: Layout, dropout: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """float32[slots, batch] logits of every variant.

    Args:
      params: fused parameters (`init_params`).
      inputs: the batch (`MultiHot`, as `device_data.gather_batch` cuts it).
      layout: the static arrangement.
      dropout: None (inference) or (rates float32[slots], step keys [slots]) for training.
    """
    hidden = jax.nn.relu(first_layer(params, inputs, layout))
    batch_size = hidden.shape[0]
    logits = []
    for block, block_params in zip(layout.blocks, params["blocks"]):
        width = block.hidden_units[0]
        h = hidden[:, block.offset : block.offset + block.columns].reshape(batch_size, block.size, width)
        h = jnp.swapaxes(h, 0, 1)  # [size, batch, width]: the variant axis leads from here on
        members = slice(block.start, block.start + block.size)
        rates = keys = None
        if dropout is not None:
            rates, keys = dropout[0][members], dropout[1][members]
            h = _block_dropout(h, block, rates, keys, 0)
        for index, layer in enumerate(block_params["hidden"], start=1):
            h = jax.nn.relu(add_bias(jnp.einsum("nbi,nij->nbj", h, layer["kernel"]), layer["bias"]))
            if dropout is not None:
                h = _block_dropout(h, block, rates, keys, index)
        out = block_params["output"]
        logits.append(add_bias(output_logits(h, out["kernel"][..., 0])[..., None], out["bias"])[..., 0])
    return jnp.concatenate(logits, axis=0)
