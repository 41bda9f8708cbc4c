"""One CPU device per core, so the fused variants of a study spread over every core.

XLA's CPU scatter-add (the embedding bag's backward pass) runs on one core; spreading the
variant axis over several CPU devices runs one shard per core. The device count must be set
before JAX starts (`--xla_force_host_platform_device_count`), so the command line calls
`use_every_core()` before anything imports JAX. Results are bitwise those of one device
(`fit_variants` spreads only what the fused guarantee covers), and `fit` keeps one device.

`IMDB_JAX_CPU_DEVICES=N` sets the count (1 turns it off); a device count already in `XLA_FLAGS`
is left alone.
"""

from __future__ import annotations

import os
import sys

FLAG = "--xla_force_host_platform_device_count"


def cpu_device_count() -> int:
    """The CPU devices to ask for: `IMDB_JAX_CPU_DEVICES`, else the cores this process may use."""
    wanted = os.environ.get("IMDB_JAX_CPU_DEVICES", "").strip()
    if wanted:
        try:
            return max(int(wanted), 1)
        except ValueError:
            raise SystemExit(f"IMDB_JAX_CPU_DEVICES must be a whole number, got {wanted!r}") from None
    try:
        return max(len(os.sched_getaffinity(0)), 1)  # honours taskset and cgroup pinning
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def use_every_core() -> int:
    """Asks XLA for one CPU device per core, unless JAX is already imported or XLA_FLAGS names a
    count. Returns the count in force (0 when it could not be set)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        return int(flags.split(FLAG + "=")[1].split()[0]) if FLAG + "=" in flags else 0
    if "jax" in sys.modules:
        return 0
    count = cpu_device_count()
    if count > 1:
        os.environ["XLA_FLAGS"] = f"{flags} {FLAG}={count}".strip()
    return count
