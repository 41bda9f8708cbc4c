"""Which variants a study trains: the seed's five experiments, a selection of them, their
deduplicated union, and each variant's copies with other seeds.

The Keras study this package grows from trains thirteen models one after another, each for 20
epochs on 15,000 reviews with the first 10,000 held out: hidden units 4 / 16 / 512; 1 to 4
hidden layers of 16; the 16-16 model alone to see where overfitting starts; no penalty / L1 /
L2 on the hidden kernels; dropout 0.5 or none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from imdb_jax.errors import ImdbJaxError
from imdb_jax.specs import VariantSpec

EXPERIMENTS: dict[str, tuple[VariantSpec, ...]] = {
    "units": (VariantSpec((4,)), VariantSpec((16,)), VariantSpec((512,))),
    "layers": (VariantSpec((16,)), VariantSpec((16, 16)), VariantSpec((16, 16, 16)), VariantSpec((16, 16, 16, 16))),
    "epochs": (VariantSpec((16, 16)),),
    "regularization": (VariantSpec((16, 16)), VariantSpec((16, 16), l1=0.001), VariantSpec((16, 16), l2=0.001)),
    "dropout": (VariantSpec((16, 16)), VariantSpec((16, 16), dropout_rate=0.5)),
}
ALL = "all"
CUSTOM = "custom"  # the experiment name of specs passed directly (or from --spec)
RUNS = ("merged", "experiment")
# Seeds per variant by default: the most that keep `imdb-jax study all` within ~1.5x of the time
# one seed took before the fused core (84-94 s). Measured on the 2-core CPU, whole process, warm
# compile cache: 1 seed 34 s, 3 seeds 80 s, 4 seeds 99 s, 5 seeds 141 s (1.5-1.7x).
DEFAULT_SEEDS = 4


def select_experiments(names_or_specs: Any) -> dict[str, tuple[VariantSpec, ...]]:
    """{experiment name: its specs} from experiment names, "all", specs, or such a dict.

    Args:
      names_or_specs: a name ("units", ..., "all"), a `VariantSpec`, a list mixing both (the
        specs form one experiment called "custom"), or a {name: [specs]} mapping.

    Returns:
      The chosen experiments, in the seed's order (custom last).

    Raises:
      ImdbJaxError: an unknown experiment name, or nothing to train.
    """
    if isinstance(names_or_specs, Mapping):
        chosen = {str(name): tuple(specs) for name, specs in names_or_specs.items()}
    else:
        items = [names_or_specs] if isinstance(names_or_specs, (str, VariantSpec)) else list(names_or_specs)
        chosen, custom = {}, []
        for item in items:
            if isinstance(item, VariantSpec):
                custom.append(item)
            elif item == ALL:
                chosen.update(EXPERIMENTS)
            elif item in EXPERIMENTS:
                chosen[item] = EXPERIMENTS[item]
            else:
                known = ", ".join([*EXPERIMENTS, ALL])
                raise ImdbJaxError(f"unknown experiment {item!r} (known: {known})")
        if custom:
            chosen[CUSTOM] = tuple(custom)
        # Keep the seed's order whatever order the names came in.
        chosen = {name: chosen[name] for name in sorted(chosen, key=[*EXPERIMENTS, CUSTOM].index)}
    if not chosen or not all(chosen.values()):
        raise ImdbJaxError("the study has no variants to train")
    for name, specs in chosen.items():
        for spec in specs:
            if not isinstance(spec, VariantSpec):
                raise ImdbJaxError(f"experiment {name!r} holds {spec!r}, not a VariantSpec")
    return chosen


def identity(spec: VariantSpec) -> tuple:
    """What makes two specs train identically: every setting but the name."""
    return tuple((key, repr(value)) for key, value in sorted(spec.to_dict().items()) if key != "name")


def union(experiments: Mapping[str, Sequence[VariantSpec]]) -> tuple[list[VariantSpec], dict[str, list[int]]]:
    """The distinct specs of all experiments (first occurrence first) and, per experiment, the
    indices of its variants among them."""
    specs: list[VariantSpec] = []
    seen: dict[tuple, int] = {}
    members: dict[str, list[int]] = {}
    for name, experiment in experiments.items():
        members[name] = []
        for spec in experiment:
            key = identity(spec)
            if key not in seen:
                seen[key] = len(specs)
                specs.append(spec)
            if seen[key] not in members[name]:
                members[name].append(seen[key])
    return specs, members


def unique_names(specs: Sequence[VariantSpec]) -> list[str]:
    """The specs' names, with " #2", " #3" ... added to repeats."""
    names: list[str] = []
    for spec in specs:
        name, copy = spec.name, 1
        while name in names:
            copy += 1
            name = f"{spec.name} #{copy}"
        names.append(name)
    return names


def seed_replicas(specs: Sequence[VariantSpec], seeds: int) -> tuple[list[VariantSpec], list[list[int]]]:
    """Each spec with seeds `spec.seed`, `spec.seed + 1`, ... `spec.seed + seeds - 1`.

    A copy that two variants share (16 with seeds 0-2 and "16 seed=1" with seeds 1-3) is
    trained once.

    Args:
      specs: distinct variants.
      seeds: copies per variant, >= 1.

    Returns:
      The distinct copies to train, and per variant the indices of its copies, seed order.
    """
    copies: list[VariantSpec] = []
    seen: dict[tuple, int] = {}
    replicas: list[list[int]] = []
    for spec in specs:
        indices = []
        for offset in range(seeds):
            copy = dataclasses.replace(spec, seed=spec.seed + offset, name=f"{spec.name} [seed {spec.seed + offset}]")
            key = identity(copy)
            if key not in seen:
                seen[key] = len(copies)
                copies.append(copy)
            indices.append(seen[key])
        replicas.append(indices)
    return copies, replicas
