"""Issue 14's "fewer bytes per variant-epoch" experiments on the embedding bag and rmsprop, side by side.

Each experiment is timed in this one process against the package's own `embedding_bag` (or its
rmsprop update) on the same batch, and its result is checked bitwise against it. One
synthetic batch of IMDb's shape: 512 reviews, ~130 distinct words each from a Zipf-like
distribution over 10,000 words (~66,500 occurrences; the real batches average 66,431).

  python benchmarks/bag_experiments.py                    # widths 16, 512, 2048
  python benchmarks/bag_experiments.py --widths 512 --repeats 3

Rows: the package's bag forward + backward; the backward alone; the backward tiled by columns
(32/64/128: a `[num_words, tile]` gradient tile stays in L2 while the batch adds into it); the
backward as a segment sum over occurrences sorted by word on the device (a stable sort keeps
each word's reviews in order: bitwise equal); rmsprop's update of a `num_words x width` kernel,
with the passes XLA makes. The verdicts are in benchmarks/README.md ("Issue 14, item 2").
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from imdb_jax.models.layers import bag_chunk, embedding_bag
from imdb_jax.train.optim import init_opt_state, rmsprop

NUM_WORDS, BATCH, WORDS_PER_REVIEW = 10_000, 512, 130


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(word ids, row ids, occurrences): a batch's occurrences in CSR order, padded to a power of
    two with row `BATCH` (dropped), as the package cuts batches."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / (np.arange(NUM_WORDS) + 10.0)
    weights /= weights.sum()
    words, rows = [], []
    for row in range(BATCH):
        ids = np.unique(rng.choice(NUM_WORDS, size=200, p=weights))[:WORDS_PER_REVIEW]
        words.append(ids)
        rows.append(np.full(len(ids), row))
    word_ids, row_ids = np.concatenate(words).astype(np.int32), np.concatenate(rows).astype(np.int32)
    occurrences = len(word_ids)
    capacity = 1 << (occurrences - 1).bit_length()
    word_ids = np.concatenate([word_ids, np.zeros(capacity - occurrences, np.int32)])
    row_ids = np.concatenate([row_ids, np.full(capacity - occurrences, BATCH, np.int32)])
    return word_ids, row_ids, occurrences


def best_of(function, *args, repeats: int):
    """(result, fastest seconds) of a compiled function, after one warm-up call."""
    result = jax.block_until_ready(function(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return result, min(times)


def scatter_backward(grad, word_ids, row_ids, chunk, sorted_indices=False):
    """The kernel gradient as the package adds it: chunk by chunk, in occurrence order."""

    def body(kernel_grad, part):
        words, rows = part
        rows_grad = jnp.take(grad, rows, axis=0, mode="fill", fill_value=0.0)
        return kernel_grad.at[words].add(rows_grad, indices_are_sorted=sorted_indices), None

    start = jnp.zeros((NUM_WORDS, grad.shape[1]), grad.dtype)
    return jax.lax.scan(body, start, (word_ids.reshape(-1, chunk), row_ids.reshape(-1, chunk)))[0]


def tiled_backward(grad, word_ids, row_ids, chunk, tile):
    """`scatter_backward` one tile of columns at a time, written into the gradient in place."""
    tiles = grad.shape[1] // tile

    def body(kernel_grad, index):
        columns = jax.lax.dynamic_slice_in_dim(grad, index * tile, tile, axis=1)
        part = scatter_backward(columns, word_ids, row_ids, chunk)
        return jax.lax.dynamic_update_slice_in_dim(kernel_grad, part, index * tile, axis=1), None

    return jax.lax.scan(body, jnp.zeros((NUM_WORDS, grad.shape[1]), grad.dtype), jnp.arange(tiles))[0]


def sorted_backward(grad, word_ids, row_ids, chunk):
    """The segment sum: occurrences sorted by word (stably) on the device, then added."""
    order = jnp.argsort(word_ids, stable=True)
    return scatter_backward(grad, word_ids[order], row_ids[order], chunk, sorted_indices=True)


def rmsprop_step(params, state, grads):
    updates, state = rmsprop().update(grads, state, params)
    return optax.apply_updates(params, updates), state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--widths", default="16,512,2048", help="fused first-layer widths (default 16,512,2048)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row; the fastest counts (default 5)")
    args = parser.parse_args(argv)
    widths = [int(width) for width in args.widths.split(",")]
    word_ids, row_ids, occurrences = batch()
    chunk = bag_chunk(len(word_ids))
    # Arguments, not constants: XLA would otherwise fold the sort into the program.
    words, rows = jnp.asarray(word_ids), jnp.asarray(row_ids)
    print(f"{BATCH} reviews, {occurrences} occurrences ({len(word_ids)} slots, chunks of {chunk}), {NUM_WORDS} words")
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}, {len(jax.devices())} device(s)")
    rng = np.random.default_rng(1)
    for width in widths:
        kernel = jnp.asarray(rng.standard_normal((NUM_WORDS, width)), jnp.float32)
        grad = jnp.asarray(rng.standard_normal((BATCH, width)), jnp.float32)
        floats = len(word_ids) * width

        @jax.jit
        def bag(kernel, grad, words, rows):
            summed, pullback = jax.vjp(lambda k: embedding_bag(k, words, rows, None, BATCH, chunk), kernel)
            return summed, pullback(grad)[0]

        (_, reference), seconds = best_of(bag, kernel, grad, words, rows, repeats=args.repeats)
        print(f"\nwidth {width}: the package's bag, forward + backward: {seconds * 1e3:.1f} ms")
        backward = jax.jit(scatter_backward, static_argnums=(3,))
        got, seconds = best_of(backward, grad, words, rows, chunk, repeats=args.repeats)
        print(
            f"  backward alone: {seconds * 1e3:.1f} ms ({seconds / floats * 1e9:.2f} ns per added float),"
            f" bitwise {bool(jnp.array_equal(got, reference))}"
        )
        for tile in (32, 64, 128):
            if width % tile or tile >= width:
                continue
            tiled = jax.jit(tiled_backward, static_argnums=(3, 4))
            got, seconds = best_of(tiled, grad, words, rows, chunk, tile, repeats=args.repeats)
            print(
                f"  backward tiled by {tile} columns: {seconds * 1e3:.1f} ms, bitwise {bool(jnp.array_equal(got, reference))}"
            )
        segment = jax.jit(sorted_backward, static_argnums=(3,))
        got, seconds = best_of(segment, grad, words, rows, chunk, repeats=args.repeats)
        sort_s = best_of(jax.jit(lambda ids: jnp.argsort(ids, stable=True)), words, repeats=args.repeats)[1]
        print(
            f"  backward as a segment sum (sorted by word on the device): {seconds * 1e3:.1f} ms,"
            f" of which the sort {sort_s * 1e3:.1f} ms, bitwise {bool(jnp.array_equal(got, reference))}"
        )
        params, grads = {"kernel": jnp.array(kernel, copy=True)}, {"kernel": kernel}
        state = init_opt_state(params, {"kernel": jnp.full((1, width), 1e-3)}, {"kernel": jnp.zeros((1, width))})
        step = jax.jit(rmsprop_step, donate_argnums=(0, 1))
        compiled = step.lower(params, state, grads).compile().as_text() or ""
        fusions = sum(
            1
            for line in compiled.split("ENTRY")[-1].splitlines()
            if "fusion(" in line and f"[{NUM_WORDS},{width}]" in line
        )
        params, state = step(params, state, grads)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            params, state = jax.block_until_ready(step(params, state, grads))
            times.append(time.perf_counter() - start)
        megabytes = NUM_WORDS * width * 4 / 1e6
        print(
            f"  rmsprop update of the {NUM_WORDS} x {width} kernel: {min(times) * 1e3:.1f} ms in {fusions} loop"
            f" fusion(s) over it ({megabytes:.0f} MB each array; one pass each of g, nu, w read and nu, w"
            f" written would be {5 * megabytes:.0f} MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
