"""No-repeat n-gram blocking (same semantics as transformers'
``NoRepeatNGramLogitsProcessor``).

A token is banned when appending it would produce an n-gram that already
occurs in the sequence (prompt + output so far).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

__all__ = ["NgramIndex", "banned_tokens"]


def banned_tokens(tokens: Sequence[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in ``tokens``.

    Recomputes from scratch in O(len(tokens) * n). Returns unique ids in order
    of first occurrence; empty when ``len(tokens) + 1 < n``. For ``n == 1``
    every token already seen is banned.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    length = len(tokens)
    if length + 1 < n:
        return []
    toks = list(tokens)
    prefix = toks[length - n + 1 :] if n > 1 else []
    k = n - 1
    seen: dict[int, None] = {}
    for i in range(length - k):
        if toks[i : i + k] == prefix:
            seen[toks[i + k]] = None
    return list(seen)


class NgramIndex:
    """Incremental n-gram index: O(n) per appended token.

    Keeps a map from each (n-1)-gram seen so far to the set of tokens that
    followed it, plus the current (n-1)-token suffix.
    """

    __slots__ = ("_length", "_next", "_suffix", "n")

    def __init__(self, n: int, tokens: Iterable[int] = ()) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = n
        self._next: dict[tuple[int, ...], set[int]] = {}
        self._suffix: deque[int] = deque(maxlen=n - 1)
        self._length = 0
        self.extend(tokens)

    def __len__(self) -> int:
        """Number of tokens indexed so far."""
        return self._length

    def extend(self, new_tokens: Iterable[int]) -> None:
        """Append tokens to the indexed sequence."""
        k = self.n - 1
        suffix = self._suffix
        table = self._next
        count = 0
        for tok in new_tokens:
            if len(suffix) == k:
                key = tuple(suffix)
                bucket = table.get(key)
                if bucket is None:
                    table[key] = {tok}
                else:
                    bucket.add(tok)
            suffix.append(tok)
            count += 1
        self._length += count

    def banned(self) -> frozenset[int]:
        """Tokens banned at the current position (same set as ``banned_tokens``)."""
        if len(self._suffix) < self.n - 1:
            return frozenset()
        bucket = self._next.get(tuple(self._suffix))
        return frozenset(bucket) if bucket else frozenset()
