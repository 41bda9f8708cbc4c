"""Host-side batches: dense float32 rows cut from a CSR matrix one batch at a time.

Only one batch is ever dense (512 × 10,000 float32 is 20 MB; the whole training matrix would be
1 GB), so the iterator streams over matrices of any size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp


def num_batches(num_rows: int, batch_size: int) -> int:
    """How many batches ``iterate_batches`` yields for ``num_rows`` rows (the last may be short)."""
    return -(-num_rows // batch_size)


def shuffled_order(num_rows: int, seed: Any) -> np.ndarray:
    """A permutation of ``range(num_rows)``, the same for the same seed.

    Args:
        num_rows: length of the permutation.
        seed: an ``int`` (seeds ``numpy.random.default_rng``), a ``numpy.random.Generator`` or a
            ``jax.random`` key.

    Returns:
        int64[num_rows] permutation.
    """
    if seed is None:
        raise ValueError(
            "shuffle=True needs a seed: pass seed=<int> or seed=<jax.random key> so the order is reproducible"
        )
    if isinstance(seed, bool):
        raise TypeError("seed must be an int or a jax.random key, not a bool")
    if isinstance(seed, (int, np.integer)):
        return np.random.default_rng(int(seed)).permutation(num_rows)
    if isinstance(seed, np.random.Generator):  # advances the caller's generator
        return seed.permutation(num_rows)
    import jax

    return np.asarray(jax.random.permutation(seed, num_rows), dtype=np.int64)


def iterate_batches(
    x: sp.spmatrix | sp.sparray | np.ndarray,
    y: np.ndarray | None = None,
    batch_size: int = 512,
    shuffle: bool = False,
    seed: Any = None,
) -> Iterator[tuple[np.ndarray, np.ndarray] | np.ndarray]:
    """Yields dense batches of rows, densifying one batch at a time.

    Args:
        x: [rows, num_words] CSR (or any scipy sparse, converted once to CSR) or dense rows.
        y: optional [rows] labels.
        batch_size: rows per batch; the last batch holds the remainder and is kept.
        shuffle: visit the rows in a permutation drawn from ``seed`` (required then).
        seed: ``int``, ``numpy.random.Generator`` or ``jax.random`` key; the same seed gives the
            same order.

    Yields:
        ``(x_batch, y_batch)`` with ``x_batch: float32[batch, num_words]`` and
        ``y_batch: float32[batch]``, or just ``x_batch`` when ``y`` is None.

    Raises:
        ValueError: shuffle without a seed, a non-positive batch size, or len(y) != rows.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if sp.issparse(x) and x.format != "csr":
        x = sp.csr_matrix(x)
    num_rows = x.shape[0]
    if y is not None:
        y = np.asarray(y, dtype=np.float32)
        if y.shape[0] != num_rows:
            raise ValueError(f"x has {num_rows} rows but y has {y.shape[0]} labels")
    order = shuffled_order(num_rows, seed) if shuffle else None
    return _batches(x, y, batch_size, order)


def _batches(x: Any, y: np.ndarray | None, batch_size: int, order: np.ndarray | None) -> Iterator:
    # A generator apart from iterate_batches, so bad arguments raise at the call, not at first next().
    for start in range(0, x.shape[0], batch_size):
        rows = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
        x_rows = x[rows]
        x_batch = x_rows.toarray() if sp.issparse(x_rows) else np.asarray(x_rows)
        x_batch = x_batch.astype(np.float32, copy=False)
        yield x_batch if y is None else (x_batch, y[rows])
