"""The tokeniser and the vocabulary on small corpora built here."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import scipy.sparse as sp

from imdb_jax import Vocabulary, tokenize
from imdb_jax.errors import ImdbJaxError


def assert_multi_hot(x: sp.csr_matrix) -> None:
    assert sp.isspmatrix_csr(x)
    assert x.dtype == np.float32
    assert x.has_sorted_indices
    assert x.has_canonical_format  # sorted and no duplicates
    assert np.all(x.data == 1.0)
    for row in range(x.shape[0]):  # pyright: ignore[reportOptionalSubscript]
        columns = x.indices[x.indptr[row] : x.indptr[row + 1]]
        assert np.all(np.diff(columns) > 0)


class TestTokenize:
    def test_lowercases_and_splits_on_punctuation(self):
        assert tokenize("Hello, World! It's 2 GOOD... (really)") == ["hello", "world", "it's", "2", "good", "really"]

    def test_line_breaks_are_separators_not_words(self):
        text = "one<br />two<br/>three<br>four<BR />five<br  />six"
        assert tokenize(text) == ["one", "two", "three", "four", "five", "six"]

    def test_apostrophes_kept_inside_words_stripped_at_ends(self):
        assert tokenize("'quoted' dogs' rock'n'roll ' '' don't o''clock") == [
            "quoted",
            "dogs",
            "rock'n'roll",
            "don't",
            "o''clock",
        ]

    def test_bytes_and_str_give_the_same_tokens(self):
        text = "Café au lait, 10/10 <br />naïve"
        assert tokenize(text.encode("utf-8")) == tokenize(text) == ["caf", "au", "lait", "10", "10", "na", "ve"]

    def test_invalid_utf8_never_raises(self):
        assert tokenize(b"good \xff\xfe\xc3 movie\x80") == ["good", "movie"]

    def test_empty_text_has_no_tokens(self):
        assert tokenize("") == []
        assert tokenize(b"") == []
        assert tokenize("<br /> ... !!! '") == []


class TestVocabularyFit:
    def test_orders_by_total_count_then_alphabetically(self):
        texts = ["b a c c", "c b d"]  # c:3, b:2, a:1, d:1
        assert Vocabulary.fit(texts, 10).words == ("c", "b", "a", "d")

    def test_counts_total_occurrences_not_reviews(self):
        texts = ["x x x x", "y", "y", "y"]  # x: 4 occurrences in 1 review, y: 3 in 3
        assert Vocabulary.fit(texts, 10).words == ("x", "y")

    def test_ties_do_not_depend_on_input_order(self):
        texts = ["zeta alpha", "mid", "alpha zeta mid beta"]
        words = Vocabulary.fit(texts, 10).words
        assert words == ("alpha", "mid", "zeta", "beta")
        for seed in range(5):
            shuffled = list(texts)
            random.Random(seed).shuffle(shuffled)
            assert Vocabulary.fit(shuffled, 10).words == words

    def test_num_words_cuts_off_the_rarest(self):
        texts = ["a a a a b b b c c d"]
        assert Vocabulary.fit(texts, 2).words == ("a", "b")
        assert len(Vocabulary.fit(texts, 3)) == 3

    def test_ties_at_the_cut_off_are_broken_alphabetically(self):
        assert Vocabulary.fit(["d c b a a", "e"], 2).words == ("a", "b")
        assert Vocabulary.fit(["z y x", "z y x"], 1).words == ("x",)

    def test_fewer_distinct_words_than_num_words(self):
        vocab, x = Vocabulary.fit_transform(["one two", "two"], 100)
        assert vocab.words == ("two", "one")
        assert x.shape == (2, 2)

    @pytest.mark.parametrize("num_words", [0, -1, 2.5, True])
    def test_rejects_bad_num_words(self, num_words):
        with pytest.raises(ImdbJaxError, match="num_words"):
            Vocabulary.fit(["a"], num_words)

    def test_words_must_be_unique(self):
        with pytest.raises(ValueError, match="unique"):
            Vocabulary(("a", "b", "a"))


class TestTransform:
    def test_multi_hot_rows_drop_unknown_words(self):
        vocab = Vocabulary(("movie", "great", "bad"))
        x = vocab.transform(["bad bad movie unknownword", "", "GREAT, great<br />movie!", "nothing known"])
        assert_multi_hot(x)
        np.testing.assert_array_equal(x.toarray(), [[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 0, 0]])

    def test_fit_transform_equals_fit_then_transform(self):
        texts = ["the cat sat on the mat", b"the dog \xff sat", "", "a cat, a dog<br />a mat"]
        vocab, x = Vocabulary.fit_transform(texts, 4)
        assert_multi_hot(x)
        assert (x != vocab.transform(texts)).nnz == 0
        assert vocab == Vocabulary.fit(texts, 4)

    def test_matches_a_naive_reference(self):
        rng = random.Random(0)
        words = [f"w{i}" for i in range(40)]
        texts = [" ".join(rng.choices(words, k=rng.randint(0, 30))) for _ in range(60)]
        vocab, x = Vocabulary.fit_transform(texts, 15)
        counts = {}
        for text in texts:
            for word in text.split():
                counts[word] = counts.get(word, 0) + 1
        expected_words = sorted(counts, key=lambda word: (-counts[word], word))[:15]
        assert list(vocab.words) == expected_words
        dense = np.zeros((len(texts), 15), np.float32)
        for row, text in enumerate(texts):
            for word in text.split():
                if word in expected_words:
                    dense[row, expected_words.index(word)] = 1.0
        assert_multi_hot(x)
        np.testing.assert_array_equal(x.toarray(), dense)

    def test_one_text_instead_of_a_list_is_an_error(self):
        with pytest.raises(TypeError, match="sequence of texts"):
            Vocabulary(("a",)).transform("a review")


class TestSerialisation:
    def test_round_trip_through_json(self):
        vocab = Vocabulary.fit(["b a c c", "c b d"], 3)
        restored = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
        assert restored == vocab
        texts = ["a b c d", "c"]
        assert (restored.transform(texts) != vocab.transform(texts)).nnz == 0

    def test_other_tokeniser_version_is_refused(self):
        saved = Vocabulary(("a",)).to_dict()
        saved["tokenizer"] = "some-future-tokeniser"
        with pytest.raises(ImdbJaxError, match="tokeniser"):
            Vocabulary.from_dict(saved)

    @pytest.mark.parametrize("saved", [{}, {"words": ["a"]}, [], {"words": [1, 2], "tokenizer": "x"}])
    def test_malformed_dict_is_a_clear_error(self, saved):
        with pytest.raises(ImdbJaxError, match="saved vocabulary|tokeniser"):
            Vocabulary.from_dict(saved)
