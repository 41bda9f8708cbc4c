"""Every ```python block of README.md runs, in order and in one namespace (as a reader pastes
them into one session), on tiny synthetic reviews instead of IMDb and with one epoch instead
of many: the snippets are the documentation of the Python API, so they must work as written.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import imdb_jax
from imdb_jax import IMDbData, Split, Vocabulary

README = Path(__file__).resolve().parents[1] / "README.md"

# What makes the snippets small; each must still match something, so a stale entry is noticed.
SMALLER = {
    r"epochs=\d+": "epochs=1",
    r"for epoch in range\(\d+\)": "for epoch in range(1)",
    r"split_validation\(\d+\)": "split_validation(40)",
}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def tiny_imdb(num_words: int = 10000, **options) -> IMDbData:
    """`load_imdb`'s result in miniature: 120 training and 40 test reviews whose label is told
    by which half of the vocabulary their words come from."""
    del options
    rng = np.random.default_rng(0)

    def split(rows: int) -> Split:
        labels = rng.integers(0, 2, rows).astype(np.float32)
        indptr, indices = [0], []
        for label in labels:
            words = rng.choice(num_words // 2, 12, replace=False) + (num_words // 2) * int(label)
            indices.extend(np.unique(words))
            indptr.append(len(indices))
        x = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(rows, num_words))
        return Split(x, labels)

    vocabulary = Vocabulary(tuple(f"w{index}" for index in range(num_words)))
    return IMDbData(train=split(120), test=split(40), vocabulary=vocabulary, source="tiny synthetic reviews")


def test_readme_has_the_pure_step_loops():
    """The three ways to use the package are each shown in runnable code."""
    code = "\n".join(python_blocks(README.read_text(encoding="utf-8")))
    for name in ("fit(", "fit_variants(", "jax.vmap(train_step", "fused_train_step", "make_batch(", ".fused_state()"):
        assert name in code, name


def test_every_python_snippet_runs(monkeypatch, capsys):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 3
    monkeypatch.setattr(imdb_jax, "load_imdb", tiny_imdb, raising=False)
    matched = dict.fromkeys(SMALLER, 0)
    namespace: dict = {"__name__": "__readme__"}
    for number, block in enumerate(blocks, 1):
        for pattern, replacement in SMALLER.items():
            block, count = re.subn(pattern, replacement, block)
            matched[pattern] += count
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        except Exception as error:  # say which block failed, with the code as run
            pytest.fail(f"README.md python block {number} raised {error!r}:\n{block}")
    assert all(matched.values()), matched
    printed = capsys.readouterr().out
    assert "nan" not in printed.lower()
    assert printed.count("\n") >= 4  # fit, fit_variants, the seeds' loop and the fused loop printed
