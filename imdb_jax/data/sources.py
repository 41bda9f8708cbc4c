"""Where the IMDb reviews come from: the prepared TFDS data set or the original ``aclImdb`` files.

Every reader returns the same ``RawReviews`` (texts as bytes, labels 1 = positive, 0 = negative),
so one vectorising function serves them all. Finding a source (``resolve_source``) is cheap: it
only looks at folder layouts and file sizes, so a cached load never reads or imports TFDS.

Order of the reviews:
    TFDS: the data set's own deterministic order (the order of ``tfds.data_source``).
    aclImdb (folder or ``aclImdb_v1.tar.gz``): within each split the files are sorted by
    (label folder ``neg`` before ``pos``, numeric review id, file name), then permuted with
    ``numpy.random.default_rng(ACLIMDB_ORDER_SEED)``. The fixed permutation mixes the labels, so
    "the first N training reviews" (the validation protocol) is not all negative, as it would be
    in folder order; it depends only on the set of file names, never on the file system.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imdb_jax.errors import DataNotFoundError, ImdbJaxError

TFDS_NAME = "imdb_reviews"
TFDS_CONFIG = "plain_text"
TFDS_VERSION = "1.0.0"
ACLIMDB_ORDER_SEED = 113  # the seed Keras' imdb.load_data shuffles with
SOURCES = ("auto", "tfds", "aclimdb")
_SPLITS = ("train", "test")
_LABELS = {"neg": 0, "pos": 1}
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg)/([^/]+\.txt)$")

HOW_TO_GET_DATA = (
    "To get it: on a machine with TensorFlow and internet access run\n"
    '    tfds.builder("imdb_reviews", file_format="array_record").download_and_prepare()\n'
    "and copy the resulting folder here, then set TFDS_DATA_DIR to it (or pass data_dir / --data-dir);\n"
    "or pass the original aclImdb folder (train/pos, train/neg, test/pos, test/neg) or the\n"
    "aclImdb_v1.tar.gz archive as data_dir / --data-dir."
)


@dataclasses.dataclass(frozen=True)
class RawReviews:
    """The labelled reviews of both splits, before vectorising.

    Attributes:
        train_texts: the 25,000 training reviews as UTF-8 bytes, in the source's order.
        train_labels: uint8[len(train_texts)] 1 = positive, 0 = negative.
        test_texts: the test reviews.
        test_labels: uint8[len(test_texts)].
    """

    train_texts: list[bytes]
    train_labels: np.ndarray
    test_texts: list[bytes]
    test_labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Source:
    """A located data set, not yet read.

    Attributes:
        kind: ``"tfds"``, ``"aclimdb-folder"`` or ``"aclimdb-archive"``.
        path: the TFDS data_dir, the aclImdb folder or the archive.
        description: human-readable where-it-comes-from string.
        identity: JSON-serialisable facts that change whenever the data could (keys the cache).
    """

    kind: str
    path: Path
    description: str
    identity: dict[str, Any] = dataclasses.field(compare=False)

    def read(self, progress: bool = False) -> RawReviews:
        """Reads both labelled splits (the unlabelled TFDS split and aclImdb's unsup/ are skipped)."""
        readers: dict[str, Callable[[Path, bool], RawReviews]] = {
            "tfds": _read_tfds,
            "aclimdb-folder": _read_aclimdb_folder,
            "aclimdb-archive": _read_aclimdb_archive,
        }
        return readers[self.kind](self.path, progress)


def default_tfds_data_dir() -> Path:
    """TFDS's default data_dir, computed as TFDS does without importing it (it takes ~0.5 s)."""
    # Mirrors tensorflow_datasets.core.constants.get_default_data_dir.
    return Path(os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets")))


def resolve_source(data_dir: str | os.PathLike | None = None, source: str = "auto") -> Source:
    """Finds the data set (see ``load_imdb`` for the rules), reading nothing but folder listings.

    Args:
        data_dir: a TFDS data_dir, an aclImdb folder (or a folder holding ``aclImdb/``), or an
            ``aclImdb_v1.tar.gz``; default ``$TFDS_DATA_DIR``, else TFDS's default folder.
        source: ``"tfds"``, ``"aclimdb"`` or ``"auto"`` (aclImdb when the path looks like one).

    Returns:
        The located source.

    Raises:
        DataNotFoundError: nothing usable at the path; the message says where it looked and how
            to get the data.
        ImdbJaxError: an unknown ``source``.
    """
    if source not in SOURCES:
        raise ImdbJaxError(f"source must be one of {', '.join(SOURCES)}; got {source!r}")
    if data_dir is not None:
        path, origin = Path(data_dir).expanduser(), "data_dir"
    elif "TFDS_DATA_DIR" in os.environ:
        path, origin = Path(os.environ["TFDS_DATA_DIR"]).expanduser(), "TFDS_DATA_DIR"
    else:
        path, origin = default_tfds_data_dir(), "TFDS's default data_dir"
    path = path.absolute()
    if not path.exists():
        raise DataNotFoundError(f"IMDb data not found: {path} ({origin}) does not exist.\n{HOW_TO_GET_DATA}")
    if source in ("auto", "aclimdb"):
        if path.is_file() and path.name.endswith(_ARCHIVE_SUFFIXES):
            stat = path.stat()
            return Source(
                "aclimdb-archive",
                path,
                f"aclImdb archive {path}",
                {"kind": "aclimdb-archive", "path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
            )
        for folder in (path, path / "aclImdb"):
            if _is_aclimdb_folder(folder):
                return Source(
                    "aclimdb-folder",
                    folder,
                    f"aclImdb folder {folder}",
                    {"kind": "aclimdb-folder", "path": str(folder), "files": _folder_fingerprint(folder)},
                )
        if source == "aclimdb":
            raise DataNotFoundError(
                f"IMDb data not found: {path} ({origin}) is neither an aclImdb folder with "
                f"train/pos, train/neg, test/pos and test/neg nor an aclImdb_v1.tar.gz archive.\n{HOW_TO_GET_DATA}"
            )
    return _tfds_source(path, origin)


def _tfds_source(data_dir: Path, origin: str) -> Source:
    version_dir = data_dir / TFDS_NAME / TFDS_CONFIG / TFDS_VERSION
    name = f"{TFDS_NAME}/{TFDS_CONFIG}:{TFDS_VERSION}"
    if not (version_dir / "dataset_info.json").is_file():
        raise DataNotFoundError(
            f"IMDb data not found: the prepared TFDS data set {name} is not in {data_dir} ({origin}); "
            f"looked for {version_dir}/dataset_info.json.\n{HOW_TO_GET_DATA}"
        )
    shards = {}
    for split in _SPLITS:
        found = sorted(version_dir.glob(f"{TFDS_NAME}-{split}.array_record-*"))
        if not found:
            raise DataNotFoundError(
                f"IMDb data incomplete: {version_dir} has no array_record files for the {split} split "
                f"(was it prepared in another file format?). tfds.data_source needs "
                f'file_format="array_record".\n{HOW_TO_GET_DATA}'
            )
        shards[split] = [[shard.name, shard.stat().st_size] for shard in found]
    return Source(
        "tfds",
        data_dir,
        f"tfds {name} in {data_dir}",
        {"kind": "tfds", "name": TFDS_NAME, "config": TFDS_CONFIG, "version": TFDS_VERSION, "shards": shards},
    )


def _is_aclimdb_folder(folder: Path) -> bool:
    return all((folder / split / label).is_dir() for split in _SPLITS for label in _LABELS)


def _folder_fingerprint(folder: Path) -> dict[str, Any]:
    """Count and SHA-256 of (relative path, size, mtime_ns) of every review file: changes with any edit."""
    entries = []
    for split in _SPLITS:
        for label in _LABELS:
            with os.scandir(folder / split / label) as scan:
                for entry in scan:
                    if entry.name.endswith(".txt"):
                        stat = entry.stat()
                        entries.append(f"{split}/{label}/{entry.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n")
    entries.sort()
    return {"count": len(entries), "sha256": hashlib.sha256("".join(entries).encode()).hexdigest()}


def _review_sort_key(label: str, name: str) -> tuple:
    review_id = name.split("_", 1)[0]
    return (label, int(review_id) if review_id.isdigit() else sys.maxsize, name)


def _ordered(files: dict[str, dict[tuple, bytes]]) -> RawReviews:
    """Puts each split's {sort key: text} in the documented order (module docstring)."""
    splits = {}
    for split in _SPLITS:
        keys = sorted(files[split])
        order = np.random.default_rng(ACLIMDB_ORDER_SEED).permutation(len(keys))
        keys = [keys[i] for i in order]
        splits[split] = (
            [files[split][key] for key in keys],
            np.array([_LABELS[key[0]] for key in keys], dtype=np.uint8),
        )
    return RawReviews(*splits["train"], *splits["test"])


def _read_aclimdb_folder(folder: Path, progress: bool = False) -> RawReviews:
    """Reads ``folder/{train,test}/{pos,neg}/*.txt``."""
    del progress  # reading 50,000 small files takes a second or two; tokenising shows the bar
    files: dict[str, dict[tuple, bytes]] = {split: {} for split in _SPLITS}
    for split in _SPLITS:
        for label in _LABELS:
            for path in (folder / split / label).glob("*.txt"):
                files[split][_review_sort_key(label, path.name)] = path.read_bytes()
    return _ordered(files)


def _read_aclimdb_archive(archive: Path, progress: bool = False) -> RawReviews:
    """Streams the ``*/{train,test}/{pos,neg}/*.txt`` members of a .tar.gz, extracting nothing."""
    del progress
    files: dict[str, dict[tuple, bytes]] = {split: {} for split in _SPLITS}
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                match = _MEMBER.search(member.name)
                if match is None or not member.isfile():
                    continue
                split, label, name = match.groups()
                handle = tar.extractfile(member)
                if handle is not None:
                    files[split][_review_sort_key(label, name)] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataNotFoundError(f"cannot read the aclImdb archive {archive}: {error}") from error
    empty = [split for split in _SPLITS if not files[split]]
    if empty:
        raise DataNotFoundError(
            f"{archive} holds no {' or '.join(empty)} reviews (expected aclImdb/{{train,test}}/{{pos,neg}}/*.txt)."
            f"\n{HOW_TO_GET_DATA}"
        )
    return _ordered(files)


def _open_tfds(data_dir: Path) -> dict[str, Any]:
    """The TFDS random-access splits; a seam the tests replace with in-memory splits."""
    # Deferred: tensorflow_datasets (~0.5 s) is needed only to read a TFDS copy of the reviews;
    # --help and the aclImdb sources never load it.
    import tensorflow_datasets as tfds

    return tfds.data_source(f"{TFDS_NAME}/{TFDS_CONFIG}:{TFDS_VERSION}", data_dir=str(data_dir), download=False)  # pyright: ignore[reportReturnType]


def _read_tfds(data_dir: Path, progress: bool = False) -> RawReviews:
    """Reads the train and test splits with ``tfds.data_source`` (no TensorFlow needed)."""
    del progress  # a bulk read of 25,000 records takes about a second
    try:
        splits = _open_tfds(data_dir)
        texts_labels = []
        for split_name in _SPLITS:
            split = splits[split_name]
            rows = split.__getitems__(range(len(split)))
            texts_labels.append(rows_to_texts_labels(rows))
            del rows
    except Exception as error:  # anything TFDS raises deep inside becomes one clear message
        raise DataNotFoundError(
            f"cannot read the prepared IMDb data set in {data_dir} with tensorflow-datasets: "
            f"{type(error).__name__}: {error}\n{HOW_TO_GET_DATA}"
        ) from error
    (train_texts, train_labels), (test_texts, test_labels) = texts_labels
    return RawReviews(train_texts, train_labels, test_texts, test_labels)


def rows_to_texts_labels(rows: list[dict[str, Any]]) -> tuple[list[bytes], np.ndarray]:
    """TFDS records ``{"text": bytes, "label": 0 | 1}`` -> (texts, uint8 labels); TFDS's 1 is pos."""
    texts = [row["text"] for row in rows]
    texts = [text.encode("utf-8") if isinstance(text, str) else bytes(text) for text in texts]
    return texts, np.array([int(row["label"]) for row in rows], dtype=np.uint8)
