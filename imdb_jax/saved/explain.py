"""Why a review got its score: the words or n-grams that moved it most (gradient × input).

For a review with feature values ``x`` (its CSR row) and a model's logit ``z(x)``, the
contribution of the term in column ``j`` is ``x_j * dz/dx_j``: one ``jax.grad`` of the summed
logits of a batch with respect to the values of its non-zeros, through the model's own sparse
first layer (the review's terms only; nothing is densified). Positive contributions push the
review towards "positive", negative ones towards "negative". For a model whose first layer were
linear this is exactly each term's share of the logit; through the ReLU layers it is the
first-order share at this review.

For an ensemble the score is the logit of the averaged probability ``p = sum_m w_m p_m``; its
gradient with respect to member ``m``'s inputs is ``w_m p_m (1 - p_m) / (p (1 - p)) * dz_m/dx``,
and a term's contributions through the members that know it are added (one model alone gives
exactly its own ``x_j * dz/dx_j``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from imdb_jax.data.csr import bucket, checked_csr
from imdb_jax.data.text import Text
from imdb_jax.models.inputs import SparseMultiHot
from imdb_jax.saved.ensemble import EnsembleModel
from imdb_jax.train.steps import TrainState, predict_logits

DEFAULT_TOP = 5
CHUNK_REVIEWS = 256  # reviews per compiled gradient call


@functools.partial(jax.jit, static_argnames=("batch_size",))
def logits_and_input_gradients(
    state: TrainState, word_ids: jax.Array, row_ids: jax.Array, values: jax.Array, *, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """Logits of a batch of sparse rows and their gradients with respect to the input values.

    Args:
      state: one trained model.
      word_ids: int32[capacity] column of each non-zero.
      row_ids: int32[capacity] row of each non-zero; ``batch_size`` marks padding (ignored).
      values: float32[capacity] the non-zeros' values (0 for padding).
      batch_size: rows in the batch (static).

    Returns:
      (float32[batch_size] logits, float32[capacity] d logit[row_ids[k]] / d values[k]).
    """

    def summed(values):
        logits = predict_logits(
            state, SparseMultiHot(word_ids=word_ids, row_ids=row_ids, batch_size=batch_size, values=values)
        )
        return jnp.sum(logits), logits  # rows are independent: the sum's gradient is each row's own

    gradients, logits = jax.grad(summed, has_aux=True)(values)
    return logits, gradients


def input_gradients(state: TrainState, x: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(float32[reviews] logits, float32[nnz] d logit / d value of each non-zero of ``x``, in
    ``x.data``'s order), computed ``CHUNK_REVIEWS`` reviews at a time with bucketed shapes."""
    x = checked_csr(x)
    logits = np.zeros(x.shape[0], np.float32)  # pyright: ignore[reportOptionalSubscript]
    gradients = np.zeros(x.nnz, np.float32)
    for start in range(0, x.shape[0], CHUNK_REVIEWS):  # pyright: ignore[reportOptionalSubscript]
        stop = min(start + CHUNK_REVIEWS, x.shape[0])  # pyright: ignore[reportOptionalSubscript]
        chunk = x[start:stop]
        rows = bucket(stop - start)
        capacity = bucket(max(chunk.nnz, 1))
        word_ids = np.zeros(capacity, np.int32)
        row_ids = np.full(capacity, rows, np.int32)
        values = np.zeros(capacity, np.float32)
        word_ids[: chunk.nnz] = chunk.indices
        row_ids[: chunk.nnz] = np.repeat(np.arange(stop - start, dtype=np.int32), np.diff(chunk.indptr))
        values[: chunk.nnz] = chunk.data
        chunk_logits, chunk_gradients = logits_and_input_gradients(state, word_ids, row_ids, values, batch_size=rows)
        logits[start:stop] = np.asarray(chunk_logits)[: stop - start]
        gradients[x.indptr[start] : x.indptr[stop]] = np.asarray(chunk_gradients)[: chunk.nnz]
    return logits, gradients


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def explain_rows(model: Any, rows: Any, *, top: int = DEFAULT_TOP) -> list[list[dict[str, Any]]]:
    """The terms that moved each review's score most.

    Args:
      model: a ``SavedModel`` or an ``EnsembleModel`` (``imdb_jax.saved.loading.load_model``).
      rows: the reviews as ``model.vectorize`` makes them.
      top: terms to keep per review, largest ``|contribution|`` first.

    Returns:
      Per review, up to ``top`` entries {"term", "contribution"}, ``contribution`` in logits
      (positive: towards "positive"); ties in size go alphabetically. Empty for a review with no
      known term.
    """
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    if rows.shape[0] == 0:
        return []
    if isinstance(model, EnsembleModel):
        parts = []
        members = []
        for member, index in zip(model.members, rows.member_matrix):
            logits, gradients = input_gradients(member.state, rows.matrices[index])
            members.append((member, rows.matrices[index], logits, gradients))
        probabilities = np.stack([_sigmoid(logits) for _, _, logits, _ in members])
        mean = model.weights @ probabilities
        slope = np.maximum(mean * (1.0 - mean), np.finfo(np.float64).tiny)
        for weight, (member, x, _, gradients), p in zip(model.weights, members, probabilities):
            factor = weight * p * (1.0 - p) / slope  # d logit(mean) / d logit_m, per review
            parts.append(
                (
                    member.vocabulary.words,
                    x,
                    gradients.astype(np.float64) * x.data * np.repeat(factor, np.diff(x.indptr)),
                )
            )
    else:
        x = checked_csr(rows)
        _, gradients = input_gradients(model.state, x)
        parts = [(model.vocabulary.words, x, gradients.astype(np.float64) * x.data)]
    return [_top_terms(parts, row, top) for row in range(parts[0][1].shape[0])]  # pyright: ignore[reportOptionalSubscript]


def _top_terms(parts: list[tuple[Any, sp.csr_matrix, np.ndarray]], row: int, top: int) -> list[dict[str, Any]]:
    totals: dict[str, float] = {}
    for terms, x, contributions in parts:
        for column, contribution in zip(
            x.indices[x.indptr[row] : x.indptr[row + 1]], contributions[x.indptr[row] : x.indptr[row + 1]]
        ):
            term = terms[column]
            totals[term] = totals.get(term, 0.0) + float(contribution)
    ranked = sorted(totals.items(), key=lambda item: (-abs(item[1]), item[0]))
    moved = [(term, value) for term, value in ranked if value != 0.0 and math.isfinite(value)]  # 0: a unit that was off
    return [{"term": term, "contribution": value} for term, value in moved[:top]]


def explain_texts(model: Any, texts: Iterable[Text] | Text, *, top: int = DEFAULT_TOP) -> list[list[dict[str, Any]]]:
    """``explain_rows`` of raw reviews, vectorised with the model's own features."""
    return explain_rows(model, model.vectorize(texts), top=top)
