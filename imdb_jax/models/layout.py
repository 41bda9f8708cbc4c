"""How a run is laid out before it compiles: the first layer's dense/sparse split and the
blocks of fused variants.

A variant's numbers never depend on which other variants train beside it: the split depends only
on the data and the backend, and a variant's block only on its own settings, except that a
variant without dropout joins the dropout block of its shape when there is one, where a rate of
0 gives the same bits (`block_keys`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


def block_keys(specs: Sequence[Any]) -> list[tuple[tuple[int, ...], bool, bool]]:
    """Each variant's block, as (hidden widths, dropout, penalty), for specs or model configs
    (anything with hidden_units, dropout_rate, l1, l2).

    Variants of one shape and penalty share a block whether or not they drop units: a block with
    dropout draws masks for all its members, and a member whose rate is 0 keeps every unit
    (`column_dropout`: `uniform < 1.0` always holds and `x * 1.0` is `x`), so its numbers are the
    ones it has in a block without dropout, bit for bit; one block fewer compiles faster (a
    fused program of 8 grid candidates: 9.0 -> 6.9 s, benchmarks/README.md). Penalised and
    unpenalised variants stay apart: the penalty's passes over the kernel would cost the others
    time.
    """
    own = [(tuple(spec.hidden_units), bool(spec.l1 > 0 or spec.l2 > 0)) for spec in specs]
    dropping = {key for key, spec in zip(own, specs) if spec.dropout_rate > 0}
    return [(units, (units, penalty) in dropping, penalty) for units, penalty in own]


def plan_layout(specs: Sequence[Any], num_words: int, shards: int = 1) -> tuple[Layout, list[int], list[int]]:
    """The fused layout of a study: one block per `block_keys` key (widths, dropout, penalty),
    each padded with copies of its first member to a multiple of `shards` (the devices the
    variant axis is split over; the copies' results are discarded).

    Args:
      specs: `VariantSpec`s (anything with hidden_units, dropout_rate, l1, l2).
      num_words: input width.
      shards: devices the variants are spread over.

    Returns:
      (layout of one shard, members: the spec index of every slot, shard-major, slot_of: the
      global slot of every spec).
    """
    keys = block_keys(specs)
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
            slots[slot] = shard_specs[shard][position]  # pyright: ignore[reportArgumentType, reportCallIssue]
        members.extend(slots)
    slot_of = [None] * len(specs)
    for slot in reversed(range(len(members))):  # the first occurrence wins over padding copies
        slot_of[members[slot]] = slot  # pyright: ignore[reportArgumentType, reportCallIssue]
    return layout, members, slot_of  # pyright: ignore[reportReturnType]


@dataclasses.dataclass(frozen=True)
class Block:
    """Variants (slots) with the same hidden widths, stacked on a leading axis.

    Attributes:
      hidden_units: the widths every member has.
      size: slots in the block (per device shard).
      offset: the block's first column in the fused first-layer kernel; member `m` owns columns
        `offset + m * hidden_units[0] ... + hidden_units[0]`.
      start: the block's first slot in the layout's slot order.
      dropout: whether members drop units (a block without dropout draws no random numbers;
        a member with a rate of 0 in a block with dropout keeps its values unchanged).
      penalty: whether the members have L1 or L2 penalties (only those blocks pay for summing
        their kernels; a factor of 0 would add exactly 0 anyway).
    """

    hidden_units: tuple[int, ...]
    size: int
    offset: int
    start: int
    dropout: bool
    penalty: bool = False

    @property
    def columns(self) -> int:
        return self.size * self.hidden_units[0]


@dataclasses.dataclass(frozen=True)
class Layout:
    """The static arrangement of fused variants: input width and blocks (hashable: it is part
    of the compiled program)."""

    num_words: int
    blocks: tuple[Block, ...]

    @property
    def penalty(self) -> bool:
        return any(block.penalty for block in self.blocks)

    @property
    def width(self) -> int:
        return sum(block.columns for block in self.blocks)

    @property
    def slots(self) -> int:
        return sum(block.size for block in self.blocks)

    def column_slots(self) -> np.ndarray:
        """int32[width]: the slot owning each first-layer column."""
        return np.concatenate(
            [
                np.repeat(np.arange(block.start, block.start + block.size), block.hidden_units[0])
                for block in self.blocks
            ]
        ).astype(np.int32)


def make_layout(num_words: int, members: Sequence[tuple[tuple[int, ...], bool, bool]]) -> tuple[Layout, list[int]]:
    """Blocks for variants described by (hidden_units, has_dropout, has_penalty), in a fixed
    order (by shape, then dropout, then penalty), and each variant's slot.

    Returns:
      The layout and `slot_of[i]` for every member `i` in the given order.
    """
    keyed = [(tuple(units), bool(dropout), bool(penalty)) for units, dropout, penalty in members]
    blocks, slot_of, offset, start = [], [None] * len(members), 0, 0
    for key in sorted(set(keyed)):
        indices = [i for i, member in enumerate(keyed) if member == key]
        for position, index in enumerate(indices):
            slot_of[index] = start + position  # pyright: ignore[reportArgumentType, reportCallIssue]
        block = Block(key[0], len(indices), offset, start, key[1], key[2])
        blocks.append(block)
        offset += block.columns
        start += block.size
    return Layout(num_words, tuple(blocks)), slot_of  # pyright: ignore[reportReturnType]
