"""CSR reviews kept on the device, and the batches cut from them inside compiled code.

A split travels to the device once, as its CSR arrays (`indptr`, `indices`) and labels. Each
batch is a row list (int32[batch], `num_rows` marking padding rows); `gather_batch` turns it into
flat (row, word) pairs of a fixed capacity (`SparseMultiHot`) or, for the dense path, a
float32[batch, num_words] multi-hot matrix — on the device, so no Python runs per step. The last,
shorter batch is padded with weight-0 rows, so every batch has one shape and one compilation.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from flax import struct

from imdb_jax.errors import ImdbJaxError
from imdb_jax.models import SparseMultiHot

CAPACITY_QUANTUM = 1024  # non-zeros per batch are padded up to a multiple of this


@struct.dataclass
class DeviceReviews:
    """One split on the device.

    Attributes:
      indptr: int32[num_rows + 1] CSR row pointers.
      indices: int32[nnz] word indices (sorted within each row).
      lengths: int32[num_rows + 1] words per row, with a trailing 0 for the padding row.
      labels: float32[num_rows] 0/1 (zeros when the split is unlabelled).
      num_words: static vocabulary size.
    """

    indptr: jax.Array
    indices: jax.Array
    lengths: jax.Array
    labels: jax.Array
    num_words: int = struct.field(pytree_node=False)

    @property
    def num_rows(self) -> int:
        return self.labels.shape[0]


def as_xy(split: Any) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """Accepts a `Split` (anything with `.x` and `.y`), an `(x, y)` pair, or a bare matrix."""
    if hasattr(split, "x"):
        return split.x, getattr(split, "y", None)
    if isinstance(split, tuple):
        x, y = split
        return x, y
    return split, None


def to_device(split: Any) -> DeviceReviews:
    """Copies a split's CSR arrays to the default device (never densified).

    Args:
      split: a `Split`, an `(x, y)` pair or a CSR matrix of multi-hot rows.
    """
    x, y = as_xy(split)
    if not sp.issparse(x):
        raise ImdbJaxError(f"expected a scipy.sparse CSR matrix of multi-hot rows, got {type(x).__name__}")
    x = sp.csr_matrix(x)
    if x.shape[0] == 0:
        raise ImdbJaxError("the split has no reviews")
    if y is None:
        labels = np.zeros(x.shape[0], np.float32)
    else:
        labels = np.asarray(y, np.float32).reshape(-1)
        if labels.shape[0] != x.shape[0]:
            raise ImdbJaxError(f"{x.shape[0]} reviews but {labels.shape[0]} labels")
    lengths = np.append(np.diff(x.indptr), 0).astype(np.int32)
    return DeviceReviews(
        indptr=jnp.asarray(x.indptr, jnp.int32),
        indices=jnp.asarray(x.indices, jnp.int32),
        lengths=jnp.asarray(lengths),
        labels=jnp.asarray(labels),
        num_words=int(x.shape[1]),
    )


def epoch_rows(num_rows: int, batch_size: int, key: jax.Array | None = None) -> jax.Array:
    """int32[num_batches, batch_size] row indices of one epoch, padded with `num_rows`.

    Args:
      num_rows: rows in the split.
      batch_size: rows per batch.
      key: PRNG key to shuffle with, or None for the split's own order.
    """
    order = jnp.arange(num_rows, dtype=jnp.int32) if key is None else jax.random.permutation(key, num_rows).astype(jnp.int32)
    num_batches = math.ceil(num_rows / batch_size)
    padded = jnp.full((num_batches * batch_size,), num_rows, jnp.int32).at[:num_rows].set(order)
    return padded.reshape(num_batches, batch_size)


@jax.jit
def max_batch_nonzeros(lengths: jax.Array, rows: jax.Array) -> jax.Array:
    """The largest number of non-zeros in any batch of `rows` (int32[num_batches, batch])."""
    return jnp.max(jnp.sum(lengths[rows], axis=1))


def round_capacity(nonzeros: int) -> int:
    return max(CAPACITY_QUANTUM, math.ceil(nonzeros / CAPACITY_QUANTUM) * CAPACITY_QUANTUM)


def shuffled_capacity(data: DeviceReviews, batch_size: int) -> int:
    """A capacity that random batches exceed only with negligible probability (mean + 6 sd).

    The loop checks each epoch's real maximum and grows the capacity (one recompilation) if it
    is ever exceeded, so results never depend on this guess.
    """
    lengths = np.asarray(data.lengths[:-1], np.float64)
    rows = min(batch_size, lengths.size)
    spread = 6.0 * lengths.std() * math.sqrt(rows)
    return round_capacity(int(lengths.mean() * rows + spread) + 1)


def gather_batch(data: DeviceReviews, rows: jax.Array, capacity: int, dense: bool) -> dict[str, Any]:
    """Cuts one batch out of the device CSR arrays.

    Args:
      data: the split on the device.
      rows: int32[batch] row indices; `data.num_rows` marks a padding row (weight 0).
      capacity: static number of (row, word) slots; must be >= the batch's non-zeros.
      dense: build float32[batch, num_words] inputs instead of `SparseMultiHot`.

    Returns:
      {"inputs", "labels": float32[batch], "weights": float32[batch]}.
    """
    batch_size = rows.shape[0]
    real = rows < data.num_rows
    safe_rows = jnp.where(real, rows, 0)
    lengths = data.lengths[rows]  # 0 for padding rows
    ends = jnp.cumsum(lengths)
    starts = ends - lengths
    # Slot p belongs to the last row whose start is <= p: count the starts at or before p.
    marks = jnp.zeros((capacity,), jnp.int32).at[starts].add(1, mode="drop")
    slot_row = jnp.clip(jnp.cumsum(marks) - 1, 0, batch_size - 1)
    slots = jnp.arange(capacity, dtype=jnp.int32)
    used = slots < ends[-1]
    source = data.indptr[safe_rows] - starts  # CSR position of a row's first word, minus its slot
    positions = jnp.clip(source[slot_row] + slots, 0, data.indices.shape[0] - 1)
    inputs = SparseMultiHot(
        word_ids=jnp.where(used, data.indices[positions], 0),
        row_ids=jnp.where(used, slot_row, batch_size),
        batch_size=batch_size,
    )
    if dense:
        inputs = inputs.todense(data.num_words)
    return {
        "inputs": inputs,
        "labels": jnp.where(real, data.labels[safe_rows], 0.0),
        "weights": real.astype(jnp.float32),
    }
