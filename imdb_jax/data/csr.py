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
    if x.data.size and x.data.dtype != np.float32:
        # Training casts to float32: a float64 value beyond its range would become infinity there.
        with np.errstate(over="ignore"):
            too_large = ~np.isfinite(x.data.astype(np.float32))
        if np.any(too_large):
            raise ImdbJaxError(
                f"the matrix holds values beyond float32's range (largest magnitude {np.max(np.abs(x.data)):.3g}); "
                "the models compute in float32: scale the features"
            )
    return x


def checked_labels(y: Any, rows: int, what: str = "labels") -> np.ndarray:
    """float32[rows] `y`, every value exactly 0 or 1.

    Raises:
      ImdbJaxError: a count other than `rows`, or a value that is not 0 or 1 (NaN, 2, -1, 0.5),
        named with its row, before any training (the loss would otherwise be garbage and the
        run reported as diverged).
    """
    labels = np.asarray(y, dtype=np.float64).reshape(-1)
    if labels.shape[0] != rows:
        raise ImdbJaxError(f"{rows} reviews but {labels.shape[0]} {what}")
    wrong = np.flatnonzero((labels != 0.0) & (labels != 1.0))
    if wrong.size:
        row = int(wrong[0])
        raise ImdbJaxError(f"{what} must be 0 or 1; row {row} holds {float(labels[row])!r} ({wrong.size} such rows)")
    return labels.astype(np.float32)


def _dims(x: Any) -> tuple[int, int]:
    """(rows, columns) of a matrix (SciPy's stubs type `shape` loosely)."""
    rows, columns = x.shape
    return int(rows), int(columns)


def check_columns(x: Any, num_words: int, what: str = "the model") -> None:
    """Refuses a matrix whose column count is not `num_words` (features other than the model's)."""
    columns = int(x.shape[1])
    if columns != num_words:
        raise ImdbJaxError(
            f"the data has {columns} feature columns but {what} trained on {num_words}: "
            "vectorise the reviews with the model's own features"
        )


def check_checkpointable(split: Any, what: str) -> None:
    """`checkpoint_dir` fingerprints the CSR arrays themselves: refuse any other input."""
    x = as_xy(split)[0]
    if not (sp.issparse(x) and x.format == "csr"):
        raise ImdbJaxError(
            f"checkpoint_dir needs {what} as a SciPy CSR matrix, got {type(x).__name__}: convert it with .tocsr()"
        )


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


def check_training_inputs(train: Any, validation: Any = None, *, checkpoint: bool = False) -> None:
    """What `fit` and `fit_variants` check before any work: CSR rows of finite float32 values,
    0/1 labels (each split named), the same columns in both splits, and CSR matrices when the
    run is checkpointed."""
    splits = [("train", train)] + ([] if validation is None else [("validation", validation)])
    for name, split in splits:
        if checkpoint:
            check_checkpointable(split, f"the {name} data")
        x, y = as_xy(split)
        x = checked_csr(x)
        if y is None:
            raise ImdbJaxError(f"the {name} data has no labels: pass a Split or an (x, y) pair")
        checked_labels(y, _dims(x)[0], f"{name} labels")
    if validation is not None:
        columns = [_dims(as_xy(split)[0])[1] for _, split in splits]
        if columns[0] != columns[1]:
            raise ImdbJaxError(f"train has {columns[0]} word columns but validation has {columns[1]}")
