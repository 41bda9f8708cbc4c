"""Progress on stderr that reads well on a terminal and in a log file alike.

On a terminal (the stream is a TTY) a tqdm bar redraws itself in place. Redirected
(``imdb-jax train > log 2>&1``, a notebook, a CI job), a bar's carriage-return frames would pile
up in the file, so there each finished item (an epoch) or each finished stage (tokenising a
split) gets one plain line instead, and nothing else is written.

Every progress bar in the package is made by `progress_bar`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, Literal

Lines = Literal["each", "end"]


def is_terminal(stream: Any) -> bool:
    """Whether `stream` is an open TTY (a closed or odd stream counts as not one)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # closed, or detached from its file
        return False


class LineProgress:
    """tqdm's interface (iterate, `update`, `set_postfix_str`, `close`, ``with``) as plain lines.

    With ``lines="each"`` every `update` writes ``"{desc}: {unit} {n}/{total} ({seconds} s,
    {seconds since the start} s in all) {postfix}"``; with ``lines="end"`` only `close` writes ``"{desc}: {n} {unit} in {seconds} s"``.
    With ``file=None`` it writes nothing (a disabled bar).
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        desc: str = "",
        total: int | None = None,
        unit: str = "it",
        initial: int = 0,
        lines: Lines = "each",
        file: IO[str] | None = None,
    ):
        if lines not in ("each", "end"):
            raise ValueError(f"lines must be 'each' or 'end', got {lines!r}")
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable = iterable
        self.desc, self.total, self.unit, self.n = desc, total, unit.strip(), initial
        self.lines, self.file = lines, file
        self.postfix = ""
        self.started = self.last = time.perf_counter()
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress bar has no iterable; call update() instead")
        for item in self.iterable:
            yield item
            # Counted once the loop body is done, so a postfix it set shows on its own line.
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        """Counts `n` more items done; in ``"each"`` mode writes their line."""
        now = time.perf_counter()
        self.n += n
        if self.lines == "each":
            of = "" if self.total is None else f"/{self.total}"
            took = f"{now - self.last:.1f} s, {now - self.started:.1f} s in all"
            self._write(f"{self.unit} {self.n}{of} ({took})" + (f" {self.postfix}" if self.postfix else ""))
        self.last = now

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Text for the end of the next line (tqdm's postfix)."""
        del refresh  # lines are written on `update`, never redrawn
        self.postfix = s

    def close(self) -> None:
        """Ends the bar; in ``"end"`` mode writes its one line. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.lines == "end":
            seconds = time.perf_counter() - self.started
            self._write(f"{self.n} {self.unit} in {seconds:.1f} s" + (f", {self.postfix}" if self.postfix else ""))

    def _write(self, text: str) -> None:
        if self.file is not None:
            # One write of the line with its newline (print writes them separately): a Ctrl-C
            # handled between the two would put "interrupted" on the end of a progress line.
            self.file.write((f"{self.desc}: {text}" if self.desc else text) + "\n")
            self.file.flush()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str = "",
    total: int | None = None,
    unit: str = "it",
    enabled: bool = True,
    initial: int = 0,
    leave: bool = True,
    lines: Lines = "each",
    file: IO[str] | None = None,
) -> Any:
    """A tqdm bar on a terminal, plain lines elsewhere, nothing when not `enabled`.

    Args:
      iterable: what to iterate over (or None, and call `update(n)`).
      desc: the label, e.g. ``"fit"`` or ``"tokenising train"``.
      total: items in all, counting `initial` (default, as in tqdm: ``len(iterable)`` when it has one).
      unit: what an item is, e.g. ``"epoch"``; tqdm's convention of a leading space
        (``" reviews"``) is kept for the bar and stripped for lines.
      enabled: False gives a bar that iterates and writes nothing (``--no-progress``).
      initial: items already done (a resumed run's epochs).
      leave: keep the finished bar on the terminal (tqdm's `leave`; lines always stay).
      lines: off a terminal, ``"each"`` writes a line per item (epochs: few and slow) and
        ``"end"`` one line when the stage closes (25,000 reviews must not make 25,000 lines).
      file: the stream (default: ``sys.stderr`` at call time, so pytest's capture is honoured).

    Returns:
      A tqdm bar or a `LineProgress`; both iterate over `iterable` and have `update(n)`,
      `set_postfix_str(text)` and `close()`, and work as context managers.
    """
    stream = sys.stderr if file is None else file
    if enabled and is_terminal(stream):
        # Deferred: tqdm (~60 ms) is needed only for a bar on a terminal, not for piped runs or --no-progress.
        from tqdm import tqdm

        return tqdm(
            iterable, desc=desc, total=total, unit=unit, initial=initial, leave=leave, file=stream, dynamic_ncols=True
        )
    return LineProgress(
        iterable, desc=desc, total=total, unit=unit, initial=initial, lines=lines, file=stream if enabled else None
    )
