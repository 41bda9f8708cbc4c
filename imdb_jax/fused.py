"""Many variants as one model: first layers side by side, later layers stacked per shape.

Every variant of a study sees the same batch, so they are laid out to share the hardware too
(horizontal fusion, as in HFTA):

- the first layers of all variants are the columns of one kernel `float32[num_words, width]`
  (`width` = the sum of the variants' first widths, 4 next to 512, no padding), so one gather of
  a review's kernel rows and one scatter-add of their gradients serve every variant;
- later layers are stacked per *block* of variants with the same hidden widths (and the same
  "dropout or not", "penalty or not", so blocks without them skip that work) and applied as
  batched contractions over the block's variant axis; a block's depth is its own (no padded
  layers, no masks);
- per-variant numbers (learning rate, weight decay, L1, L2, dropout rate) are arrays, so studies
  that differ only in those numbers (not in switching dropout or a penalty on or off) share one
  compiled program.

A variant's numbers never depend on its company. Each column of the bag adds a review's words in
their order, a chunk of 1,024 occurrences at a time whatever the width; every sum over the batch
(a bias gradient, a loss) or over a variant's own weights (a penalty) is a fixed pairwise tree
(`tree_sum`); contractions over a variant's own units are batched per variant; nothing sums
across variants, and the blocks depend on each variant alone. So the same spec, seed
and data order give bitwise the same weights and history alone (`fit` is a study of one) or among
64 others. The exception is the optional dense head (`dense_words > 0`): a matmul's rounding
depends on the matrix width, so that path agrees only to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from imdb_jax.models import MultiHot, column_dropout
from imdb_jax.optim import RMS_DECAY, RMS_EPSILON

HYPERPARAMS = ("learning_rate", "weight_decay", "l1", "l2", "dropout_rate")


@dataclasses.dataclass(frozen=True)
class Block:
    """Variants (slots) with the same hidden widths, stacked on a leading axis.

    Attributes:
      hidden_units: the widths every member has.
      size: slots in the block (per device shard).
      offset: the block's first column in the fused first-layer kernel; member `m` owns columns
        `offset + m * hidden_units[0] ... + hidden_units[0]`.
      start: the block's first slot in the layout's slot order.
      dropout: whether the members drop units (a block without dropout draws no random numbers;
        a rate of 0 would leave the values unchanged anyway).
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
            [np.repeat(np.arange(block.start, block.start + block.size), block.hidden_units[0]) for block in self.blocks]
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
            slot_of[index] = start + position
        block = Block(key[0], len(indices), offset, start, key[1], key[2])
        blocks.append(block)
        offset += block.columns
        start += block.size
    return Layout(num_words, tuple(blocks)), slot_of


# ---------------------------------------------------------------------------------------------
# Reductions whose order is fixed by their own axis, whatever else shares the arrays.


def tree_sum(x: jax.Array, axis: int) -> jax.Array:
    """Sum over `axis` as a fixed pairwise tree (zero-padded to a power of two).

    XLA's own reductions pick their order (vector width, unrolling) by the whole array's shape,
    so a variant's sum could change with the number of variants beside it; halving adds are
    elementwise and give the same bits for any shape of the other axes.
    """
    axis = axis % x.ndim
    size = x.shape[axis]
    padded = 1 << max(size - 1, 0).bit_length()
    if padded != size:
        pad = [(0, 0, 0)] * x.ndim
        pad[axis] = (0, padded - size, 0)
        x = jax.lax.pad(x, jnp.zeros((), x.dtype), pad)
    while x.shape[axis] > 1:
        half = x.shape[axis] // 2
        x = jax.lax.add(jax.lax.slice_in_dim(x, 0, half, axis=axis), jax.lax.slice_in_dim(x, half, 2 * half, axis=axis))
    return jax.lax.squeeze(x, (axis,))


@jax.custom_vjp
def add_bias(x: jax.Array, bias: jax.Array) -> jax.Array:
    """`x[..., batch, units] + bias[..., units]`, whose bias gradient is a `tree_sum` over the
    batch (autodiff's own would be an XLA reduction)."""
    return x + bias[..., None, :]


def _add_bias_fwd(x, bias):
    return add_bias(x, bias), None


def _add_bias_bwd(_, grad):
    return grad, tree_sum(grad, axis=-2)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


@jax.custom_vjp
def output_logits(h: jax.Array, kernel: jax.Array) -> jax.Array:
    """float32[n, batch] = h[n, batch, units] · kernel[n, units], summed by `tree_sum` both
    ways (a matrix-vector product's rounding would depend on the shapes)."""
    return tree_sum(h * kernel[:, None, :], axis=-1)


def _output_fwd(h, kernel):
    return output_logits(h, kernel), (h, kernel)


def _output_bwd(residuals, grad):
    h, kernel = residuals
    return grad[..., None] * kernel[:, None, :], tree_sum(h * grad[..., None], axis=-2)


output_logits.defvjp(_output_fwd, _output_bwd)


# ---------------------------------------------------------------------------------------------
# The embedding bag, in chunks that stay in cache.

# Occurrences per chunk of the embedding bag. Fixed, whatever the width: XLA's scatter does not
# promise to add a chunk's updates in a fixed order, only the same order for the same chunk, so
# the chunking must not depend on which variants are fused. 1,024 occurrences keep a chunk's
# gathered rows in cache for fused widths up to ~256 columns and the loop short (~75 chunks per
# batch of 512 reviews); measured on the 2-core CPU it beats one whole-batch gather for 64 fused
# 16-16 variants and matches it for one.
BAG_CHUNK = 1024


def bag_chunk(capacity: int) -> int:
    """Occurrences per chunk: `BAG_CHUNK`, or less where it does not divide `capacity`."""
    chunk = min(BAG_CHUNK, capacity)
    while capacity % chunk:
        chunk //= 2
    return max(chunk, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def embedding_bag(kernel, word_ids, row_ids, values, batch_size: int, chunk: int):
    """float32[batch_size, width]: row `r` sums `value * kernel[word]` over its occurrences.

    The occurrences are taken `chunk` at a time, in order, so the gathered rows of a chunk stay
    in cache instead of materialising `[occurrences, width]` (the bag moves bytes, it does
    little arithmetic). The backward pass scatter-adds into the kernel's gradient chunk by
    chunk in the same order. A column's sums do not depend on the columns beside it (tested
    bitwise in tests/test_variants.py).

    Args:
      kernel: float32[num_words, width].
      word_ids, row_ids: int32[capacity] occurrences; padding has row `batch_size` (dropped).
      values: None (multi-hot) or float32[capacity].
      batch_size: rows.
      chunk: occurrences per chunk, dividing `capacity`.
    """
    return _bag_forward(kernel, word_ids, row_ids, values, batch_size, chunk)


def _chunks(chunk, *arrays):
    return tuple(None if array is None else array.reshape(-1, chunk) for array in arrays)


def _bag_forward(kernel, word_ids, row_ids, values, batch_size, chunk):
    def body(summed, part):
        words, rows, weights = part
        gathered = jnp.take(kernel, words, axis=0)
        if weights is not None:
            gathered = gathered * weights[:, None]
        return summed.at[rows].add(gathered, mode="drop"), None

    start = jnp.zeros((batch_size, kernel.shape[1]), kernel.dtype)
    summed, _ = jax.lax.scan(body, start, _chunks(chunk, word_ids, row_ids, values))
    return summed


def _bag_fwd(kernel, word_ids, row_ids, values, batch_size, chunk):
    return _bag_forward(kernel, word_ids, row_ids, values, batch_size, chunk), (kernel.shape, word_ids, row_ids, values)


def _bag_bwd(batch_size, chunk, residuals, grad):
    del batch_size
    shape, word_ids, row_ids, values = residuals

    def body(kernel_grad, part):
        words, rows, weights = part
        rows_grad = jnp.take(grad, rows, axis=0, mode="fill", fill_value=0.0)
        if weights is not None:
            rows_grad = rows_grad * weights[:, None]
        return kernel_grad.at[words].add(rows_grad), None

    kernel_grad, _ = jax.lax.scan(body, jnp.zeros(shape, grad.dtype), _chunks(chunk, word_ids, row_ids, values))
    return kernel_grad, None, None, None


embedding_bag.defvjp(_bag_fwd, _bag_bwd)


# ---------------------------------------------------------------------------------------------
# The fused model.


def first_layer(params: Any, inputs: MultiHot, layout: Layout) -> jax.Array:
    """float32[batch, width]: every variant's first layer before its activation.

    The tail (sparse part) is an embedding bag (`embedding_bag`): each (row, word, value) triple
    adds `value * kernel[word]` to its row, in the batch's fixed order; its gradient is the
    matching scatter-add into the kernel's rows. The optional head is a matmul over the leading columns.
    """
    kernel = params["first"]["kernel"]
    batch_size = inputs.tail.batch_size if inputs.tail is not None else inputs.head.shape[0]
    summed = jnp.zeros((batch_size, layout.width), kernel.dtype)
    if inputs.tail is not None:
        tail = inputs.tail
        chunk = bag_chunk(tail.word_ids.shape[0])
        summed = summed + embedding_bag(kernel, tail.word_ids, tail.row_ids, tail.values, batch_size, chunk)
    if inputs.head is not None:
        summed = summed + inputs.head @ kernel[: inputs.head.shape[-1]]
    return add_bias(summed, params["first"]["bias"])


def _block_dropout(h, block: Block, rates, keys, layer: int):
    if not block.dropout:
        return h
    return jax.vmap(column_dropout, in_axes=(0, 0, 0, None))(h, rates, keys, layer)


def apply(params: Any, inputs: MultiHot, layout: Layout, dropout: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """float32[slots, batch] logits of every variant.

    Args:
      params: fused parameters (`init_params`).
      inputs: the batch (`MultiHot`, as `device_data.gather_batch` cuts it).
      layout: the static arrangement.
      dropout: None (inference) or (rates float32[slots], step keys [slots]) for training.
    """
    hidden = jax.nn.relu(first_layer(params, inputs, layout))
    batch_size = hidden.shape[0]
    logits = []
    for block, block_params in zip(layout.blocks, params["blocks"]):
        width = block.hidden_units[0]
        h = hidden[:, block.offset : block.offset + block.columns].reshape(batch_size, block.size, width)
        h = jnp.swapaxes(h, 0, 1)  # [size, batch, width]: the variant axis leads from here on
        members = slice(block.start, block.start + block.size)
        rates = keys = None
        if dropout is not None:
            rates, keys = dropout[0][members], dropout[1][members]
            h = _block_dropout(h, block, rates, keys, 0)
        for index, layer in enumerate(block_params["hidden"], start=1):
            h = jax.nn.relu(add_bias(jnp.einsum("nbi,nij->nbj", h, layer["kernel"]), layer["bias"]))
            if dropout is not None:
                h = _block_dropout(h, block, rates, keys, index)
        out = block_params["output"]
        logits.append(add_bias(output_logits(h, out["kernel"][..., 0])[..., None], out["bias"])[..., 0])
    return jnp.concatenate(logits, axis=0)


def penalties(params: Any, layout: Layout, l1: jax.Array, l2: jax.Array) -> jax.Array:
    """float32[slots]: each variant's `l1 * sum|w| + l2 * sum w**2` over its hidden kernels
    (Keras' kernel regularisers; the output layer is not penalised)."""
    kernel = params["first"]["kernel"]
    abs_sums, square_sums = [], []
    for block, block_params in zip(layout.blocks, params["blocks"]):
        if not block.penalty:
            abs_sums.append(jnp.zeros((block.size,), jnp.float32))
            square_sums.append(jnp.zeros((block.size,), jnp.float32))
            continue
        # Each column summed over the rows by a fixed tree, then each variant's columns.
        columns = kernel[:, block.offset : block.offset + block.columns]
        width = block.hidden_units[0]
        abs_sum = tree_sum(tree_sum(jnp.abs(columns), axis=0).reshape(block.size, width), axis=1)
        square_sum = tree_sum(tree_sum(jnp.square(columns), axis=0).reshape(block.size, width), axis=1)
        for layer in block_params["hidden"]:
            flat = layer["kernel"].reshape(block.size, -1)
            abs_sum = abs_sum + tree_sum(jnp.abs(flat), axis=1)
            square_sum = square_sum + tree_sum(jnp.square(flat), axis=1)
        abs_sums.append(abs_sum)
        square_sums.append(square_sum)
    return l1 * jnp.concatenate(abs_sums) + l2 * jnp.concatenate(square_sums)


@struct.dataclass
class FusedState:
    """Every variant's weights, rmsprop state and settings, in the fused layout.

    Attributes:
      params: {"first": {"kernel": [num_words, width], "bias": [width]}, "blocks": per block
        {"hidden": ({"kernel": [size, in, out], "bias": [size, out]}, ...), "output":
        {"kernel": [size, units, 1], "bias": [size, 1]}}}.
      nu: rmsprop's running mean of squared gradients, like `params`.
      step: int32 updates done (shared: every variant sees every batch).
      hyperparams: {name: float32[slots]} for `HYPERPARAMS`.
      dropout_keys: one PRNG key per slot, folded with the step for each batch.
      alive: bool[slots], False from the epoch a variant stopped being finite.
      best_params: None, or like `params`: each variant's weights at its lowest validation loss
        so far (kept on the device, one `where` per epoch).
      layout: the static arrangement.
    """

    params: Any
    nu: Any
    step: jax.Array
    hyperparams: dict[str, jax.Array]
    dropout_keys: jax.Array
    alive: jax.Array
    best_params: Any = None
    layout: Layout = struct.field(pytree_node=False, default=None)


def _per_leaf(layout: Layout, values: jax.Array, params: Any) -> Any:
    """A per-slot array broadcast to each parameter leaf (columns of the first layer, leading
    axis of the blocks)."""
    column_slots = jnp.asarray(layout.column_slots())
    blocks = []
    for block, block_params in zip(layout.blocks, params["blocks"]):
        members = values[block.start : block.start + block.size]
        blocks.append(jax.tree_util.tree_map(lambda leaf: members.reshape((-1,) + (1,) * (leaf.ndim - 1)), block_params))
    per_column = values[column_slots]
    return {"first": {"kernel": per_column[None, :], "bias": per_column}, "blocks": tuple(blocks)}


_RMS = optax.scale_by_rms(decay=RMS_DECAY, eps=RMS_EPSILON, eps_in_sqrt=True)


def _rmsprop(state: FusedState, grads: Any) -> tuple[Any, Any]:
    """Keras rmsprop with decoupled weight decay, per variant (the same arithmetic as
    `imdb_jax.optim.rmsprop`: `p + -lr * (g / sqrt(nu + eps) + wd * p)`)."""
    scaled, rms_state = _RMS.update(grads, optax.ScaleByRmsState(nu=state.nu))
    learning_rate = _per_leaf(state.layout, state.hyperparams["learning_rate"], state.params)
    weight_decay = _per_leaf(state.layout, state.hyperparams["weight_decay"], state.params)
    params = jax.tree_util.tree_map(
        lambda p, u, lr, wd: p + (-lr) * (u + wd * p), state.params, scaled, learning_rate, weight_decay
    )
    return params, rms_state.nu


def _loss_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array, penalty: jax.Array):
    per_example = optax.sigmoid_binary_cross_entropy(logits, labels[None, :])
    count = tree_sum(weights, axis=0)
    correct = ((logits > 0) == (labels > 0.5)[None, :]).astype(jnp.float32)
    return {
        # Keras reports the penalised loss averaged over examples: sum(bce) + n * penalty.
        "loss_sum": tree_sum(per_example * weights, axis=1) + count * penalty,
        "correct": tree_sum(correct * weights, axis=1),
        "count": count,
    }


def fused_loss(params: Any, state: FusedState, batch: dict[str, Any], training: bool):
    """Sum over variants of each variant's mean loss (so each variant's gradient is its own),
    and {"loss_sum": [slots], "correct": [slots], "count": []}."""
    dropout = None
    if training:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.dropout_keys, state.step)
        dropout = (state.hyperparams["dropout_rate"], keys)
    logits = apply(params, batch["inputs"], state.layout, dropout)
    penalty = penalties(params, state.layout, state.hyperparams["l1"], state.hyperparams["l2"])
    sums = _loss_sums(logits, batch["labels"], batch["weights"], penalty)
    return jnp.sum(sums["loss_sum"] / jnp.maximum(sums["count"], 1.0)), sums


def fused_train_step(state: FusedState, batch: dict[str, Any]) -> tuple[FusedState, dict[str, jax.Array]]:
    """One rmsprop update of every variant on the same batch.

    Args:
      state: the fused variants.
      batch: {"inputs": MultiHot, "labels": float32[batch], "weights": float32[batch]}.

    Returns:
      The new state and per-variant metric sums of the batch (before the update, as Keras
      reports them): {"loss_sum": [slots], "correct": [slots], "count": []}.
    """
    grads, sums = jax.grad(fused_loss, has_aux=True)(state.params, state, batch, True)
    params, nu = _rmsprop(state, grads)
    return state.replace(params=params, nu=nu, step=state.step + 1), sums


def fused_eval_step(state: FusedState, batch: dict[str, Any]) -> dict[str, jax.Array]:
    """Per-variant metric sums without dropout (the loss includes the penalty, as Keras')."""
    return fused_loss(state.params, state, batch, False)[1]


def fused_predict(state: FusedState, inputs: MultiHot) -> jax.Array:
    """float32[slots, batch] logits."""
    return apply(state.params, inputs, state.layout)


def finite_slots(state: FusedState, loss_sum: jax.Array) -> jax.Array:
    """bool[slots]: the variant's epoch loss and every one of its weights are finite."""
    layout = state.layout
    params = state.params
    finite = jnp.isfinite(loss_sum)
    column_ok = jnp.all(jnp.isfinite(params["first"]["kernel"]), axis=0) & jnp.isfinite(params["first"]["bias"])
    parts = []
    for block, block_params in zip(layout.blocks, params["blocks"]):
        ok = jnp.all(column_ok[block.offset : block.offset + block.columns].reshape(block.size, -1), axis=1)
        for leaf in jax.tree_util.tree_leaves(block_params):
            ok = ok & jnp.all(jnp.isfinite(leaf.reshape(block.size, -1)), axis=1)
        parts.append(ok)
    return finite & jnp.concatenate(parts)


def select_slots(keep: jax.Array, new: Any, old: Any, layout: Layout) -> Any:
    """Per variant, `new` where `keep` else `old`, for a params-shaped tree."""
    keep_leaf = _per_leaf(layout, keep, new)
    return jax.tree_util.tree_map(lambda k, a, b: jnp.where(k, a, b), keep_leaf, new, old)
