"""The drawing process (imdb_jax/drawing.py): figures drawn beside the caller, never lost."""

from __future__ import annotations

import math
import sys

import pytest

from imdb_jax.drawing import Drawing, DrawingWarning

HISTORY = {"loss": [0.6, 0.4, math.nan], "accuracy": [0.7, 0.8, math.nan]}
PNG = b"\x89PNG\r\n\x1a\n"


def test_the_process_draws_the_curves_and_says_how_long_it_took(tmp_path, recwarn):
    drawing = Drawing()
    assert drawing._process is not None  # a process of its own, started at once
    drawing.start("history", history=HISTORY, stem=tmp_path / "history")
    paths = drawing.result()
    assert [path.name for path in paths] == ["history_loss.png", "history_accuracy.png"]
    assert all(path.read_bytes().startswith(PNG) for path in paths)
    assert drawing.seconds > 0
    assert drawing._process.returncode == 0
    assert not [w for w in recwarn if issubclass(w.category, DrawingWarning)]  # drawn there, not here


def test_a_failed_process_leaves_the_figures_to_this_one_with_a_warning(tmp_path, monkeypatch):
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'no matplotlib here' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(broken))
    drawing = Drawing()
    drawing.start("history", history=HISTORY, stem=tmp_path / "history")
    with pytest.warns(DrawingWarning, match="exit status 3: no matplotlib here"):
        paths = drawing.result()
    assert all(path.read_bytes().startswith(PNG) for path in paths)


def test_a_process_that_cannot_start_is_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    drawing = Drawing()
    drawing.start("history", history=HISTORY, stem=tmp_path / "history")
    with pytest.warns(DrawingWarning, match="could not start"):
        assert len(drawing.result()) == 2


def test_a_process_never_asked_ends_without_drawing(tmp_path):
    drawing = Drawing()
    drawing.close()
    assert drawing._process is not None and drawing._process.returncode == 0
    assert not list(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="nothing was asked"):
        drawing.result()


def test_drawing_here_when_not_enabled(tmp_path):
    drawing = Drawing(enabled=False)
    drawing.start("history", history=HISTORY, stem=tmp_path / "h")
    assert [path.name for path in drawing.result()] == ["h_loss.png", "h_accuracy.png"]
