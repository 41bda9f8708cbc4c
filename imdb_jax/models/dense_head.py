"""How many leading (most frequent) columns the first layer multiplies densely: the dense head."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from imdb_jax.data.csr import checked_csr
from imdb_jax.errors import ImdbJaxError

FIRST_LAYERS = ("auto", "sparse", "dense")


# Under "auto", a column joins the dense head (a matmul) when more than this share of reviews
# hold it, per backend. A matmul's rounding depends on the width of the fused kernel, so a head
# makes a variant's last bits depend on its company: "auto" keeps every backend all-sparse (the
# embedding bag, bitwise) until a backend's measurements show a head pays for that. On the
# 2-core CPU the fused bag is the faster path for every study we measured (benchmarks/README.md);
# no accelerator was measured.
HEAD_SHARE: dict[str, float] = {}


def choose_dense_words(first_layer: str | int, x: Any, backend: str | None = None) -> int:
    """How many leading (most frequent) columns the first layer multiplies densely.

    Args:
      first_layer: "sparse" (none: the embedding bag, bitwise whatever trains beside it),
        "dense" (all: densify every batch, the classic reference), "auto" (by the backend's
        `HEAD_SHARE`, from the data alone) or an explicit column count.
      x: the training CSR matrix (columns ordered most frequent first, as `load_imdb` makes them).
      backend: "cpu", "gpu", "tpu" (default: JAX's default backend).
    """
    x = checked_csr(x)
    num_words = x.shape[1]
    if isinstance(first_layer, (int, np.integer)) and not isinstance(first_layer, bool):
        if not 0 <= first_layer <= num_words:
            raise ImdbJaxError(f"first_layer as a column count must be in [0, {num_words}], got {first_layer}")
        return int(first_layer)
    if first_layer not in FIRST_LAYERS:
        raise ImdbJaxError(
            f"first_layer must be one of {', '.join(FIRST_LAYERS)} or a column count, got {first_layer!r}"
        )
    if first_layer != "auto":
        return num_words if first_layer == "dense" else 0
    if backend is None:
        backend = jax.default_backend()
    share = HEAD_SHARE.get(backend)
    if share is None:
        return 0
    review_share = np.bincount(x.indices, minlength=num_words) / x.shape[0]
    return int(np.argmax(np.append(review_share <= share, True)))
