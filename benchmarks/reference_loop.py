"""The yardstick: the smallest honest JAX loop for the seed model, written without imdb_jax's
training code.

Same arithmetic as the library's default path: a 16-16-1 relu MLP (glorot-uniform kernels), the
first layer an embedding bag over each review's words (gather the kernel rows, segment-sum them;
its gradient a scatter-add), binary cross-entropy from logits, Keras rmsprop (optax
`scale_by_rms(0.9, eps=1e-7, eps_in_sqrt=True)`, learning rate 1e-3), batch 512, reshuffled every
epoch. Each epoch's batches are built on the host with NumPy (the permutation, then every batch's
(row, word) pairs at once, padded to one capacity) and trained by one jitted `lax.scan`, so no
Python runs per step. Nothing else: no validation, no divergence check, no metrics beyond the
loss, one model.

    python benchmarks/reference_loop.py [--epochs 6] [--rows 25000] [--synthetic] [--json]

Prints the steady epoch time (median of the epochs after the first) and, with --json, one JSON
record. `benchmarks/bench_single.py` and `run_all.py` import `reference_epoch_seconds`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _epoch_batches(x, labels, order, batch_size, min_capacity=0):
    """Padded (word, row-in-batch) pairs of every batch of one epoch, built with NumPy.

    The capacity (pairs per batch) is rounded up to a multiple of 8,192 and never shrinks
    (`min_capacity`), so epochs share one compiled program."""
    num_batches = -(-x.shape[0] // batch_size)
    padded = np.full(num_batches * batch_size, -1, np.int64)
    padded[: order.size] = order
    rows = padded.reshape(num_batches, batch_size)
    lengths = np.where(rows >= 0, np.diff(x.indptr)[np.maximum(rows, 0)], 0)
    capacity = max(min_capacity, -(-int(lengths.sum(axis=1).max()) // 8192) * 8192)
    words = np.zeros((num_batches, capacity), np.int32)
    row_ids = np.full((num_batches, capacity), batch_size, np.int32)
    for batch in range(num_batches):
        count = lengths[batch]
        starts = x.indptr[np.maximum(rows[batch], 0)]
        total = int(count.sum())
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(count)[:-1]]), count)
        words[batch, :total] = x.indices[offsets + np.arange(total)]
        row_ids[batch, :total] = np.repeat(np.arange(batch_size), count)
    batch_labels = np.where(rows >= 0, labels[np.maximum(rows, 0)], 0).astype(np.float32)
    weights = (rows >= 0).astype(np.float32)
    return words, row_ids, batch_labels, weights


def reference_epoch_seconds(x, labels, *, epochs: int = 6, batch_size: int = 512, hidden=(16, 16), seed: int = 0):
    """Trains the seed model `epochs` epochs and returns (seconds per epoch, final loss).

    The first epoch includes compilation; callers take the median of the rest.
    """
    import jax
    import jax.numpy as jnp
    import optax

    num_words = x.shape[1]
    keys = jax.random.split(jax.random.key(seed), len(hidden) + 1)
    glorot = jax.nn.initializers.glorot_uniform()
    sizes = (num_words,) + tuple(hidden) + (1,)
    params = [
        {"kernel": glorot(key, (a, b), jnp.float32), "bias": jnp.zeros((b,), jnp.float32)}
        for key, a, b in zip(keys, sizes, sizes[1:])
    ]
    tx = optax.chain(optax.scale_by_rms(decay=0.9, eps=1e-7, eps_in_sqrt=True), optax.scale_by_learning_rate(1e-3))
    opt_state = tx.init(params)

    def loss_fn(params, words, row_ids, labels, weights):
        first = params[0]
        rows = jnp.take(first["kernel"], words, axis=0)
        h = (
            jnp.zeros((batch_size, rows.shape[-1]), rows.dtype).at[row_ids].add(rows, mode="drop")
            + first["bias"][None, :]
        )
        h = jax.nn.relu(h)
        for layer in params[1:-1]:
            h = jax.nn.relu(h @ layer["kernel"] + layer["bias"][None, :])
        logits = (h @ params[-1]["kernel"] + params[-1]["bias"][None, :])[:, 0]
        losses = optax.sigmoid_binary_cross_entropy(logits, labels) * weights
        return jnp.sum(losses) / jnp.sum(weights)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def epoch(params, opt_state, words, row_ids, labels, weights):
        def step(carry, batch):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
            updates, opt_state = tx.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (words, row_ids, labels, weights))
        return params, opt_state, losses

    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, np.float32)
    seconds, loss, capacity = [], float("nan"), 0
    for _ in range(epochs):
        started = time.perf_counter()
        batches = _epoch_batches(x, labels, rng.permutation(x.shape[0]), batch_size, capacity)
        capacity = batches[0].shape[1]
        params, opt_state, losses = epoch(params, opt_state, *batches)
        loss = float(jnp.mean(jax.block_until_ready(losses)))
        seconds.append(time.perf_counter() - started)
    return seconds, loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rows", type=int, default=25000)
    parser.add_argument("--synthetic", action="store_true", help="random IMDb-shaped rows (no data needed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from review_data import load_dataset

    train = load_dataset(synthetic=args.synthetic, rows=args.rows).train
    x, y = train.x, train.y
    seconds, loss = reference_epoch_seconds(x, y, epochs=args.epochs)
    steady = float(np.median(seconds[1:])) if len(seconds) > 1 else seconds[0]
    record = {
        "name": "reference_loop 16-16",
        "first_epoch_s": seconds[0],
        "steady_epoch_s": steady,
        "final_loss": loss,
        "rows": x.shape[0],
    }
    print(
        json.dumps(record)
        if args.json
        else f"reference loop: first epoch {seconds[0]:.3f} s, steady {steady:.4f} s, loss {loss:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
