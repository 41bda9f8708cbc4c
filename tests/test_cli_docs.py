"""What the documents say about the commands agrees with the code and with each other."""

from __future__ import annotations

import re
from pathlib import Path

import imdb_jax.tune.runner
from imdb_jax.study import DEFAULT_SEEDS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
BENCHMARKS_README = (REPO / "benchmarks" / "README.md").read_text(encoding="utf-8")

# "the default of 3 seeds", "4 seeds is the default", "default 3 seeds", "with 4 seeds (`--seeds N`".
DEFAULT_SEED_CLAIMS = re.compile(
    r"default of (\d+) seeds|(\d+) seeds is the default|default (\d+) seeds|with (\d+) seeds \(`--seeds N`"
)


def _claimed_defaults(text: str) -> set[int]:
    return {
        int(number)
        for match in DEFAULT_SEED_CLAIMS.finditer(" ".join(text.split()))
        for number in match.groups()
        if number
    }


def test_the_documents_give_the_default_seed_count():
    assert _claimed_defaults(README) == {DEFAULT_SEEDS}
    assert _claimed_defaults(BENCHMARKS_README) <= {DEFAULT_SEEDS}


def test_the_tune_docstring_quotes_the_readme_measurement():
    """One measurement, quoted alike in both places, with its machine named."""
    readme = " ".join(README.split())
    found = re.search(
        r"test accuracy (0\.\d+) in (\d+) s from nothing cached \((\d+) s with .*?\), against (0\.\d+) for .*? in (\d+) s",
        readme,
    )
    assert found, "README's tune measurement moved: update this test"
    accuracy, cold, cached, baseline, baseline_s = found.groups()
    doc = " ".join((imdb_jax.tune.runner.__doc__ or "").split())
    assert f"test accuracy {accuracy}" in doc and f"at {baseline} in {baseline_s} s" in doc
    assert f"in {cold} s from nothing" in doc and f"and {cached} s with both cached" in doc
    assert "2-core" in doc and "machines of this kind differ" in doc


def test_the_readme_says_what_explain_adds_to_one_line_per_input_line():
    """`predict --explain` prints a `why:` line after each scored review
    (tests/test_cli_bad_input.py checks the lines); the promise of one line per input line says so."""
    readme = " ".join(README.split())
    promise = readme[readme.index("exactly one line per input line") :][:200]
    assert "--explain" in promise and "why:" in promise
