"""The layers every model is made of, and the fixed-order sums that keep a variant's numbers its own.

`MultiHotDense` (the first layer: multi-hot rows times a kernel, as an embedding bag or a matmul),
`Dense` (a hidden layer) and `Logit` (the output layer) are Flax modules written for ONE variant;
`imdb_jax.models.mlp` composes them into the single `MLP` and, lifted with `nn.vmap` over blocks
of same-shape variants, into the fused model. So a variant's arithmetic is written once.

A variant's numbers never depend on its company. Each column of the bag adds a review's words in
their order, a chunk of 1,024 occurrences at a time whatever the width; every sum over the batch
(a bias gradient, a loss) or over a variant's own units (the output logit) is a fixed pairwise
tree (`tree_sum`), whose halving adds are elementwise and so give the same bits whatever shape
the other axes have; nothing sums across variants. The exception is the optional dense head
(`dense_words > 0`): a matmul's rounding depends on the matrix width, so that path agrees only to
float32 rounding.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from imdb_jax.models import bag_kernel
from imdb_jax.models.inputs import MultiHot, SparseMultiHot

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
    """float32[batch] = h[batch, units] · kernel[units], summed by `tree_sum` both ways (a
    matrix-vector product's rounding would depend on the shapes)."""
    return tree_sum(rounded_products(h, kernel[None, :], kernel), axis=-1)


def rounded_products(a: jax.Array, b: jax.Array, source: jax.Array) -> jax.Array:
    """`a * b`, every product rounded to float32 before a sum takes it, in any program.

    XLA's CPU compiler lets LLVM contract a multiply and the add that takes its result into one
    fused multiply-add (one rounding instead of two), and whether the two land in one fusion
    depends on the program: a variant in company and alone got different last bits. Here each
    product is multiplied once more by a 1.0 that neither XLA nor LLVM can fold (it is computed
    from `source`, any finite array of the same program: `source * 0 + 1`), so only that multiply
    can be contracted into an add, and `fma(p, 1, c)` rounds exactly as `p + c` does. A
    non-finite `source` makes the products NaN, as its values would anyway.
    """
    one = jnp.reshape(jnp.ravel(source)[:1] * 0.0 + 1.0, (1,) * max(a.ndim, b.ndim))
    return (a * b) * one


def _output_fwd(h, kernel):
    return output_logits(h, kernel), (h, kernel)


def _output_bwd(residuals, grad):
    h, kernel = residuals
    return grad[..., None] * kernel[None, :], tree_sum(rounded_products(h, grad[..., None], kernel), axis=-2)


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
    chunk in the same order. On the CPU, unweighted rows take `bag_kernel` (the same loop in
    C++, adding in the same order: the same bits, 2-5.5x faster) where it could be built. A
    column's sums do not depend on the columns beside it (tested bitwise in
    tests/test_variants.py and tests/test_bag_kernel.py).

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
    if values is None and bag_kernel.in_use():
        return bag_kernel.add_rows(kernel, word_ids, row_ids, row_ids, batch_size, batch_size)

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
    # The kernel is kept only for weighted rows, whose values have a gradient (gradient x input).
    kept = None if values is None else kernel
    summed = _bag_forward(kernel, word_ids, row_ids, values, batch_size, chunk)
    return summed, (kernel.shape, kept, word_ids, row_ids, values)


def _bag_bwd(batch_size, chunk, residuals, grad):
    shape, kernel, word_ids, row_ids, values = residuals
    if values is None and bag_kernel.in_use():
        return bag_kernel.add_rows(grad, row_ids, word_ids, row_ids, batch_size, shape[0]), None, None, None

    def body(kernel_grad, part):
        words, rows, weights = part
        rows_grad = jnp.take(grad, rows, axis=0, mode="fill", fill_value=0.0)
        values_grad = None
        if weights is not None:
            values_grad = jnp.sum(rows_grad * jnp.take(kernel, words, axis=0), axis=1)
            rows_grad = rows_grad * weights[:, None]
        return kernel_grad.at[words].add(rows_grad), values_grad

    kernel_grad, values_grad = jax.lax.scan(
        body, jnp.zeros(shape, grad.dtype), _chunks(chunk, word_ids, row_ids, values)
    )
    if values_grad is not None:
        values_grad = values_grad.reshape(-1)
    return kernel_grad, None, None, values_grad


embedding_bag.defvjp(_bag_fwd, _bag_bwd)


def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`x @ kernel` in full float32 (`Precision.HIGHEST`): an accelerator would otherwise be free
    to multiply in TF32 or bfloat16 passes, and disagree with the CPU by far more than rounding."""
    return jnp.matmul(x, kernel, precision=jax.lax.Precision.HIGHEST)


# ---------------------------------------------------------------------------------------------
# One variant's layers (Keras `Dense` initialisation: glorot-uniform kernels, zero biases; Flax's
# own default is lecun-normal, so the initialiser is set explicitly).

glorot_uniform = nn.initializers.glorot_uniform()


class MultiHotDense(nn.Module):
    """The first layer: `x @ kernel + bias` on multi-hot (or weighted) rows.

    - `MultiHot` (what training cuts on the device) or `SparseMultiHot`: the embedding bag
      (`embedding_bag`: each review's kernel rows added in the batch's fixed order, its gradient
      the matching scatter-add), plus a matmul over the dense head's leading columns, if any;
    - a dense float32[batch, num_words] array: a plain matmul (the classic densified batch).
    Every path shares the same `kernel[num_words, features]`, so a model trained one way runs
    any other, with the same results to float32 rounding. In the fused model `features` is the
    sum of every variant's first width.
    """

    features: int
    num_words: int

    @nn.compact
    def __call__(self, inputs: jax.Array | SparseMultiHot | MultiHot) -> jax.Array:
        kernel = self.param("kernel", glorot_uniform, (self.num_words, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        if isinstance(inputs, SparseMultiHot):
            inputs = MultiHot(head=None, tail=inputs)
        if not isinstance(inputs, MultiHot):
            return add_bias(matmul(inputs, kernel), bias)
        batch_size = inputs.tail.batch_size if inputs.tail is not None else inputs.head.shape[0]  # pyright: ignore[reportOptionalMemberAccess]
        summed = jnp.zeros((batch_size, self.features), kernel.dtype)
        if inputs.tail is not None:
            tail = inputs.tail
            chunk = bag_chunk(tail.word_ids.shape[0])
            summed = summed + embedding_bag(kernel, tail.word_ids, tail.row_ids, tail.values, batch_size, chunk)  # pyright: ignore[reportOperatorIssue]
        if inputs.head is not None:
            summed = summed + matmul(inputs.head, kernel[: inputs.head.shape[-1]])
        return add_bias(summed, bias)


class Dense(nn.Module):
    """A hidden layer before its activation: `h[batch, in] @ kernel[in, features] + bias`, the
    bias gradient a fixed-order `tree_sum` over the batch."""

    features: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        kernel = self.param("kernel", glorot_uniform, (h.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return add_bias(matmul(h, kernel), bias)


class Logit(nn.Module):
    """The output layer: float32[batch] = h[batch, units] · kernel[units, 1] + bias, summed over
    the units by a fixed tree (`output_logits`)."""

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        kernel = self.param("kernel", glorot_uniform, (h.shape[-1], 1), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (1,), jnp.float32)
        return add_bias(output_logits(h, kernel[:, 0])[..., None], bias)[..., 0]


def column_dropout(x: jax.Array, rate: jax.Array | float, rng: jax.Array, layer: int) -> jax.Array:
    """Inverted dropout (Keras semantics: kept units scaled by `1 / (1 - rate)`, applied as an
    explicit reciprocal so XLA cannot rewrite the division differently from one program to the
    next) whose mask for unit `j` depends only on `(rng, layer, j)`: a variant's masks are the
    same whatever other variants or units train beside it.

    Args:
      x: float32[batch, units] activations.
      rate: fraction dropped, a Python float or a traced scalar (0 keeps `x` unchanged).
      rng: PRNG key for this step.
      layer: index of the hidden layer.
    """
    keep = 1.0 - rate
    layer_key = jax.random.fold_in(rng, layer)
    column_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(layer_key, jnp.arange(x.shape[-1]))
    uniform = jax.vmap(lambda key: jax.random.uniform(key, x.shape[:-1]))(column_keys)
    kept = jnp.moveaxis(uniform, 0, -1) < keep
    return jnp.where(kept, x * (1.0 / keep), 0.0)
