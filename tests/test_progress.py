"""Progress output: a tqdm bar on a terminal, plain lines in logs (no carriage returns), and
`imdb-jax data` / `imdb-jax train` redirected to a file."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from imdb_jax.progress import LineProgress, is_terminal, progress_bar

ROOT = Path(__file__).resolve().parents[1]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar_that_redraws_in_place():
    stream = FakeTerminal()
    bar = progress_bar(range(3), desc="fit", unit="epoch", file=stream)
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]
    assert "\r" in stream.getvalue() and "fit" in stream.getvalue()


def test_a_log_gets_one_line_per_epoch_with_its_postfix_and_no_carriage_return():
    stream = io.StringIO()
    bar = progress_bar(range(2, 5), desc="fit", unit="epoch", initial=2, total=5, file=stream)
    assert isinstance(bar, LineProgress)
    seen = []
    for epoch in bar:
        seen.append(epoch)
        bar.set_postfix_str(f"val_loss={epoch / 10:.4f}")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert seen == [2, 3, 4]
    assert "\r" not in stream.getvalue()
    assert [line.split(" (")[0] for line in lines] == ["fit: epoch 3/5", "fit: epoch 4/5", "fit: epoch 5/5"]
    # Each epoch's line carries the postfix set during that epoch, not the one before.
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["val_loss=0.2000", "val_loss=0.3000", "val_loss=0.4000"]


def test_a_stage_writes_one_line_when_it_ends_not_one_per_item():
    stream = io.StringIO()
    texts = [f"review {index}" for index in range(1000)]
    assert list(progress_bar(texts, desc="tokenising train", unit=" reviews", lines="end", file=stream)) == texts
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokenising train: 1000 reviews in ")


def test_update_counts_without_an_iterable_and_close_is_idempotent():
    stream = io.StringIO()
    with progress_bar(desc="stage", total=10, unit="batch", lines="end", file=stream) as bar:
        bar.update(4)
        bar.update(6)
        bar.close()
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[0]]
    assert stream.getvalue().startswith("stage: 10 batch in ")


def test_disabled_writes_nothing_even_on_a_terminal():
    stream = FakeTerminal()
    bar = progress_bar(range(3), desc="fit", enabled=False, file=stream)
    assert list(bar) == [0, 1, 2]
    bar.set_postfix_str("x")
    bar.close()
    assert stream.getvalue() == ""


def test_closed_or_plain_streams_are_not_terminals():
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed) and not is_terminal(io.StringIO()) and not is_terminal(object())
    assert is_terminal(FakeTerminal())


def test_bad_lines_mode_is_refused():
    with pytest.raises(ValueError, match="lines"):
        LineProgress([], lines="every")  # type: ignore[arg-type]


def _command_log(tmp_path: Path, *argv: str) -> str:
    """`imdb-jax ARGV > log 2>&1`: a real process whose stdout and stderr are one file."""
    log = tmp_path / "log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu"}
    with open(log, "wb") as file:
        status = subprocess.run(
            [sys.executable, "-m", "imdb_jax", *argv],
            stdout=file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            timeout=300,
        ).returncode
    text = log.read_bytes().decode("utf-8", errors="replace")
    if status != 0:  # the log is the message: a traceback in it says more than the status
        pytest.fail(f"imdb-jax {' '.join(argv)} exited with {status}:\n{text}")
    return text


@pytest.fixture()
def small_corpus(tmp_path: Path, write_aclimdb) -> dict[str, str]:
    return {"data_dir": str(write_aclimdb(tmp_path / "aclImdb")), "cache_dir": str(tmp_path / "cache")}


def test_imdb_jax_data_redirected_holds_plain_stage_lines(tmp_path: Path, small_corpus):
    text = _command_log(
        tmp_path,
        "data",
        "--data-dir",
        small_corpus["data_dir"],
        "--cache-dir",
        small_corpus["cache_dir"],
        "--num-words",
        "50",
    )
    assert "\r" not in text
    # Tokenising is a stage: one line per split, not a bar's frames.
    assert any(line.startswith("tokenising train") and " reviews in " in line for line in text.splitlines()), text


def test_imdb_jax_data_on_the_real_cache_redirected_holds_no_carriage_return(
    tmp_path: Path, imdb_data, real_data_dir, imdb_cache_dir
):
    del imdb_data  # builds the session's cache, which the command reads
    text = _command_log(tmp_path, "data", "--data-dir", str(real_data_dir), "--cache-dir", str(imdb_cache_dir))
    assert "\r" not in text
    assert "(read from the cache)" in text, text


def test_imdb_jax_train_redirected_holds_no_carriage_return(tmp_path: Path, small_corpus):
    text = _command_log(
        tmp_path, "train", "--data-dir", small_corpus["data_dir"], "--cache-dir", small_corpus["cache_dir"], "--num-words", "50",
        "--hidden-units", "4", "--epochs", "2", "--batch-size", "4", "--output", str(tmp_path / "model"),
    )  # fmt: skip
    assert "\r" not in text
    assert any(line.startswith("fit: epoch 2/2") for line in text.splitlines()), text
