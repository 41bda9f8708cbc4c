"""A batch of multi-hot rows as the models take it: a dense head and a sparse tail."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


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
