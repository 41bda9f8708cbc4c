"""The reviews a benchmark trains on: the real IMDb data (cached, optionally sliced) or random
rows of the same shape and density."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import scipy.sparse as sp
from machine_info import REPO

SHARED_DATA = REPO.parent / "shared" / "tensorflow_datasets"


def default_data_dir() -> None:
    """Points TFDS at the shared prepared data when the caller has not chosen a folder."""
    if "TFDS_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
        os.environ["TFDS_DATA_DIR"] = str(SHARED_DATA)


def synthetic_split(num_rows: int, num_words: int, words_per_review: float = 129.0, seed: int = 0):
    """A `Split` of random multi-hot rows shaped like IMDb (Zipf-like word frequencies).

    Args:
      num_rows: reviews.
      num_words: columns.
      words_per_review: mean unique words per row (129 on the real training reviews).
      seed: NumPy seed.

    Returns:
      `imdb_jax.Split` with float32[num_rows, num_words] CSR x and float32[num_rows] y.
    """
    from imdb_jax import Split

    rng = np.random.default_rng(seed)
    # Draws repeat words (Zipf-like); 1.12x as many draws leaves about `words_per_review` unique.
    lengths = np.clip(rng.poisson(words_per_review * 1.12, num_rows), 1, None)
    weights = 1.0 / np.arange(10, num_words + 10)
    row_ids = np.repeat(np.arange(num_rows), lengths)
    word_ids = rng.choice(num_words, size=int(lengths.sum()), p=weights / weights.sum())
    x = sp.csr_matrix((np.ones(len(word_ids), np.float32), (row_ids, word_ids)), shape=(num_rows, num_words))
    x.sum_duplicates()
    x.data[:] = 1.0
    y = rng.integers(0, 2, num_rows).astype(np.float32)
    return Split(x, y)


class Dataset:
    """The train and test splits a benchmark runs on, and where they came from.

    Attributes:
      train, test: `imdb_jax.Split`s.
      source: "imdb" (the real reviews, possibly sliced) or "synthetic".
      vocabulary: the real data's `Vocabulary` (None for synthetic rows).
    """

    def __init__(self, train, test, source: str, vocabulary=None):
        self.train, self.test, self.source, self.vocabulary = train, test, source, vocabulary

    @property
    def num_words(self) -> int:
        return self.train.x.shape[1]

    def describe(self) -> dict[str, Any]:
        return {
            "data": self.source,
            "train_reviews": self.train.x.shape[0],
            "test_reviews": self.test.x.shape[0],
            "num_words": self.num_words,
            "words_per_review": round(self.train.x.nnz / self.train.x.shape[0], 2),
        }

    def split_validation(self, num_validation: int):
        """(train, validation): the FIRST `num_validation` training reviews held out (Keras study)."""
        from imdb_jax import Split

        x, y = self.train.x, self.train.y
        return Split(x[num_validation:], y[num_validation:]), Split(x[:num_validation], y[:num_validation])


def describe_split(split: Any, source: str) -> dict[str, Any]:
    """Rows, columns and density of one split (e.g. a study's training part)."""
    rows = split.x.shape[0]
    return {
        "data": source,
        "train_reviews": rows,
        "num_words": split.x.shape[1],
        "words_per_review": round(split.x.nnz / max(rows, 1), 2),
    }


def load_dataset(
    num_words: int = 10000, *, synthetic: bool = False, rows: int | None = None, words_per_review: float = 129.0
) -> Dataset:
    """The real IMDb data (`load_imdb`, cached) or a synthetic stand-in, optionally sliced.

    Args:
      num_words: vocabulary size.
      synthetic: random rows of IMDb's density instead of the real reviews (no data needed).
      rows: keep only the first `rows` reviews of each split (None keeps all 25,000).
      words_per_review: mean unique words per synthetic row.
    """
    if synthetic:
        count = rows or 25000
        train = synthetic_split(count, num_words, words_per_review, seed=0)
        return Dataset(train, synthetic_split(count, num_words, words_per_review, seed=1), "synthetic")
    default_data_dir()
    from imdb_jax import Split, load_imdb

    data = load_imdb(num_words=num_words, progress=False)
    train, test = data.train, data.test
    if rows is not None:
        train, test = Split(train.x[:rows], train.y[:rows]), Split(test.x[:rows], test.y[:rows])
    return Dataset(train, test, "imdb" if rows is None else f"imdb[:{rows}]", data.vocabulary)


def data_signature(dataset: Dataset) -> str:
    x = dataset.train.x
    return f"{dataset.source}:{x.shape[0]}x{x.shape[1]}:nnz={x.nnz}"


def cited_applies(dataset: Dataset) -> bool:
    """The cited reference figures are for all 25,000 real training reviews at 10,000 words."""
    return dataset.source == "imdb" and dataset.train.x.shape == (25000, 10000)
