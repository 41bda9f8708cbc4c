"""The IMDb reviews as multi-hot matrices: ``load_imdb``, ``IMDbData`` and ``Split``.

``load_imdb`` finds the data (``imdb_jax.sources``), and either loads the matrices from the on-disk
cache (``imdb_jax.cache``) or tokenises the reviews (``imdb_jax.text``), fitting the vocabulary on
the training reviews only, and caches the result.

The cache file name carries a hash of everything that changes its content: the source's identity
(TFDS name/config/version and shard sizes, or the aclImdb path with every file's size and mtime,
or the archive's path, size and mtime), the tokeniser version, ``num_words`` and the cache format.
Column indices are stored as uint16 when ``num_words`` allows, so the full data set at 10,000
words takes about 13 MB.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from imdb_jax import cache, sources
from imdb_jax.errors import ImdbJaxError
from imdb_jax.text import TOKENIZER_VERSION, Text, Vocabulary


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """Labelled multi-hot reviews.

    Attributes:
        x: float32[reviews, num_words] CSR multi-hot rows (sorted unique indices, data all 1.0).
        y: float32[reviews] labels, 1.0 = positive, 0.0 = negative.
    """

    x: sp.csr_matrix
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.shape[0] != len(self.y):
            raise ValueError(f"Split has {self.x.shape[0]} rows but {len(self.y)} labels")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_words(self) -> int:
        """Width of ``x``: the vocabulary size."""
        return self.x.shape[1]


@dataclasses.dataclass(frozen=True, eq=False)
class IMDbData:
    """The vectorised IMDb data set and where it came from.

    Attributes:
        train: the 25,000 training reviews.
        test: the 25,000 test reviews.
        vocabulary: fitted on ``train`` only; column ``j`` is ``vocabulary.words[j]``.
        source: human-readable where-it-came-from string.
        cache_path: the cache file read or written, or None when caching was off or failed.
        from_cache: whether the matrices were read from ``cache_path``.
        load_seconds: wall time ``load_imdb`` took.
    """

    train: Split
    test: Split
    vocabulary: Vocabulary
    source: str
    cache_path: Path | None = None
    from_cache: bool = False
    load_seconds: float = 0.0

    @property
    def x_train(self) -> sp.csr_matrix:
        """float32[25000, num_words] CSR multi-hot training reviews."""
        return self.train.x

    @property
    def y_train(self) -> np.ndarray:
        """float32[25000] training labels (1.0 = positive)."""
        return self.train.y

    @property
    def x_test(self) -> sp.csr_matrix:
        """float32[25000, num_words] CSR multi-hot test reviews."""
        return self.test.x

    @property
    def y_test(self) -> np.ndarray:
        """float32[25000] test labels (1.0 = positive)."""
        return self.test.y

    @property
    def vocab(self) -> list[str]:
        """The vocabulary words, most frequent first; column ``j`` of x is ``vocab[j]``."""
        return list(self.vocabulary.words)

    @property
    def num_words(self) -> int:
        """Number of columns of the matrices."""
        return self.train.num_words

    def split_validation(self, num_validation: int) -> tuple[Split, Split]:
        """Holds out the FIRST ``num_validation`` training reviews (the Keras study protocol).

        Args:
            num_validation: reviews to hold out, ``0 < num_validation < len(self.train)``.

        Returns:
            ``(train, val)``: ``train`` the remaining reviews, ``val`` the first ``num_validation``.
        """
        if isinstance(num_validation, bool) or not 0 < num_validation < len(self.train):
            raise ImdbJaxError(
                f"num_validation must be between 1 and {len(self.train) - 1}; got {num_validation!r}"
            )
        val = Split(self.train.x[:num_validation], self.train.y[:num_validation])
        rest = Split(self.train.x[num_validation:], self.train.y[num_validation:])
        return rest, val

    def vectorize(self, texts: Iterable[Text]) -> sp.csr_matrix:
        """float32[len(texts), num_words] multi-hot rows of new reviews with this vocabulary."""
        return self.vocabulary.transform(texts)


def load_imdb(
    num_words: int = 10000,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    source: str = "auto",
    progress: bool = True,
    use_cache: bool = True,
) -> IMDbData:
    """Loads the IMDb reviews as multi-hot matrices over the ``num_words`` most frequent words.

    Args:
        num_words: vocabulary size, the most frequent training words.
        data_dir: where the data is: a TFDS data_dir holding the prepared ``imdb_reviews``
            (array_record), an aclImdb folder, or ``aclImdb_v1.tar.gz``. Default:
            ``$TFDS_DATA_DIR``, else TFDS's default folder (``~/tensorflow_datasets``).
        cache_dir: cache folder. Default: ``$IMDB_JAX_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/imdb_jax``, else ``~/.cache/imdb_jax``.
        source: ``"tfds"``, ``"aclimdb"``, or ``"auto"`` (aclImdb when ``data_dir`` is an aclImdb
            folder or archive, else TFDS).
        progress: show a progress bar on stderr while tokenising.
        use_cache: read and write the cache; False always tokenises and writes nothing.

    Returns:
        The data set; ``from_cache`` says whether it came from the cache.

    Raises:
        DataNotFoundError: the data is not where we looked (the message says how to get it).
        ImdbJaxError: a bad argument.
    """
    start = time.perf_counter()
    if isinstance(num_words, bool) or not isinstance(num_words, (int, np.integer)) or num_words <= 0:
        raise ImdbJaxError(f"num_words must be a positive integer, got {num_words!r}")
    num_words = int(num_words)
    found = sources.resolve_source(data_dir, source)
    key = cache.cache_key(
        {"source": found.identity, "tokenizer": TOKENIZER_VERSION, "num_words": num_words}
    )
    path = None
    if use_cache:
        folder = Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()
        path = folder.absolute() / f"imdb-{found.kind}-{num_words}w-{key[:20]}.cache"
        cached = _read_cache(path, key, num_words)
        if cached is not None:
            train, test, vocabulary = cached
            return IMDbData(train, test, vocabulary, found.description, path, True, time.perf_counter() - start)

    raw = found.read(progress=progress)
    vocabulary, x_train = Vocabulary.fit_transform(
        raw.train_texts, num_words, progress=progress, desc="tokenising train"
    )
    train = Split(x_train, raw.train_labels.astype(np.float32))
    del raw.train_texts[:]  # free the texts early: peak memory, not correctness
    x_test = vocabulary.transform(raw.test_texts, progress=progress, desc="tokenising test")
    test = Split(x_test, raw.test_labels.astype(np.float32))
    if path is not None and not _write_cache(path, key, num_words, train, test, vocabulary):
        path = None
    return IMDbData(train, test, vocabulary, found.description, path, False, time.perf_counter() - start)


def _index_dtype(num_columns: int) -> np.dtype:
    return np.dtype(np.uint16) if num_columns <= 2**16 else np.dtype(np.int32)


def _write_cache(path: Path, key: str, num_words: int, train: Split, test: Split, vocabulary: Vocabulary) -> bool:
    arrays = {}
    for name, split in (("train", train), ("test", test)):
        arrays[f"{name}_indices"] = split.x.indices.astype(_index_dtype(split.num_words))
        arrays[f"{name}_indptr"] = split.x.indptr.astype(np.int32 if split.x.nnz < 2**31 else np.int64)
        arrays[f"{name}_labels"] = split.y.astype(np.uint8)
    meta = {"key": key, "num_words": num_words, "num_columns": len(vocabulary), "vocabulary": vocabulary.to_dict()}
    try:
        cache.save_arrays(path, arrays, meta)
    except OSError as error:
        warnings.warn(cache.CacheWarning(f"could not write the IMDb cache {path}: {error}"), stacklevel=3)
        return False
    return True


def _read_cache(path: Path, key: str, num_words: int) -> tuple[Split, Split, Vocabulary] | None:
    """The cached splits, or None (with a warning naming the file) when absent or unusable."""
    if not path.is_file():
        return None
    try:
        arrays, meta = cache.load_arrays(path, {"key": key, "num_words": num_words})
        vocabulary = Vocabulary.from_dict(meta["vocabulary"])
        splits = [
            _split_from_arrays(arrays, name, meta["num_columns"], len(vocabulary)) for name in ("train", "test")
        ]
    except (cache.CacheError, ImdbJaxError, KeyError, ValueError, OSError) as error:
        warnings.warn(
            cache.CacheWarning(f"ignoring the IMDb cache {path}: {error}; rebuilding it"), stacklevel=3
        )
        return None
    return splits[0], splits[1], vocabulary


def _split_from_arrays(arrays: dict[str, np.ndarray], name: str, num_columns: int, vocab_size: int) -> Split:
    if num_columns != vocab_size:
        raise ValueError(f"{num_columns} columns for a vocabulary of {vocab_size} words")
    indices = arrays[f"{name}_indices"].astype(np.int32)
    indptr = arrays[f"{name}_indptr"].astype(np.int32 if len(indices) < 2**31 else np.int64)
    x = sp.csr_matrix(
        (np.ones(len(indices), np.float32), indices, indptr), shape=(len(indptr) - 1, num_columns)
    )
    return Split(x, arrays[f"{name}_labels"].astype(np.float32))
