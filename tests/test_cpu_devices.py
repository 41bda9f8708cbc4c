"""One CPU device per core for the command line, and a device count chosen by work."""

from __future__ import annotations

import os
import subprocess
import sys

from imdb_jax import VariantSpec
from imdb_jax.study import select_experiments, union
from imdb_jax.study.experiments import seed_replicas
from imdb_jax.train.variants import balanced_device_count


def test_the_device_count_balances_first_layer_columns():
    study, _ = union(select_experiments(["all"]))
    one_seed, _ = seed_replicas(study, 1)
    four_seeds, _ = seed_replicas(study, 4)
    # One 512-wide variant outweighs everything else: spreading it would only compute copies.
    assert balanced_device_count(one_seed, 2) == 1
    assert balanced_device_count(four_seeds, 2) == 2 and balanced_device_count(four_seeds, 4) == 4
    assert (
        balanced_device_count([VariantSpec((16, 16), seed=s) for s in range(3)], 2) == 2
    )  # 32 columns a device, not 48
    assert balanced_device_count([VariantSpec((16,), seed=s) for s in range(64)], 2) == 2


def _devices_seen(env: dict[str, str]) -> str:
    code = "from imdb_jax.train.cpu_devices import use_every_core; use_every_core(); import jax; print(jax.local_device_count())"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip()


def test_the_command_line_asks_for_one_cpu_device_per_core_unless_told():
    env = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS", "IMDB_JAX_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    assert _devices_seen(env) == str(len(os.sched_getaffinity(0)))
    assert _devices_seen({**env, "IMDB_JAX_CPU_DEVICES": "3"}) == "3"
    assert _devices_seen({**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}) == "1"
