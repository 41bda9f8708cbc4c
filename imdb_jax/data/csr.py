"""CSR matrices as the package takes them: checked, split into (x, y), bucketed sizes (NumPy and SciPy only)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from imdb_jax.errors import ImdbJaxError


def as_xy(split: Any) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """Accepts a `Split` (anything with `.x` and `.y`), an `(x, y)` pair, or a bare matrix."""
    if hasattr(split, "x"):
        return split.x, getattr(split, "y", None)
    if isinstance(split, tuple):
        x, y = split
        return x, y
    return split, None


def checked_csr(x: Any) -> sp.csr_matrix:
    """`x` as a CSR matrix with sorted indices.

    Accepts any SciPy sparse matrix of finite float values: multi-hot rows (all ones, the fast
    path), or weighted features (tf-idf, naive-Bayes ratios). A column repeated within a row
    is kept and counts with each of its values, as in `x.toarray()`. Rejects dense arrays,
    empty matrices and non-finite values.
    """
    if not sp.issparse(x):
        raise ImdbJaxError(f"expected a scipy.sparse CSR matrix of multi-hot rows, got {type(x).__name__}")
    x = sp.csr_matrix(x)
    if x.shape[0] == 0:
        raise ImdbJaxError("the split has no reviews")
    if not x.has_sorted_indices:
        x = x.sorted_indices()
    if x.data.size and not np.all(np.isfinite(x.data)):
        raise ImdbJaxError("the matrix holds non-finite values (NaN or infinity)")
    return x


def is_binary(x: sp.csr_matrix) -> bool:
    """Every stored value is exactly 1 (multi-hot rows): the first layer then skips values."""
    return bool(np.all(x.data == 1.0))


def bucket(count: int) -> int:
    """`count` rounded up to one of 4, 5, 6, 7 times a power of two (at most 25% more), so that
    inputs of many sizes share a few compiled programs."""
    if count <= 4:
        return max(count, 1)
    step = 2 ** (count.bit_length() - 3)
    return -(-count // step) * step
