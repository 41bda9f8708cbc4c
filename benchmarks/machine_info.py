"""Where the figures come from: the machine, its versions and JAX devices, and memory use.

Peak RSS is the kernel's high-water mark (VmHWM); on Linux it can be reset by writing "5" to
/proc/self/clear_refs, so one process can measure several settings one after another.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Memory.


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return _status_bytes("VmRSS")


def reset_peak_rss() -> bool:
    """Resets the peak-RSS mark to the current RSS; False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's peak RSS since start (or since `reset_peak_rss`)."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def megabytes(count: int | None) -> float | None:
    return None if count is None else round(count / 2**20, 1)


# ---------------------------------------------------------------------------------------------
# Environment.


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


@functools.cache
def environment() -> dict[str, Any]:
    """Where the figures come from: date, machine, versions and JAX devices."""
    import jax

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    memory = None
    try:
        import psutil

        memory = psutil.virtual_memory().total
    except ImportError:
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
        memory = pages * os.sysconf("SC_PAGE_SIZE") if pages else None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_gb": None if memory is None else round(memory / 2**30, 1),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "imdb_jax")},
        "backend": jax.default_backend(),
        "devices": [str(device) for device in jax.devices()],
        "git": _git_commit(),
    }


def env_record() -> dict[str, Any]:
    """The environment plus what changes during a run (load average)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {**environment(), "load_average": None if load is None else [round(value, 2) for value in load]}
