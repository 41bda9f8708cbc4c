"""The embedding bag's kernel of our own against XLA's loop, and against plain numba loops, same batch.

Issue 14 found the CPU study bound by XLA:CPU's scatter-add (about one float per nanosecond). The
package now runs the bag's forward pass (each review adds its words' kernel rows, in occurrence
order) and backward pass (each occurrence adds its review's gradient row into its word's gradient
row) as a C++ XLA FFI handler on the CPU (`imdb_jax/models/bag_kernel.cc`). This times, in one
process, on `bag_experiments.py`'s synthetic batch:

- XLA's loop: the package's `embedding_bag` with the kernel off (its chunked gather and
  scatter-add), forward and the kernel's gradient through `jax.vjp`;
- the kernel: the same calls with the kernel on (what training runs);
- where numba is installed (the `bench` extra), the same loops as one-thread numba functions
  writing into a buffer they reuse: the loop alone, with no XLA call and no fresh output.

All three must give the same bits (same sums in the same order); `bitwise` says whether they do.
Inputs of the XLA calls are already on the device, so no host-to-device copy is timed.

  python benchmarks/bag_kernel.py                  # widths 16, 512, 2048
  python benchmarks/bag_kernel.py --widths 512 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util

import jax
import numpy as np
from bag_experiments import BATCH, NUM_WORDS, batch, best_of
from reporting import Reporter, log

from imdb_jax.models import bag_kernel
from imdb_jax.models.layers import bag_chunk, embedding_bag

NUMBA_INSTALLED = importlib.util.find_spec("numba") is not None  # the bench extra


def _add_rows():
    """The numba loop both passes share, compiled on first call: for each occurrence `i` in
    order (padding, whose row is `batch_size`, skipped), `out[to_ids[i]] += source[from_ids[i]]`.
    The forward pass adds kernel rows from words into reviews, the backward gradient rows from
    reviews into words."""
    import numba

    @numba.njit(cache=True)
    def add_rows(source, from_ids, to_ids, row_ids, batch_size, out):
        out[:] = 0.0
        for i in range(from_ids.shape[0]):
            if row_ids[i] < batch_size:
                target, origin = to_ids[i], from_ids[i]
                for j in range(source.shape[1]):
                    out[target, j] += source[origin, j]

    return add_rows


def _package_bag(kernel_on: bool, chunk: int):
    """The package's bag, forward and kernel gradient, traced with the kernel on or off."""

    def traced(fn):
        jitted = jax.jit(fn)

        def call(*args):
            with contextlib.nullcontext() if kernel_on else bag_kernel.turned_off():
                return jitted(*args)

        return call

    def forward(k, w, r):
        return embedding_bag(k, w, r, None, BATCH, chunk)

    def backward(k, w, r, g):
        return jax.vjp(lambda kk: embedding_bag(kk, w, r, None, BATCH, chunk), k)[1](g)[0]

    return traced(forward), traced(backward)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The embedding bag: XLA's loop, the package's kernel, numba loops.")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 512, 2048])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    reporter = Reporter("bag_kernel", args)
    if not bag_kernel.available():
        reporter.note("bag_kernel", f"the package's kernel is not available: {bag_kernel.why_not()}")
    if not NUMBA_INSTALLED:
        reporter.note("bag_kernel", "numba is not installed (pip install -e '.[bench]'): no numba loops timed")
    add_rows = _add_rows() if NUMBA_INSTALLED else None
    word_ids, row_ids, occurrences = batch()
    chunk = bag_chunk(len(word_ids))
    device_words, device_rows = jax.device_put(word_ids), jax.device_put(row_ids)
    rng = np.random.default_rng(1)
    for width in args.widths:
        kernel = rng.standard_normal((NUM_WORDS, width)).astype(np.float32)
        grad = rng.standard_normal((BATCH, width)).astype(np.float32)
        device_kernel, device_grad = jax.device_put(kernel), jax.device_put(grad)
        figures = {}
        results = []
        for name, kernel_on in (("xla", False), ("kernel", True)):
            if kernel_on and not bag_kernel.available():
                continue
            forward, backward = _package_bag(kernel_on, chunk)
            summed, figures[f"{name}_forward_s"] = best_of(
                forward, device_kernel, device_words, device_rows, repeats=args.repeats
            )
            kernel_grad, figures[f"{name}_backward_s"] = best_of(
                backward, device_kernel, device_words, device_rows, device_grad, repeats=args.repeats
            )
            results.append((np.asarray(summed), np.asarray(kernel_grad)))
        if add_rows is not None:
            out_forward = np.empty((BATCH, width), np.float32)
            out_backward = np.empty((NUM_WORDS, width), np.float32)
            _, figures["loop_forward_s"] = best_of(
                add_rows, kernel, word_ids, row_ids, row_ids, BATCH, out_forward, repeats=args.repeats
            )
            _, figures["loop_backward_s"] = best_of(
                add_rows, grad, row_ids, word_ids, row_ids, BATCH, out_backward, repeats=args.repeats
            )
            results.append((out_forward, out_backward))
        bitwise = all(
            np.array_equal(results[0][0], forward) and np.array_equal(results[0][1], backward)
            for forward, backward in results[1:]
        )
        parts = [
            f"{name} {figures[name + '_forward_s'] * 1e3:.1f}/{figures[name + '_backward_s'] * 1e3:.1f} ms"
            for name in ("xla", "kernel", "loop")
            if name + "_forward_s" in figures
        ]
        log(f"width {width} (forward/backward): {', '.join(parts)}; bitwise {bitwise}")
        speedups = {}
        for name in ("kernel", "loop"):
            if name + "_forward_s" in figures:
                speedups[f"{name}_speedup"] = (figures["xla_forward_s"] + figures["xla_backward_s"]) / (
                    figures[f"{name}_forward_s"] + figures[f"{name}_backward_s"]
                )
        reporter.emit(
            "bag_kernel",
            f"width_{width}",
            {"width": width, "occurrences": occurrences, "capacity": len(word_ids)},
            **figures,
            **speedups,
            bitwise=bitwise,
        )
    reporter.table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
