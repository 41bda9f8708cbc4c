"""Figures drawn by a Python process of their own, so Matplotlib never waits on the GIL.

Matplotlib is pure Python where it counts (0.4 s to import, about 0.2 s a figure to lay out and
render) and holds the GIL throughout: on a thread beside the training loop it slowed the loop's
own Python (loading programs, the initial state) as much as it saved, and the study's 13 figures
(2.3 s) outlasted the retrain they were drawn beside. A `Drawing` starts `python -m
imdb_jax.drawing` at once; that process imports Matplotlib and the figure code while the
caller trains, on the other core, then waits for one request on its standard input:

- `{"kind": "history", "history": ..., "stem": ...}`: `imdb_jax.plots.plot_history`
  (`imdb-jax train`'s two curves);
- `{"kind": "study", "summary": ..., "folder": ...}`: `imdb_jax.study.figures.write_figures`
  (what study.json holds).

It prints the paths it wrote and the seconds drawing took as one JSON line (`{"paths": [...],
"seconds": ...}`) and ends. The request travels as strict JSON
(`imdb_jax.atomic.json_bytes`: NaN becomes null, which the figures draw as a gap, as NaN).

Where the process cannot start or fails, the figures are drawn in the calling process instead,
with the worker's last error line as a warning (nothing is lost). A worker never asked (the
command failed or was interrupted first) reads the end of its input and exits without drawing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from imdb_jax.atomic import json_bytes


class DrawingWarning(UserWarning):
    """The drawing process failed; the figures were drawn in this process instead."""


def _draw(request: dict[str, Any]) -> list[Path]:
    """What a request asks for, drawn here."""
    if request["kind"] == "history":
        # Deferred: matplotlib (~0.4 s) loads only where figures are drawn.
        from imdb_jax.plots import plot_history

        return plot_history(request["history"], request["stem"])
    if request["kind"] == "study":
        # Deferred: as above (the study's figures import Matplotlib when they draw).
        from imdb_jax.study.figures import write_figures

        return write_figures(request["summary"], Path(request["folder"]))
    raise ValueError(f"unknown drawing request {request['kind']!r}")


class Drawing:
    """One drawing process, started now and asked once (`start`, then `result`); a context
    manager that `close`s it.

    Args:
      enabled: False draws in this process at `result` time (no process is started).

    Attributes:
      seconds: how long the drawing itself took, once `result` has returned.
    """

    def __init__(self, enabled: bool = True):
        self.seconds = 0.0
        self._process: subprocess.Popen | None = None
        self._request: dict[str, Any] | None = None
        self._why_not: str | None = None
        if not enabled:
            return
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "imdb_jax.drawing"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "MPLBACKEND": os.environ.get("MPLBACKEND", "Agg")},
            )
        except OSError as error:
            self._why_not = f"could not start the drawing process ({error})"

    def start(self, kind: str, **fields: Any) -> None:
        """Sends the request; the process draws while the caller goes on."""
        self._request = {"kind": kind, **fields}
        if self._process is None:
            return
        try:
            stdin, self._process.stdin = self._process.stdin, None  # closed here, not by `communicate`
            assert stdin is not None
            with stdin:
                stdin.write(json_bytes(self._request))
        except OSError as error:  # the process died before reading (a broken pipe)
            self._why_not = f"the drawing process stopped early ({error})"

    def result(self) -> list[Path]:
        """The paths of the figures, once drawn (here, if the process could not draw them)."""
        if self._request is None:
            raise RuntimeError("nothing was asked of this Drawing")
        if self._process is not None:
            out, err = self._process.communicate()
            if self._why_not is None and self._process.returncode == 0:
                try:
                    answer = json.loads(out.decode("utf-8").strip().splitlines()[-1])
                    self.seconds = float(answer["seconds"])
                    return [Path(path) for path in answer["paths"]]
                except (ValueError, IndexError, KeyError, TypeError) as error:
                    self._why_not = f"the drawing process answered {out[-200:]!r} ({error})"
            if self._why_not is None:
                last = (err.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1]
                self._why_not = f"the drawing process failed (exit status {self._process.returncode}: {last})"
        if self._why_not is not None:
            warnings.warn(DrawingWarning(f"{self._why_not}; drawing the figures here instead"), stacklevel=2)
        started = time.perf_counter()
        paths = _draw(json.loads(json_bytes(self._request)))
        self.seconds = time.perf_counter() - started
        return paths

    def __enter__(self) -> Drawing:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Ends the process if it was never asked (its input closes, and it exits)."""
        if self._process is not None and self._process.returncode is None:
            self._process.communicate()  # closes its input (if still open) and reads it out


def main() -> int:
    # Deferred: imported here, in the drawing process only, before the request comes (the time
    # the caller spends training); the commands that start it must not load Matplotlib themselves.
    import imdb_jax.plots  # noqa: F401
    import imdb_jax.study.figures  # noqa: F401

    text = sys.stdin.buffer.read()
    if not text.strip():  # never asked: the command ended first
        return 0
    started = time.perf_counter()
    paths = _draw(json.loads(text))
    answer = {"paths": [os.fspath(path) for path in paths], "seconds": time.perf_counter() - started}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
