"""Many model variants trained at once, fused into one model and one compiled program.

`fit_variants` lays a study's variants out side by side (`imdb_jax.models.mlp`): all first layers as
the columns of one kernel, later layers stacked per block of equal widths, per-variant numbers
(penalties, dropout rate, learning rate, weight decay) as arrays. Each variant starts from the
weights it would have alone (initialised at its own shape from its own seed) and, trained on the
same batches, ends bitwise where it would have alone (`fit`), whatever else trains beside it.
With several devices the variants are spread over a device mesh: every device trains the same
blocks (padded with copies, whose results are dropped) on the same batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imdb_jax.config import HYPERPARAMS, ModelConfig
from imdb_jax.data.csr import as_xy, check_columns, check_training_inputs
from imdb_jax.errors import ImdbJaxError
from imdb_jax.models.inputs import MultiHot, SparseMultiHot
from imdb_jax.models.layout import Layout, block_keys, plan_layout
from imdb_jax.specs import VariantSpec
from imdb_jax.tensorboard import TensorBoardLogger
from imdb_jax.train import checkpoints
from imdb_jax.train.device_data import to_device
from imdb_jax.train.distributed import place
from imdb_jax.train.epochs import VARIANT_AXIS, logits_epoch
from imdb_jax.train.loop import (
    EarlyStopping,
    EpochPlan,
    check_batch_size,
    device_splits,
    fetch,
    history_from_records,
    run_epochs,
    stopped_epoch,
)
from imdb_jax.train.optim import OPTIMISER_HYPERPARAMS, RMSpropState
from imdb_jax.train.programs import stored_jit
from imdb_jax.train.steps import (
    MODEL_HYPERPARAMS,
    FusedState,
    TrainState,
    fused_model,
    initial_params,
    train_state_from_params,
)


def _keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """A variant's initial-weight and dropout keys: `jax.random.split(jax.random.key(seed))`."""
    if _seeds_are_64_bit():
        init_key, dropout_key = jax.random.split(jax.random.key(seed))
        return init_key, dropout_key
    return _seed_keys(_seed_word(seed))


def _seeds_are_64_bit() -> bool:
    return bool(jax.config.values.get("jax_enable_x64"))


def _seed_word(seed: int) -> np.uint32:
    # With 64-bit types off JAX seeds a key with a Python int's low 32 bits (`key(2**32 + 5)` is
    # `key(5)`), which a uint32 holds: the keys come from stored programs, not eager ones.
    return np.uint32(seed % 2**32)


@stored_jit
def _seed_keys(seed: jax.Array) -> tuple[jax.Array, jax.Array]:
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    return init_key, dropout_key


@stored_jit
def _dropout_keys(seeds: jax.Array) -> jax.Array:
    """key[shards, slots]: each slot's dropout key, `_keys(seed)[1]`, for uint32 seed words."""
    return jax.vmap(jax.vmap(lambda seed: jax.random.split(jax.random.key(seed))[1]))(seeds)


@functools.cache
def _param_shapes(layout: Layout) -> Any:
    """The `FusedMLP`'s parameter shapes (traced once per layout, nothing compiled)."""
    return jax.eval_shape(lambda: fused_model(layout).init(jax.random.key(0), _blank_inputs(layout))["params"])


def _blank_params(layout: Layout) -> dict[str, Any]:
    """Zeros shaped like the `FusedMLP`'s parameters."""
    return jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), _param_shapes(layout))


def _blank_inputs(layout: Layout) -> MultiHot:
    tail = SparseMultiHot(word_ids=jnp.zeros((1,), jnp.int32), row_ids=jnp.zeros((1,), jnp.int32), batch_size=1)
    return MultiHot(head=None, tail=tail)


def _locate(layout: Layout, slot: int):
    """(block index, block, member position) of a slot within one shard."""
    for index, block in enumerate(layout.blocks):
        if block.start <= slot < block.start + block.size:
            return index, block, slot - block.start
    raise IndexError(f"no slot {slot}")


def put_variant(fused: dict[str, Any], layout: Layout, slot: int, params: Any) -> None:
    """Writes one variant's `MLP` params ({"hidden_0", ..., "output"}) into fused host arrays."""
    index, block, position = _locate(layout, slot)
    width = block.hidden_units[0]
    columns = slice(block.offset + position * width, block.offset + (position + 1) * width)
    fused["first"]["kernel"][:, columns] = np.asarray(params["hidden_0"]["kernel"])
    fused["first"]["bias"][columns] = np.asarray(params["hidden_0"]["bias"])
    for name, layer in fused[f"block_{index}"].items():
        for leaf in ("kernel", "bias"):
            layer[leaf][position] = np.asarray(params[name][leaf])


def take_variant(fused: Any, layout: Layout, slot: int) -> dict[str, Any]:
    """One variant's `MLP` params (NumPy) cut out of fused host arrays of one shard."""
    index, block, position = _locate(layout, slot)
    width = block.hidden_units[0]
    columns = slice(block.offset + position * width, block.offset + (position + 1) * width)
    params = {"hidden_0": {"kernel": fused["first"]["kernel"][:, columns], "bias": fused["first"]["bias"][columns]}}
    for name, layer in fused[f"block_{index}"].items():
        params[name] = {"kernel": layer["kernel"][position], "bias": layer["bias"][position]}
    return jax.tree_util.tree_map(np.asarray, params)


def _per_leaf_host(layout: Layout, values: np.ndarray, params: Any) -> Any:
    """`steps.per_variant` of every shard at once, in NumPy: float32[shards, slots] broadcast to
    each leaf of host params with a leading shard axis."""
    per_column = values[:, layout.column_slots()]
    tree = {"first": {"kernel": per_column[:, None, :], "bias": per_column}}
    for index, block in enumerate(layout.blocks):
        members = values[:, block.start : block.start + block.size]
        tree[f"block_{index}"] = jax.tree_util.tree_map(
            lambda leaf, members=members: members.reshape(members.shape + (1,) * (leaf.ndim - 2)),
            params[f"block_{index}"],
        )
    return tree


@stored_jit(static_argnums=(1, 2))
def _initial_params_of(keys: tuple[jax.Array, ...], num_words: int, shapes: tuple[tuple[int, ...], ...]):
    """`initial_params(key, num_words, units)` of each (key, units), as one program: a cold
    start compiles one program for a study's shapes, not one per shape (the 1-seed study's initial
    state, nothing cached: 3.4-3.7 s with one program per shape, 2.3-2.4 s with this one), and each
    variant's weights are the bits `initial_params` gives alone."""
    return tuple(initial_params(key, num_words, units) for key, units in zip(keys, shapes))


def initial_state(
    specs: Sequence[VariantSpec], layout: Layout, members: Sequence[int], shards: int, keep_best: bool = False
) -> FusedState:
    """The fused state of every slot (shard-major `members` index the specs), each variant
    initialised at its own shape from its own seed, exactly as `create_train_state` would (both
    call `initial_params`); with `keep_best`, room for each variant's best weights."""
    slots = layout.slots
    per_shard, hyperparams, dropout_keys = [], {name: np.zeros((shards, slots), np.float32) for name in HYPERPARAMS}, []
    seeds = np.zeros((shards, slots), np.uint32)
    seeds_of: dict[tuple[int, ...], list[int]] = {}  # each shape's distinct seeds, in order
    for spec in (specs[member] for member in members):
        if spec.seed not in seeds_of.setdefault(spec.hidden_units, []):
            seeds_of[spec.hidden_units].append(spec.seed)
    init_key = {seed: _keys(seed)[0] for own in seeds_of.values() for seed in own}  # one per seed
    initialised = {}
    for turn in range(max((len(own) for own in seeds_of.values()), default=0)):
        # The turn's seed of every shape that has one, in one program (the same program each turn).
        shapes = tuple(units for units, own in seeds_of.items() if len(own) > turn)
        init_keys = tuple(init_key[seeds_of[units][turn]] for units in shapes)
        found = jax.device_get(_initial_params_of(init_keys, layout.num_words, shapes))
        initialised.update(((units, seeds_of[units][turn]), params) for units, params in zip(shapes, found))
    for shard in range(shards):
        fused = _blank_params(layout)
        keys = []
        for slot in range(slots):
            spec = specs[members[shard * slots + slot]]
            put_variant(fused, layout, slot, initialised[(spec.hidden_units, spec.seed)])
            for name in HYPERPARAMS:
                hyperparams[name][shard, slot] = getattr(spec, name)
            if _seeds_are_64_bit():
                keys.append(_keys(spec.seed)[1])
            else:
                seeds[shard, slot] = _seed_word(spec.seed)
        per_shard.append(fused)
        if keys:
            dropout_keys.append(jnp.stack(keys))
    # Built on the host and put on the device whole: eager device ops would each be a program of
    # their own to trace (a warm start's time).
    host = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *per_shard)
    params = jax.device_put(host)
    zeros = jax.tree_util.tree_map(np.zeros_like, host)
    opt_state = RMSpropState(
        count=jax.device_put(np.zeros((shards,), np.int32)),
        nu=jax.device_put(zeros),
        hyperparams={
            name: jax.device_put(_per_leaf_host(layout, hyperparams[name], host)) for name in OPTIMISER_HYPERPARAMS
        },
    )
    numbers = {name: jax.device_put(values) for name, values in hyperparams.items()}
    return FusedState(
        params=params,
        opt_state=opt_state,
        step=jax.device_put(np.zeros((shards,), np.int32)),
        hyperparams={name: numbers[name] for name in MODEL_HYPERPARAMS},
        dropout_keys=jnp.stack(dropout_keys) if dropout_keys else _dropout_keys(seeds),
        alive=jax.device_put(np.ones((shards, slots), bool)),
        training=jax.device_put(np.ones((shards, slots), bool)),
        best_params=jax.device_put(host) if keep_best else None,
        layout=layout,
    )


@dataclasses.dataclass
class VariantsResult:
    """What `fit_variants` hands back.

    Attributes:
      specs: the variants, in the order given.
      histories: one Keras-style history per variant (keys of `fit`, plus "diverged").
      fused: the trained fused state (every leaf with a leading shard axis).
      slot_of: each spec's global slot (shard * slots per shard + slot).
      num_words: input width.
      dense_words: how many leading columns the first layer multiplied densely (0: all sparse).
      epoch_seconds: wall seconds of each training epoch (compilation included in the first),
        and `val_seconds` of each validation pass: the library's timing hook.
    """

    specs: list[VariantSpec]
    histories: list[dict[str, list]]
    fused: FusedState
    slot_of: list[int]
    num_words: int
    dense_words: int
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)
    val_seconds: list[float] = dataclasses.field(default_factory=list)
    stopped_epochs: list[int | None] = dataclasses.field(default_factory=list)

    @property
    def layout(self) -> Layout:
        return self.fused.layout

    def stopped_epoch(self, index: int) -> int | None:
        """The 1-based epoch after which early stopping stopped variant `index` (its weights are
        those of that epoch), or None if it trained every epoch."""
        return self.stopped_epochs[index] if self.stopped_epochs else None

    def fused_state(self, shard: int = 0) -> FusedState:
        """The trained fused state of one device shard, without the shard axis: what
        `fused_train_step` and `fused_eval_step` take (one shard holds every variant unless the
        run was spread over several devices; `slot_of` says where each variant is)."""
        shards = int(self.fused.alive.shape[0])
        if not 0 <= shard < shards:
            raise ImdbJaxError(f"shard must be in [0, {shards}), got {shard}")
        return jax.tree_util.tree_map(lambda leaf: leaf[shard], self.fused)

    def config(self, index: int) -> ModelConfig:
        return self.specs[index].config(self.num_words)

    def _where(self, index: int) -> tuple[int, int]:
        return divmod(self.slot_of[index], self.layout.slots)

    def state(self, index: int, weights: str = "last") -> TrainState:
        """Variant `index` as an ordinary trained model for `evaluate`, `predict`, saving, or
        more training with `train_step`.

        Args:
          index: the variant's position in `specs`.
          weights: "last" (default, as Keras leaves a model after `fit`): the weights after the
            last epoch, with their rmsprop state; "best": the weights at the variant's lowest
            validation loss (`best_epoch`; Keras' `EarlyStopping(restore_best_weights=True)`),
            with the last rmsprop state.
        """
        if weights not in ("last", "best"):
            raise ImdbJaxError(f"weights must be 'last' or 'best', got {weights!r}")
        if weights == "best" and self.fused.best_params is None:
            raise ImdbJaxError("best weights are kept only when training had validation data")
        shard, slot = self._where(index)
        source = self.fused.params if weights == "last" else self.fused.best_params
        tree = (source, self.fused.opt_state.nu)
        # One shard is fetched whole: indexing on the device would compile a small program per
        # leaf shape, traced and looked up again on every warm start.
        if self.fused.alive.shape[0] == 1:
            host = jax.tree_util.tree_map(lambda leaf: leaf[0], fetch(tree))
        else:
            host = fetch(jax.tree_util.tree_map(lambda leaf: leaf[shard], tree))
        params = take_variant(host[0], self.layout, slot)
        nu = take_variant(host[1], self.layout, slot)
        step = int(fetch(self.fused.step)[shard])
        stopped, epochs_done = self.stopped_epoch(index), len(self.epoch_seconds)
        if stopped is not None and epochs_done:  # every epoch has as many steps
            step = step // epochs_done * stopped
        return train_state_from_params(params, self.config(index), nu=nu, step=step)

    def logits(self, split: Any, *, weights: str = "last", batch_size: int = 512) -> np.ndarray:
        """float32[variants, reviews]: every variant's logits for a split's rows, all variants
        in one compiled pass of the fused model (no dropout).

        Args:
          split: a `Split`, `(x, y)` pair or CSR matrix with the training data's columns.
          weights: "last" or "best", as in `state`.
          batch_size: reviews per batch.
        """
        if weights not in ("last", "best"):
            raise ImdbJaxError(f"weights must be 'last' or 'best', got {weights!r}")
        if weights == "best" and self.fused.best_params is None:
            raise ImdbJaxError("best weights are kept only when training had validation data")
        check_batch_size(batch_size)
        check_columns(as_xy(split)[0], self.num_words, "the variants")
        reviews = as_xy(split)[0].shape[0]  # pyright: ignore[reportOptionalSubscript]
        data = to_device(split, self.dense_words)
        plan = EpochPlan(data, batch_size, shuffle=False)
        fused = self.fused if weights == "last" else self.fused.replace(params=self.fused.best_params)  # pyright: ignore[reportAttributeAccessIssue]
        logits = np.asarray(fetch(logits_epoch(fused, data, plan.rows, capacity=plan.capacity)))  # pyright: ignore[reportArgumentType]
        logits = np.moveaxis(logits, 0, 2).reshape(logits.shape[1], logits.shape[2], -1)[..., :reviews]
        return np.stack([logits[shard, slot] for shard, slot in map(self._where, range(len(self.specs)))])

    def best_epoch(self, index: int) -> int | None:
        """1-based epoch of the lowest validation loss (None without validation or if every
        epoch diverged)."""
        losses = np.asarray(self.histories[index].get("val_loss", []), np.float64)
        if losses.size == 0 or np.all(np.isnan(losses)):
            return None
        return int(np.nanargmin(losses)) + 1


def variant_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh | None:  # pyright: ignore[reportInvalidTypeForm]
    """A 1-D mesh over the devices to spread the variants on, or None for one device."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (VARIANT_AXIS,)) if len(devices) > 1 else None


def balanced_device_count(specs: Sequence[VariantSpec], available: int) -> int:
    """How many of `available` devices to spread `specs` over, by work: every device runs the
    same blocks, each padded with copies to a multiple of the device count, so a device's work
    is sum over blocks of ceil(size / devices) first-layer columns (the bag's gather and
    scatter-add dominate). The fewest devices within 10% of the least work: more devices cost
    compile time and memory, so a study with one seed per variant, whose 512-wide variant cannot
    be split, stays on one device rather than computing copies."""
    blocks: dict[tuple, int] = {}
    for key in block_keys(specs):
        blocks[key] = blocks.get(key, 0) + 1

    def work(count: int) -> int:
        return sum(-(-size // count) * key[0][0] for key, size in blocks.items())

    counts = range(1, max(available, 1) + 1)
    least = min(work(count) for count in counts)
    return next(count for count in counts if work(count) <= 1.1 * least)


def _place(tree: Any, mesh: Mesh | None, spec: PartitionSpec) -> Any:
    """`tree` laid out on `mesh` by `spec`; across processes (a mesh with other processes'
    devices) every process builds its own shards from its whole copy (`imdb_jax.train.distributed`)."""
    if mesh is None:
        return tree
    return place(tree, NamedSharding(mesh, spec))


def _run_description(
    specs, train, validation, batch_size, shuffle_seed, shards, dense_words, early_stopping
) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed."""
    data = [checkpoints.data_fingerprint(*as_xy(train))]
    if validation is not None:
        data.append(checkpoints.data_fingerprint(*as_xy(validation)))
    return {
        "specs": [spec.to_dict() for spec in specs],
        "data": data,
        "batch_size": int(batch_size),
        "shuffle_seed": int(shuffle_seed),
        "shards": shards,
        "dense_words": int(dense_words),
        **({} if early_stopping is None else {"early_stopping": dataclasses.asdict(early_stopping)}),
    }


def fit_variants(
    specs: Sequence[VariantSpec],
    train: Any,
    validation: Any = None,
    *,
    epochs: int = 20,
    batch_size: int = 512,
    shuffle_seed: int = 0,
    first_layer: str | int = "auto",
    devices: Sequence[jax.Device] | None = None,  # pyright: ignore[reportInvalidTypeForm]
    progress: bool = True,
    description: str = "variants",
    on_epoch_end: Callable[[int, list[dict[str, list]]], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool | str = False,
    patience: int | None = None,
    min_delta: float = 0.0,
    start_from_epoch: int = 0,
    log_dir: str | Path | None = None,
) -> VariantsResult:
    """Trains every spec at once, fused, on the same shuffled batches.

    Each variant ends bitwise where `fit(spec.config(num_words), train, validation,
    seed=spec.seed, shuffle_seed=shuffle_seed)` would leave it, alone or among any others. A
    variant whose loss or weights stop being finite keeps its last finite weights and is marked
    diverged; the others are unaffected.

    Args:
      specs: the variants.
      train, validation: `Split`s (or `(x_csr, y)` pairs).
      epochs, batch_size: as in `fit`.
      shuffle_seed: seeds the per-epoch order that every variant shares.
      first_layer: "sparse", "dense", "auto" (the backend's choice) or a column count, as in
        `fit`; any choice other than all-sparse makes results agree only to float32 rounding
        across different companies.
      devices: devices to spread the variants over (default: as many of the default backend's
        as balance the work, `balanced_device_count`; across processes, all of them).
      progress: show a progress bar.
      description: the progress bar's label.
      on_epoch_end: optional `fn(epochs_done, histories)` called after every epoch with every
        variant's history so far (e.g. to write a study's JSON as it goes).
      checkpoint_dir: a folder to write the run's state to after every epoch
        (`imdb_jax.train.checkpoints`), so that a killed run can be resumed.
      resume: continue from the checkpoint in `checkpoint_dir` if there is one (it must be of
        the same variants, data, batch size, shuffle seed and devices); the result is bitwise
        the one an uninterrupted run gives. A checkpoint written under another JAX, jaxlib,
        backend or device count is refused unless `resume="force"`.
      patience, min_delta, start_from_epoch: early stopping on each variant's validation loss,
        as Keras' `EarlyStopping` (`imdb_jax.train.loop.EarlyStopping`); None trains every
        epoch. A stopped variant keeps its weights, bitwise those it would have had it trained
        alone, and the run ends when every variant has stopped.
      log_dir: a folder for TensorBoard: one run per variant, its curves and its settings
        (`imdb_jax.tensorboard.TensorBoardLogger`).

    Returns:
      A `VariantsResult`; with validation data it also holds each variant's best weights
      (`result.state(i, weights="best")`).
    """
    specs = list(specs)
    if not specs:
        raise ImdbJaxError("no variants to train")
    check_training_inputs(train, validation, checkpoint=checkpoint_dir is not None)
    train_x = as_xy(train)[0]
    num_words = train_x.shape[1]  # pyright: ignore[reportOptionalSubscript]
    early_stopping = None
    if patience is not None:
        if validation is None:
            raise ImdbJaxError("early stopping (patience) needs validation data")
        early_stopping = EarlyStopping(patience, min_delta, start_from_epoch)
    logger = None if log_dir is None else TensorBoardLogger(log_dir, specs)
    train_data, val_data = device_splits(train, validation, first_layer)
    if devices is None and jax.process_count() == 1:
        local = jax.local_devices()
        devices = local[: balanced_device_count(specs, len(local))]
    mesh = variant_mesh(devices)
    shards = 1 if mesh is None else mesh.size
    layout, members, slot_of = plan_layout(specs, num_words, shards)
    state = initial_state(specs, layout, members, shards, keep_best=validation is not None)
    records: list[dict[str, Any]] = []
    meta = None
    if checkpoint_dir is not None:
        meta = _run_description(
            specs, train, validation, batch_size, shuffle_seed, shards, train_data.dense_words, early_stopping
        )
        loaded = checkpoints.load(checkpoint_dir, state, meta, force=resume == "force") if resume else None
        if loaded is not None:
            state, records = loaded
    state = _place(jax.tree_util.tree_map(jnp.asarray, state), mesh, PartitionSpec(VARIANT_AXIS))
    train_data = _place(train_data, mesh, PartitionSpec())
    val_data = None if val_data is None else _place(val_data, mesh, PartitionSpec())
    where = [divmod(slot, layout.slots) for slot in slot_of]
    writer = None if checkpoint_dir is None else checkpoints.BackgroundWriter(checkpoint_dir, meta)  # pyright: ignore[reportArgumentType]

    def histories() -> list[dict[str, list]]:
        return [history_from_records(records, shard, slot) for shard, slot in where]

    def epoch_done(epochs_done: int, state: FusedState, record: dict[str, Any]) -> None:
        records.append(record)
        if writer is not None:
            writer.save(state, records)
        if on_epoch_end is not None or logger is not None:
            current = histories()
            if logger is not None:
                logger.on_epoch_end(epochs_done, current)
            if on_epoch_end is not None:
                on_epoch_end(epochs_done, current)

    lowest = [np.inf]

    def describe(record: dict[str, Any]) -> str:
        alive = sum(bool(record["alive"][shard, slot]) for shard, slot in where)
        text = f"{alive}/{len(specs)} finite"
        if "training" in record:
            text += f", {sum(bool(record['training'][shard, slot]) for shard, slot in where)} training"
        if record["val"] is not None:
            sums = record["val"]
            losses = [sums["loss_sum"][shard, slot] / max(float(sums["count"][shard]), 1.0) for shard, slot in where]
            lowest[0] = min(lowest[0], float(np.nanmin(np.asarray(losses + [np.inf], np.float64))))
            text += f" lowest val_loss so far={lowest[0]:.4f}"
        return text

    try:
        state, _ = run_epochs(
            state,
            train_data,
            val_data,
            epochs=epochs,
            batch_size=batch_size,
            shuffle_seed=shuffle_seed,
            progress=progress,
            description=description,
            describe=describe,
            on_epoch_end=epoch_done,
            records=list(records),
            early_stopping=early_stopping,
        )
        if writer is not None:
            writer.wait()  # the last epoch's checkpoint is on disk when the run returns
    finally:
        if writer is not None:
            with contextlib.suppress(BaseException):  # an error already on its way wins
                writer.wait()
        if logger is not None:
            logger.close()
    return VariantsResult(
        specs,
        histories(),
        state,
        slot_of,
        num_words,
        train_data.dense_words,
        epoch_seconds=[record["train_s"] for record in records],
        val_seconds=[record["val_s"] for record in records],
        stopped_epochs=[stopped_epoch(records, shard, slot) for shard, slot in where],
    )
