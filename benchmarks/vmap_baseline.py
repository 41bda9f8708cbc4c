"""The plain `jax.vmap` baseline: K stacked Flax MLPs trained as a JAX user would write it,
beside the package's fused engine and one solo epoch, in the same run.

The baseline, written without imdb_jax's training code: a `flax.linen` MLP (Dense 16 relu,
Dense 16 relu, Dense 1; glorot-uniform kernels, zero biases, as Keras), `optax.rmsprop(1e-3,
decay=0.9, eps=1e-7)` (epsilon inside the square root: Keras' rmsprop), binary cross-entropy
from logits, `jax.jit(jax.vmap(train_step))` over K stacked parameter trees (variant `s`
initialised from `key(s)`), every variant on the same batch. Batches of 512 are densified from
the same CSR rows one batch at a time on the host (`x[rows].toarray()`, float32[512, 10000])
and handed to the step, in a fresh NumPy shuffle per epoch; the last batch is the shorter
remainder (its own compiled shape). The same data and the same steps as the package: what
differs is only how the first layer is computed (a dense matmul over every column, against the
package's embedding bag over the words a review has) and how the variants share the work.

Measured in one process, each as 1 + --repeats epochs, the steady epochs' median:
  vmap K x 16-16      one epoch of the K stacked MLPs (variant_epoch: divided by K), with the
                      seconds spent densifying batches on the host inside it
  imdb_jax K x 16-16  `fit_variants` of K `VariantSpec((16, 16), seed=s)` (the fused engine)
  imdb_jax 1 x 16-16  one solo epoch (`fit_variants` of one spec: what `fit` runs)
and the issue's targets: the fused per variant-epoch at most 0.25x one solo epoch, and at
least 4x faster than the vmap baseline's per variant-epoch.

Check (on by default, `--no-check`): one variant of the baseline, from the weights `imdb_jax.fit`
starts from and over its first epoch's batches, ends the epoch with `fit`'s loss to rtol 1e-3
(float32 matmul precision pinned for the check), so the two train the same model.

  python benchmarks/vmap_baseline.py                          # K = 64, all 25,000 reviews
  python benchmarks/vmap_baseline.py --quick                  # 2,048 reviews
  python benchmarks/vmap_baseline.py --variants 16 --repeats 2 --no-check
"""

from __future__ import annotations

import argparse
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
SOLO_THRESHOLD = 0.25  # issue 14: fused per variant-epoch <= 0.25x one solo epoch
VMAP_THRESHOLD = 4.0  # issue 14: fused per variant-epoch >= 4x faster than the plain vmap


def make_baseline(num_words: int, hidden: tuple[int, ...] = HIDDEN, precision: str = "default"):
    """(init, step): the plain JAX user's K stacked Flax MLPs.

    Returns:
      init(keys[K]) -> (params, opt_state), every leaf with a leading K axis;
      step(params, opt_state, x float32[batch, num_words], y float32[batch]) -> (params,
      opt_state, loss float32[K]) (params and opt_state donated), `jax.jit(jax.vmap(...))`.
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    class MLP(nn.Module):
        hidden: tuple[int, ...]

        @nn.compact
        def __call__(self, x):
            init = nn.initializers.glorot_uniform()
            for index, width in enumerate(self.hidden):
                x = nn.relu(nn.Dense(width, kernel_init=init, name=f"hidden_{index}")(x))
            return nn.Dense(1, kernel_init=init, name="output")(x)[..., 0]

    model = MLP(hidden)
    tx = optax.rmsprop(LEARNING_RATE, decay=0.9, eps=1e-7, eps_in_sqrt=True)

    def init_one(key):
        params = model.init(key, jnp.zeros((1, num_words), jnp.float32))["params"]
        return params, tx.init(params)

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))

    def train_step(params, opt_state, x, y):
        with jax.default_matmul_precision(precision):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(jax.vmap(train_step, in_axes=(0, 0, None, None)), donate_argnums=(0, 1))
    return jax.jit(jax.vmap(init_one)), step


def densify(x: Any, rows: np.ndarray) -> np.ndarray:
    """float32[len(rows), num_words]: one batch of CSR rows as a dense array (on the host)."""
    return np.asarray(x[rows].toarray(), np.float32)


def train_epoch(step, params, opt_state, x, y, order: np.ndarray, batch_size: int):
    """One epoch of the baseline over the rows in `order`.

    Returns:
      (params, opt_state, mean loss float64[K], host seconds spent densifying).
    """
    import jax
    import jax.numpy as jnp

    losses, densify_s = [], 0.0
    for start in range(0, order.size, batch_size):
        rows = order[start : start + batch_size]
        began = time.perf_counter()
        xb, yb = densify(x, rows), np.asarray(y[rows], np.float32)
        densify_s += time.perf_counter() - began
        params, opt_state, loss = step(params, opt_state, xb, yb)
        losses.append(loss * rows.size)
    total = np.asarray(jax.device_get(jnp.sum(jnp.stack(losses), axis=0)), np.float64)
    return params, opt_state, total / order.size, densify_s


def time_baseline(train: Any, count: int, epochs: int, batch_size: int, precision: str) -> dict[str, Any]:
    """`epochs` epochs of `count` stacked MLPs (variant s from key(s)), each on a fresh shuffle.

    Returns:
      {"epochs_s", "densify_s" (per epoch), "compile_s" (inside the first epoch), "losses"}.
    """
    import jax

    from imdb_jax.train.compile_clock import CompileClock

    init, step = make_baseline(train.x.shape[1], precision=precision)
    params, opt_state = init(jax.vmap(jax.random.key)(np.arange(count)))
    rng = np.random.default_rng(0)
    seconds, densified, losses = [], [], []
    with CompileClock() as clock:
        first_start = time.time()
        first_end = first_start
        for epoch in range(epochs):
            started = time.perf_counter()
            params, opt_state, loss, densify_s = train_epoch(
                step, params, opt_state, train.x, train.y, rng.permutation(train.x.shape[0]), batch_size
            )
            seconds.append(time.perf_counter() - started)
            densified.append(densify_s)
            losses.append(float(np.mean(loss)))
            if epoch == 0:
                first_end = time.time()
    return {
        "epochs_s": seconds,
        "densify_s": densified,
        "compile_s": clock.seconds(first_start, first_end),
        "losses": losses,
    }


def check(train: Any, batch_size: int) -> dict[str, Any]:
    """One variant of the baseline beside `imdb_jax.fit`: same weights, same first-epoch batches.

    Returns:
      {"baseline_loss", "fit_loss", "loss_rel_diff", "loss_rtol", "agrees"}.
    """
    import floor
    import jax

    from imdb_jax import ModelConfig, fit

    x = train.x
    start = floor.package_start(x.shape[1])
    init, step = make_baseline(x.shape[1], precision="float32")
    _, opt_state = init(jax.vmap(jax.random.key)(np.arange(1)))
    params = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[None], start)
    order = floor.package_first_order(x.shape[0], batch_size)
    _, _, loss, _ = train_epoch(step, params, opt_state, x, train.y, order, batch_size)
    config = ModelConfig(num_words=x.shape[1], hidden_units=HIDDEN)
    _, history = fit(config, train, epochs=1, batch_size=batch_size, seed=0, progress=False)
    ours, theirs = float(loss[0]), history["loss"][0]
    rel = abs(ours - theirs) / abs(theirs)
    return {
        "baseline_loss": ours,
        "fit_loss": theirs,
        "loss_rel_diff": rel,
        "loss_rtol": LOSS_RTOL,
        "agrees": bool(rel <= LOSS_RTOL),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli_options.parser(__doc__)
    cli_options.add_arguments(parser)
    parser.add_argument(
        "--variants", type=int, default=64, help="K, the number of stacked / fused 16-16 variants (default 64)"
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--vmap-repeats",
        type=int,
        default=None,
        help="steady epochs of the vmap baseline (default: --repeats; its epochs are the slow ones)",
    )
    parser.add_argument(
        "--precision",
        choices=("default", "float32", "highest"),
        default="default",
        help="the baseline's matmul precision (default: JAX's default, what a user writes; on GPUs that may be TF32)",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="skip the check against imdb_jax.fit (one variant, one epoch)"
    )
    args = cli_options.resolve_arguments(parser.parse_args(argv), default_repeats=2, quick_repeats=2)
    if args.variants < 1:
        parser.error("--variants must be at least 1")
    if args.vmap_repeats is None:
        args.vmap_repeats = args.repeats
    if args.vmap_repeats < 1:
        parser.error("--vmap-repeats must be at least 1")
    return args


def per_variant(summary: dict[str, Any], count: int) -> dict[str, Any]:
    """A `summarize` dict of whole epochs divided by the variant count."""
    result = {key: value / count for key, value in summary.items() if key.endswith("_s") and key != "samples_s"}
    result.update(repeats=summary["repeats"], samples_s=[value / count for value in summary["samples_s"]])
    return result


def main(argv: list[str] | None = None) -> int:
    from imdb_jax import VariantSpec

    args = parse_args(argv)
    reporter = reporting.Reporter("vmap", args)
    dataset = cli_options.dataset_from_args(args)
    train, count = dataset.train, args.variants
    base = {"model": "16-16-1", "batch_size": args.batch_size, "variants": count, **dataset.describe()}
    if not args.no_check:
        reporting.log("vmap baseline: one variant, one epoch beside imdb_jax.fit from the same weights ...")
        agreement = check(train, args.batch_size)
        reporting.log(
            f"  loss {agreement['baseline_loss']:.6f} vs fit {agreement['fit_loss']:.6f} (rel {agreement['loss_rel_diff']:.2e}): {'agrees' if agreement['agrees'] else 'DISAGREES'}"
        )
        reporter.emit(
            "check", "vmap 1x 16-16 vs imdb_jax.fit", {**base, "variants": 1, "precision": "float32"}, **agreement
        )

    reporting.log(f"imdb_jax: 1 x 16-16 (solo), 1 + {args.repeats} epochs ...")
    solo = clocks.time_fit_variants([VariantSpec(HIDDEN)], train, epochs=1 + args.repeats, batch_size=args.batch_size)
    solo_s = solo["steady"]["median_s"]
    reporter.emit(
        "epoch_steady",
        "imdb_jax 1x 16-16",
        {**base, "variants": 1, "path": solo["path"]},
        **solo["steady"],
        compile_s=solo["compile_s"],
    )

    reporting.log(f"imdb_jax: {count} x 16-16 fused, 1 + {args.repeats} epochs ...")
    specs = [VariantSpec(hidden_units=HIDDEN, seed=seed) for seed in range(count)]
    fused = clocks.time_fit_variants(specs, train, epochs=1 + args.repeats, batch_size=args.batch_size)
    fused_settings = {**base, "path": fused["path"], "fused_width": fused["result"].layout.width}
    del fused["result"]
    reporter.emit(
        "epoch_steady", f"imdb_jax {count}x 16-16", fused_settings, **fused["steady"], compile_s=fused["compile_s"]
    )
    fused_variant = per_variant(fused["steady"], count)

    reporting.log(f"vmap baseline: {count} x 16-16 stacked Flax MLPs, 1 + {args.vmap_repeats} epochs ...")
    vmap = time_baseline(train, count, 1 + args.vmap_repeats, args.batch_size, args.precision)
    vmap_steady = clocks.summarize(vmap["epochs_s"][1:])
    vmap_settings = {
        **base,
        "first_layer": "dense matmul per batch (densified on the host)",
        "precision": args.precision,
        "loop": "jax.jit(jax.vmap(train_step)), flax.linen Dense, optax.rmsprop",
    }
    densify = float(np.median(vmap["densify_s"][1:]))
    reporter.emit(
        "epoch_first",
        f"vmap {count}x 16-16",
        vmap_settings,
        **clocks.summarize(vmap["epochs_s"][:1]),
        compile_s=vmap["compile_s"],
    )
    reporter.emit(
        "epoch_steady",
        f"vmap {count}x 16-16",
        vmap_settings,
        **vmap_steady,
        compile_s=vmap["compile_s"],
        densify_s=densify,
        losses=vmap["losses"],
    )
    vmap_variant = per_variant(vmap_steady, count)
    reporter.emit(
        "variant_epoch",
        f"vmap {count}x 16-16",
        vmap_settings,
        **vmap_variant,
        vs={"solo_epoch": yardsticks.compare(vmap_variant["median_s"], solo_s)},
    )
    reporter.emit(
        "variant_epoch",
        f"imdb_jax {count}x 16-16",
        fused_settings,
        **fused_variant,
        vs={
            "solo_epoch": yardsticks.compare(fused_variant["median_s"], solo_s),
            "vmap": yardsticks.compare(fused_variant["median_s"], vmap_variant["median_s"]),
        },
    )
    ours = fused_variant["median_s"]
    reporter.target(
        f"{count} x 16-16 fused: per variant-epoch <= {SOLO_THRESHOLD:g}x one solo epoch",
        value=ours / solo_s,
        threshold=SOLO_THRESHOLD,
        op="<=",
        figure=f"{ours:.4f} s per variant-epoch vs solo {solo_s:.4f} s",
    )
    reporter.target(
        f"{count} x 16-16 fused: per variant-epoch >= {VMAP_THRESHOLD:g}x faster than the plain jax.vmap baseline",
        value=vmap_variant["median_s"] / ours,
        threshold=VMAP_THRESHOLD,
        op=">=",
        figure=f"vmap {vmap_variant['median_s']:.4f} s ({vmap_steady['median_s']:.2f} s per epoch of {count}, {densify:.2f} s of it densifying) vs fused {ours:.4f} s",
    )
    if not args.no_table:
        reporter.table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
