"""Reviews become words, words become column indices: the tokeniser and the vocabulary.

Tokeniser (``tokenize``, version ``TOKENIZER_VERSION``):

1. ``bytes`` are decoded as UTF-8 with ``errors="replace"``, so malformed input never raises.
2. The text is lowercased (``str.lower``).
3. HTML line breaks (``<br />``, ``<br/>``, ``<br>``, any case) become a space, so the words on either
   side stay apart and ``br`` never becomes a word.
4. Tokens are runs of ASCII letters, digits and apostrophes (``[a-z0-9']+``, the reference
   vectorisation in DATA.md) with leading and trailing apostrophes stripped: ``don't`` stays
   ``don't``, ``'quoted'`` becomes ``quoted``, ``dogs'`` becomes ``dogs`` and a lone ``'`` is no
   token. Everything else separates tokens, including non-ASCII letters: ``café`` gives ``caf``.
   ASCII-only is deliberate: it is the vectorisation the project's reference figures were measured
   with, and accented words are rare in these English reviews.
5. Empty text gives no tokens, which vectorises to an all-zero row (allowed, not an error).

Vocabulary (``Vocabulary.fit``): the ``num_words`` words with the most occurrences over the texts
it is fitted on (total occurrences, as Keras' ``Tokenizer`` counts, not once per review), ties
broken alphabetically, so the result never depends on input order beyond the counts. Column ``j``
of a vectorised matrix is ``words[j]``. Fit it on training reviews only.

Vectorisation (``Vocabulary.transform``): one multi-hot row per text, float32 ones at the sorted,
unique columns of its known words; unknown words are dropped.

Word ids (``token_ids``): every token of every review as an int32 word id, in order, for the
vectorised n-gram builder in ``imdb_jax.data.features``; the reviews are tokenised once.
"""

from __future__ import annotations

import array
import dataclasses
import functools
import itertools
import operator
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import scipy.sparse as sp

from imdb_jax.errors import ImdbJaxError
from imdb_jax.progress import progress_bar

TOKENIZER_VERSION = "ascii-words-v1"
"""Changes whenever ``tokenize`` would split any text differently (it keys the on-disk cache)."""

_LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# Apostrophes only between letters/digits: the same tokens as `[a-z0-9']+` stripped of "'" at both ends.
_TOKEN = re.compile(r"[a-z0-9]+(?:'+[a-z0-9]+)*")

Text = str | bytes


def tokenize(text: Text) -> list[str]:
    """Splits one review into lowercase words (rules in the module docstring).

    Args:
        text: the review, ``str`` or UTF-8 ``bytes`` (invalid bytes are replaced, never an error).

    Returns:
        The words in order of appearance, repeats kept; empty for text without words.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", errors="replace")
    return _TOKEN.findall(_LINE_BREAK.sub(" ", text.lower()))


def _progress(texts: Sequence[Text], progress: bool, desc: str) -> Iterable[Text]:
    if not progress:
        return texts
    # A bar on a terminal; in a log, one line when the split is done, not one per review.
    return progress_bar(texts, desc=desc, unit=" reviews", leave=False, lines="end")


def _multi_hot(columns: np.ndarray, lengths: np.ndarray, num_columns: int) -> sp.csr_matrix:
    """Builds multi-hot CSR rows from ragged column ids that are unique within each row.

    Args:
        columns: int[total] column ids, row after row, each row's ids distinct, any order; ``-1``
            marks an unknown word and is dropped.
        lengths: int[rows] how many of ``columns`` belong to each row.
        num_columns: width of the matrix.

    Returns:
        float32[rows, num_columns] CSR with sorted unique indices and all data 1.0.
    """
    num_rows = len(lengths)
    rows = np.repeat(np.arange(num_rows, dtype=np.int64), lengths)
    known = columns >= 0
    # Sorting (row, column) keys sorts each row's indices; rows stay in order.
    keys = np.sort(rows[known] * max(num_columns, 1) + columns[known])
    del rows, known
    key_rows, key_cols = np.divmod(keys, max(num_columns, 1))
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(key_rows, minlength=num_rows), out=indptr[1:])
    index_dtype = np.int32 if len(keys) < 2**31 else np.int64
    return sp.csr_matrix(
        (np.ones(len(keys), np.float32), key_cols.astype(index_dtype), indptr.astype(index_dtype)),
        shape=(num_rows, num_columns),
    )


def _top_words(counts: Counter[str], num_words: int) -> tuple[str, ...]:
    """The ``num_words`` most frequent words; ties alphabetical, so input order never matters."""
    # A C-level sort by count alone, then the (slower) tie-breaking sort only near the top.
    items = sorted(counts.items(), key=operator.itemgetter(1), reverse=True)
    end = min(num_words, len(items))
    if end:
        cutoff = items[end - 1][1]
        while end < len(items) and items[end][1] == cutoff:
            end += 1
    ranked = sorted(items[:end], key=lambda item: (-item[1], item[0]))[:num_words]
    return tuple(word for word, _ in ranked)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenIds:
    """Reviews as word ids, every token kept, in order.

    Attributes:
        ids: int32[tokens] word ids, review after review.
        lengths: int64[reviews] tokens per review (0 for a review without words).
        words: id -> word; ids are given in order of first appearance.
    """

    ids: np.ndarray
    lengths: np.ndarray
    words: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.lengths)

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        """int64[reviews + 1]: review ``i`` is ``ids[offsets[i]:offsets[i + 1]]``."""
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        return offsets

    def rows(self, start: int, stop: int) -> TokenIds:
        """Reviews ``start:stop`` (a view sharing ``words``)."""
        start, stop, _ = slice(start, stop).indices(len(self))
        stop = max(start, stop)
        return TokenIds(self.ids[self.offsets[start] : self.offsets[stop]], self.lengths[start:stop], self.words)


def token_ids(texts: Sequence[Text], progress: bool = False, desc: str = "tokenising") -> TokenIds:
    """Tokenises each review once into word ids (the n-gram builder's input).

    Args:
        texts: reviews, ``str`` or ``bytes``.
        progress: show progress on stderr while tokenising (`imdb_jax.progress`).
        desc: label of the progress bar.

    Returns:
        The reviews' tokens as ids; ``words[id]`` is the word.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError("token_ids expects a sequence of texts, not one text; wrap it in a list")
    # As in fit_transform, per-token work stays in C (map over a defaultdict that numbers new words).
    word_ids: defaultdict[str, int] = defaultdict(itertools.count().__next__)
    ids = array.array("i")
    lengths = np.zeros(len(texts), dtype=np.int64)
    for row, text in enumerate(_progress(texts, progress, desc)):
        tokens = tokenize(text)
        ids.extend(map(word_ids.__getitem__, tokens))
        lengths[row] = len(tokens)
    words = tuple(word_ids)  # dicts keep insertion order: id order
    return TokenIds(np.frombuffer(ids, dtype=np.int32) if ids else np.zeros(0, np.int32), lengths, words)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The fitted word list and the tokeniser it goes with.

    Attributes:
        words: the vocabulary, most frequent first; column ``j`` of a vectorised row is ``words[j]``.
        tokenizer: ``TOKENIZER_VERSION`` of the tokeniser the words were produced by.
    """

    words: tuple[str, ...]
    tokenizer: str = TOKENIZER_VERSION

    def __post_init__(self) -> None:
        words = tuple(self.words)
        if len(set(words)) != len(words):
            raise ValueError("Vocabulary words must be unique")
        if self.tokenizer != TOKENIZER_VERSION:
            raise ImdbJaxError(
                f"this vocabulary was made with tokeniser {self.tokenizer!r}, but this version of "
                f"imdb_jax tokenises with {TOKENIZER_VERSION!r}; refit it on the training reviews"
            )
        object.__setattr__(self, "words", words)

    def __len__(self) -> int:
        return len(self.words)

    @functools.cached_property
    def index(self) -> MappingProxyType:
        """Read-only mapping word -> column."""
        return MappingProxyType({word: column for column, word in enumerate(self.words)})

    @classmethod
    def fit(cls, texts: Sequence[Text], num_words: int, progress: bool = False) -> Vocabulary:
        """Keeps the ``num_words`` most frequent words of ``texts`` (see the module docstring).

        Args:
            texts: the training reviews, ``str`` or ``bytes``.
            num_words: the most words to keep; fewer when the texts hold fewer distinct words.
            progress: show progress on stderr while tokenising (`imdb_jax.progress`).

        Returns:
            The fitted vocabulary.
        """
        return cls.fit_transform(texts, num_words, progress=progress)[0]

    @classmethod
    def fit_transform(
        cls, texts: Sequence[Text], num_words: int, progress: bool = False, desc: str = "tokenising"
    ) -> tuple[Vocabulary, sp.csr_matrix]:
        """Fits on ``texts`` and vectorises them, tokenising each text once.

        Args:
            texts: the training reviews, ``str`` or ``bytes``.
            num_words: the most words to keep.
            progress: show progress on stderr while tokenising (`imdb_jax.progress`).
            desc: label of the progress bar.

        Returns:
            ``(vocabulary, x)`` with ``x: float32[len(texts), len(vocabulary)]`` multi-hot CSR rows.
        """
        if isinstance(num_words, bool) or not isinstance(num_words, (int, np.integer)) or num_words <= 0:
            raise ImdbJaxError(f"num_words must be a positive integer, got {num_words!r}")
        # Per-token work stays in C (set, Counter, map): Python-level loops over 6M tokens cost seconds.
        counts: Counter[str] = Counter()
        word_ids: defaultdict[str, int] = defaultdict(itertools.count().__next__)  # new word -> next id
        ids = array.array("q")
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(_progress(texts, progress, desc)):
            tokens = tokenize(text)
            counts.update(tokens)
            unique = set(tokens)
            ids.extend(map(word_ids.__getitem__, unique))
            lengths[row] = len(unique)
        vocabulary = cls(_top_words(counts, num_words))
        column_of = np.full(len(word_ids), -1, dtype=np.int64)  # word id -> column, -1 if cut off
        column_of[[word_ids[word] for word in vocabulary.words]] = np.arange(len(vocabulary))
        return vocabulary, _multi_hot(column_of[np.frombuffer(ids, dtype=np.int64)], lengths, len(vocabulary))

    def transform(self, texts: Iterable[Text], progress: bool = False, desc: str = "tokenising") -> sp.csr_matrix:
        """Vectorises texts with this vocabulary; unknown words are dropped.

        Args:
            texts: reviews, ``str`` or ``bytes``.
            progress: show progress on stderr while tokenising (`imdb_jax.progress`).
            desc: label of the progress bar.

        Returns:
            float32[len(texts), len(self)] multi-hot CSR rows, sorted unique indices, data all 1.0.
        """
        if isinstance(texts, (str, bytes)):
            raise TypeError("transform expects a sequence of texts, not one text; wrap it in a list")
        texts = list(texts)
        get = self.index.get
        columns = array.array("q")
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(_progress(texts, progress, desc)):
            unique = set(tokenize(text))
            columns.extend(map(get, unique, itertools.repeat(-1, len(unique))))  # unknown -> -1
            lengths[row] = len(unique)
        return _multi_hot(np.frombuffer(columns, dtype=np.int64), lengths, len(self))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description; ``Vocabulary.from_dict`` inverts it."""
        return {"tokenizer": self.tokenizer, "words": list(self.words)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        """Rebuilds a vocabulary saved with ``to_dict``.

        Raises:
            ImdbJaxError: the dictionary is malformed or from another tokeniser version.
        """
        if isinstance(data, dict) and "terms" in data:
            raise ImdbJaxError(
                "this is a saved n-gram/weighted feature set, not a plain vocabulary; "
                "read it with imdb_jax.data.features.vectorizer_from_dict"
            )
        try:
            words, tokenizer = data["words"], data["tokenizer"]
        except (KeyError, TypeError) as error:
            raise ImdbJaxError(f"not a saved vocabulary (expected 'words' and 'tokenizer'): {error}") from error
        if not all(isinstance(word, str) for word in words):
            raise ImdbJaxError("not a saved vocabulary: 'words' must be a list of strings")
        return cls(tuple(words), tokenizer=tokenizer)
