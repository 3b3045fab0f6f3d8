"""Micro-benchmark of the pure-Python sampler logic (no vLLM needed).

Run: PYTHONPATH=packages/samplers/src python packages/samplers/benchmarks/bench_logic.py

Contexts are synthetic: random tokens from a 32k vocab with repeated chunks
spliced in (so n-grams and DRY matches exist), plus a worst case for DRY (a
short loop repeated over the whole context).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from vllm_plugin_samplers.dry import dry_penalties
from vllm_plugin_samplers.ngram import NgramIndex, banned_tokens
from vllm_plugin_samplers.params import DryParams

SIZES = (512, 2048, 8192)
VOCAB = 32000
STEPS = 256  # decode steps timed per n-gram run


def make_context(length: int, rng: random.Random) -> list[int]:
    toks: list[int] = []
    while len(toks) < length:
        if toks and rng.random() < 0.3:
            start = rng.randrange(len(toks))
            toks.extend(toks[start : start + rng.randint(2, 30)])
        else:
            toks.extend(rng.randrange(VOCAB) for _ in range(rng.randint(5, 40)))
    return toks[:length]


def per_call_us(fn: Callable[[], object], min_time: float = 0.3) -> float:
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls * 1e6


def bench_ngram(length: int, n: int, rng: random.Random) -> tuple[float, float]:
    """Per-step cost: incremental (STEPS decode steps from `length`) vs scratch."""
    ctx = make_context(length, rng)
    steps = make_context(STEPS, rng)
    best = float("inf")
    for _ in range(5):
        index = NgramIndex(n, ctx)  # prompt indexing is not timed
        start = time.perf_counter()
        for tok in steps:
            index.extend((tok,))
            index.banned()
        best = min(best, (time.perf_counter() - start) / STEPS * 1e6)
    scratch = per_call_us(lambda: banned_tokens(ctx, n))
    return best, scratch


def main() -> None:
    rng = random.Random(0)
    print("no_repeat_ngram (per decode step, microseconds)")
    head = f"{'context':>8} {'n':>3} {'NgramIndex.extend+banned':>25}"
    print(f"{head} {'banned_tokens scratch':>22}")
    for length in SIZES:
        for n in (1, 3):
            inc, scratch = bench_ngram(length, n, rng)
            print(f"{length:>8} {n:>3} {inc:>25.2f} {scratch:>22.1f}")

    print()
    print("dry_penalties (per call, microseconds; default params, 4 breaker ids)")
    print(f"{'context':>8} {'random+repeats':>15} {'loop of 8 tokens':>17} {'single token':>13}")
    params = DryParams(multiplier=0.8)
    breakers = frozenset({13, 25, 1, 9})
    for length in SIZES:
        ctx = make_context(length, rng)
        ctx[-3:] = ctx[100:103]  # make sure the suffix repeats
        loop = ([100 + i for i in range(8)] * length)[:length]
        same = [7] * length
        row = [
            per_call_us(lambda c=c: dry_penalties(c, params, breakers))
            for c in (ctx, loop, same)
        ]
        print(f"{length:>8} {row[0]:>15.1f} {row[1]:>17.1f} {row[2]:>13.1f}")


if __name__ == "__main__":
    main()
