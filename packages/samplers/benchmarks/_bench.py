"""What the samplers' benchmark scripts share (imported from their folder)."""

from __future__ import annotations

import time
from collections.abc import Callable


def timed(fn: Callable[[], object], steps: int) -> float:
    """Milliseconds per call of ``fn`` over ``steps`` calls, after one warm-up call."""
    fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps * 1000


def digits_vocabulary(vocab: int) -> None:
    """No model here: a vocabulary whose token i reads str(i) stands in for
    the tokenizer the DRY processor would load."""
    import vllm_plugin_samplers.processors as mod
    from vllm_plugin_samplers.breakers import Resolver

    resolver = Resolver([str(i) for i in range(vocab)])
    mod.make_resolver = lambda cfg: resolver
