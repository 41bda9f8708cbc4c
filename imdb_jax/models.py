"""Multi-hot vectors become logits: the Flax MLP and its sparse-or-dense first layer.

Initialisation matches Keras `Dense`: glorot-uniform kernels and zero biases (Flax's own
`nn.Dense` default is lecun-normal, so the initialiser is set explicitly).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

glorot_uniform = nn.initializers.glorot_uniform()


@struct.dataclass
class SparseMultiHot:
    """A batch of sparse rows as flat (row, word, value) triples, padded to a fixed capacity.

    Attributes:
      word_ids: int32[capacity] column (word) index of each non-zero.
      row_ids: int32[capacity] row of each non-zero within the batch; padding entries hold
        `batch_size`, which is out of range and therefore ignored.
      batch_size: static number of rows.
      values: None for multi-hot rows (every value 1), else float32[capacity], the CSR values
        (tf-idf, naive-Bayes weights, ...). A column repeated within a row counts with each
        of its values, as in `x.toarray()`.
    """

    word_ids: jax.Array
    row_ids: jax.Array
    batch_size: int = struct.field(pytree_node=False)
    values: jax.Array | None = None

    def todense(self, num_words: int) -> jax.Array:
        """float32[batch_size, num_words], duplicates summed (as `scipy`'s `toarray`)."""
        dense = jnp.zeros((self.batch_size, num_words), jnp.float32)
        values = 1.0 if self.values is None else self.values
        return dense.at[self.row_ids, self.word_ids].add(values, mode="drop")


@struct.dataclass
class MultiHot:
    """A batch of multi-hot rows split by column: a dense head and a sparse tail.

    Attributes:
      head: None, or float32[batch, dense_words]: the rows' first `dense_words` columns.
      tail: None, or `SparseMultiHot` holding the remaining columns (absolute word indices).
    """

    head: jax.Array | None
    tail: SparseMultiHot | None


class MultiHotDense(nn.Module):
    """First layer: `x @ kernel + bias` on multi-hot rows, computed densely, sparsely or both.

    - a dense float32[batch, num_words] input: a plain matmul;
    - `SparseMultiHot`: an embedding bag — the sum of the kernel rows of each review's words (a
      gather and a segment sum; its gradient a scatter-add), ~`num_words / words_per_review`
      times less arithmetic than the matmul;
    - `MultiHot`: a matmul for the frequent head columns (matmul speed) plus an embedding bag for
      the rare tail words (little work), the fastest mix on CPU.
    Every path shares the same `kernel[num_words, features]`, so a model trained one way runs
    any other, with the same results to float32 rounding.
    """

    features: int
    num_words: int

    @nn.compact
    def __call__(self, inputs: jax.Array | SparseMultiHot) -> jax.Array:
        kernel = self.param("kernel", glorot_uniform, (self.num_words, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        if isinstance(inputs, SparseMultiHot):
            inputs = MultiHot(head=None, tail=inputs)
        if not isinstance(inputs, MultiHot):
            return inputs @ kernel + bias
        summed = bias
        if inputs.head is not None:
            summed = summed + inputs.head @ kernel[: inputs.head.shape[-1]]
        if inputs.tail is not None:
            rows = jnp.take(kernel, inputs.tail.word_ids, axis=0)
            if inputs.tail.values is not None:
                rows = rows * inputs.tail.values[:, None]
            summed = summed + jax.ops.segment_sum(rows, inputs.tail.row_ids, num_segments=inputs.tail.batch_size)
        return summed


def column_dropout(x: jax.Array, rate: jax.Array | float, rng: jax.Array, layer: int) -> jax.Array:
    """Inverted dropout (Keras semantics: kept units scaled by `1 / (1 - rate)`, applied as an
    explicit reciprocal so XLA cannot rewrite the division differently from one program to the
    next) whose mask for unit `j` depends only on `(rng, layer, j)`: a variant's masks are the
    same whatever other variants or units train beside it.

    Args:
      x: float32[batch, units] activations.
      rate: fraction dropped, a Python float or a traced scalar (0 keeps `x` unchanged).
      rng: PRNG key for this step.
      layer: index of the hidden layer.
    """
    keep = 1.0 - rate
    layer_key = jax.random.fold_in(rng, layer)
    column_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(layer_key, jnp.arange(x.shape[-1]))
    uniform = jax.vmap(lambda key: jax.random.uniform(key, x.shape[:-1]))(column_keys)
    kept = jnp.moveaxis(uniform, 0, -1) < keep
    return jnp.where(kept, x * (1.0 / keep), 0.0)


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
