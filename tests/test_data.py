"""Loading: the readers, the cache and ``load_imdb``, on fake aclImdb data and the real data set."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from imdb_jax import IMDbData, Split, Vocabulary, load_imdb, tokenize
from imdb_jax.data import sources
from imdb_jax.data.cache import CacheWarning
from imdb_jax.errors import DataNotFoundError, ImdbJaxError


def assert_same_data(a: IMDbData, b: IMDbData) -> None:
    assert a.vocab == b.vocab
    for split_a, split_b in ((a.train, b.train), (a.test, b.test)):
        assert split_a.x.shape == split_b.x.shape
        np.testing.assert_array_equal(split_a.x.indptr, split_b.x.indptr)
        np.testing.assert_array_equal(split_a.x.indices, split_b.x.indices)
        np.testing.assert_array_equal(split_a.x.data, split_b.x.data)
        np.testing.assert_array_equal(split_a.y, split_b.y)


def assert_multi_hot(x: sp.csr_matrix) -> None:
    assert sp.isspmatrix_csr(x) and x.dtype == np.float32
    assert x.has_canonical_format  # sorted indices, no duplicates
    assert np.all(x.data == 1.0)


def documented_order(reviews: dict, split: str) -> list[tuple[bytes, int]]:
    """The aclImdb order as documented in imdb_jax.data.sources, written out independently."""
    entries = []
    for label in ("neg", "pos"):
        for name, text in reviews[(split, label)].items():
            entries.append(((label, int(name.split("_")[0]), name), text, int(label == "pos")))
    entries.sort(key=lambda entry: entry[0])
    permutation = np.random.default_rng(sources.ACLIMDB_ORDER_SEED).permutation(len(entries))
    return [(entries[i][1], entries[i][2]) for i in permutation]


class _FakeTfdsSplit:
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitems__(self, indices):
        return [self.rows[i] for i in indices]


@pytest.fixture()
def fake_tfds_dir(tmp_path, fake_reviews, monkeypatch) -> Path:
    """A TFDS data_dir whose splits (served by a stand-in for tfds.data_source) hold FAKE_REVIEWS
    in the aclImdb reader's order, with TFDS's record format and label convention (1 = pos)."""
    version_dir = tmp_path / "tfds" / "imdb_reviews" / "plain_text" / "1.0.0"
    version_dir.mkdir(parents=True)
    (version_dir / "dataset_info.json").write_text("{}")
    splits = {}
    for split in ("train", "test"):
        (version_dir / f"imdb_reviews-{split}.array_record-00000-of-00001").write_bytes(b"x")
        rows = [{"text": text, "label": np.int64(label)} for text, label in documented_order(fake_reviews, split)]
        splits[split] = _FakeTfdsSplit(rows)
    monkeypatch.setattr(sources, "_open_tfds", lambda data_dir: splits)
    return tmp_path / "tfds"


# ---------------------------------------------------------------- readers


def test_aclimdb_folder_reader_order_and_labels(fake_aclimdb, fake_reviews):
    raw = sources.resolve_source(fake_aclimdb).read()
    for split, texts, labels in (
        ("train", raw.train_texts, raw.train_labels),
        ("test", raw.test_texts, raw.test_labels),
    ):
        assert list(zip(texts, labels.tolist())) == documented_order(fake_reviews, split)
    assert raw.train_labels.sum() == 3 and len(raw.train_labels) == 6


def test_archive_reader_equals_folder_reader(fake_aclimdb, fake_aclimdb_archive):
    from_folder = sources.resolve_source(fake_aclimdb).read()
    from_archive = sources.resolve_source(fake_aclimdb_archive).read()
    assert from_archive.train_texts == from_folder.train_texts
    assert from_archive.test_texts == from_folder.test_texts
    np.testing.assert_array_equal(from_archive.train_labels, from_folder.train_labels)
    np.testing.assert_array_equal(from_archive.test_labels, from_folder.test_labels)


def test_folder_archive_and_tfds_paths_give_equal_data(tmp_path, fake_aclimdb, fake_aclimdb_archive, fake_tfds_dir):
    loaded = {
        name: load_imdb(num_words=8, data_dir=path, cache_dir=tmp_path / f"cache-{name}", progress=False)
        for name, path in (("folder", fake_aclimdb), ("archive", fake_aclimdb_archive), ("tfds", fake_tfds_dir))
    }
    assert loaded["folder"].source.startswith("aclImdb folder")
    assert loaded["archive"].source.startswith("aclImdb archive")
    assert loaded["tfds"].source.startswith("tfds imdb_reviews/plain_text:1.0.0")
    assert_same_data(loaded["folder"], loaded["archive"])
    assert_same_data(loaded["folder"], loaded["tfds"])


def test_parent_of_aclimdb_folder_is_found(tmp_path, fake_aclimdb):
    data = load_imdb(num_words=5, data_dir=fake_aclimdb.parent, cache_dir=tmp_path / "c", progress=False)
    assert data.source == f"aclImdb folder {fake_aclimdb}"


def test_vectorised_data_uses_train_vocabulary_only(tmp_path, fake_aclimdb, fake_reviews):
    data = load_imdb(num_words=100, data_dir=fake_aclimdb, cache_dir=tmp_path / "c", progress=False)
    train_texts = [text for text, _ in documented_order(fake_reviews, "train")]
    vocab, x_train = Vocabulary.fit_transform(train_texts, 100)
    assert data.vocab == list(vocab.words) and data.vocabulary == vocab
    assert "zzzunseen" not in data.vocab  # appears in a test review only
    assert "great" == data.vocab[0]
    assert (data.x_train != x_train).nnz == 0
    test_texts = [text for text, _ in documented_order(fake_reviews, "test")]
    assert (data.x_test != vocab.transform(test_texts)).nnz == 0
    assert (data.vectorize(test_texts) != data.x_test).nnz == 0
    for x in (data.x_train, data.x_test):
        assert_multi_hot(x)
    assert data.y_train.dtype == data.y_test.dtype == np.float32
    assert set(data.y_train.tolist()) == {0.0, 1.0}
    empty_row = [i for i, (text, _) in enumerate(documented_order(fake_reviews, "test")) if text == b""]
    assert data.x_test[empty_row[0]].nnz == 0  # empty review -> all-zero row


def test_split_validation_takes_the_first_rows(tmp_path, fake_aclimdb):
    data = load_imdb(num_words=10, data_dir=fake_aclimdb, cache_dir=tmp_path / "c", progress=False)
    train, val = data.split_validation(2)
    assert isinstance(train, Split) and isinstance(val, Split)
    assert (len(train), len(val)) == (4, 2)
    assert (val.x != data.x_train[:2]).nnz == 0 and (train.x != data.x_train[2:]).nnz == 0
    np.testing.assert_array_equal(val.y, data.y_train[:2])
    assert train.num_words == val.num_words == data.num_words == 10
    for bad in (0, 6, -1):
        with pytest.raises(ImdbJaxError, match="num_validation"):
            data.split_validation(bad)


# ---------------------------------------------------------------- errors


def test_missing_folder_is_a_helpful_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as caught:
        load_imdb(data_dir=missing, cache_dir=tmp_path / "c", progress=False)
    message = str(caught.value)
    assert str(missing) in message and "does not exist" in message
    assert 'tfds.builder("imdb_reviews", file_format="array_record").download_and_prepare()' in message
    assert "TFDS_DATA_DIR" in message and "aclImdb" in message


def test_folder_without_the_data_set_says_where_it_looked(tmp_path):
    with pytest.raises(DataNotFoundError, match="imdb_reviews/plain_text/1.0.0/dataset_info.json"):
        load_imdb(data_dir=tmp_path, cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(DataNotFoundError, match="neither an aclImdb folder"):
        load_imdb(data_dir=tmp_path, source="aclimdb", progress=False)


def test_default_data_dir_comes_from_tfds_data_dir_then_home(tmp_path, monkeypatch, fake_aclimdb):
    monkeypatch.setenv("TFDS_DATA_DIR", str(fake_aclimdb))
    assert load_imdb(num_words=5, cache_dir=tmp_path / "c", progress=False).source.startswith("aclImdb folder")
    monkeypatch.delenv("TFDS_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "tensorflow_datasets")):
        load_imdb(num_words=5, cache_dir=tmp_path / "c", progress=False)


def test_tfds_failures_become_data_not_found(fake_tfds_dir, monkeypatch, tmp_path):
    def broken(data_dir):
        raise RuntimeError("deep inside tfds")

    monkeypatch.setattr(sources, "_open_tfds", broken)
    with pytest.raises(DataNotFoundError, match="deep inside tfds"):
        load_imdb(num_words=5, data_dir=fake_tfds_dir, cache_dir=tmp_path / "c", progress=False)


def test_tfds_folder_in_another_file_format(tmp_path):
    version_dir = tmp_path / "imdb_reviews" / "plain_text" / "1.0.0"
    version_dir.mkdir(parents=True)
    (version_dir / "dataset_info.json").write_text("{}")
    (version_dir / "imdb_reviews-train.tfrecord-00000-of-00001").write_bytes(b"x")
    with pytest.raises(DataNotFoundError, match='file_format="array_record"'):
        load_imdb(data_dir=tmp_path, progress=False)


@pytest.mark.parametrize(("kwargs", "match"), [({"num_words": 0}, "num_words"), ({"source": "keras"}, "source")])
def test_bad_arguments(fake_aclimdb, kwargs, match):
    with pytest.raises(ImdbJaxError, match=match):
        load_imdb(data_dir=fake_aclimdb, progress=False, **kwargs)


# ---------------------------------------------------------------- cache


def test_second_load_comes_from_the_cache(tmp_path, fake_aclimdb, monkeypatch):
    import imdb_jax.data.imdb

    cold = load_imdb(num_words=8, data_dir=fake_aclimdb, cache_dir=tmp_path / "c", progress=False)
    assert not cold.from_cache and cold.cache_path.is_file()
    assert cold.cache_path.parent == tmp_path / "c"

    def no_tokenising(*args, **kwargs):
        raise AssertionError("a warm load read and tokenised the reviews again")

    # What makes a warm load fast, checked as what it does rather than in seconds (which depend
    # on the machine and its load): it reads no review.
    monkeypatch.setattr(imdb_jax.data.imdb, "_tokenised", no_tokenising)
    warm = load_imdb(num_words=8, data_dir=fake_aclimdb, cache_dir=tmp_path / "c", progress=False)
    assert warm.from_cache and warm.cache_path == cold.cache_path
    assert_same_data(cold, warm)
    assert [p.name for p in (tmp_path / "c").iterdir()] == [cold.cache_path.name]  # no temp files left


def test_cache_dir_defaults(tmp_path, monkeypatch, fake_aclimdb):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("IMDB_JAX_CACHE_DIR", raising=False)
    assert (
        load_imdb(num_words=5, data_dir=fake_aclimdb, progress=False).cache_path.parent == tmp_path / "xdg" / "imdb_jax"
    )
    monkeypatch.setenv("IMDB_JAX_CACHE_DIR", str(tmp_path / "env"))
    assert load_imdb(num_words=5, data_dir=fake_aclimdb, progress=False).cache_path.parent == tmp_path / "env"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda blob: blob[: len(blob) // 2], "truncated"),
        (lambda blob: blob[:-300] + bytes(b ^ 0xFF for b in blob[-300:-290]) + blob[-290:], "checksum mismatch"),
        (lambda blob: b"garbage", "bad header"),
    ],
    ids=["truncated", "tampered", "garbage"],
)
def test_damaged_cache_is_reported_and_rebuilt(tmp_path, fake_aclimdb, damage, reason):
    cold = load_imdb(num_words=8, data_dir=fake_aclimdb, cache_dir=tmp_path, progress=False)
    cold.cache_path.write_bytes(damage(cold.cache_path.read_bytes()))
    with pytest.warns(CacheWarning, match=rf"{cold.cache_path.name}.*{reason}.*rebuilding"):
        rebuilt = load_imdb(num_words=8, data_dir=fake_aclimdb, cache_dir=tmp_path, progress=False)
    assert not rebuilt.from_cache
    assert_same_data(cold, rebuilt)
    again = load_imdb(num_words=8, data_dir=fake_aclimdb, cache_dir=tmp_path, progress=False)
    assert again.from_cache  # the rebuilt file is valid


def test_cache_for_other_settings_is_not_used(tmp_path, fake_aclimdb):
    eight = load_imdb(num_words=8, data_dir=fake_aclimdb, cache_dir=tmp_path, progress=False)
    nine = load_imdb(num_words=9, data_dir=fake_aclimdb, cache_dir=tmp_path, progress=False)
    assert nine.cache_path != eight.cache_path and not nine.from_cache
    nine.cache_path.write_bytes(eight.cache_path.read_bytes())  # a valid file under the wrong name
    with pytest.warns(CacheWarning, match="other settings"):
        reloaded = load_imdb(num_words=9, data_dir=fake_aclimdb, cache_dir=tmp_path, progress=False)
    assert not reloaded.from_cache and reloaded.num_words == 9


def test_edited_review_invalidates_the_cache(tmp_path, fake_aclimdb):
    first = load_imdb(num_words=8, data_dir=fake_aclimdb, cache_dir=tmp_path / "c", progress=False)
    (fake_aclimdb / "train" / "pos" / "0_9.txt").write_bytes(b"now a much longer review about a great great movie")
    second = load_imdb(num_words=8, data_dir=fake_aclimdb, cache_dir=tmp_path / "c", progress=False)
    assert second.cache_path != first.cache_path and not second.from_cache


def test_interrupted_write_leaves_the_old_cache(tmp_path, fake_aclimdb, monkeypatch):
    from imdb_jax.data import cache

    first = load_imdb(num_words=8, data_dir=fake_aclimdb, cache_dir=tmp_path / "c", progress=False)
    before = first.cache_path.read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.save_arrays(first.cache_path, {"a": np.zeros(3)}, {"key": "other"})
    assert first.cache_path.read_bytes() == before
    assert [p.name for p in (tmp_path / "c").iterdir()] == [first.cache_path.name]  # temp file removed


def test_unwritable_cache_warns_and_still_loads(tmp_path, fake_aclimdb):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.warns(CacheWarning, match="could not write"):
        data = load_imdb(num_words=8, data_dir=fake_aclimdb, cache_dir=not_a_folder, progress=False)
    assert data.cache_path is None and len(data.train) == 6


def test_use_cache_false_writes_nothing(tmp_path, fake_aclimdb):
    data = load_imdb(num_words=8, data_dir=fake_aclimdb, cache_dir=tmp_path / "c", progress=False, use_cache=False)
    assert data.cache_path is None and not (tmp_path / "c").exists()


def test_progress_bar_goes_to_stderr(tmp_path, fake_aclimdb, capsys):
    load_imdb(num_words=8, data_dir=fake_aclimdb, cache_dir=tmp_path, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "tokenising train and test" in captured.err


# ---------------------------------------------------------------- n-gram and weighted features


def synthetic_rows(seed: int, reviews: int) -> list[dict]:
    """TFDS-style records of random reviews over a small alphabet (many shared bigrams)."""
    rng = np.random.default_rng(seed)
    words = np.array(["good", "bad", "film", "plot", "not", "very", "great", "awful", "the", "acting"])
    return [
        {"text": " ".join(rng.choice(words, rng.integers(3, 12))).encode(), "label": np.int64(rng.integers(0, 2))}
        for _ in range(reviews)
    ]


@pytest.fixture()
def tfds_dir_with(tmp_path, monkeypatch):
    """``tfds_dir_with(train_rows, test_rows) -> data_dir`` serving those records as TFDS splits."""
    version_dir = tmp_path / "tfds" / "imdb_reviews" / "plain_text" / "1.0.0"
    version_dir.mkdir(parents=True)
    (version_dir / "dataset_info.json").write_text("{}")
    for split in ("train", "test"):
        (version_dir / f"imdb_reviews-{split}.array_record-00000-of-00001").write_bytes(b"x")

    def serve(train_rows: list[dict], test_rows: list[dict]) -> Path:
        splits = {"train": _FakeTfdsSplit(train_rows), "test": _FakeTfdsSplit(test_rows)}
        monkeypatch.setattr(sources, "_open_tfds", lambda data_dir: splits)
        return tmp_path / "tfds"

    return serve


NGRAM_SETTINGS = {"ngrams": 2, "num_words": 30, "weighting": "nb", "progress": False, "use_cache": False}


def test_features_are_fitted_on_the_training_reviews_after_the_held_out_ones(tfds_dir_with):
    from imdb_jax.data.features import FeatureSpec

    train, test = synthetic_rows(0, 40), synthetic_rows(1, 10)
    data = load_imdb(data_dir=tfds_dir_with(train, test), held_out=15, **NGRAM_SETTINGS)
    texts, labels = [row["text"] for row in train], np.array([int(row["label"]) for row in train])
    spec, x_rest = FeatureSpec.fit_transform(texts[15:], labels[15:], ngrams=2, num_words=30, weighting="nb")
    assert data.features == spec and data.vocabulary is data.features and data.held_out == 15
    assert (data.x_train[15:] != x_rest).nnz == 0
    assert (data.x_train[:15] != spec.transform(texts[:15])).nnz == 0  # held out, still vectorised
    assert (data.x_test != spec.transform([row["text"] for row in test])).nnz == 0


def test_held_out_and_test_reviews_never_change_the_features(tfds_dir_with):
    train, test = synthetic_rows(0, 40), synthetic_rows(1, 10)
    base = load_imdb(data_dir=tfds_dir_with(train, test), held_out=15, **NGRAM_SETTINGS)
    # Other texts and flipped labels in the held-out rows, and another test set.
    changed = synthetic_rows(2, 15) + train[15:]
    for row in changed[:15]:
        row["label"] = np.int64(1 - int(row["label"]))
    other = load_imdb(data_dir=tfds_dir_with(changed, synthetic_rows(3, 10)), held_out=15, **NGRAM_SETTINGS)
    assert other.features == base.features
    assert (other.x_train[15:] != base.x_train[15:]).nnz == 0
    np.testing.assert_array_equal(other.x_train[15:].data, base.x_train[15:].data)


def test_the_fitted_training_reviews_do_change_the_features(tfds_dir_with):
    train, test = synthetic_rows(0, 40), synthetic_rows(1, 10)
    base = load_imdb(data_dir=tfds_dir_with(train, test), held_out=15, **NGRAM_SETTINGS)
    flipped = [dict(row) for row in train]
    flipped[20]["label"] = np.int64(1 - int(flipped[20]["label"]))
    relabelled = load_imdb(data_dir=tfds_dir_with(flipped, test), held_out=15, **NGRAM_SETTINGS)
    assert relabelled.features.terms == base.features.terms
    assert not np.array_equal(relabelled.features.weights, base.features.weights)  # NB ratios use the labels
    edited = [dict(row) for row in train]
    edited[30]["text"] = b"zebra zebra zebra zebra zebra zebra zebra zebra"
    rewritten = load_imdb(data_dir=tfds_dir_with(edited, test), held_out=15, **NGRAM_SETTINGS)
    assert "zebra" in rewritten.features.terms and rewritten.features != base.features


def test_validation_must_not_overlap_the_fitted_reviews(tfds_dir_with):
    data_dir = tfds_dir_with(synthetic_rows(0, 40), synthetic_rows(1, 10))
    data = load_imdb(data_dir=data_dir, held_out=15, **NGRAM_SETTINGS)
    train, val = data.split_validation(15)
    assert (len(train), len(val)) == (25, 15)
    assert len(data.split_validation(10)[1]) == 10  # fewer than held out: no leak
    with pytest.raises(ImdbJaxError, match="held_out=16"):
        data.split_validation(16)
    with pytest.raises(ImdbJaxError, match="held_out=10"):
        load_imdb(data_dir=data_dir, **NGRAM_SETTINGS).split_validation(10)
    plain = load_imdb(num_words=8, data_dir=data_dir, progress=False, use_cache=False)
    assert len(plain.split_validation(10)[1]) == 10  # the seed's protocol for plain words stays


@pytest.mark.parametrize("weighting", ["binary", "tfidf", "nb"])
def test_ngram_features_are_cached(tmp_path, fake_aclimdb, weighting):
    settings = {"num_words": 20, "ngrams": 3, "weighting": weighting, "held_out": 2, "data_dir": fake_aclimdb}
    cold = load_imdb(cache_dir=tmp_path, progress=False, **settings)
    warm = load_imdb(cache_dir=tmp_path, progress=False, **settings)
    fresh = load_imdb(use_cache=False, progress=False, **settings)
    assert not cold.from_cache and warm.from_cache and warm.cache_path == cold.cache_path
    assert f"-3g-{weighting}-20w-h2-" in cold.cache_path.name
    for data in (warm, fresh):
        assert data.features == cold.features and data.held_out == 2
        for split, expected in ((data.train, cold.train), (data.test, cold.test)):
            for name in ("indptr", "indices", "data"):
                np.testing.assert_array_equal(getattr(split.x, name), getattr(expected.x, name))
            assert split.x.dtype == np.float32 and split.x.has_canonical_format


def test_every_feature_setting_has_its_own_cache_and_the_default_keeps_its_key(tmp_path, fake_aclimdb):
    from imdb_jax.data import cache
    from imdb_jax.data.text import TOKENIZER_VERSION

    default = load_imdb(num_words=8, data_dir=fake_aclimdb, cache_dir=tmp_path, progress=False)
    identity = sources.resolve_source(fake_aclimdb).identity
    key = cache.cache_key({"source": identity, "tokenizer": TOKENIZER_VERSION, "num_words": 8})
    assert default.cache_path.name == f"imdb-aclimdb-folder-8w-{key[:20]}.cache"  # the name before n-grams
    assert isinstance(default.vocabulary, Vocabulary) and default.features.plain
    paths = {default.cache_path}
    for change in ({"ngrams": 2}, {"weighting": "tfidf"}, {"min_count": 2}, {"held_out": 1}, {"num_words": None}):
        data = load_imdb(**{"num_words": 8, **change}, data_dir=fake_aclimdb, cache_dir=tmp_path, progress=False)
        assert not data.from_cache and data.cache_path not in paths
        paths.add(data.cache_path)


def test_words_held_out_and_counted_at_least_twice(tmp_path, fake_aclimdb, fake_reviews):
    data = load_imdb(num_words=None, min_count=2, held_out=2, data_dir=fake_aclimdb, progress=False, use_cache=False)
    texts = [text for text, _ in documented_order(fake_reviews, "train")][2:]
    counts = Counter(word for text in texts for word in tokenize(text))
    assert data.vocab == sorted((word for word in counts if counts[word] >= 2), key=lambda word: (-counts[word], word))
    assert_multi_hot(data.x_train)


def test_other_feature_sets_reuse_the_tokenised_reviews(tmp_path, fake_aclimdb, monkeypatch):
    first = load_imdb(num_words=20, ngrams=2, weighting="nb", data_dir=fake_aclimdb, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("imdb-aclimdb-folder-tokens-*.cache"))) == 1

    def unread(self, progress=False):
        raise AssertionError("the reviews were read again")

    monkeypatch.setattr(sources.Source, "read", unread)
    settings = {
        "num_words": 30,
        "ngrams": 3,
        "weighting": "tfidf",
        "held_out": 1,
        "data_dir": fake_aclimdb,
        "progress": False,
    }
    second = load_imdb(cache_dir=tmp_path, **settings)
    assert not second.from_cache and second.features != first.features
    monkeypatch.undo()
    fresh = load_imdb(use_cache=False, **settings)
    assert second.features == fresh.features
    for split, expected in ((second.train, fresh.train), (second.test, fresh.test)):
        np.testing.assert_array_equal(split.x.indices, expected.x.indices)
        np.testing.assert_array_equal(split.x.data, expected.x.data)
        np.testing.assert_array_equal(split.y, expected.y)


def test_a_damaged_token_cache_is_reported_and_rebuilt(tmp_path, fake_aclimdb):
    settings = {"num_words": 20, "ngrams": 2, "data_dir": fake_aclimdb, "cache_dir": tmp_path, "progress": False}
    first = load_imdb(**settings)
    (tokens_file,) = tmp_path.glob("imdb-aclimdb-folder-tokens-*.cache")
    tokens_file.write_bytes(tokens_file.read_bytes()[:-10])
    first.cache_path.unlink()
    with pytest.warns(CacheWarning, match="ignoring the token cache.*rebuilding"):
        again = load_imdb(**settings)
    assert again.features == first.features and (again.x_train != first.x_train).nnz == 0
    assert load_imdb(**{**settings, "ngrams": 3}).num_words == 20  # the rebuilt file reads without a warning


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ngrams": 0}, "ngrams"),
        ({"weighting": "idf"}, "weighting"),
        ({"min_count": 0}, "min_count"),
        ({"held_out": -1}, "held_out"),
        ({"held_out": 6}, "held_out must be less than the 6"),
    ],
)
def test_bad_feature_arguments(tmp_path, fake_aclimdb, kwargs, match):
    with pytest.raises(ImdbJaxError, match=match):
        load_imdb(data_dir=fake_aclimdb, cache_dir=tmp_path, progress=False, **kwargs)


def test_data_command_builds_ngram_features(tmp_path, fake_aclimdb, capsys):
    from imdb_jax.cli import main

    argv = ["data", "--data-dir", str(fake_aclimdb), "--cache-dir", str(tmp_path), "--no-progress", "--json"]
    assert main([*argv, "--ngrams", "2", "--weighting", "nb", "--held-out", "2", "--num-words", "15"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["ngrams"], summary["weighting"], summary["held_out"], summary["num_words"]) == (2, "nb", 2, 15)
    assert main([*argv, "--min-count", "0"]) == 2
    assert "--min-count must be a positive integer" in capsys.readouterr().err


# ---------------------------------------------------------------- real data


def test_real_data_shapes_labels_and_format(imdb_data):
    for split in (imdb_data.train, imdb_data.test):
        assert split.x.shape == (25000, 10000) and len(split) == 25000
        assert_multi_hot(split.x)
        assert split.y.dtype == np.float32 and split.y.shape == (25000,)
        assert set(np.unique(split.y).tolist()) == {0.0, 1.0}
        assert int(split.y.sum()) == 12500
    assert len(imdb_data.vocab) == 10000 and imdb_data.vocab[:3] == ["the", "and", "a"]
    mean_train = imdb_data.x_train.nnz / 25000
    mean_test = imdb_data.x_test.nnz / 25000
    print(f"mean unique words per review: train {mean_train:.1f}, test {mean_test:.1f}")
    assert 100 < mean_train < 200 and 100 < mean_test < 200


def test_real_data_first_review_and_vectorize(imdb_data):
    first = "This was an absolutely terrible movie."
    assert imdb_data.y_train[0] == 0.0  # TFDS label 0 = negative
    row = imdb_data.vectorize([first, first.encode()])
    assert (row[0] != row[1]).nnz == 0
    words = {imdb_data.vocab[j] for j in row[0].indices}
    assert words == {"this", "was", "an", "absolutely", "terrible", "movie"}
    assert set(row[0].indices) <= set(imdb_data.x_train[0].indices)


def test_real_split_validation_is_the_first_10000(imdb_data):
    train, val = imdb_data.split_validation(10000)
    assert (len(train), len(val)) == (15000, 10000)
    assert (val.x != imdb_data.x_train[:10000]).nnz == 0
    assert (train.x != imdb_data.x_train[10000:]).nnz == 0
    np.testing.assert_array_equal(val.y, imdb_data.y_train[:10000])
    assert 4000 < val.y.sum() < 6000  # both labels among the first rows


def test_real_vocabulary_is_the_top_training_words(imdb_data, real_data_dir):
    raw = sources.resolve_source(real_data_dir, source="tfds").read()
    counts = Counter()
    for text in raw.train_texts:
        counts.update(tokenize(text))
    expected = sorted(counts, key=lambda word: (-counts[word], word))[:10000]
    assert imdb_data.vocab == expected  # counted over train only: test words would change the ranks


def test_real_warm_load_is_fast_and_identical(imdb_data, real_data_dir, imdb_cache_dir, monkeypatch):
    import imdb_jax.data.imdb

    assert imdb_data.cache_path is not None and imdb_data.cache_path.parent == imdb_cache_dir
    size_mb = imdb_data.cache_path.stat().st_size / 1e6
    monkeypatch.setattr(
        imdb_jax.data.imdb, "_tokenised", lambda *args, **kwargs: pytest.fail("the warm load tokenised the reviews")
    )
    start = time.perf_counter()
    warm = load_imdb(num_words=10000, data_dir=real_data_dir, cache_dir=imdb_cache_dir, source="tfds", progress=False)
    seconds = time.perf_counter() - start
    print(
        f"cold {imdb_data.load_seconds:.1f} s (from cache: {imdb_data.from_cache}), warm {seconds:.2f} s, "
        f"cache {size_mb:.1f} MB"
    )
    assert warm.from_cache
    if not imdb_data.from_cache:  # measured against the cold load of the same session, on the same machine
        assert seconds < imdb_data.load_seconds / 5
    assert size_mb < 40
    assert_same_data(imdb_data, warm)
