"""CSR reviews kept on the device, and the batches cut from them inside compiled code.

A split travels to the device once, as CSR arrays and labels, split by column into a *head* —
the `dense_words` most frequent words, which appear in a large share of reviews — and a *tail* of
rarer words. Each batch is a row list (int32[batch], `num_rows` marking padding rows);
`gather_batch` turns the head into a float32[batch, dense_words] multi-hot matrix (cheap to
multiply: matmul speed) and the tail into flat (row, word) pairs of a fixed capacity
(`SparseMultiHot`, an embedding bag: cheap for rare words), on the device, so no Python runs per
step. `dense_words` = 0 is the all-sparse path, `num_words` the classic densify-every-batch path.
The last, shorter batch is padded with weight-0 rows, so every batch has one shape and one
compilation.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from flax import struct

from imdb_jax.data.csr import as_xy, bucket, checked_csr, checked_labels, is_binary
from imdb_jax.errors import ImdbJaxError
from imdb_jax.models import bag_kernel
from imdb_jax.models.inputs import MultiHot, SparseMultiHot
from imdb_jax.train.programs import stored_jit

CAPACITY_QUANTUM = 1024  # non-zeros per batch are padded up to a multiple of this
# Random batches' capacity is a guess from the split's mean and spread, rounded coarser, so that
# splits of about the same words (cross-validation folds) guess the same and share a program.
SHUFFLED_QUANTUM = 4096


@struct.dataclass
class CSRPart:
    """Some columns of a CSR matrix on the device.

    Attributes:
      indptr: int32[num_rows + 1] row pointers.
      indices: int32[nnz] column indices (absolute, sorted within each row).
      lengths: int32[num_rows + 1] non-zeros per row, with a trailing 0 for the padding row.
      values: None when every value is 1 (multi-hot), else float32[nnz] the CSR values.
    """

    indptr: jax.Array
    indices: jax.Array
    lengths: jax.Array
    values: jax.Array | None = None


@struct.dataclass
class DeviceReviews:
    """One split on the device.

    Attributes:
      head: the columns below `dense_words`.
      tail: the columns from `dense_words` on.
      labels: float32[num_rows] 0/1 (zeros when the split is unlabelled).
      real_rows: int32 scalar: rows `>= real_rows` are padding added to reach a bucketed size
        (see `to_device(bucket=True)`), which count for nothing.
      num_words: static vocabulary size.
      dense_words: static number of leading (most frequent) columns handled densely.
    """

    head: CSRPart
    tail: CSRPart
    labels: jax.Array
    real_rows: jax.Array
    num_words: int = struct.field(pytree_node=False)
    dense_words: int = struct.field(pytree_node=False)

    @property
    def num_rows(self) -> int:
        """Rows including bucket padding (static); `num_rows` itself marks a padding row."""
        return self.labels.shape[0]

    @property
    def nonzeros(self) -> int:
        return self.head.indices.shape[0] + self.tail.indices.shape[0]


def _part(x: sp.csr_matrix, rows: int, nonzeros: int, binary: bool) -> CSRPart:
    indptr = np.full(rows + 1, x.indptr[-1], np.int32)
    indptr[: x.shape[0] + 1] = x.indptr  # pyright: ignore[reportOptionalSubscript]
    indices = np.zeros(nonzeros, np.int32)
    indices[: x.indices.size] = x.indices
    lengths = np.append(np.diff(indptr), 0).astype(np.int32)
    values = None
    if not binary:
        values = np.zeros(nonzeros, np.float32)
        values[: x.data.size] = x.data
        values = jax.device_put(values)
    # jax.device_put, not jnp.asarray: the latter compiles a small copy program per shape, each
    # traced and looked up again on a warm start.
    return CSRPart(jax.device_put(indptr), jax.device_put(indices), jax.device_put(lengths), values)


def to_device(split: Any, dense_words: int = 0, *, bucket_sizes: int = 0) -> DeviceReviews:
    """Copies a split's CSR arrays to the default device (never densified).

    Args:
      split: a `Split`, an `(x, y)` pair or a CSR matrix of multi-hot rows.
      dense_words: columns `[0, dense_words)` become the dense head of each batch.
      bucket_sizes: a batch size, to pad the arrays (with empty, weight-0 rows) to a bucketed
        number of such batches and of non-zeros, so that inputs of many sizes compile a few
        programs rather than one per size (1 buckets the rows themselves); 0 keeps the exact
        sizes.
    """
    x, y = as_xy(split)
    x = checked_csr(x)
    num_words = int(x.shape[1])  # pyright: ignore[reportOptionalSubscript]
    dense_words = int(min(max(dense_words, 0), num_words))
    if y is None:
        labels = np.zeros(x.shape[0], np.float32)  # pyright: ignore[reportOptionalSubscript]
    else:
        labels = checked_labels(y, x.shape[0])  # pyright: ignore[reportOptionalSubscript]
    rows = bucket(math.ceil(x.shape[0] / bucket_sizes)) * bucket_sizes if bucket_sizes else x.shape[0]  # pyright: ignore[reportOptionalSubscript]
    binary = is_binary(x)
    parts = []
    for part in _split_columns(x, dense_words):
        nonzeros = bucket(max(part.nnz, CAPACITY_QUANTUM)) if bucket_sizes else part.nnz
        parts.append(_part(part, rows, nonzeros, binary))
    padded_labels = np.zeros(rows, np.float32)
    padded_labels[: labels.size] = labels
    return DeviceReviews(
        *parts,
        labels=jax.device_put(padded_labels),
        real_rows=jax.device_put(np.int32(x.shape[0])),  # pyright: ignore[reportOptionalSubscript]
        num_words=num_words,
        dense_words=dense_words,
    )


def _split_columns(x: sp.csr_matrix, dense_words: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The columns below `dense_words` and those from it on, as two CSR matrices of `x`'s shape
    (`x` itself, uncopied, where one side is empty)."""
    if dense_words == 0 or dense_words >= x.shape[1]:  # pyright: ignore[reportOptionalSubscript]
        empty = sp.csr_matrix(x.shape, dtype=x.dtype)
        return (empty, x) if dense_words == 0 else (x, empty)
    in_head = x.indices < dense_words
    return tuple(  # pyright: ignore[reportReturnType]
        sp.csr_matrix((x.data[keep], x.indices[keep], _part_indptr(x, keep)), shape=x.shape)
        for keep in (in_head, ~in_head)
    )


def _part_indptr(x: sp.csr_matrix, keep: np.ndarray) -> np.ndarray:
    """Row pointers of the non-zeros of `x` selected by the bool mask `keep`."""
    kept_before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
    return kept_before[x.indptr]


def epoch_rows(num_rows: int, batch_size: int, key: jax.Array | None = None, epoch: int | None = None) -> jax.Array:
    """int32[num_batches, batch_size] row indices of one epoch, padded with `num_rows`.

    Args:
      num_rows: rows in the split.
      batch_size: rows per batch.
      key: PRNG key to shuffle with, or None for the split's own order.
      epoch: if given, the rows are shuffled with `jax.random.fold_in(key, epoch)` (folded in
        the same compiled program).
    """
    if key is None:
        num_batches = math.ceil(num_rows / batch_size)
        padded = np.full(num_batches * batch_size, num_rows, np.int32)
        padded[:num_rows] = np.arange(num_rows, dtype=np.int32)
        return jax.device_put(padded.reshape(num_batches, batch_size))
    if epoch is not None:
        return _epoch_shuffled_rows(key, epoch, num_rows=num_rows, batch_size=batch_size)
    return _shuffled_rows(key, num_rows=num_rows, batch_size=batch_size)


@stored_jit(static_argnames=("num_rows", "batch_size"))
def _epoch_shuffled_rows(key: jax.Array, epoch: int, *, num_rows: int, batch_size: int) -> jax.Array:
    return _shuffled_rows(jax.random.fold_in(key, epoch), num_rows=num_rows, batch_size=batch_size)


@stored_jit(static_argnames=("num_rows", "batch_size"))
def _shuffled_rows(key: jax.Array, *, num_rows: int, batch_size: int) -> jax.Array:
    # One small compiled program per split size (eager ops would each be a program of their own).
    order = bag_kernel.permutation(key, num_rows)  # jax.random.permutation's numbers
    num_batches = math.ceil(num_rows / batch_size)
    padded = jnp.full((num_batches * batch_size,), num_rows, jnp.int32).at[:num_rows].set(order)
    return padded.reshape(num_batches, batch_size)


@stored_jit
def max_batch_nonzeros(data: DeviceReviews, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The largest number of head and tail non-zeros in any batch of `rows`."""
    return tuple(jnp.max(jnp.sum(part.lengths[rows], axis=1)) for part in (data.head, data.tail))  # pyright: ignore[reportReturnType]


def round_capacity(nonzeros: int, quantum: int = CAPACITY_QUANTUM) -> int:
    return max(quantum, math.ceil(nonzeros / quantum) * quantum)


def exact_capacity(data: DeviceReviews, rows: jax.Array) -> tuple[int, int]:
    """Capacities for batches in a fixed order, bucketed so that similar inputs share them."""
    return tuple(  # pyright: ignore[reportReturnType]
        bucket(round_capacity(int(count)) // CAPACITY_QUANTUM) * CAPACITY_QUANTUM
        for count in max_batch_nonzeros(data, rows)
    )


def shuffled_capacity(data: DeviceReviews, batch_size: int, reviews: int | None = None) -> tuple[int, int]:
    """Capacities that random batches of the first `reviews` rows (default: all but the
    padding row) exceed only with negligible probability (mean + 6 sd).

    The training loop checks each epoch's real maxima and grows a capacity (one recompilation)
    if it is ever exceeded, so results never depend on this guess.
    """
    reviews = data.num_rows if reviews is None else reviews
    capacities = []
    for part in (data.head, data.tail):
        lengths = np.asarray(part.lengths, np.float64)[:reviews]  # sliced on the host: no device program
        rows = min(batch_size, lengths.size)
        spread = 6.0 * lengths.std() * math.sqrt(rows)
        capacities.append(round_capacity(int(lengths.mean() * rows + spread) + 1, SHUFFLED_QUANTUM))
    return tuple(capacities)


def _pairs(part: CSRPart, rows: jax.Array, real_rows: jax.Array, capacity: int):
    """Flat (word, row-in-batch, value) triples of `rows`; unused slots get row `batch_size`
    (and value 0); the values are None for multi-hot parts."""
    batch_size = rows.shape[0]
    if bag_kernel.in_use():  # the same integers in one pass of our own (CPU)
        words, row_ids, positions = bag_kernel.batch_pairs(
            part.indptr, part.indices, part.lengths, rows, real_rows, capacity, part.values is not None
        )
        values = None
        if positions is not None and part.values is not None:
            used = row_ids < batch_size
            values = part.values[positions] if part.values.shape[0] else jnp.zeros((capacity,), jnp.float32)
            values = jnp.where(used, values, 0.0)
        return words, row_ids, values
    real = rows < real_rows
    safe_rows = jnp.where(real, rows, 0)
    lengths = part.lengths[rows]  # 0 for padding rows
    ends = jnp.cumsum(lengths)
    starts = ends - lengths
    # Slot p belongs to the last row whose start is <= p: count the starts at or before p.
    marks = jnp.zeros((capacity,), jnp.int32).at[starts].add(1, mode="drop")
    slot_row = jnp.clip(jnp.cumsum(marks) - 1, 0, batch_size - 1)
    slots = jnp.arange(capacity, dtype=jnp.int32)
    used = slots < ends[-1]
    source = part.indptr[safe_rows] - starts  # CSR position of a row's first word, minus its slot
    positions = jnp.clip(source[slot_row] + slots, 0, max(part.indices.shape[0] - 1, 0))
    words = part.indices[positions] if part.indices.shape[0] else jnp.zeros((capacity,), jnp.int32)
    values = None
    if part.values is not None:
        values = part.values[positions] if part.values.shape[0] else jnp.zeros((capacity,), jnp.float32)
        values = jnp.where(used, values, 0.0)
    return jnp.where(used, words, 0), jnp.where(used, slot_row, batch_size), values


def gather_batch(data: DeviceReviews, rows: jax.Array, capacity: tuple[int, int]) -> dict[str, Any]:
    """Cuts one batch out of the device CSR arrays.

    Args:
      data: the split on the device.
      rows: int32[batch] row indices; `data.num_rows` marks a padding row (weight 0), as do
        rows from `data.real_rows` on.
      capacity: static (head, tail) numbers of (row, word) slots, each >= the batch's non-zeros
        in that part.

    Returns:
      {"inputs": MultiHot, "labels": float32[batch], "weights": float32[batch]}.
    """
    batch_size = rows.shape[0]
    real = rows < data.real_rows
    head = tail = None
    if data.dense_words:
        words, row_ids, values = _pairs(data.head, rows, data.real_rows, capacity[0])
        values = 1.0 if values is None else values
        head = jnp.zeros((batch_size, data.dense_words), jnp.float32).at[row_ids, words].add(values, mode="drop")
    if data.dense_words < data.num_words:
        words, row_ids, values = _pairs(data.tail, rows, data.real_rows, capacity[1])
        tail = SparseMultiHot(word_ids=words, row_ids=row_ids, batch_size=batch_size, values=values)
    safe_rows = jnp.where(real, rows, 0)
    return {
        "inputs": MultiHot(head=head, tail=tail),
        "labels": jnp.where(real, data.labels[safe_rows], 0.0),
        "weights": real.astype(jnp.float32),
    }


def make_batch(
    x: Any, labels: Any, weights: Any = None, *, batch_size: int | None = None, capacity: int | None = None
) -> dict[str, Any]:
    """One batch for `train_step`, `eval_step`, `fused_train_step` and `fused_eval_step`, from
    CSR rows on the host (one row per review).

    The batch is all sparse (`MultiHot(head=None, tail=SparseMultiHot(...))`, the default first
    layer's path). A compiled step compiles once per batch shape: pass `batch_size` (rows,
    padded with weight-0 rows) and `capacity` (non-zeros, padded with entries that count for
    nothing) to give every batch of a loop one shape.

    Args:
      x: a SciPy sparse matrix [rows, num_words] of finite values (multi-hot or weighted).
      labels: [rows] 0/1 labels.
      weights: optional [rows] per-review weights (default: ones).
      batch_size: rows of the batch, >= rows (default: rows).
      capacity: (row, word) slots of the batch, >= the rows' non-zeros (default: exactly those).

    Returns:
      {"inputs": MultiHot, "labels": float32[batch_size], "weights": float32[batch_size]}.
    """
    x = checked_csr(x)
    rows, nonzeros = int(np.diff(x.indptr).size), int(x.nnz)
    labels = checked_labels(labels, rows)
    weights = np.ones(rows, np.float32) if weights is None else np.asarray(weights, np.float32).reshape(-1)
    if weights.shape[0] != rows or not np.all(np.isfinite(weights)):
        raise ImdbJaxError(f"weights must be {rows} finite numbers, one per row, got shape {weights.shape}")
    batch_size = rows if batch_size is None else int(batch_size)
    capacity = nonzeros if capacity is None else int(capacity)
    if batch_size < rows or capacity < nonzeros:
        raise ImdbJaxError(
            f"{rows} rows with {nonzeros} non-zeros do not fit batch_size={batch_size}, capacity={capacity}"
        )
    word_ids = np.zeros(capacity, np.int32)
    word_ids[:nonzeros] = x.indices
    row_ids = np.full(capacity, batch_size, np.int32)  # out of range: padding adds nothing
    row_ids[:nonzeros] = np.repeat(np.arange(rows, dtype=np.int32), np.diff(x.indptr))
    values = None
    if not is_binary(x):
        values = np.zeros(capacity, np.float32)
        values[:nonzeros] = x.data
        values = jnp.asarray(values)
    tail = SparseMultiHot(
        word_ids=jnp.asarray(word_ids), row_ids=jnp.asarray(row_ids), batch_size=batch_size, values=values
    )
    padded = [np.zeros(batch_size, np.float32) for _ in range(2)]
    padded[0][:rows], padded[1][:rows] = labels, weights
    return {
        "inputs": MultiHot(head=None, tail=tail),
        "labels": jnp.asarray(padded[0]),
        "weights": jnp.asarray(padded[1]),
    }
