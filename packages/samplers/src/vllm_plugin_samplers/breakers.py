"""DRY sequence breakers: strings resolved to token sequences, as llama.cpp does.

A breaker string ``s`` becomes, for every vocabulary token ``h``:

* ``(h, ())`` when the text of ``h`` contains ``s`` (a single-token breaker);
* ``(h, tail)`` when the text of ``h`` ends with a proper prefix ``s[:k]`` of
  ``s``, where ``tail`` is the tokenization of the rest ``s[k:]`` (at most
  :data:`MAX_TAIL` tokens; ``s`` is cut to :data:`MAX_CHARS` characters),

llama.cpp's ``get_overlapping_token_sequences``. The vocabulary is decoded
once (when the processor is built, outside any engine step) and every breaker
set is resolved once, with vectorised string scans over that decoded array.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_CHARS", "MAX_TAIL", "BreakerSet", "Resolver", "resolve_breakers"]

MAX_CHARS = 40  # as llama.cpp
MAX_TAIL = 20  # as llama.cpp


@dataclass(frozen=True)
class BreakerSet:
    """Resolved breakers: single-token ids and ``tail -> head ids`` sequences."""

    single: frozenset[int]
    tails: tuple[tuple[tuple[int, ...], frozenset[int]], ...] = ()


def resolve_breakers(breakers: Sequence[str], texts: np.ndarray,
                     encode: Callable[[str], list[int]] | None) -> BreakerSet:
    """Resolve breaker strings against ``texts`` (decoded text of every token id).

    ``encode`` tokenizes a tail (no special tokens); without it only
    single-token breakers are found.
    """
    single = np.zeros(len(texts), dtype=bool)
    tails: dict[tuple[int, ...], set[int]] = {}
    for s in breakers:
        s = s[:MAX_CHARS]
        if not s:
            continue
        single |= np.char.find(texts, s) >= 0
        if encode is None:
            continue
        for k in range(1, len(s)):
            ends = np.char.endswith(texts, s[:k])
            if not ends.any():
                continue
            tail = tuple(encode(s[k:])[:MAX_TAIL])
            if tail:
                tails.setdefault(tail, set()).update(np.flatnonzero(ends).tolist())
    single_ids = frozenset(np.flatnonzero(single).tolist())
    # A head that is a single-token breaker already breaks on its own.
    seqs = tuple(sorted((t, frozenset(h - single_ids)) for t, h in tails.items() if h - single_ids))
    return BreakerSet(single_ids, seqs)


class Resolver:
    """Decodes a tokenizer's vocabulary once; resolves breaker sets once each
    (the last ``max_sets`` distinct sets are kept)."""

    max_sets = 256

    def __init__(self, texts: Sequence[str], encode: Callable[[str], list[int]] | None = None) -> None:
        self.texts = np.asarray(list(texts), dtype=str)
        self.encode = encode
        self._cache: dict[tuple[str, ...], BreakerSet] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Resolver:
        """Decode every id of a Hugging Face tokenizer on its own (as llama.cpp's
        ``detokenize({id})``), in one batched call."""
        ids = [[i] for i in range(len(tokenizer))]
        texts = tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return cls(texts, lambda s: list(tokenizer.encode(s, add_special_tokens=False)))

    def __call__(self, breakers: Sequence[str]) -> BreakerSet:
        key = tuple(breakers)
        with self._lock:
            got = self._cache.pop(key, None)
            if got is None:
                got = resolve_breakers(key, self.texts, self.encode)
            self._cache[key] = got  # most recent last; bounded
            while len(self._cache) > self.max_sets:
                del self._cache[next(iter(self._cache))]
        return got


def load_resolver(path: str, trust_remote_code: bool, revision: str | None) -> Resolver:
    """A :class:`Resolver` for the model's tokenizer, or a clear error naming it."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except Exception as exc:
        raise RuntimeError(
            f"vllm-plugin-samplers: DRY resolves dry_sequence_breakers with the model's tokenizer, and "
            f"transformers.AutoTokenizer could not load {path!r} ({type(exc).__name__}: {exc}). Make the "
            f"tokenizer loadable (--tokenizer) or uninstall vllm-plugin-samplers.") from exc
    return Resolver.from_tokenizer(tok)
