"""Floor: the seed model's epoch as plain hand-written loops (numba, one thread), the hardware
floor for one core.

The same arithmetic as the package's default path, written out as loops over the CSR arrays:
a 16-16-1 relu MLP (logits, binary cross-entropy from logits, mean over the batch), batch 512,
the last batch the shorter remainder; the first layer is the sum of the kernel rows of a
review's words plus the bias (an embedding bag over the CSR row), its gradient a scatter-add
of each review's first-layer gradient into those rows; Keras rmsprop over every parameter at
every step (`nu = 0.9 nu + 0.1 g²; w -= lr · g / sqrt(nu + 1e-7)`, epsilon inside the square
root, learning rate 1e-3), zeroing the kernel gradient in the same pass. Everything is float32
except the epoch's loss sum (float64). One thread, no SIMD intrinsics: what LLVM makes of the
loops. Nothing beyond the arithmetic: no validation, no divergence check, no metrics but the
loss.

Check (on by default, `--no-check`): from the initial weights `imdb_jax.fit` starts from, over
the batches of its first epoch, the floor's epoch loss matches `fit`'s to rtol 1e-3 and its
weights to atol 1e-4 (float32 noise: the package sums in other orders). Then the timing: epochs
on fresh NumPy shuffles (the shuffle inside the epoch's time, as the package's epoch shuffles
on the device), the first one after numba compiled the loops, median of --repeats; and, in the
same run (`--no-package` skips it), the package's seed-model steady epoch beside it, with the
issue's target: the package's seed-model steady epoch no slower than this floor.

  python benchmarks/floor.py                     # all 25,000 reviews
  python benchmarks/floor.py --quick             # 2,048 reviews
  python benchmarks/floor.py --synthetic --rows 4096 --no-check
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli_options  # noqa: E402
import clocks  # noqa: E402
import reporting  # noqa: E402
import yardsticks  # noqa: E402

HIDDEN = (16, 16)
LEARNING_RATE = 1e-3
LOSS_RTOL = 1e-3
WEIGHTS_ATOL = 1e-4
NUMBA_HINT = "install the bench extra: pip install -e '.[bench]' (numba)"


def numba_missing() -> str | None:
    """None when numba can be imported here, else the skip note."""
    return None if importlib.util.find_spec("numba") else f"skipped: numba not installed; {NUMBA_HINT}"


@functools.cache
def kernels() -> Any:
    """The compiled loops (numba is imported only here, so --help and the skip note need none).

    Returns:
      `train_epoch(indptr, indices, labels, order, batch_size, lr, params, nu, grads, work)` ->
      float64 sum of the per-review losses, each before its batch's update; `params`, `nu`,
      `grads`: tuples (k1, b1, k2, b2, k3, b3) of float32 arrays updated in place.
    """
    import numba

    jit = numba.njit(nogil=True, fastmath=False, error_model="numpy", cache=False)
    rho, one_minus_rho, eps, zero, one = (np.float32(value) for value in (0.9, 1 - 0.9, 1e-7, 0.0, 1.0))

    @jit
    def rmsprop(param, grad, nu, lr, clear):
        # One pass per parameter: read w, g, nu; write nu and w (and g = 0 for the next step).
        p, g, v = param.reshape(-1), grad.reshape(-1), nu.reshape(-1)
        for i in range(p.size):
            gi = g[i]
            vi = one_minus_rho * (gi * gi) + rho * v[i]
            v[i] = vi
            p[i] = p[i] - lr * (gi / np.sqrt(vi + eps))
            if clear:
                g[i] = zero

    @jit
    def train_epoch(indptr, indices, labels, order, batch_size, lr, params, nu, grads, work):
        k1, b1, k2, b2, k3, b3 = params
        g1, gb1, g2, gb2, g3, gb3 = grads
        h1, h2, a1, a2, dh1, dh2 = work
        units1, units2 = b1.size, b2.size
        loss_sum = 0.0
        for start in range(0, order.size, batch_size):
            n = min(batch_size, order.size - start)
            inv_n = one / np.float32(n)
            # Clear the small gradients (rmsprop clears the kernel's in its pass).
            gb2[:] = zero
            g2[:, :] = zero
            g3[:] = zero
            gb1[:] = zero
            gb3[0] = zero
            # Forward: the bag (sum of the review's kernel rows, in CSR order), then the MLP.
            for i in range(n):
                row = order[start + i]
                for u in range(units1):
                    h1[i, u] = zero
                for p in range(indptr[row], indptr[row + 1]):
                    word = indices[p]
                    for u in range(units1):
                        h1[i, u] += k1[word, u]
                for u in range(units1):
                    h1[i, u] += b1[u]
                    a1[i, u] = max(h1[i, u], zero)
                for j in range(units2):
                    total = zero
                    for u in range(units1):
                        total += a1[i, u] * k2[u, j]
                    h2[i, j] = total + b2[j]
                    a2[i, j] = max(h2[i, j], zero)
                logit = zero
                for j in range(units2):
                    logit += a2[i, j] * k3[j, 0]
                logit += b3[0]
                label = labels[row]
                # BCE from logits, stably: max(z, 0) - z·y + log1p(exp(-|z|)); d/dz = sigmoid(z) - y.
                loss_sum += max(logit, zero) - logit * label + np.log1p(np.exp(-abs(logit)))
                dz = (one / (one + np.exp(-logit)) - label) * inv_n
                gb3[0] += dz
                for j in range(units2):
                    g3[j, 0] += a2[i, j] * dz
                    dh2[i, j] = dz * k3[j, 0] if h2[i, j] > zero else zero
                    gb2[j] += dh2[i, j]
                for u in range(units1):
                    total = zero
                    for j in range(units2):
                        g2[u, j] += a1[i, u] * dh2[i, j]
                        total += dh2[i, j] * k2[u, j]
                    dh1[i, u] = total if h1[i, u] > zero else zero
                    gb1[u] += dh1[i, u]
            # Backward of the bag: scatter-add each review's first-layer gradient into its rows.
            for i in range(n):
                row = order[start + i]
                for p in range(indptr[row], indptr[row + 1]):
                    word = indices[p]
                    for u in range(units1):
                        g1[word, u] += dh1[i, u]
            rmsprop(k1, g1, nu[0], lr, True)
            rmsprop(b1, gb1, nu[1], lr, False)
            rmsprop(k2, g2, nu[2], lr, False)
            rmsprop(b2, gb2, nu[3], lr, False)
            rmsprop(k3, g3, nu[4], lr, False)
            rmsprop(b3, gb3, nu[5], lr, False)
        return loss_sum

    return train_epoch


class Floor:
    """The seed model's weights, rmsprop state and buffers, trained by `kernels()`'s loops.

    Args:
      x: float32[rows, num_words] multi-hot CSR (every stored value 1).
      y: float32[rows] labels.
      params: {"hidden_0": {"kernel": [num_words, 16], "bias": [16]}, "hidden_1": ...,
        "output": {"kernel": [16, 1], "bias": [1]}} initial weights (copied).
      batch_size: reviews per update.
    """

    def __init__(self, x: Any, y: Any, params: dict[str, Any], batch_size: int = 512):
        if not np.all(x.data == 1.0):
            raise ValueError("the floor's bag adds kernel rows: it needs multi-hot rows (every stored value 1)")
        x = x.tocsr()
        x.sort_indices()
        self.indptr = np.ascontiguousarray(x.indptr, np.int64)
        self.indices = np.ascontiguousarray(x.indices, np.int32)
        self.labels = np.ascontiguousarray(y, np.float32)
        self.batch_size = batch_size
        names = ("hidden_0", "hidden_1", "output")
        leaves = [np.array(params[name][part], np.float32, order="C") for name in names for part in ("kernel", "bias")]
        self.params = tuple(leaves)
        self.nu = tuple(np.zeros_like(leaf) for leaf in leaves)
        self.grads = tuple(np.zeros_like(leaf) for leaf in leaves)
        units1, units2 = leaves[1].size, leaves[3].size
        self.work = tuple(
            np.zeros((batch_size, width), np.float32) for width in (units1, units2, units1, units2, units1, units2)
        )

    def epoch(self, order: np.ndarray) -> float:
        """Trains one epoch over the rows in `order` (int, each row once); returns its mean loss."""
        order = np.ascontiguousarray(order, np.int64)
        train = kernels()
        loss_sum = train(
            self.indptr,
            self.indices,
            self.labels,
            order,
            self.batch_size,
            np.float32(LEARNING_RATE),
            self.params,
            self.nu,
            self.grads,
            self.work,
        )
        return float(loss_sum) / order.size

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        k1, b1, k2, b2, k3, b3 = self.params
        return {
            "hidden_0": {"kernel": k1, "bias": b1},
            "hidden_1": {"kernel": k2, "bias": b2},
            "output": {"kernel": k3, "bias": b3},
        }


def package_start(num_words: int, seed: int = 0) -> dict[str, Any]:
    """The seed model's initial weights as `imdb_jax.fit(config, ..., seed=seed)` starts from them
    (`fit_variants` initialises each variant with the first half of `split(key(seed))`)."""
    import jax

    from imdb_jax import ModelConfig, create_train_state

    init_key = jax.random.split(jax.random.key(seed))[0]
    state = create_train_state(init_key, ModelConfig(num_words=num_words, hidden_units=HIDDEN))
    return jax.tree_util.tree_map(np.asarray, jax.device_get(state.params))


def package_first_order(num_rows: int, batch_size: int, shuffle_seed: int = 0) -> np.ndarray:
    """The rows of `fit`'s first epoch, in its order (`run_epochs` shuffles epoch `e` with
    `fold_in(key(shuffle_seed), e)`), padding dropped."""
    import jax

    from imdb_jax.train.device_data import epoch_rows

    rows = np.asarray(epoch_rows(num_rows, batch_size, jax.random.fold_in(jax.random.key(shuffle_seed), 0))).reshape(-1)
    return rows[rows < num_rows]


def check(train: Any, batch_size: int) -> dict[str, Any]:
    """One epoch of the floor and of `imdb_jax.fit` from the same weights over the same batches.

    Returns:
      {"floor_loss", "fit_loss", "loss_rel_diff", "weights_max_abs_diff", "agrees"}.
    """
    import jax

    from imdb_jax import ModelConfig, fit

    x, y = train.x, train.y
    floor = Floor(x, y, package_start(x.shape[1]), batch_size)
    floor_loss = floor.epoch(package_first_order(x.shape[0], batch_size))
    config = ModelConfig(num_words=x.shape[1], hidden_units=HIDDEN)
    state, history = fit(config, train, epochs=1, batch_size=batch_size, seed=0, first_layer="sparse", progress=False)
    fit_loss = history["loss"][0]
    theirs = jax.tree_util.tree_map(np.asarray, jax.device_get(state.params))
    ours = floor.weights()
    diff = max(
        float(np.max(np.abs(ours[layer][part] - np.reshape(theirs[layer][part], ours[layer][part].shape))))
        for layer in ours
        for part in ours[layer]
    )
    rel = abs(floor_loss - fit_loss) / abs(fit_loss)
    return {
        "floor_loss": floor_loss,
        "fit_loss": fit_loss,
        "loss_rel_diff": rel,
        "weights_max_abs_diff": diff,
        "loss_rtol": LOSS_RTOL,
        "weights_atol": WEIGHTS_ATOL,
        "agrees": bool(rel <= LOSS_RTOL and diff <= WEIGHTS_ATOL),
    }


def compile_loops(train: Any, batch_size: int) -> float:
    """Seconds numba takes to compile the loops, on a tiny problem of the same types (0 once
    compiled in this process), so no timed epoch pays for it."""
    started = time.perf_counter()
    tiny = Floor(train.x[:2], train.y[:2], package_start(train.x.shape[1]), batch_size)
    tiny.epoch(np.arange(2))
    return time.perf_counter() - started


def floor_epochs(train: Any, epochs: int, batch_size: int, seed: int = 0) -> tuple[list[float], list[float], float]:
    """(seconds per epoch, mean loss per epoch, numba compile seconds): `epochs` epochs from the
    package's initial weights, each on a fresh NumPy shuffle (inside its time), the loops
    compiled before the first."""
    compile_s = compile_loops(train, batch_size)
    floor = Floor(train.x, train.y, package_start(train.x.shape[1]), batch_size)
    rng = np.random.default_rng(seed)
    seconds, losses = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        losses.append(floor.epoch(rng.permutation(train.x.shape[0])))
        seconds.append(time.perf_counter() - start)
    return seconds, losses, compile_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli_options.parser(__doc__)
    cli_options.add_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--no-check", action="store_true", help="skip the check against imdb_jax.fit (loss and weights after one epoch)"
    )
    parser.add_argument(
        "--no-package", action="store_true", help="do not time the package's seed-model epoch beside the floor"
    )
    return cli_options.resolve_arguments(parser.parse_args(argv), default_repeats=5, quick_repeats=3)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reporter = reporting.Reporter("floor", args)
    missing = numba_missing()
    if missing:
        reporter.note("floor numba 16-16", missing)
        return 0
    dataset = cli_options.dataset_from_args(args)
    train = dataset.train
    settings = {
        "model": "16-16-1",
        "batch_size": args.batch_size,
        "loops": "numba njit, one thread",
        "optimizer": "rmsprop over every parameter",
        **dataset.describe(),
    }
    compile_s = compile_loops(train, args.batch_size)
    reporting.log(f"floor: numba compiled the loops in {compile_s:.1f} s")
    if not args.no_check:
        reporting.log("floor: one epoch beside imdb_jax.fit from the same weights ...")
        agreement = check(train, args.batch_size)
        reporting.log(
            f"  loss {agreement['floor_loss']:.6f} vs fit {agreement['fit_loss']:.6f} (rel {agreement['loss_rel_diff']:.2e}); "
            f"weights max |diff| {agreement['weights_max_abs_diff']:.2e}: {'agrees' if agreement['agrees'] else 'DISAGREES'}"
        )
        reporter.emit("check", "floor numba 16-16 vs imdb_jax.fit", settings, **agreement)
    reporting.log(f"floor: 16-16-1 as numba loops, 1 + {args.repeats} epochs ...")
    seconds, losses, _ = floor_epochs(train, 1 + args.repeats, args.batch_size)
    steady = clocks.summarize(seconds[1:])
    reporter.emit("epoch_first", "floor numba 16-16", settings, **clocks.summarize(seconds[:1]), compile_s=compile_s)
    reporter.emit(
        "epoch_steady",
        "floor numba 16-16",
        settings,
        **steady,
        compile_s=compile_s,
        losses=losses,
        reviews_per_s=train.x.shape[0] / steady["median_s"],
    )
    if not args.no_package:
        from imdb_jax import VariantSpec

        reporting.log(f"imdb_jax: 16-16-1, 1 + {args.repeats} epochs (first layer auto) ...")
        timing = clocks.time_fit_variants(
            [VariantSpec(HIDDEN)], train, epochs=1 + args.repeats, batch_size=args.batch_size
        )
        ours = timing["steady"]["median_s"]
        package = {**settings, "loops": None, "optimizer": "rmsprop", "path": timing["path"]}
        reporter.emit(
            "epoch_steady",
            "imdb_jax 16-16",
            package,
            **timing["steady"],
            compile_s=timing["compile_s"],
            vs={"floor": yardsticks.compare(ours, steady["median_s"])},
        )
        reporter.target(
            "seed-model steady epoch no slower than floor.py's single thread",
            value=ours / steady["median_s"],
            threshold=1.0,
            op="<=",
            figure=f"imdb_jax {ours:.4f} s ({timing['path']}) vs floor {steady['median_s']:.4f} s",
        )
    if not args.no_table:
        reporter.table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
