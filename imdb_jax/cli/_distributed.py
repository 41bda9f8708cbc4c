"""`--coordinator HOST:PORT --num-processes N --process-id I`: one command over several
processes or hosts (`imdb_jax.train.distributed`).

Every process runs the same command with the same options but its own `--process-id`; each
reads the data itself. Process 0 prints and writes the output folder; the others train their
share of the variants silently, writing nothing but a throw-away folder that is removed at the
end. `--resume` needs nothing from the others' folders: process 0 reads the checkpoint and
broadcasts it (`imdb_jax.train.checkpoints`), and so its answer to "is the run already
finished?" (`imdb_jax.train.distributed.process_0s`). Every process exits with the same status when they all reach the end; when one is lost
(killed, its host down), the others stop at their next exchange with it, or at the latest when its
heartbeats have been missing for the heartbeat timeout (`imdb_jax.train.distributed`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from imdb_jax.cli import _interrupt
from imdb_jax.errors import ImdbJaxError

# Exit statuses, as `imdb_jax.cli.main` gives them.
ERROR, INTERRUPTED, CRASHED = 2, 130, 1


def add_distributed_options(parser: argparse.ArgumentParser) -> None:
    """--coordinator, --num-processes, --process-id."""
    group = parser.add_argument_group(
        "several processes or hosts (jax.distributed)",
        "run the same command in every process, with its own --process-id; none of these: one process "
        "(under Slurm's srun or Open MPI's mpirun with several tasks, the settings are detected)",
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0, which coordinates the run")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    group.add_argument(
        "--process-id", type=int, metavar="I", help="this process's number, 0 to N-1 (0 writes the output)"
    )


def distributed_command(run: Callable[..., int]) -> Callable[..., int]:
    """Wraps a command's `run(args, *checked)`: joins the run first, keeps the other processes
    quiet and their files out of the output folder, and makes every process leave with the same
    exit status. Joining imports JAX: check the options before calling the wrapped function."""

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace, *checked: Any) -> int:
        # JAX and SciPy load first, with Ctrl-C held until they have (see `_interrupt`).
        _interrupt.load_libraries("jax", "jax.numpy", "scipy.sparse")
        # Deferred: imdb_jax.train.distributed imports JAX (~1.3 s), loaded only once the command
        # has checked its options, so --help and option errors stay fast.
        import jax

        from imdb_jax.train import distributed

        if not distributed.initialize(args.coordinator, args.num_processes, args.process_id):
            return run(args, *checked)
        main = jax.process_index() == 0
        with contextlib.ExitStack() as stack:
            if not main:
                # The same program runs everywhere; only process 0's files and report count.
                args.output = stack.enter_context(tempfile.TemporaryDirectory(prefix="imdb-jax-process-")) + "/output"
                args.no_progress = True
                stack.enter_context(
                    contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w", encoding="utf-8")))
                )
            try:
                status = int(run(args, *checked) or 0)
            except distributed.LostProcess as error:
                # The run is over and JAX's shutdown barrier would wait for the lost process
                # until its heartbeat times out: say why and leave now.
                distributed.agree_status(ERROR)
                print(f"imdb-jax {args.command}: error: {error}", file=sys.stderr, flush=True)
                os._exit(ERROR)
            except ImdbJaxError:
                distributed.agree_status(ERROR)
                raise
            except KeyboardInterrupt:
                distributed.agree_status(INTERRUPTED)
                raise
            except Exception:
                distributed.agree_status(CRASHED)
                raise
        agreed = distributed.agree_status(status, finished=True)  # such as train's 3: no failure to stop the others for
        if agreed != status:
            print(
                f"imdb-jax {args.command}: error: another process of the run failed (exit status {agreed})",
                file=sys.stderr,
            )
        return agreed

    return wrapped
