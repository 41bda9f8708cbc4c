"""N-gram features and their values (``imdb_jax.data.features``) against written-out references."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from imdb_jax import Vocabulary, tokenize
from imdb_jax.data.features import MAX_NGRAMS, FeatureSpec, vectorizer_from_dict
from imdb_jax.data.text import token_ids
from imdb_jax.errors import ImdbJaxError


def reference(texts, labels, ngrams, num_words, min_count, weighting):
    """The module docstring's rules, written out with dicts and dense arrays."""
    counts, per_review = Counter(), []
    for text in texts:
        words, review = tokenize(text), Counter()
        for n in range(1, ngrams + 1):
            for start in range(len(words) - n + 1):
                review[" ".join(words[start : start + n])] += 1
        per_review.append(review)
        counts.update(review)
    ranked = sorted((-count, term) for term, count in counts.items() if count >= min_count)
    terms = [term for _, term in ranked[:num_words]]
    column = {term: j for j, term in enumerate(terms)}
    tf = np.zeros((len(texts), len(terms)))
    for row, review in enumerate(per_review):
        for term, count in review.items():
            if term in column:
                tf[row, column[term]] = count
    holds = (tf > 0).astype(float)
    if weighting == "binary":
        return terms, holds
    if weighting == "tfidf":
        idf = np.log((1 + len(texts)) / (1 + holds.sum(0))) + 1
        values = np.where(tf > 0, (1 + np.log(np.maximum(tf, 1))) * idf, 0)
        norms = np.linalg.norm(values, axis=1, keepdims=True)
        return terms, values / np.where(norms > 0, norms, 1)
    p = 1 + holds[labels == 1].sum(0)
    q = 1 + holds[labels == 0].sum(0)
    return terms, holds * (np.log(p / p.sum()) - np.log(q / q.sum()))


def assert_canonical(x: sp.csr_matrix, width: int) -> None:
    assert sp.isspmatrix_csr(x) and x.dtype == np.float32 and x.shape[1] == width  # pyright: ignore[reportOptionalSubscript]
    assert x.has_canonical_format  # sorted indices, no duplicate columns within a row
    assert x.indices.dtype == np.int32 and x.indptr.dtype == np.int32


def random_corpus(rng: random.Random, vocabulary: list[str], reviews: int, longest: int) -> list[str]:
    texts = []
    for _ in range(reviews):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(0, longest))]
        texts.append(rng.choice([" ", ", ", "<br />", "! "]).join(words))
    return texts


# A small alphabet makes many ties at every cut-off; "a b" against "ab" and "a'b" pins the
# alphabetical order of terms with spaces and apostrophes.
WORDS = ["a", "b", "ab", "a'b", "c", "ca", "z9", "don't", "x", "b'c"]


@pytest.mark.parametrize("weighting", ["binary", "tfidf", "nb"])
@pytest.mark.parametrize("ngrams", [1, 2, 3])
def test_matches_the_written_out_reference(weighting, ngrams):
    rng = random.Random(ngrams * 10 + len(weighting))
    for _ in range(40):
        texts = random_corpus(rng, WORDS[: rng.randint(2, len(WORDS))], rng.randint(1, 25), 15)
        labels = np.array([rng.randint(0, 1) for _ in texts])
        num_words, min_count = rng.choice([None, 1, 4, 30]), rng.choice([1, 1, 2, 3])
        terms, expected = reference(texts, labels, ngrams, num_words, min_count, weighting)
        spec, x = FeatureSpec.fit_transform(
            texts, labels, ngrams=ngrams, num_words=num_words, min_count=min_count, weighting=weighting
        )
        assert list(spec.terms) == terms
        assert_canonical(x, len(terms))
        np.testing.assert_allclose(x.toarray(), expected, rtol=1e-5, atol=1e-6)
        # One entry per term held, even where a ratio happens to be 0.
        _, holds = reference(texts, labels, ngrams, num_words, min_count, "binary")
        np.testing.assert_array_equal(np.diff(x.indptr), holds.sum(1))


def test_long_ngrams_over_many_words_sort_on_several_keys():
    # 400 words need 9 bits a rank, so 8-grams' ranks span two packed sort keys.
    rng = random.Random(3)
    vocabulary = [f"w{i}" for i in range(400)]
    texts = random_corpus(rng, vocabulary[:5], 30, 20) + random_corpus(rng, vocabulary, 30, 30)
    for num_words in (50, 500, None):
        terms, expected = reference(texts, None, MAX_NGRAMS, num_words, 1, "binary")
        spec, x = FeatureSpec.fit_transform(texts, ngrams=MAX_NGRAMS, num_words=num_words)
        assert list(spec.terms) == terms
        np.testing.assert_array_equal(x.toarray(), expected)


def test_words_only_is_exactly_the_vocabulary():
    rng = random.Random(0)
    for _ in range(50):
        texts = random_corpus(rng, WORDS, rng.randint(1, 30), 12)
        num_words = rng.randint(1, 12)
        vocabulary, expected = Vocabulary.fit_transform(texts, num_words)
        spec, x = FeatureSpec.fit_transform(texts, num_words=num_words)
        assert spec.terms == vocabulary.words and spec.plain
        for name in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(x, name), getattr(expected, name))
            assert getattr(x, name).dtype == getattr(expected, name).dtype
        assert (spec.transform(texts[::-1]) != vocabulary.transform(texts[::-1])).nnz == 0


def test_hand_computed_naive_bayes_ratios_and_tfidf():
    texts, labels = ["good film", "bad film", "good good"], np.array([1, 0, 1])
    nb = FeatureSpec.fit(texts, labels, weighting="nb")
    assert nb.terms == ("good", "film", "bad")  # good 3, film 2, bad 1
    # p = 1 + [2, 1, 0] (reviews holding each term among the positive), q = 1 + [0, 1, 1].
    p, q = np.array([3.0, 2.0, 1.0]), np.array([1.0, 2.0, 2.0])
    np.testing.assert_allclose(nb.weights, np.log(p / 6) - np.log(q / 5), rtol=1e-6)  # pyright: ignore[reportArgumentType, reportCallIssue]
    np.testing.assert_allclose(nb.transform(["good good film"]).toarray(), [[nb.weights[0], nb.weights[1], 0]])  # pyright: ignore[reportOptionalSubscript]
    tfidf = FeatureSpec.fit(texts, weighting="tfidf")
    idf = np.log(4 / (1 + np.array([2.0, 2.0, 1.0]))) + 1
    np.testing.assert_allclose(tfidf.weights, idf, rtol=1e-6)  # pyright: ignore[reportArgumentType, reportCallIssue]
    row = np.array([(1 + np.log(2)) * idf[0], idf[1], 0])
    np.testing.assert_allclose(tfidf.transform(["good good film"]).toarray(), [row / np.linalg.norm(row)], rtol=1e-6)


def test_ngrams_stay_within_a_review_and_unknown_words_break_them():
    spec = FeatureSpec.fit(["a b", "c d"], ngrams=2)
    assert "b c" not in spec.index and set(spec.terms) == {"a", "b", "c", "d", "a b", "c d"}
    x = spec.transform(["a zzz b", "a b c d", "", "zzz"])
    held = [{spec.terms[j] for j in x.indices[x.indptr[i] : x.indptr[i + 1]]} for i in range(4)]
    assert held == [{"a", "b"}, {"a", "b", "c", "d", "a b", "c d"}, set(), set()]


def test_transforming_new_reviews_equals_the_fitted_rows():
    rng = random.Random(5)
    texts = random_corpus(rng, WORDS, 40, 20)
    labels = np.array([rng.randint(0, 1) for _ in texts])
    for weighting in ("binary", "tfidf", "nb"):
        spec, x = FeatureSpec.fit_transform(texts, labels, ngrams=3, num_words=60, weighting=weighting)
        again = spec.transform(texts[10:] + texts[:10])  # another word numbering, other order
        assert_canonical(again, len(spec))
        np.testing.assert_array_equal(again[30:].toarray(), x[:10].toarray())
        np.testing.assert_array_equal(again[:30].toarray(), x[10:].toarray())


def test_transform_in_chunks_equals_one_pass(monkeypatch):
    import imdb_jax.data.features as features

    rng = random.Random(6)
    texts = random_corpus(rng, WORDS, 50, 30)
    spec, whole = FeatureSpec.fit_transform(texts, ngrams=3, weighting="tfidf")
    monkeypatch.setattr(features, "_CHUNK_TOKENS", 7)
    chunked = spec.transform(texts)
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))


def test_saved_and_loaded_specs_transform_alike():
    rng = random.Random(7)
    texts = random_corpus(rng, WORDS, 30, 15)
    labels = np.array([rng.randint(0, 1) for _ in texts])
    for weighting in ("binary", "tfidf", "nb"):
        spec, x = FeatureSpec.fit_transform(texts, labels, ngrams=2, weighting=weighting)
        from_json = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        buffer = io.BytesIO()
        np.savez(buffer, **spec.to_arrays())  # pyright: ignore[reportArgumentType]
        buffer.seek(0)
        with np.load(buffer, allow_pickle=False) as npz:
            from_npz = FeatureSpec.from_arrays(dict(npz))
        for loaded in (from_json, from_npz, vectorizer_from_dict(spec.to_dict())):
            assert loaded == spec
            assert loaded.weights is None if weighting == "binary" else loaded.weights.dtype == np.float32  # pyright: ignore[reportAttributeAccessIssue, reportOptionalMemberAccess]
            y = loaded.transform(texts)
            for name in ("indptr", "indices", "data"):
                np.testing.assert_array_equal(getattr(y, name), getattr(x, name))


def test_a_saved_vocabulary_and_saved_features_are_told_apart():
    vocabulary = Vocabulary(("good", "bad"))
    assert vectorizer_from_dict(vocabulary.to_dict()) == vocabulary
    spec = FeatureSpec.fit(["good film", "bad film"], ngrams=2)
    with pytest.raises(ImdbJaxError, match="not a plain vocabulary"):
        Vocabulary.from_dict(spec.to_dict())  # never silently read bigrams as words
    assert FeatureSpec.from_vocabulary(vocabulary).plain and len(FeatureSpec.from_vocabulary(vocabulary)) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ngrams": 0}, "ngrams must be an integer"),
        ({"ngrams": MAX_NGRAMS + 1}, "ngrams must be an integer"),
        ({"num_words": 0}, "num_words must be a positive integer"),
        ({"min_count": 0}, "min_count must be a positive integer"),
        ({"weighting": "bm25"}, "weighting must be one of"),
        ({"weighting": "nb"}, "needs one label per review"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ImdbJaxError, match=match):
        FeatureSpec.fit(["good film", "bad film"], **kwargs)


def test_malformed_specs_are_refused():
    with pytest.raises(ImdbJaxError, match="unique"):
        FeatureSpec(("a", "a"))
    with pytest.raises(ImdbJaxError, match="one weight per term"):
        FeatureSpec(("a",), weighting="nb")
    with pytest.raises(ImdbJaxError, match="finite"):
        FeatureSpec(("a", "b"), weighting="nb", weights=np.array([1.0, np.nan]))
    with pytest.raises(ImdbJaxError, match="tokeniser"):
        FeatureSpec(("a",), tokenizer="other-v0")
    with pytest.raises(ImdbJaxError, match="format version"):
        FeatureSpec.from_dict({**FeatureSpec(("a",)).to_dict(), "format_version": 99})
    with pytest.raises(ImdbJaxError, match="1 to 1 words"):
        FeatureSpec(("a b",)).transform(["a b"])


def test_token_ids_keep_every_token_in_order():
    tokens = token_ids(["b a b", "", "c, a!"])
    assert [tokens.words[i] for i in tokens.ids] == ["b", "a", "b", "c", "a"]
    assert tokens.lengths.tolist() == [3, 0, 2] and tokens.offsets.tolist() == [0, 3, 3, 5]
    assert [tokens.words[i] for i in tokens.rows(1, 3).ids] == ["c", "a"]


def test_real_reviews_give_sensible_ratios(real_data_dir):
    from imdb_jax.data import sources

    raw = sources.resolve_source(real_data_dir, source="tfds").read()
    spec, x = FeatureSpec.fit_transform(
        raw.train_texts[:5000], raw.train_labels[:5000], ngrams=2, min_count=3, weighting="nb"
    )
    assert_canonical(x, len(spec))
    ratio = dict(zip(spec.terms, spec.weights.tolist()))  # pyright: ignore[reportOptionalMemberAccess]
    assert ratio["excellent"] > 1 and ratio["worst"] < -1.5 and ratio["waste of"] < -2
    assert abs(ratio["the"]) < 0.1 and spec.terms[:3] == ("the", "and", "a")
    assert x.nnz / x.shape[0] > 200  # pyright: ignore[reportOptionalSubscript]  # words and pairs: about twice the words' 129 a review


def test_the_features_benchmark_runs_and_reports_json_lines(fake_aclimdb):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_features.py"
    run = subprocess.run(
        [sys.executable, str(script), "--quick", "--data-dir", str(fake_aclimdb)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in run.stdout.splitlines()]  # stdout holds JSON lines only
    by_what = {record["what"]: record for record in records}
    cold, warm = by_what["features_cold"], by_what["features_warm"]
    assert cold["name"] == warm["name"] == "imdb_jax nb-1-2" and cold["config"]["features"] > 0
    assert cold["median_s"] > 0 and warm["repeats"] == 1
    if "sklearn_logreg" in by_what:  # the bench venv
        assert 0 <= by_what["sklearn_logreg"]["test_accuracy"] <= 1
    else:
        assert by_what["note"]["note"].startswith("skipped: scikit-learn not installed")
    assert "build cold s" in run.stderr and "test acc" in run.stderr


def test_the_fast_unique_and_search_equal_numpys():
    from imdb_jax.data.features import _search, _unique_inverse

    rng = np.random.default_rng(0)
    for count in (0, 1, 2, 1000):
        for high in (5, 10**6, 2**61):  # the last leaves no spare bits: the argsort path
            keys = rng.integers(0, high, count, dtype=np.int64)
            table, inverse = _unique_inverse(keys)
            expected_table, expected_inverse = np.unique(keys, return_inverse=True)
            np.testing.assert_array_equal(table, expected_table)
            np.testing.assert_array_equal(inverse, expected_inverse.ravel())
            sorted_table = np.unique(rng.integers(0, high, 50))
            np.testing.assert_array_equal(_search(sorted_table, keys), np.searchsorted(sorted_table, keys))
