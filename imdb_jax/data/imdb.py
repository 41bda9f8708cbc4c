"""The IMDb reviews as sparse feature matrices: ``load_imdb``, ``IMDbData`` and ``Split``.

``load_imdb`` finds the data (``imdb_jax.data.sources``), and either loads the matrices from the on-disk
cache (``imdb_jax.cache``) or tokenises the reviews once (``imdb_jax.data.text``) and builds the
features (``imdb_jax.data.features``), fitting the vocabulary (and idf or naive-Bayes ratios) on the
training reviews only, less the first ``held_out`` of them, and caches the result.

The default features (words, binary, ``min_count=1``, ``held_out=0``) are today's multi-hot rows
over the ``num_words`` most frequent training words, in a cache file of today's name and layout.

The cache file name carries a hash of everything that changes its content: the source's identity
(TFDS name/config/version and shard sizes, or the aclImdb path with every file's size and mtime,
or the archive's path, size and mtime), the tokeniser version, ``num_words``, the cache format and,
for other than the default features, ``ngrams``, ``weighting``, ``min_count``, ``held_out`` and the
features' format. Column indices are stored as uint16 when the width allows, so the full data set
at 10,000 words takes about 13 MB; 1-3-grams at 1,000,000 features about 95 MB. Building other
than the default features also keeps the tokenised reviews (``imdb-<source>-tokens-<hash>.cache``,
about 50 MB), so the next feature set from the same source skips reading and tokenising.
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

from imdb_jax.data import cache, sources
from imdb_jax.data.features import FORMAT_VERSION as FEATURES_FORMAT_VERSION
from imdb_jax.data.features import NB_ALPHA, FeatureSpec, check_settings
from imdb_jax.data.text import TOKENIZER_VERSION, Text, TokenIds, Vocabulary, token_ids
from imdb_jax.errors import ImdbJaxError


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """Labelled vectorised reviews.

    Attributes:
        x: float32[reviews, num_words] CSR rows, sorted unique indices; data all 1.0 (multi-hot)
            for binary features, else the tf-idf or naive-Bayes values (``imdb_jax.data.features``).
        y: float32[reviews] labels, 1.0 = positive, 0.0 = negative.
    """

    x: sp.csr_matrix
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.shape[0] != len(self.y):  # pyright: ignore[reportOptionalSubscript]
            raise ValueError(f"Split has {self.x.shape[0]} rows but {len(self.y)} labels")  # pyright: ignore[reportOptionalSubscript]

    def __len__(self) -> int:
        return self.x.shape[0]  # pyright: ignore[reportOptionalSubscript]

    @property
    def num_words(self) -> int:
        """Width of ``x``: the vocabulary size."""
        return self.x.shape[1]  # pyright: ignore[reportOptionalSubscript]


@dataclasses.dataclass(frozen=True, eq=False)
class IMDbData:
    """The vectorised IMDb data set and where it came from.

    Attributes:
        train: the 25,000 training reviews.
        test: the 25,000 test reviews.
        vocabulary: fitted on ``train[held_out:]`` only; column ``j`` is ``vocabulary.words[j]``.
            A ``Vocabulary`` for plain word features; for n-grams or weighted values the
            ``FeatureSpec`` itself, which offers the same interface (``words``, ``transform``,
            ``to_dict``).
        source: human-readable where-it-came-from string.
        cache_path: the cache file read or written, or None when caching was off or failed.
        from_cache: whether the matrices were read from ``cache_path``.
        load_seconds: wall time ``load_imdb`` took.
        features: the fitted features (terms, weighting, idf or ratios), which transform new
            reviews as the data was; made from ``vocabulary`` when not given.
        held_out: the first ``held_out`` training reviews took no part in fitting ``features``.
    """

    train: Split
    test: Split
    vocabulary: Vocabulary | FeatureSpec
    source: str
    cache_path: Path | None = None
    from_cache: bool = False
    load_seconds: float = 0.0
    features: FeatureSpec | None = None
    held_out: int = 0

    def __post_init__(self) -> None:
        if self.features is None:
            vocabulary = self.vocabulary
            features = vocabulary if isinstance(vocabulary, FeatureSpec) else FeatureSpec.from_vocabulary(vocabulary)
            object.__setattr__(self, "features", features)

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

        Plain word features may have been fitted on all training reviews (the seed's protocol);
        n-gram or weighted features must not have seen the validation reviews: load them with
        ``load_imdb(..., held_out=num_validation)`` (or more).

        Args:
            num_validation: reviews to hold out, ``0 < num_validation < len(self.train)``.

        Returns:
            ``(train, val)``: ``train`` the remaining reviews, ``val`` the first ``num_validation``.

        Raises:
            ImdbJaxError: a bad count, or non-plain features fitted on some of the held-out reviews.
        """
        if isinstance(num_validation, bool) or not 0 < num_validation < len(self.train):
            raise ImdbJaxError(f"num_validation must be between 1 and {len(self.train) - 1}; got {num_validation!r}")
        if not self.features.plain and num_validation > self.held_out:  # pyright: ignore[reportOptionalMemberAccess]
            raise ImdbJaxError(
                f"these {self.features.ngrams}-gram {self.features.weighting} features were fitted on training "  # pyright: ignore[reportOptionalMemberAccess]
                f"reviews {self.held_out}: onwards, so holding out the first {num_validation} for validation "
                f"would leak them into model selection; load the data with held_out={num_validation}"
            )
        val = Split(self.train.x[:num_validation], self.train.y[:num_validation])
        rest = Split(self.train.x[num_validation:], self.train.y[num_validation:])
        return rest, val

    def vectorize(self, texts: Iterable[Text]) -> sp.csr_matrix:
        """float32[len(texts), num_words] rows of new reviews with these features."""
        return self.vocabulary.transform(texts)


def load_imdb(
    num_words: int | None = 10000,
    *,
    ngrams: int = 1,
    weighting: str = "binary",
    min_count: int = 1,
    held_out: int = 0,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    source: str = "auto",
    progress: bool = True,
    use_cache: bool = True,
) -> IMDbData:
    """Loads the IMDb reviews as sparse rows over the most frequent training words or n-grams.

    The defaults give the seed's multi-hot rows over the 10,000 most frequent training words.

    Args:
        num_words: the most features to keep, the most frequent (ties alphabetical); None keeps
            every term seen at least ``min_count`` times.
        ngrams: longest word n-gram used as a feature (1 = words only).
        weighting: the value of a present feature: ``"binary"`` (1.0), ``"tfidf"`` or ``"nb"``
            (naive-Bayes log-count ratio); see ``imdb_jax.data.features``.
        min_count: the fewest occurrences in the fitted reviews a feature needs.
        held_out: the first ``held_out`` training reviews take no part in fitting the vocabulary,
            idf or ratios (they are still vectorised); pass the validation size used with
            ``IMDbData.split_validation``. 0 fits on all training reviews.
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
        The data set; ``from_cache`` says whether it came from the cache, ``features`` what the
        columns are.

    Raises:
        DataNotFoundError: the data is not where we looked (the message says how to get it).
        ImdbJaxError: a bad argument.
    """
    start = time.perf_counter()
    check_settings(ngrams, num_words, min_count, weighting)
    if isinstance(held_out, bool) or not isinstance(held_out, (int, np.integer)) or held_out < 0:
        raise ImdbJaxError(f"held_out must be 0 or a number of training reviews, got {held_out!r}")
    num_words = None if num_words is None else int(num_words)
    settings = {"ngrams": int(ngrams), "weighting": weighting, "min_count": int(min_count), "held_out": int(held_out)}
    default = num_words is not None and settings == {"ngrams": 1, "weighting": "binary", "min_count": 1, "held_out": 0}
    found = sources.resolve_source(data_dir, source)
    fields = {"source": found.identity, "tokenizer": TOKENIZER_VERSION, "num_words": num_words}
    if not default:  # the default keeps today's key, so existing caches stay valid
        fields["features"] = {**settings, "format": FEATURES_FORMAT_VERSION, "nb_alpha": NB_ALPHA}
    key = cache.cache_key(fields)
    path = folder = None
    if use_cache:
        folder = (Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()).absolute()
        words = "all" if num_words is None else num_words
        name = (
            f"imdb-{found.kind}-{words}w"
            if default
            else f"imdb-{found.kind}-{ngrams}g-{weighting}-{words}w-h{held_out}"
        )
        path = folder / f"{name}-{key[:20]}.cache"
        cached = _read_cache(path, key, num_words)
        if cached is not None:
            train, test, features = cached
            return _data(train, test, features, found.description, path, True, start, settings["held_out"])

    # The default features keep today's one cache file; others share the tokenised reviews.
    tokens, train_labels, test_labels = _tokenised(found, None if default else folder, progress)
    num_train = len(train_labels)
    if held_out >= num_train:
        raise ImdbJaxError(f"held_out must be less than the {num_train} training reviews, got {held_out}")
    features = FeatureSpec.fit_tokens(
        tokens.rows(held_out, num_train),
        train_labels[held_out:],
        ngrams=ngrams,
        num_words=num_words,
        min_count=min_count,
        weighting=weighting,
    )
    train = Split(features.transform_tokens(tokens.rows(0, num_train)), train_labels.astype(np.float32))
    test = Split(features.transform_tokens(tokens.rows(num_train, len(tokens))), test_labels.astype(np.float32))
    if path is not None and not _write_cache(path, key, num_words, train, test, features):
        path = None
    return _data(train, test, features, found.description, path, False, start, settings["held_out"])


def _tokenised(found: sources.Source, folder: Path | None, progress: bool) -> tuple[TokenIds, np.ndarray, np.ndarray]:
    """Both splits' reviews as word ids (train then test) and their uint8 labels.

    With a cache ``folder``, they are read from (or written to) a tokens file there, so building
    other features from the same source skips reading and tokenising the reviews.
    """
    path = None
    if folder is not None:
        key = cache.cache_key({"source": found.identity, "tokenizer": TOKENIZER_VERSION, "tokens": 1})
        path = folder / f"imdb-{found.kind}-tokens-{key[:20]}.cache"
        if path.is_file():
            try:
                arrays, meta = cache.load_arrays(path, {"key": key})
                text = arrays["words"].tobytes().decode("utf-8")
                tokens = TokenIds(
                    arrays["ids"], arrays["lengths"].astype(np.int64), tuple(text.split("\n")) if text else ()
                )
                num_train = meta["num_train"]
                if int(tokens.lengths.sum()) != len(tokens.ids) or len(arrays["labels"]) != len(tokens):
                    raise ValueError("the token counts do not add up")
                return tokens, arrays["labels"][:num_train], arrays["labels"][num_train:]
            except (cache.CacheError, KeyError, ValueError, OSError) as error:
                warnings.warn(
                    cache.CacheWarning(f"ignoring the token cache {path}: {error}; rebuilding it"), stacklevel=4
                )
    raw = found.read(progress=progress)
    texts = raw.train_texts + raw.test_texts
    del raw.train_texts[:], raw.test_texts[:]  # free the texts early: peak memory, not correctness
    tokens = token_ids(texts, progress=progress, desc="tokenising train and test")
    del texts
    if path is not None:
        arrays = {
            "ids": tokens.ids,
            "lengths": tokens.lengths.astype(np.int32),
            "labels": np.concatenate([raw.train_labels, raw.test_labels]).astype(np.uint8),
            "words": np.frombuffer("\n".join(tokens.words).encode("utf-8"), dtype=np.uint8),
        }
        try:
            cache.save_arrays(path, arrays, {"key": key, "num_train": len(raw.train_labels)})
        except OSError as error:
            warnings.warn(cache.CacheWarning(f"could not write the token cache {path}: {error}"), stacklevel=4)
    return tokens, raw.train_labels, raw.test_labels


def _data(
    train: Split,
    test: Split,
    features: FeatureSpec,
    description: str,
    path: Path | None,
    from_cache: bool,
    start: float,
    held_out: int,
) -> IMDbData:
    vocabulary = Vocabulary(features.terms, features.tokenizer) if features.plain else features
    return IMDbData(
        train, test, vocabulary, description, path, from_cache, time.perf_counter() - start, features, held_out
    )


def _index_dtype(num_columns: int) -> np.dtype:
    return np.dtype(np.uint16) if num_columns <= 2**16 else np.dtype(np.int32)


def _write_cache(path: Path, key: str, num_words: int | None, train: Split, test: Split, features: FeatureSpec) -> bool:
    arrays = {}
    for name, split in (("train", train), ("test", test)):
        arrays[f"{name}_indices"] = split.x.indices.astype(_index_dtype(split.num_words))
        arrays[f"{name}_indptr"] = split.x.indptr.astype(np.int32 if split.x.nnz < 2**31 else np.int64)
        arrays[f"{name}_labels"] = split.y.astype(np.uint8)
        if features.weighting == "tfidf":  # binary and nb values follow from the columns
            arrays[f"{name}_data"] = split.x.data
    meta = {"key": key, "num_words": num_words, "num_columns": len(features)}
    if features.plain:  # today's layout
        meta["vocabulary"] = Vocabulary(features.terms, features.tokenizer).to_dict()
    else:
        arrays.update({f"features_{name}": array for name, array in features.to_arrays().items()})
    try:
        cache.save_arrays(path, arrays, meta)
    except OSError as error:
        warnings.warn(cache.CacheWarning(f"could not write the IMDb cache {path}: {error}"), stacklevel=3)
        return False
    return True


def _read_cache(path: Path, key: str, num_words: int | None) -> tuple[Split, Split, FeatureSpec] | None:
    """The cached splits, or None (with a warning naming the file) when absent or unusable."""
    if not path.is_file():
        return None
    try:
        arrays, meta = cache.load_arrays(path, {"key": key, "num_words": num_words})
        if "vocabulary" in meta:
            features = FeatureSpec.from_vocabulary(Vocabulary.from_dict(meta["vocabulary"]))
        else:
            prefix = "features_"
            features = FeatureSpec.from_arrays(
                {name[len(prefix) :]: array for name, array in arrays.items() if name.startswith(prefix)}
            )
        splits = [_split_from_arrays(arrays, name, meta["num_columns"], features) for name in ("train", "test")]
    except (cache.CacheError, ImdbJaxError, KeyError, ValueError, OSError) as error:
        warnings.warn(cache.CacheWarning(f"ignoring the IMDb cache {path}: {error}; rebuilding it"), stacklevel=3)
        return None
    return splits[0], splits[1], features


def _split_from_arrays(arrays: dict[str, np.ndarray], name: str, num_columns: int, features: FeatureSpec) -> Split:
    if num_columns != len(features):
        raise ValueError(f"{num_columns} columns for {len(features)} features")
    indices = arrays[f"{name}_indices"].astype(np.int32)
    indptr = arrays[f"{name}_indptr"].astype(np.int32 if len(indices) < 2**31 else np.int64)
    if features.weighting == "binary":
        data = np.ones(len(indices), np.float32)
    elif features.weighting == "nb":
        data = features.weights[indices]  # pyright: ignore[reportOptionalSubscript]
    else:
        data = arrays[f"{name}_data"].astype(np.float32)
        if len(data) != len(indices):
            raise ValueError(f"{len(data)} values for {len(indices)} entries")
    if len(indices) and int(indices.max()) >= num_columns:
        raise ValueError(f"a column index is past the {num_columns} columns")
    x = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, num_columns))
    return Split(x, arrays[f"{name}_labels"].astype(np.float32))
