"""How long JAX spends tracing, lowering and compiling: `CompileClock`, from `jax.monitoring`'s
compile events, so a run's wall time splits into compiling and training (the one clock the
study, the benchmarks and anyone timing a run use)."""

from __future__ import annotations

import math
from typing import Any


class CompileClock:
    """Records JAX's compile events (`/jax/core/compile/...`) as time spans while open.

    Nested events (an inner function traced while its caller is) overlap; `seconds` counts the
    union of the spans, so nothing is counted twice.
    """

    PREFIX = "/jax/core/compile/"

    def __init__(self):
        self.spans: list[tuple[float, float, str]] = []

    def _listen(self, event: str, start_time: float, end_time: float, **kwargs: str | int) -> None:
        if event.startswith(self.PREFIX):
            self.spans.append((start_time, end_time, str(kwargs.get("fun_name", ""))))

    def __enter__(self) -> CompileClock:
        # Deferred: JAX (~1.3 s) loads only when a run is timed; --help imports this module (imdb_jax.study).
        import jax.monitoring

        jax.monitoring.register_event_time_span_listener(self._listen)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        # Deferred: JAX (~1.3 s) loads only when a run is timed; --help imports this module (imdb_jax.study).
        import jax.monitoring

        jax.monitoring.unregister_event_time_span_listener(self._listen)

    def seconds(self, begin: float = -math.inf, end: float = math.inf) -> float:
        """Compile seconds within [begin, end] (`time.time()` clock), overlaps counted once."""
        total, reach = 0.0, -math.inf
        for start, stop, _ in sorted(self.spans):
            start, stop = max(start, begin, reach), min(stop, end)
            if stop > start:
                total += stop - start
            reach = max(reach, stop)
        return total
