"""Shared fixtures: the real IMDb data (loaded once per session) and small fake aclImdb folders.

Real data: when ``TFDS_DATA_DIR`` is unset and ``<repo>/../shared/tensorflow_datasets`` exists, it
is used. Tests that need the real data use ``imdb_data`` (or ``real_data_dir``) and are marked
``real_data`` automatically; they are skipped when the data is missing, except under ``CI``,
where missing data fails them.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

# Silent broadcasting is a bug here (a [variants, batch] array times a [batch] one must say so):
# set before JAX is imported, and inherited by the commands the tests run.
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")

REPO = Path(__file__).resolve().parents[1]
_SHARED_DATA = REPO.parent / "shared" / "tensorflow_datasets"
if "TFDS_DATA_DIR" not in os.environ and _SHARED_DATA.is_dir():
    os.environ["TFDS_DATA_DIR"] = str(_SHARED_DATA)

_REAL_DATA_FIXTURES = {"imdb_data", "real_data_dir", "imdb_cache_dir"}


def run_python(code: str, *args: str, timeout: float = 300) -> str:
    """The standard output of `python -c code args...` run from the repository on CPU; the
    calling test fails with the end of its standard error if it fails."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# A tiny corpus in aclImdb's layout: {(split, label): {file name: text}}. File names are not in
# string order ("10_" sorts before "2_") to pin the numeric ordering; one file is not UTF-8.
FAKE_REVIEWS: dict[tuple[str, str], dict[str, bytes]] = {
    ("train", "pos"): {
        "0_9.txt": b"A great movie, great acting!<br /><br />Loved it.",
        "10_8.txt": b"Wonderful film. Great fun, wonderful cast.",
        "2_10.txt": b"great great great film",
    },
    ("train", "neg"): {
        "1_1.txt": b"Terrible movie. Boring plot<br/>awful acting",
        "3_2.txt": b"Awful, awful film; the plot is boring.",
        "12_4.txt": b"bad \xff\xfe bytes movie, a bad 'film'",
    },
    ("test", "pos"): {
        "0_7.txt": b"great movie",
        "5_9.txt": b"a zzzunseen word and a GREAT film",
    },
    ("test", "neg"): {
        "3_1.txt": b"boring",
        "4_2.txt": b"",
    },
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    for item in items:
        if _REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_data)


def _under_ci() -> bool:
    """CI systems set CI (GitHub, GitLab, CircleCI: "true"); "false" or "0" does not count."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The TFDS data_dir holding the prepared imdb_reviews; skips (fails under CI) if missing."""
    from imdb_jax.data.sources import default_tfds_data_dir, resolve_source
    from imdb_jax.errors import DataNotFoundError

    path = default_tfds_data_dir()
    try:
        resolve_source(path, source="tfds")
    except DataNotFoundError as error:
        reason = f"real IMDb data not available (set TFDS_DATA_DIR): {error}"
        if _under_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def imdb_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session cache folder, so the session's first real load is a cold one."""
    return tmp_path_factory.mktemp("imdb_jax_cache")


@pytest.fixture(scope="session")
def imdb_data(real_data_dir: Path, imdb_cache_dir: Path):
    """The full real data set, num_words=10000, loaded once per session (cold, then cached)."""
    from imdb_jax import load_imdb

    return load_imdb(num_words=10000, data_dir=real_data_dir, cache_dir=imdb_cache_dir, source="tfds", progress=False)


@pytest.fixture()
def fake_reviews() -> dict[tuple[str, str], dict[str, bytes]]:
    """The tiny corpus written by ``fake_aclimdb`` (a fresh copy per test)."""
    return {key: dict(files) for key, files in FAKE_REVIEWS.items()}


@pytest.fixture()
def write_aclimdb() -> Callable[..., Path]:
    """``write_aclimdb(folder, reviews=FAKE_REVIEWS) -> folder`` in aclImdb's layout."""

    def write(folder: Path, reviews: dict[tuple[str, str], dict[str, bytes]] = FAKE_REVIEWS) -> Path:
        for (split, label), files in reviews.items():
            (folder / split / label).mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                (folder / split / label / name).write_bytes(text)
        return folder

    return write


@pytest.fixture()
def fake_aclimdb(tmp_path: Path, write_aclimdb: Callable[..., Path]) -> Path:
    """A tiny aclImdb folder (``FAKE_REVIEWS``) under tmp_path."""
    return write_aclimdb(tmp_path / "aclImdb")


@pytest.fixture()
def fake_aclimdb_archive(tmp_path: Path) -> Path:
    """The same reviews as ``fake_aclimdb`` in an ``aclImdb_v1.tar.gz`` (plus an ignored unsup/ file)."""
    archive = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        members = [
            (f"aclImdb/{split}/{label}/{name}", text)
            for (split, label), files in FAKE_REVIEWS.items()
            for name, text in files.items()
        ]
        members.append(("aclImdb/train/unsup/0_0.txt", b"unlabelled review, never read"))
        members.append(("aclImdb/README", b"not a review"))
        for name, text in reversed(members):  # archive order must not matter
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    return archive
