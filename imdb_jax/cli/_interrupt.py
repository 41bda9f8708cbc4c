"""Ctrl-C ends a command at any moment with one line on stderr and exit status 130.

Python turns SIGINT into `KeyboardInterrupt` only when the main thread next runs Python code:
not while XLA compiles or computes. A `KeyboardInterrupt` raised inside a garbage-collection
callback (JAX installs one) is printed as "Exception ignored ..." and lost, and training goes on.
And once it is caught, letting the interpreter tear down while XLA's threads still run can crash
it (a segmentation fault after the message). So while a command runs as the program:

- the C-level signal handler also writes to a pipe (`signal.set_wakeup_fd`), which wakes a
  watcher thread at once; if the main thread has not ended the process `GRACE_S` seconds later
  (or at a second Ctrl-C), the watcher does;
- a `KeyboardInterrupt` that Python could not raise (an "unraisable" one) ends it at once;
- the process ends with `os._exit(130)` after the one line, skipping the interpreter's teardown;
- while the heavy libraries with compiled extensions load (`load_libraries`: jaxlib, SciPy), a
  Ctrl-C waits until they have loaded: a `KeyboardInterrupt` raised while an extension module
  initialises crashed the interpreter (status -11, seen under load half a second after start).

Called in-process (tests, notebooks) the guard only prints the line once; the caller gets 130.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
GRACE_S = 2.0  # time for the main thread to stop by itself (removing temporary files) first


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C inside the block is held, then raised as `KeyboardInterrupt` when it ends (main
    thread only; elsewhere Python's own handling stays). The C-level handler still wakes a
    `Guard`'s watcher, so a block that runs long is ended after `GRACE_S` all the same."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def load_libraries(*names: str) -> None:
    """Imports `names` (modules with compiled extensions: "jax", "scipy.sparse") with Ctrl-C held
    until they have loaded."""
    with interrupts_held():
        for name in names:
            importlib.import_module(name)


class Guard:
    """Context manager around one command.

    Attributes:
      command: the name the line starts with ("imdb-jax train"), set once the options are parsed.
      hard: end the process (program mode) rather than return.
    """

    def __init__(self, *, hard: bool, command: str = "imdb-jax"):
        self.hard = hard
        self.command = command
        self._told = False
        self._lock = threading.Lock()
        self._pipe: tuple[int, int] | None = None
        self._previous_fd = -1
        self._previous_hook = None
        self._timer: threading.Timer | None = None

    def interrupted(self) -> None:
        """Prints the one line (once); in program mode ends the process with status 130."""
        with self._lock:
            if not self._told:
                self._told = True
                print(f"{self.command}: interrupted", file=sys.stderr, flush=True)
        if self.hard:
            try:
                sys.stdout.flush()
            except Exception:  # a closed or broken stdout must not stop the exit
                pass
            os._exit(INTERRUPTED)

    def __enter__(self) -> Guard:
        if not self.hard:
            return self
        self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        try:
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        except (OSError, ValueError):  # not the main thread, or no pipes: Python's handling only
            return self
        self._pipe = (read, write)
        threading.Thread(target=self._watch, args=(read,), name="imdb-jax-interrupt", daemon=True).start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if not self.hard:
            return
        sys.unraisablehook = self._previous_hook
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_fd)
            for fd in self._pipe:
                os.close(fd)  # the watcher's read fails and it ends
            self._pipe = None

    def _watch(self, read: int) -> None:
        while True:
            try:
                data = os.read(read, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT in data:
                if self._timer is not None:  # a second Ctrl-C: no more waiting
                    self.interrupted()
                self._timer = threading.Timer(GRACE_S, self.interrupted)
                self._timer.daemon = True
                self._timer.start()

    def _unraisable(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            self.interrupted()
        if self._previous_hook is not None:
            self._previous_hook(unraisable)
