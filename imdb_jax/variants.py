"""Many model variants trained at once: one vmapped, jit-compiled step per batch.

Variants that differ only in numbers (penalties, dropout rate, learning rate, weight decay,
seed) differ only in arrays inside their train states, so they share one compiled program.
Variants of different shapes are arranged in *groups*: inside a group every variant is padded to
the group's shape (each initialised at its own true shape with its own fan-in/fan-out, then
zero-padded) and masked, so padded units and layers contribute nothing and receive no update; a
missing layer passes its input through. Padding a 4-unit model to 512 units makes it cost as much
as the 512 one, so `plan_groups` merges shapes only when its cost estimate says one padded group
is cheaper than separate ones. All groups run inside the same compiled epoch and share each
batch. With several devices the variant axis is sharded over a device mesh.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tomllib
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imdb_jax.config import ConfigError, ModelConfig
from imdb_jax.device_data import as_xy
from imdb_jax.errors import ImdbJaxError
from imdb_jax.specs import VariantSpec, load_specs  # noqa: F401  (re-exported)
from imdb_jax.steps import TrainState, create_train_state
from imdb_jax.train import (
    SPARSE_TO_DENSE_COST,
    VARIANTS,
    device_splits,
    history_from_records,
    run_epochs,
)

VARIANT_AXIS = "variants"


# ---------------------------------------------------------------------------------------------
# Grouping by estimated cost.


@dataclasses.dataclass(frozen=True)
class Group:
    """Variants trained in one vmap: `members` index the study's specs; `hidden_units` is the
    padded shape they share."""

    hidden_units: tuple[int, ...]
    members: tuple[int, ...]


def effective_widths(hidden_units: Sequence[int], depth: int) -> tuple[int, ...]:
    """Widths at each of `depth` positions; a missing layer carries the last real width."""
    return tuple(hidden_units[min(index, len(hidden_units) - 1)] for index in range(depth))


def padded_shape(shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
    depth = max(len(shape) for shape in shapes)
    columns = zip(*(effective_widths(shape, depth) for shape in shapes))
    return tuple(max(column) for column in columns)


# Cost units are dense-matmul multiply-adds per review. A tail word of the first layer costs
# about 1 / SPARSE_TO_DENSE_COST of them per unit (gather forward, scatter-add backward); about
# half of a review's words are in the tail under the "auto" split. A separate group adds a fixed
# cost per step (its own ops in the compiled step): about 0.2 ms against ~5 ms for one 16-16
# model's step on CPU, i.e. a few thousand units per review.
GROUP_OVERHEAD = 2_000.0
TAIL_SHARE = 0.5


def variant_cost(shape: Sequence[int], num_words: int, words_per_review: float, batch_size: int) -> float:
    """Estimated work of one variant per review: the first layer (the tail words' gathers and
    scatter-adds, and the weight update over the whole `num_words × width` kernel once per
    batch), the hidden layers (forward and backward) and the output."""
    first = shape[0] * (TAIL_SHARE * words_per_review / SPARSE_TO_DENSE_COST + 3.0 * num_words / batch_size)
    hidden = sum(a * b for a, b in zip(shape, shape[1:]))
    return first + 3.0 * hidden + shape[-1]


def plan_groups(
    specs: Sequence[VariantSpec],
    num_words: int,
    words_per_review: float = 130.0,
    batch_size: int = 512,
    strategy: str = "auto",
) -> list[Group]:
    """Arranges the specs into groups.

    Args:
      strategy: "shape" — one group per distinct shape; "pad" — everything padded into one
        group; "auto" — start from "shape" and greedily merge the pair of groups whose padded
        cost is lowest, while merging costs less than it saves.
    """
    if strategy not in ("auto", "shape", "pad"):
        raise ImdbJaxError(f"grouping strategy must be auto, shape or pad, got {strategy!r}")
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, spec in enumerate(specs):
        by_shape.setdefault(spec.hidden_units, []).append(index)
    groups = [Group(shape, tuple(members)) for shape, members in by_shape.items()]
    if strategy == "pad":
        return [Group(padded_shape([spec.hidden_units for spec in specs]), tuple(range(len(specs))))]
    if strategy == "shape":
        return groups

    def cost(group: Group) -> float:
        return len(group.members) * variant_cost(group.hidden_units, num_words, words_per_review, batch_size) + GROUP_OVERHEAD

    while len(groups) > 1:
        best = None
        for a, b in itertools.combinations(range(len(groups)), 2):
            merged = Group(padded_shape([groups[a].hidden_units, groups[b].hidden_units]), groups[a].members + groups[b].members)
            saving = cost(groups[a]) + cost(groups[b]) - cost(merged)
            if saving > 0 and (best is None or saving > best[0]):
                best = (saving, a, b, merged)
        if best is None:
            break
        _, a, b, merged = best
        groups = [group for index, group in enumerate(groups) if index not in (a, b)] + [merged]
    return [Group(group.hidden_units, tuple(sorted(group.members))) for group in groups]


# ---------------------------------------------------------------------------------------------
# Padding and unpadding states by parameter path.


# Padding happens on the host with NumPy: a study's states are assembled once, and doing it with
# eager JAX ops would compile a small program per leaf shape.


def _leaves_by_path(tree: Any) -> dict[str, Any]:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _embed(small: Any, big_shape: tuple[int, ...]) -> np.ndarray:
    small = np.asarray(small)
    big = np.zeros(big_shape, small.dtype)
    big[tuple(slice(0, size) for size in small.shape)] = small
    return big


def pad_state(state: TrainState, template: TrainState) -> TrainState:
    """`state` zero-padded into `template`'s shapes (leaves matched by path; the template's
    extra leaves, e.g. missing layers, stay zero). Leaves come back as NumPy arrays; `template`
    may hold `jax.ShapeDtypeStruct`s."""
    source = _leaves_by_path(jax.device_get(state))

    def fill(path, leaf):
        key = jax.tree_util.keystr(path)
        return _embed(source[key], leaf.shape) if key in source else np.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, template)


def param_mask(params: Any, template_params: Any) -> Any:
    """1 where `params` has a real weight inside the padded `template_params`, else 0."""
    source = _leaves_by_path(params)

    def fill(path, leaf):
        key = jax.tree_util.keystr(path)
        if key not in source:
            return np.zeros(leaf.shape, leaf.dtype)
        return _embed(np.ones(source[key].shape, leaf.dtype), leaf.shape)

    return jax.tree_util.tree_map_with_path(fill, template_params)


def unpad_state(padded: TrainState, template: TrainState) -> TrainState:
    """The inverse of `pad_state`: `template`'s leaves cut out of `padded` by path, as device
    arrays; `template` may hold `jax.ShapeDtypeStruct`s."""
    source = _leaves_by_path(jax.device_get(padded))

    def cut(path, leaf):
        value = np.asarray(source[jax.tree_util.keystr(path)])
        return jnp.asarray(value[tuple(slice(0, size) for size in leaf.shape)])

    return jax.tree_util.tree_map_with_path(cut, template)


def _keys(seed: int) -> tuple[jax.Array, jax.Array]:
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    return init_key, dropout_key


def _state_shapes(num_words: int, hidden_units: tuple[int, ...]) -> TrainState:
    config = ModelConfig(num_words=num_words, hidden_units=hidden_units)
    return jax.eval_shape(lambda key: create_train_state(key, config), jax.random.key(0))


def group_carry(group: Group, specs: Sequence[VariantSpec], num_words: int, copies: int = 0):
    """The stacked (states, alive, dropout keys) of one group, padded and masked.

    Args:
      copies: extra copies of the first member appended so the variant axis divides evenly
        over devices (their results are discarded).
    """
    shape = group.hidden_units
    template = _state_shapes(num_words, shape)
    members = list(group.members) + [group.members[0]] * copies
    states, keys = [], []
    for index in members:
        spec = specs[index]
        init_key, dropout_key = _keys(spec.seed)
        own = create_train_state(init_key, spec.config(num_words))
        padded = pad_state(own, template)
        active = np.arange(len(shape)) < len(spec.hidden_units)
        states.append(padded.replace(grad_mask=param_mask(own.params, template.params), layer_active=active))
        keys.append(dropout_key)
    stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *states)
    # Masks that are all ones (no member pads that weight) would only cost a pass per step.
    mask = jax.tree_util.tree_map(lambda leaf: None if leaf.all() else leaf, stacked.grad_mask)
    if all(leaf is None for leaf in jax.tree_util.tree_leaves(mask, is_leaf=lambda x: x is None)):
        mask = None
    stacked = stacked.replace(grad_mask=mask)
    if stacked.layer_active.all():
        stacked = stacked.replace(layer_active=None)
    stacked = jax.tree_util.tree_map(jnp.asarray, stacked)
    return stacked, jnp.ones((len(members),), bool), jnp.stack(keys)


# ---------------------------------------------------------------------------------------------
# Training.


@dataclasses.dataclass
class VariantsResult:
    """What `fit_variants` hands back.

    Attributes:
      specs: the variants, in the order given.
      histories: one Keras-style history per variant (keys of `fit`, plus "diverged").
      groups: how the variants were arranged.
      states: per group, the stacked padded train states (leading variant axis).
      num_words: input width.
      dense_words: how many leading columns the first layer multiplied densely (0: all
        sparse; num_words: all dense).
    """

    specs: list[VariantSpec]
    histories: list[dict[str, list]]
    groups: list[Group]
    states: tuple[TrainState, ...]
    num_words: int
    dense_words: int

    def _locate(self, index: int) -> tuple[int, int]:
        for group_index, group in enumerate(self.groups):
            if index in group.members:
                return group_index, group.members.index(index)
        raise IndexError(f"no variant {index}")

    def config(self, index: int) -> ModelConfig:
        return self.specs[index].config(self.num_words)

    def state(self, index: int) -> TrainState:
        """Variant `index` as an ordinary trained model (unpadded) for `evaluate`, `predict`
        or saving."""
        group_index, position = self._locate(index)
        padded = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[position], jax.device_get(self.states[group_index]))
        config = self.config(index)
        return unpad_state(padded, _state_shapes(config.num_words, config.hidden_units))

    def best_epoch(self, index: int) -> int | None:
        """1-based epoch of the lowest validation loss (None without validation or if every
        epoch diverged)."""
        losses = np.asarray(self.histories[index].get("val_loss", []), np.float64)
        if losses.size == 0 or np.all(np.isnan(losses)):
            return None
        return int(np.nanargmin(losses)) + 1


def variant_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """A 1-D mesh over the devices to shard the variant axis on, or None for one device."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (VARIANT_AXIS,)) if len(devices) > 1 else None


def _place(tree: Any, mesh: Mesh | None, spec: PartitionSpec) -> Any:
    return tree if mesh is None else jax.device_put(tree, NamedSharding(mesh, spec))


def fit_variants(
    specs: Sequence[VariantSpec],
    train: Any,
    validation: Any = None,
    *,
    epochs: int = 20,
    batch_size: int = 512,
    shuffle_seed: int = 0,
    first_layer: str | int = "auto",
    grouping: str = "auto",
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
    description: str = "variants",
) -> VariantsResult:
    """Trains every spec at once on the same shuffled batches.

    Each variant ends with the same weights and history as `fit(spec.config(num_words), train,
    validation, seed=spec.seed, shuffle_seed=shuffle_seed)` would give it, to float32
    tolerance. A variant whose loss or weights stop being finite keeps its last finite weights
    and is marked diverged; the others are unaffected.

    Args:
      specs: the variants.
      train, validation: `Split`s (or `(x_csr, y)` pairs).
      epochs, batch_size: as in `fit`.
      shuffle_seed: seeds the per-epoch order that every variant shares.
      first_layer: "sparse", "dense", "auto" (by estimated cost) or a column count, as in `fit`.
      grouping: "auto", "shape" or "pad" (see `plan_groups`).
      devices: devices to shard the variant axis over (default: all of the default backend).
      progress: show a progress bar.
      description: the progress bar's label.
    """
    specs = list(specs)
    if not specs:
        raise ImdbJaxError("no variants to train")
    train_x = as_xy(train)[0]
    num_words = train_x.shape[1]
    groups = plan_groups(specs, num_words, train_x.nnz / max(train_x.shape[0], 1), batch_size, grouping)
    width = sum(len(group.members) * group.hidden_units[0] for group in groups)
    train_data, val_data = device_splits(train, validation, first_layer, width)
    mesh = variant_mesh(devices)
    device_count = 1 if mesh is None else mesh.size
    carries = []
    for group in groups:
        copies = -len(group.members) % device_count
        carries.append(_place(group_carry(group, specs, num_words, copies), mesh, PartitionSpec(VARIANT_AXIS)))
    train_data = _place(train_data, mesh, PartitionSpec())
    val_data = None if val_data is None else _place(val_data, mesh, PartitionSpec())

    def describe(epoch, record, carry):
        del epoch, carry
        alive = sum(int(np.sum(np.asarray(alive)[: len(group.members)])) for alive, group in zip(record["alive"], groups))
        text = f"{alive}/{len(specs)} finite"
        if record["val"] is not None:
            best = min(
                float(np.nanmin(_val_losses(sums)[: len(group.members)], initial=np.inf))
                for sums, group in zip(record["val"], groups)
            )
            text += f" best val_loss={best:.4f}"
        return text

    carries, records = run_epochs(
        tuple(carries),
        train_data,
        val_data,
        epochs=epochs,
        batch_size=batch_size,
        shuffle_seed=shuffle_seed,
        stepper=VARIANTS,
        progress=progress,
        description=description,
        on_epoch=describe,
    )
    histories: list[dict[str, list] | None] = [None] * len(specs)
    for group_index, group in enumerate(groups):
        for position, index in enumerate(group.members):
            select = _selector(group_index, position)
            histories[index] = history_from_records(records, select)
    states = tuple(carry[0] for carry in carries)
    return VariantsResult(specs, histories, groups, states, num_words, train_data.dense_words)


def _val_losses(sums) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(sums["loss_sum"], np.float64) / np.asarray(sums["count"], np.float64)


def _selector(group_index: int, position: int):
    def select(tree):
        return jax.tree_util.tree_map(lambda leaf: leaf[position], tree[group_index])

    return select
