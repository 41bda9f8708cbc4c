"""N-gram features and their values: ``FeatureSpec``, fitted on training reviews, transforms any.

Terms: every run of 1 to ``ngrams`` consecutive words within one review (n-grams never cross
reviews), written as the words joined by single spaces: ``"not"``, ``"not bad"``, ``"not bad at"``.
Words come from ``imdb_jax.data.text.tokenize``, so they never hold a space.

Vocabulary (``FeatureSpec.fit``): terms are counted by total occurrences over the reviews fitted on
(as ``Vocabulary`` counts words); terms seen fewer than ``min_count`` times are dropped, then the
``num_words`` most frequent are kept (all of them when ``num_words`` is None), most frequent first,
ties in alphabetical order of the term string. With ``ngrams=1`` and ``weighting="binary"`` this is
exactly ``Vocabulary.fit``: the same words in the same order, and the same matrices.

Values (``weighting``), float32 in the CSR ``data``; each row's columns are sorted and unique:

- ``binary``: 1.0 for each term the review holds (the multi-hot rows of ``Vocabulary``).
- ``tfidf``: ``(1 + ln tf) * idf``, tf the term's count in the review,
  ``idf = ln((1 + n) / (1 + df)) + 1`` with ``df`` the fitted reviews holding the term and ``n``
  their number; each row is then scaled to unit L2 norm (scikit-learn's
  ``TfidfVectorizer(sublinear_tf=True)``).
- ``nb``: the naive-Bayes log-count ratio of Wang & Manning (2012):
  ``r = ln((p / |p|_1) / (q / |q|_1))``, ``p = alpha +`` the number of positive fitted reviews
  holding each term, ``q`` likewise over the negative ones, ``alpha = NB_ALPHA = 1``; a term the
  review holds has value ``r`` (the binarised row times r). Needs the labels.

Everything fitted (terms, idf, ratios) comes from the reviews passed to ``fit`` only; fit on the
training reviews that are not held out for validation (``load_imdb(held_out=...)`` does).

How it is fast: the reviews are tokenised once to word ids (``text.token_ids``); the k-grams are
numbered level by level, a k-gram's key being ``(number of its (k-1)-word prefix) * words + (its last
word)``: ``np.unique`` numbers them when fitting, ``np.searchsorted`` in the fitted tables finds them
when transforming, and ``np.bincount`` counts. No Python loop runs per token beyond the tokeniser.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import operator
from collections import defaultdict
from collections.abc import Iterable, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import scipy.sparse as sp

from imdb_jax.data.text import TOKENIZER_VERSION, Text, TokenIds, Vocabulary, token_ids
from imdb_jax.errors import ImdbJaxError

WEIGHTINGS = ("binary", "tfidf", "nb")
NB_ALPHA = 1.0
MAX_NGRAMS = 8
FORMAT = "imdb_jax.data.features"
FORMAT_VERSION = 1
_CHUNK_TOKENS = 1 << 21  # tokens per transform chunk: bounds the temporary arrays (~100 MB)


def check_settings(ngrams: Any = 1, num_words: Any = None, min_count: Any = 1, weighting: Any = "binary") -> None:
    """Raises ``ImdbJaxError`` naming the first bad feature setting (see ``FeatureSpec.fit``)."""
    if not _is_int(ngrams) or not 1 <= ngrams <= MAX_NGRAMS:
        raise ImdbJaxError(f"ngrams must be an integer from 1 to {MAX_NGRAMS}, got {ngrams!r}")
    if num_words is not None and (not _is_int(num_words) or num_words <= 0):
        raise ImdbJaxError(f"num_words must be a positive integer or None, got {num_words!r}")
    if not _is_int(min_count) or min_count <= 0:
        raise ImdbJaxError(f"min_count must be a positive integer, got {min_count!r}")
    if weighting not in WEIGHTINGS:
        raise ImdbJaxError(f"weighting must be one of {', '.join(WEIGHTINGS)}; got {weighting!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclasses.dataclass(frozen=True, eq=False)
class _Lookup:
    """The terms as tables that ``transform`` searches.

    Attributes:
        word_index: word -> word number ``w`` (``0 <= w < num_words``), for the words in any term.
        unigram_columns: int64[num_words] column of each word as a one-word term, -1 if it is none.
        tables: for k = 2..ngrams, int64[prefixes] sorted keys ``prefix * num_words + word`` of the
            k-word prefixes of the terms; a prefix's number is its position in the table.
        columns: for k = 2..ngrams, int64[prefixes] column of each prefix, -1 where it is no term.
    """

    word_index: dict[str, int]
    unigram_columns: np.ndarray
    tables: tuple[np.ndarray, ...]
    columns: tuple[np.ndarray, ...]

    @classmethod
    def build(cls, term_words: np.ndarray, words: Sequence[str]) -> _Lookup:
        """From int64[terms, ngrams] word numbers into ``words`` (-1 pads shorter terms)."""
        num_terms, ngrams = term_words.shape
        num_words = max(len(words), 1)
        lengths = (term_words >= 0).sum(axis=1)
        columns = np.arange(num_terms, dtype=np.int64)
        unigram_columns = np.full(len(words), -1, dtype=np.int64)
        single = lengths == 1
        unigram_columns[term_words[single, 0]] = columns[single]
        node = term_words[:, 0].astype(np.int64)
        tables, prefix_columns = [], []
        for k in range(2, ngrams + 1):
            longer = lengths >= k
            table, inverse = np.unique(node[longer] * num_words + term_words[longer, k - 1], return_inverse=True)
            column = np.full(len(table), -1, dtype=np.int64)
            ends = lengths[longer] == k
            column[inverse[ends]] = columns[longer][ends]
            node = np.full(num_terms, -1, dtype=np.int64)
            node[longer] = inverse
            tables.append(table)
            prefix_columns.append(column)
        return cls(
            {word: number for number, word in enumerate(words)}, unigram_columns, tuple(tables), tuple(prefix_columns)
        )


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureSpec:
    """A fitted feature set: which terms are columns, and the value each takes.

    Frozen and serialisable (``to_dict``/``from_dict`` for JSON, ``to_arrays``/``from_arrays`` for
    ``.npz``), so a saved model can vectorise new reviews exactly as its training data was. It
    offers ``Vocabulary``'s interface (``words``, ``len``, ``index``, ``transform``, ``to_dict``).

    Attributes:
        terms: column ``j`` holds ``terms[j]``, n-grams as words joined by single spaces, most
            frequent first.
        ngrams: the longest n-gram looked for when transforming.
        weighting: ``"binary"``, ``"tfidf"`` or ``"nb"`` (module docstring).
        weights: float32[len(terms)] the idf (``tfidf``) or the log-count ratio ``r`` (``nb``) of
            each column; None for ``binary``.
        tokenizer: ``TOKENIZER_VERSION`` of the tokeniser the terms were produced by.
    """

    terms: tuple[str, ...]
    ngrams: int = 1
    weighting: str = "binary"
    weights: np.ndarray | None = None
    tokenizer: str = TOKENIZER_VERSION

    def __post_init__(self) -> None:
        terms = tuple(self.terms)
        object.__setattr__(self, "terms", terms)
        check_settings(ngrams=self.ngrams, weighting=self.weighting)
        object.__setattr__(self, "ngrams", int(self.ngrams))
        if self.tokenizer != TOKENIZER_VERSION:
            raise ImdbJaxError(
                f"these features were made with tokeniser {self.tokenizer!r}, but this version of "
                f"imdb_jax tokenises with {TOKENIZER_VERSION!r}; refit them on the training reviews"
            )
        if len(set(terms)) != len(terms):
            raise ImdbJaxError("feature terms must be unique")
        if (self.weights is None) != (self.weighting == "binary"):
            needs = "no weights" if self.weighting == "binary" else "one weight per term"
            raise ImdbJaxError(f"weighting {self.weighting!r} needs {needs}")
        if self.weights is not None:
            weights = np.asarray(self.weights, dtype=np.float32)
            if weights.shape != (len(terms),) or not np.all(np.isfinite(weights)):
                raise ImdbJaxError(
                    f"weights must be {len(terms)} finite numbers, one per term; got shape {weights.shape}"
                )
            weights.setflags(write=False)
            object.__setattr__(self, "weights", weights)

    # ------------------------------------------------------------------ the Vocabulary interface

    def __len__(self) -> int:
        return len(self.terms)

    @property
    def words(self) -> tuple[str, ...]:
        """The terms (the name ``Vocabulary`` uses), column ``j`` is ``words[j]``."""
        return self.terms

    @functools.cached_property
    def index(self) -> MappingProxyType:
        """Read-only mapping term -> column."""
        return MappingProxyType({term: column for column, term in enumerate(self.terms)})

    @property
    def plain(self) -> bool:
        """Whether these are plain multi-hot words, what a ``Vocabulary`` makes."""
        return self.ngrams == 1 and self.weighting == "binary"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureSpec):
            return NotImplemented
        same_weights = (self.weights is None and other.weights is None) or (
            self.weights is not None and other.weights is not None and np.array_equal(self.weights, other.weights)
        )
        return (self.terms, self.ngrams, self.weighting, self.tokenizer) == (
            other.terms,
            other.ngrams,
            other.weighting,
            other.tokenizer,
        ) and same_weights

    __hash__ = None  # pyright: ignore[reportAssignmentType]  # equal specs may hold different (unhashable) weight arrays

    @classmethod
    def from_vocabulary(cls, vocabulary: Vocabulary) -> FeatureSpec:
        """The plain multi-hot features of a word ``Vocabulary``."""
        return cls(vocabulary.words, tokenizer=vocabulary.tokenizer)

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(
        cls,
        texts: Sequence[Text],
        labels: np.ndarray | None = None,
        *,
        ngrams: int = 1,
        num_words: int | None = None,
        min_count: int = 1,
        weighting: str = "binary",
        progress: bool = False,
    ) -> FeatureSpec:
        """Fits the terms (and idf or ratios) on ``texts``; see ``fit_tokens``."""
        return cls.fit_tokens(
            token_ids(texts, progress=progress),
            labels,
            ngrams=ngrams,
            num_words=num_words,
            min_count=min_count,
            weighting=weighting,
        )

    @classmethod
    def fit_transform(
        cls,
        texts: Sequence[Text],
        labels: np.ndarray | None = None,
        *,
        ngrams: int = 1,
        num_words: int | None = None,
        min_count: int = 1,
        weighting: str = "binary",
        progress: bool = False,
    ) -> tuple[FeatureSpec, sp.csr_matrix]:
        """Fits on ``texts`` and vectorises them, tokenising once.

        Returns:
            ``(spec, x)`` with ``x: float32[len(texts), len(spec)]`` CSR rows.
        """
        tokens = token_ids(texts, progress=progress)
        spec = cls.fit_tokens(
            tokens, labels, ngrams=ngrams, num_words=num_words, min_count=min_count, weighting=weighting
        )
        return spec, spec.transform_tokens(tokens)

    @classmethod
    def fit_tokens(
        cls,
        tokens: TokenIds,
        labels: np.ndarray | None = None,
        *,
        ngrams: int = 1,
        num_words: int | None = None,
        min_count: int = 1,
        weighting: str = "binary",
    ) -> FeatureSpec:
        """Fits the features on tokenised reviews (rules in the module docstring).

        Args:
            tokens: the reviews to fit on (``text.token_ids``), and nothing else: no test or
                held-out reviews.
            labels: [reviews] 1 = positive, 0 = negative; needed for ``weighting="nb"`` only.
            ngrams: longest n-gram, 1 for words only.
            num_words: the most terms to keep (the most frequent); None keeps all that pass
                ``min_count``.
            min_count: the fewest occurrences a term needs.
            weighting: ``"binary"``, ``"tfidf"`` or ``"nb"``.

        Returns:
            The fitted spec.

        Raises:
            ImdbJaxError: a bad setting, or ``nb`` without one label per review.
        """
        check_settings(ngrams, num_words, min_count, weighting)
        if weighting == "nb":
            if labels is None or len(labels) != len(tokens):
                raise ImdbJaxError(
                    f"naive-Bayes weighting needs one label per review: {len(tokens)} reviews, "
                    f"{'no' if labels is None else len(labels)} labels"
                )
            labels = np.asarray(labels)
            if not np.isin(labels, (0, 1)).all():
                raise ImdbJaxError("naive-Bayes weighting needs labels of 0 (negative) and 1 (positive)")
        term_words = _select_terms(tokens, int(ngrams), None if num_words is None else int(num_words), int(min_count))
        used, term_words_in_spec = np.unique(term_words[term_words >= 0], return_inverse=True)
        spec_words = np.array(tokens.words, dtype=object)[used] if len(used) else np.zeros(0, object)
        numbered = np.full(term_words.shape, -1, dtype=np.int64)
        numbered[term_words >= 0] = term_words_in_spec
        terms = _join_terms(numbered, spec_words)
        binary = cls(tuple(terms), ngrams=int(ngrams))
        binary.__dict__["_lookup"] = _Lookup.build(numbered, list(spec_words))  # the fit knows it: no re-parsing
        if weighting == "binary":
            return binary
        x = binary.transform_tokens(tokens)
        holds = np.bincount(x.indices, minlength=len(terms)).astype(np.float64)
        if weighting == "tfidf":
            weights = np.log((1.0 + len(tokens)) / (1.0 + holds)) + 1.0
        else:
            rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))  # pyright: ignore[reportOptionalSubscript]
            positive = NB_ALPHA + np.bincount(x.indices, weights=labels[rows].astype(np.float64), minlength=len(terms))  # pyright: ignore[reportOptionalSubscript]
            negative = NB_ALPHA + holds - (positive - NB_ALPHA)
            weights = np.log(positive / positive.sum()) - np.log(negative / negative.sum())
        spec = cls(binary.terms, ngrams=int(ngrams), weighting=weighting, weights=weights.astype(np.float32))
        spec.__dict__["_lookup"] = binary._lookup
        return spec

    # ------------------------------------------------------------------ transforming

    @functools.cached_property
    def _lookup(self) -> _Lookup:
        """Parsed from the term strings (a spec loaded from disk); ``fit`` sets it directly."""
        # All terms' words in one flat list, numbered in C (map over a defaultdict), then placed
        # into rows with NumPy: a million terms take about a second, not a Python loop each.
        words = " ".join(self.terms).split(" ") if self.terms else []
        lengths = np.fromiter(map(_spaces, self.terms), dtype=np.int64, count=len(self.terms)) + 1
        if len(lengths) and (lengths.max() > self.ngrams or "" in words):
            raise ImdbJaxError(f"feature terms must be 1 to {self.ngrams} words joined by single spaces")
        word_index: defaultdict[str, int] = defaultdict(itertools.count().__next__)
        numbers = np.fromiter(map(word_index.__getitem__, words), dtype=np.int64, count=len(words))
        rows = np.repeat(np.arange(len(lengths)), lengths)
        positions = np.arange(len(words)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        term_words = np.full((len(self.terms), self.ngrams), -1, dtype=np.int64)
        term_words[rows, positions] = numbers
        return _Lookup.build(term_words, list(word_index))

    def transform(self, texts: Iterable[Text], progress: bool = False, desc: str = "tokenising") -> sp.csr_matrix:
        """Vectorises reviews; terms not in the spec are dropped.

        Args:
            texts: reviews, ``str`` or ``bytes``.
            progress: show progress on stderr while tokenising (`imdb_jax.progress`).
            desc: label of the progress bar.

        Returns:
            float32[len(texts), len(self)] CSR rows, sorted unique indices, values per ``weighting``.
        """
        if isinstance(texts, (str, bytes)):
            raise TypeError("transform expects a sequence of texts, not one text; wrap it in a list")
        return self.transform_tokens(token_ids(list(texts), progress=progress, desc=desc))

    def transform_tokens(self, tokens: TokenIds) -> sp.csr_matrix:
        """``transform`` of reviews already tokenised with ``text.token_ids`` (any word numbering)."""
        lookup = self._lookup
        get = lookup.word_index.get
        spec_id = np.array([get(word, -1) for word in tokens.words], dtype=np.int64)
        num_rows, num_columns = len(tokens), len(self)
        indptr = np.zeros(num_rows + 1, dtype=np.int64)
        indices, data = [], []
        offsets = tokens.offsets
        start = 0
        while start < num_rows:
            # Whole reviews, about _CHUNK_TOKENS tokens at a time (at least one review).
            stop = max(int(np.searchsorted(offsets, offsets[start] + _CHUNK_TOKENS, side="right")) - 1, start + 1)
            stop = min(stop, num_rows)
            chunk = tokens.rows(start, stop)
            ids = spec_id[chunk.ids] if len(chunk.ids) else np.zeros(0, np.int64)
            rows, columns, counts = _count_terms(ids, chunk.lengths, lookup, self.ngrams, num_columns)
            indptr[start + 1 : stop + 1] = indptr[start] + np.cumsum(np.bincount(rows, minlength=stop - start))
            indices.append(columns)
            data.append(self._values(rows, columns, counts, stop - start))
            start = stop
        nnz = int(indptr[-1])
        index_dtype = np.int32 if nnz < 2**31 else np.int64
        return sp.csr_matrix(
            (
                np.concatenate(data) if data else np.zeros(0, np.float32),
                np.concatenate(indices).astype(index_dtype) if indices else np.zeros(0, index_dtype),
                indptr.astype(index_dtype),
            ),
            shape=(num_rows, num_columns),
        )

    def _values(self, rows: np.ndarray, columns: np.ndarray, counts: np.ndarray, num_rows: int) -> np.ndarray:
        """float32 values of one chunk's entries (rows sorted, as ``_count_terms`` gives them)."""
        if self.weighting == "binary":
            return np.ones(len(columns), np.float32)
        if self.weighting == "nb":
            return self.weights[columns]  # pyright: ignore[reportOptionalSubscript]
        values = (1.0 + np.log(counts)) * self.weights[columns].astype(np.float64)  # pyright: ignore[reportOptionalSubscript]
        norms = np.sqrt(np.bincount(rows, weights=values * values, minlength=num_rows))
        return (values / norms[rows]).astype(np.float32)

    # ------------------------------------------------------------------ saving

    def _header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tokenizer": self.tokenizer,
            "ngrams": self.ngrams,
            "weighting": self.weighting,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (weights as exact float32 values); ``from_dict`` inverts it."""
        return {
            **self._header(),
            "terms": list(self.terms),
            "weights": None if self.weights is None else self.weights.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Rebuilds a spec saved with ``to_dict``.

        Raises:
            ImdbJaxError: the dictionary is malformed, of another format version or tokeniser.
        """
        header = _check_header(data)
        terms = data.get("terms")
        if not isinstance(terms, list) or not all(isinstance(term, str) for term in terms):
            raise ImdbJaxError("not saved features: 'terms' must be a list of strings")
        weights = data.get("weights")
        return cls(
            tuple(terms),
            ngrams=header["ngrams"],
            weighting=header["weighting"],
            weights=None if weights is None else np.asarray(weights, dtype=np.float32),
            tokenizer=header["tokenizer"],
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for ``np.savez`` (no pickling): ``from_arrays`` inverts it.

        Returns:
            ``{"meta": uint8 JSON, "terms": uint8 UTF-8 of the terms joined by newlines}`` and
            ``"weights": float32[len(self)]`` unless binary.
        """
        arrays = {
            "meta": np.frombuffer(json.dumps(self._header(), sort_keys=True).encode("utf-8"), dtype=np.uint8),
            "terms": np.frombuffer("\n".join(self.terms).encode("utf-8"), dtype=np.uint8),
        }
        if self.weights is not None:
            arrays["weights"] = np.asarray(self.weights)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureSpec:
        """Rebuilds a spec from ``to_arrays``' arrays (e.g. read back from an ``.npz``)."""
        try:
            header = _check_header(json.loads(np.asarray(arrays["meta"], dtype=np.uint8).tobytes().decode("utf-8")))
            text = np.asarray(arrays["terms"], dtype=np.uint8).tobytes().decode("utf-8")
        except (KeyError, ValueError) as error:
            raise ImdbJaxError(f"not saved features (expected 'meta' and 'terms' arrays): {error}") from error
        weights = arrays.get("weights")
        return cls(
            tuple(text.split("\n")) if text else (),
            ngrams=header["ngrams"],
            weighting=header["weighting"],
            weights=None if weights is None else np.asarray(weights, dtype=np.float32),
            tokenizer=header["tokenizer"],
        )


_spaces = operator.methodcaller("count", " ")  # the spaces in a term: its words less one


def _check_header(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ImdbJaxError(f"not saved features (expected format {FORMAT!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise ImdbJaxError(
            f"saved features of format version {data.get('format_version')!r}; this imdb_jax reads version {FORMAT_VERSION}"
        )
    missing = [key for key in ("tokenizer", "ngrams", "weighting") if key not in data]
    if missing:
        raise ImdbJaxError(f"not saved features: missing {', '.join(missing)}")
    return data


def vectorizer_from_dict(data: dict[str, Any]) -> Vocabulary | FeatureSpec:
    """A saved ``Vocabulary.to_dict`` or ``FeatureSpec.to_dict``, rebuilt as what it was."""
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return FeatureSpec.from_dict(data)
    return Vocabulary.from_dict(data)


# ---------------------------------------------------------------------- the vectorised core


def _sorted_with_order(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(keys[order], order)`` with the keys sorted, for int64 keys >= 0.

    Where they fit, the positions ride in the spare low bits of the keys, so one (SIMD) sort of
    plain integers replaces an argsort, several times slower on millions of keys.
    """
    count = len(keys)
    position_bits = max(int(count - 1).bit_length(), 1)
    if count and int(keys.max()).bit_length() + position_bits <= 62:
        packed = np.sort((keys << position_bits) | np.arange(count, dtype=np.int64))
        return packed >> position_bits, packed & ((1 << position_bits) - 1)
    order = np.argsort(keys, kind="stable")
    return keys[order], order


def _unique_inverse(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)`` for int64 keys >= 0, faster."""
    ordered, order = _sorted_with_order(keys)
    first = np.ones(len(ordered), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ordered[first], inverse


def _search(table: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.searchsorted(table, keys)`` for int64 keys >= 0; sorted keys search far faster (cache)."""
    ordered, order = _sorted_with_order(keys)
    at = np.empty(len(keys), dtype=np.int64)
    at[order] = np.searchsorted(table, ordered)
    return at


def _token_ends(lengths: np.ndarray) -> np.ndarray:
    """int64[tokens]: the (exclusive) end position of each token's review."""
    ends = np.cumsum(lengths)
    return np.repeat(ends, lengths)


def _count_terms(
    ids: np.ndarray, lengths: np.ndarray, lookup: _Lookup, ngrams: int, num_columns: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The terms each review holds and how often.

    Args:
        ids: int64[tokens] word numbers of ``lookup`` (-1 for a word in no term), review after review.
        lengths: int64[reviews] tokens per review.
        lookup: the fitted tables.
        ngrams: longest n-gram.
        num_columns: number of terms.

    Returns:
        ``(rows, columns, counts)``, int64[entries] each, sorted by row then column, one entry per
        distinct (review, term).
    """
    num_words = max(len(lookup.word_index), 1)
    found_at, found_columns = [], []
    node = ids  # the number of the k-gram starting at each position, -1 where there is none
    if len(lookup.unigram_columns):
        known = np.flatnonzero(node >= 0)
        columns = lookup.unigram_columns[node[known]]
        found_at.append(known[columns >= 0])
        found_columns.append(columns[columns >= 0])
    ends = _token_ends(lengths) if ngrams > 1 else None
    for k in range(2, ngrams + 1):
        table, table_columns = lookup.tables[k - 2], lookup.columns[k - 2]
        if not len(table):
            break
        starts = np.flatnonzero(node >= 0)
        starts = starts[starts + k - 1 < ends[starts]]  # pyright: ignore[reportOptionalSubscript]
        last = ids[starts + k - 1]
        starts, last = starts[last >= 0], last[last >= 0]
        keys = node[starts] * num_words + last
        at = np.minimum(_search(table, keys), len(table) - 1)
        hit = table[at] == keys
        node = np.full(len(ids), -1, dtype=np.int64)
        node[starts[hit]] = at[hit]
        columns = table_columns[at[hit]]
        found_at.append(starts[hit][columns >= 0])
        found_columns.append(columns[columns >= 0])
    if not found_at:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    row_of_token = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    width = max(num_columns, 1)
    keys = row_of_token[np.concatenate(found_at)] * width + np.concatenate(found_columns)
    keys, counts = np.unique(keys, return_counts=True)
    rows, columns = np.divmod(keys, width)
    return rows, columns, counts


def _select_terms(tokens: TokenIds, ngrams: int, num_words: int | None, min_count: int) -> np.ndarray:
    """The fitted terms as int64[terms, ngrams] word ids of ``tokens.words`` (-1 pads), in column order."""
    ids = tokens.ids.astype(np.int64)
    vocab_size = max(len(tokens.words), 1)
    level_counts = [np.bincount(ids, minlength=len(tokens.words))]
    tables = []  # per level k >= 2: sorted keys (prefix number * vocab_size + last word id)
    node = np.where(level_counts[0][ids] >= min_count, ids, -1)  # a rare prefix never extends to a common term
    ends = _token_ends(tokens.lengths) if ngrams > 1 else None
    for k in range(2, ngrams + 1):
        starts = np.flatnonzero(node >= 0)
        starts = starts[starts + k - 1 < ends[starts]]  # pyright: ignore[reportOptionalSubscript]
        if not len(starts):
            break
        table, inverse = _unique_inverse(node[starts] * vocab_size + ids[starts + k - 1])
        counts = np.bincount(inverse, minlength=len(table))
        node = np.full(len(ids), -1, dtype=np.int64)
        node[starts] = np.where(counts[inverse] >= min_count, inverse, -1)
        level_counts.append(counts)
        tables.append(table)
    del node, ids, ends
    counts = np.concatenate(level_counts)
    level_starts = np.cumsum([0] + [len(level) for level in level_counts])
    candidates = np.flatnonzero(counts >= min_count)
    if num_words is not None and len(candidates) > num_words:
        # Everything tied with the num_words-th count stays in, for the alphabetical tie-break.
        cutoff = np.partition(counts[candidates], len(candidates) - num_words)[len(candidates) - num_words]
        candidates = candidates[counts[candidates] >= cutoff]
    levels = np.searchsorted(level_starts, candidates, side="right") - 1
    term_words = np.full((len(candidates), ngrams), -1, dtype=np.int64)
    for level in range(len(level_counts), 0, -1):  # level = n-gram length
        rows = np.flatnonzero(levels == level - 1)
        number = candidates[rows] - level_starts[level - 1]
        for position in range(level - 1, 0, -1):
            key = tables[position - 1][number]
            number, term_words[rows, position] = np.divmod(key, vocab_size)
        term_words[rows, 0] = number
    # Ties go alphabetically by the term string. The separator (space) sorts before every
    # character a word can hold, so comparing the strings is comparing the tuples of the words'
    # alphabetical ranks (from 1), with 0 after a shorter term's last word: a lexsort, not a string sort.
    rank = np.empty(len(tokens.words), dtype=np.int64)
    rank[sorted(range(len(tokens.words)), key=tokens.words.__getitem__)] = np.arange(len(tokens.words))
    ranks = np.where(term_words >= 0, rank[np.maximum(term_words, 0)] + 1, 0)
    # Several ranks packed into one int64 sort key where they fit: fewer lexsort keys, faster.
    bits = max(int(len(tokens.words)).bit_length(), 1)
    per_key = max(63 // bits, 1)
    keys = []
    for first in range(0, ngrams, per_key):
        key = np.zeros(len(ranks), dtype=np.int64)
        for position in range(first, min(first + per_key, ngrams)):
            key = (key << bits) | ranks[:, position]
        keys.append(key)
    order = np.lexsort(keys[::-1] + [-counts[candidates]])
    if num_words is not None:
        order = order[:num_words]
    return term_words[order]


def _join_terms(term_words: np.ndarray, words: np.ndarray) -> list[str]:
    """Term strings: the words of each row of ``term_words`` (-1 pads) joined by single spaces."""
    if not len(term_words):
        return []
    terms = words[term_words[:, 0]]
    for position in range(1, term_words.shape[1]):
        more = np.flatnonzero(term_words[:, position] >= 0)
        if len(more):
            terms[more] = terms[more] + " " + words[term_words[more, position]]  # object arrays: str +
    return terms.tolist()
