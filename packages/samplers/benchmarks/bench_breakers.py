"""Resolving DRY sequence breakers against a 152k-token vocabulary, side by side.

The worst case a client controls: 32 breakers (the most a request may name)
of 40 characters (the most llama.cpp reads), all new to the resolver. Each is
resolved two ways in one run:

* ``scan``: a substring scan and one ``endswith`` scan per proper prefix over
  the whole vocabulary (what resolution cost before :class:`VocabIndex`);
* ``index``: :func:`resolve_breakers` with a :class:`VocabIndex` built once
  (a substring scan over the tokens long enough, one binary search per prefix).

The vocabulary is synthetic (random strings of 1 to 16 characters over
letters, digits, punctuation, spaces, newlines and a few non-ASCII ones, and
one 128-character token, as real vocabularies have), since no model is
downloaded here. Host memory of what the resolver keeps is traced too.

Run: ``python packages/samplers/benchmarks/bench_breakers.py``
"""

from __future__ import annotations

import random
import string
import time
import tracemalloc

import numpy as np

from vllm_plugin_samplers.breakers import MAX_CHARS, VocabIndex, resolve_breakers, string_array
from vllm_plugin_samplers.params import DEFAULT_DRY_SEQUENCE_BREAKERS, MAX_DRY_SEQUENCE_BREAKERS


def scan(breakers, texts: np.ndarray, encode) -> None:
    single = np.zeros(len(texts), dtype=bool)
    for s in breakers:
        single |= np.char.find(texts, s) >= 0
        for k in range(1, len(s)):
            ends = np.char.endswith(texts, s[:k])
            if ends.any():
                encode(s[k:])


def best_ms(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def main() -> None:
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + " .,:;!?\"'*-_()\n" + "éü中"
    plain = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 16))) for _ in range(152_000)]
    plain[-1] = "=" * 128  # real vocabularies have a few long tokens (runs of spaces, dashes)
    encode = lambda s: [ord(c) % 1000 for c in s]  # noqa: E731 - a stand-in tokenizer
    tracemalloc.start()
    texts = np.asarray(plain, dtype=str)  # what the resolver held before: fixed width
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    t = time.perf_counter()
    index = VocabIndex(string_array(plain))
    built = time.perf_counter() - t
    del index
    tracemalloc.start()
    index = VocabIndex(string_array(plain))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"VocabIndex of {len(plain)} tokens built in {built * 1000:.0f} ms (once, at start)")
    print(f"host memory: fixed-width text array {before / 1e6:.1f} MB (before); "
          f"variable-width texts + VocabIndex {after / 1e6:.1f} MB")
    worst = ["".join(rng.choice(string.ascii_lowercase + " :") for _ in range(MAX_CHARS))
             for _ in range(MAX_DRY_SEQUENCE_BREAKERS)]
    print(f"\n{'breaker set':<40} {'scan ms':>9} {'index ms':>9} {'ratio':>7}")
    for label, breakers in ((f"{len(worst)} x {MAX_CHARS} characters (worst case)", worst),
                            ("default (\\n : \" *)", list(DEFAULT_DRY_SEQUENCE_BREAKERS)),
                            ("one multi-token: 'Alice:'", ["Alice:"])):
        a = best_ms(lambda b=breakers: scan(b, texts, encode))
        b = best_ms(lambda b=breakers: resolve_breakers(b, texts, encode, index))
        print(f"{label:<40} {a:9.1f} {b:9.1f} {a / b:6.1f}x")


if __name__ == "__main__":
    main()
