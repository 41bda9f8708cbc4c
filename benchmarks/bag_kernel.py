"""How fast the embedding bag could be as a kernel of our own: numba loops against XLA, same batch.

Issue 14 found the CPU study bound by XLA:CPU's scatter-add (about one float per nanosecond). This
measures the lever that finding points to, before any of it is wired into the package: the bag's
forward pass (each review adds its words' kernel rows, in occurrence order) and its backward pass
(each occurrence adds its review's gradient row into its word's gradient row, in occurrence order)
written as plain one-thread numba loops, timed in this process against the package's
`embedding_bag` (forward, and the kernel's gradient through `jax.vjp`) on `bag_experiments.py`'s
synthetic batch, and checked bitwise against it. Adding in the same order makes the loops bitwise
equal to XLA's scatter, so a kernel like this would keep every bitwise guarantee.

  python benchmarks/bag_kernel.py                  # widths 16, 512, 2048
  python benchmarks/bag_kernel.py --widths 512 --repeats 3

Needs numba (the `bench` extra). Inside a jitted program the loops would have to be an XLA custom
call: XLA:CPU in jaxlib 0.10 refuses the original custom-call API (`API_VERSION_ORIGINAL is not
supported by XLA:CPU`), so it must be an XLA FFI handler. Not wired in yet; see benchmarks/README.md,
"Issue 14: a bag kernel of our own, measured".
"""

from __future__ import annotations

import argparse
import importlib.util

import jax
import numpy as np
from bag_experiments import BATCH, NUM_WORDS, batch, best_of
from reporting import Reporter, log

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The embedding bag as numba loops against XLA, same batch.")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 512, 2048])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    reporter = Reporter("bag_kernel", args)
    if not NUMBA_INSTALLED:
        reporter.note("bag_kernel", "numba is not installed (pip install -e '.[bench]'): nothing measured")
        return 0
    add_rows = _add_rows()
    word_ids, row_ids, occurrences = batch()
    chunk = bag_chunk(len(word_ids))
    rng = np.random.default_rng(1)
    for width in args.widths:
        kernel = rng.standard_normal((NUM_WORDS, width)).astype(np.float32)
        grad = rng.standard_normal((BATCH, width)).astype(np.float32)
        xla_forward = jax.jit(lambda k, w, r: embedding_bag(k, w, r, None, BATCH, chunk))
        xla_backward = jax.jit(
            lambda k, w, r, g: jax.vjp(lambda kk: embedding_bag(kk, w, r, None, BATCH, chunk), k)[1](g)[0]
        )
        summed, xla_forward_s = best_of(xla_forward, kernel, word_ids, row_ids, repeats=args.repeats)
        kernel_grad, xla_backward_s = best_of(xla_backward, kernel, word_ids, row_ids, grad, repeats=args.repeats)
        out_forward = np.empty((BATCH, width), np.float32)
        out_backward = np.empty((NUM_WORDS, width), np.float32)
        _, loop_forward_s = best_of(
            add_rows, kernel, word_ids, row_ids, row_ids, BATCH, out_forward, repeats=args.repeats
        )
        _, loop_backward_s = best_of(
            add_rows, grad, row_ids, word_ids, row_ids, BATCH, out_backward, repeats=args.repeats
        )
        bitwise = bool(np.array_equal(np.asarray(summed), out_forward)) and bool(
            np.array_equal(np.asarray(kernel_grad), out_backward)
        )
        log(
            f"width {width}: XLA forward {xla_forward_s * 1e3:.1f} ms, backward {xla_backward_s * 1e3:.1f} ms; "
            f"numba forward {loop_forward_s * 1e3:.1f} ms, backward {loop_backward_s * 1e3:.1f} ms; bitwise {bitwise}"
        )
        reporter.emit(
            "bag_kernel",
            f"width_{width}",
            {"width": width, "occurrences": occurrences, "capacity": len(word_ids)},
            xla_forward_s=xla_forward_s,
            xla_backward_s=xla_backward_s,
            loop_forward_s=loop_forward_s,
            loop_backward_s=loop_backward_s,
            speedup=(xla_forward_s + xla_backward_s) / (loop_forward_s + loop_backward_s),
            bitwise=bitwise,
        )
    reporter.table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
