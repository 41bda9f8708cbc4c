"""`imdb-jax data`, run in-process through the dispatcher."""

from __future__ import annotations

import json

import pytest

from imdb_jax.cli import main


def run_json(capsys, *argv) -> dict:
    assert main(["data", *argv, "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1, captured.out
    return json.loads(lines[0])


def test_json_summary_on_a_fake_folder(tmp_path, fake_aclimdb, capsys):
    cache_dir = tmp_path / "cache"
    summary = run_json(capsys, "--data-dir", str(fake_aclimdb), "--cache-dir", str(cache_dir), "--num-words", "7")
    assert summary["train_reviews"] == 6 and summary["test_reviews"] == 4
    assert (summary["train_positive"], summary["train_negative"]) == (3, 3)
    assert (summary["test_positive"], summary["test_negative"]) == (2, 2)
    assert summary["num_words"] == 7
    assert summary["source"] == f"aclImdb folder {fake_aclimdb}"
    assert summary["from_cache"] is False
    assert summary["cache_path"].startswith(str(cache_dir))
    assert 0 < summary["train_mean_unique_words"] <= 7 and 0 <= summary["test_mean_unique_words"] <= 7
    again = run_json(capsys, "--data-dir", str(fake_aclimdb), "--cache-dir", str(cache_dir), "--num-words", "7")
    assert again["from_cache"] is True and again["cache_path"] == summary["cache_path"]


def test_readable_summary(tmp_path, fake_aclimdb, capsys):
    assert main(["data", "--data-dir", str(fake_aclimdb), "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "6 reviews  (3 positive, 3 negative)" in out
    assert "4 reviews  (2 positive, 2 negative)" in out
    assert "unique words per review" in out and "aclImdb folder" in out and "cache written" in out


def test_missing_folder_exits_2_with_the_message(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["data", "--data-dir", str(missing), "--cache-dir", str(tmp_path / "c"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("imdb-jax data: error: IMDb data not found")
    assert str(missing) in captured.err and "download_and_prepare" in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("num_words", ["0", "-5"])
def test_non_positive_num_words_exits_2(fake_aclimdb, num_words, capsys):
    assert main(["data", "--data-dir", str(fake_aclimdb), "--num-words", num_words]) == 2
    assert "--num-words must be a positive integer" in capsys.readouterr().err


def test_unknown_source_is_an_option_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["data", "--source", "keras"])
    assert caught.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
