"""How a run is laid out before it compiles: the first layer's dense/sparse split and the
blocks of fused variants.

Both depend only on the data, the backend and each variant's own settings, never on which other
variants train beside it, so a variant's numbers do not change with its company.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from imdb_jax.device_data import checked_csr
from imdb_jax.errors import ImdbJaxError
from imdb_jax.fused import Layout, make_layout

FIRST_LAYERS = ("auto", "sparse", "dense")

# Under "auto", a column joins the dense head (a matmul) when more than this share of reviews
# hold it, per backend. A matmul's rounding depends on the width of the fused kernel, so a head
# makes a variant's last bits depend on its company: "auto" keeps every backend all-sparse (the
# embedding bag, bitwise) until a backend's measurements show a head pays for that. On the
# 2-core CPU the fused bag is the faster path for every study we measured (benchmarks/README.md);
# no accelerator was measured.
HEAD_SHARE: dict[str, float] = {}


def choose_dense_words(first_layer: str | int, x: Any, backend: str | None = None) -> int:
    """How many leading (most frequent) columns the first layer multiplies densely.

    Args:
      first_layer: "sparse" (none: the embedding bag, bitwise whatever trains beside it),
        "dense" (all: densify every batch, the classic reference), "auto" (by the backend's
        `HEAD_SHARE`, from the data alone) or an explicit column count.
      x: the training CSR matrix (columns ordered most frequent first, as `load_imdb` makes them).
      backend: "cpu", "gpu", "tpu" (default: JAX's default backend).
    """
    x = checked_csr(x)
    num_words = x.shape[1]
    if isinstance(first_layer, (int, np.integer)) and not isinstance(first_layer, bool):
        if not 0 <= first_layer <= num_words:
            raise ImdbJaxError(f"first_layer as a column count must be in [0, {num_words}], got {first_layer}")
        return int(first_layer)
    if first_layer not in FIRST_LAYERS:
        raise ImdbJaxError(f"first_layer must be one of {', '.join(FIRST_LAYERS)} or a column count, got {first_layer!r}")
    if first_layer != "auto":
        return num_words if first_layer == "dense" else 0
    if backend is None:
        import jax

        backend = jax.default_backend()
    share = HEAD_SHARE.get(backend)
    if share is None:
        return 0
    review_share = np.bincount(x.indices, minlength=num_words) / x.shape[0]
    return int(np.argmax(np.append(review_share <= share, True)))


def plan_layout(specs: Sequence[Any], num_words: int, shards: int = 1) -> tuple[Layout, list[int], list[int]]:
    """The fused layout of a study: one block per (widths, dropout or not, penalty or not), each padded with
    copies of its first member to a multiple of `shards` (the devices the variant axis is split
    over; the copies' results are discarded).

    Args:
      specs: `VariantSpec`s (anything with hidden_units, dropout_rate, l1, l2).
      num_words: input width.
      shards: devices the variants are spread over.

    Returns:
      (layout of one shard, members: the spec index of every slot, shard-major, slot_of: the
      global slot of every spec).
    """
    keys = [(tuple(spec.hidden_units), spec.dropout_rate > 0, spec.l1 > 0 or spec.l2 > 0) for spec in specs]
    by_key: dict[tuple, list[int]] = {}
    for index, key in enumerate(keys):
        by_key.setdefault(key, []).append(index)
    shard_members: list[list[tuple]] = [[] for _ in range(shards)]
    shard_specs: list[list[int]] = [[] for _ in range(shards)]
    for key in sorted(by_key):
        indices = by_key[key]
        per_shard = -(-len(indices) // shards)
        padded = indices + [indices[0]] * (per_shard * shards - len(indices))
        for shard in range(shards):
            for index in padded[shard * per_shard : (shard + 1) * per_shard]:
                shard_members[shard].append(key)
                shard_specs[shard].append(index)
    layout, order = make_layout(num_words, shard_members[0])
    members = []
    for shard in range(shards):
        slots = [None] * len(order)
        for position, slot in enumerate(order):
            slots[slot] = shard_specs[shard][position]
        members.extend(slots)
    slot_of = [None] * len(specs)
    for slot in reversed(range(len(members))):  # the first occurrence wins over padding copies
        slot_of[members[slot]] = slot
    return layout, members, slot_of
