"""DRY sequence breakers: strings resolved to token sequences, as llama.cpp does.

A breaker string ``s`` becomes, for every vocabulary token ``h``:

* ``(h, ())`` when the text of ``h`` contains ``s`` (a single-token breaker);
* ``(h, tail)`` when the text of ``h`` ends with a proper prefix ``s[:k]`` of
  ``s``, where ``tail`` is the tokenization of the rest ``s[k:]`` (at most
  :data:`MAX_TAIL` tokens; ``s`` is cut to :data:`MAX_BYTES` bytes of UTF-8,
  :func:`cut_breaker`),

llama.cpp's ``get_overlapping_token_sequences``. The vocabulary is decoded
once (when the processor is built, outside any engine step) and every breaker
set is resolved once, over an index of that decoded array (:class:`VocabIndex`).

Custom sets are resolved in the front end (:mod:`.front_end`), not in an
engine step: the table travels to the engine in the request's ``extra_args``
under :data:`WIRE_KEY` (:func:`to_wire`), and the engine checks its bounds
(:func:`from_wire`), since a client could write that key itself.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_BYTES", "MAX_CHARS", "MAX_TAIL", "WIRE_KEY", "BreakerSet", "Resolver", "VocabIndex", "cut_breaker",
           "from_wire", "load_resolver", "resolve_breakers", "to_wire"]

MAX_BYTES = 40  # as llama.cpp (its MAX_CHAR_LEN counts the bytes of a std::string)
MAX_CHARS = MAX_BYTES  # the most characters a cut breaker holds
MAX_TAIL = 20  # as llama.cpp
WIRE_KEY = "_vllm_plugin_samplers_dry_breakers"  # extra_args key of a front-end-resolved table


@dataclass(frozen=True)
class BreakerSet:
    """Resolved breakers: single-token ids and ``tail -> head ids`` sequences."""

    single: frozenset[int]
    tails: tuple[tuple[tuple[int, ...], frozenset[int]], ...] = ()


_find = getattr(np, "strings", np.char).find  # numpy 2's ufunc where present
_STRING_DTYPE = getattr(getattr(np, "dtypes", None), "StringDType", None)


def string_array(texts: Sequence[str]) -> np.ndarray:
    """Token texts as numpy's variable-width strings (numpy 2; about 16 B plus
    the text per token), else fixed-width ``str`` (as wide as the longest)."""
    return np.asarray(list(texts), dtype=_STRING_DTYPE() if _STRING_DTYPE is not None else str)


class VocabIndex:
    """The decoded vocabulary, sorted twice once: by length (a substring of
    ``m`` characters is searched only in tokens at least that long) and by
    reversed text, as a Python list (tokens ending with a string are one
    ``bisect``). Host memory: about 60 B per token plus the texts."""

    def __init__(self, texts: np.ndarray) -> None:
        plain = texts.tolist()
        lengths = np.fromiter((len(t) for t in plain), dtype=np.int64, count=len(plain))
        self.by_len = np.argsort(lengths, kind="stable")
        self.sorted_len = lengths[self.by_len]
        self.texts_by_len = texts[self.by_len]
        rev = [t[::-1] for t in plain]
        order = sorted(range(len(rev)), key=rev.__getitem__)
        self.by_rev = np.asarray(order, dtype=np.int64)
        self.rev = [rev[i] for i in order]

    def contains(self, s: str) -> np.ndarray:
        """Ids whose text contains ``s``."""
        start = int(np.searchsorted(self.sorted_len, len(s), side="left"))
        hits = np.flatnonzero(_find(self.texts_by_len[start:], s) >= 0)
        return self.by_len[start + hits]

    def ends_with(self, s: str) -> np.ndarray:
        """Ids whose text ends with ``s`` (sorted; tokens holding U+10FFFF aside)."""
        q = s[::-1]
        lo = bisect.bisect_left(self.rev, q)
        hi = bisect.bisect_left(self.rev, q + "\U0010ffff", lo)
        return np.sort(self.by_rev[lo:hi])


def cut_breaker(s: str) -> str:
    """``s`` cut to :data:`MAX_BYTES` bytes of UTF-8, as llama.cpp's
    ``resize(MAX_CHAR_LEN)`` of the breaker's bytes, except that a character
    the cut would split is dropped whole (llama.cpp keeps its first bytes; the
    decoded vocabulary here holds whole characters only)."""
    raw = s.encode("utf-8")
    return s if len(raw) <= MAX_BYTES else raw[:MAX_BYTES].decode("utf-8", "ignore")


def resolve_breakers(breakers: Sequence[str], texts: np.ndarray,
                     encode: Callable[[str], list[int]] | None,
                     index: VocabIndex | None = None) -> BreakerSet:
    """Resolve breaker strings against ``texts`` (decoded text of every token id).

    ``encode`` tokenizes a tail (no special tokens); without it only
    single-token breakers are found. ``index`` (a :class:`VocabIndex` of
    ``texts``, built here if not given) makes the work one substring scan of
    the tokens long enough per breaker, plus one binary search and one
    ``encode`` per proper prefix.
    """
    index = index if index is not None else VocabIndex(texts)
    single: set[int] = set()
    tails: dict[tuple[int, ...], set[int]] = {}
    for s in breakers:
        s = cut_breaker(s)
        if not s:
            continue
        single.update(index.contains(s).tolist())
        if encode is None:
            continue
        for k in range(1, len(s)):
            heads = index.ends_with(s[:k])
            if not heads.size:
                continue
            tail = tuple(encode(s[k:])[:MAX_TAIL])
            if tail:
                tails.setdefault(tail, set()).update(heads.tolist())
    single_ids = frozenset(single)
    # A head that is a single-token breaker already breaks on its own.
    seqs = tuple(sorted((t, frozenset(h - single_ids)) for t, h in tails.items() if h - single_ids))
    return BreakerSet(single_ids, seqs)


def to_wire(breakers: Sequence[str], bs: BreakerSet) -> dict[str, Any]:
    """``bs`` as plain lists (what ``extra_args`` carries to the engine)."""
    return {"breakers": list(breakers), "single": sorted(bs.single),
            "tails": [[list(t), sorted(h)] for t, h in bs.tails]}


def _ids(value: Any, bound: int, what: str) -> frozenset[int]:
    if not isinstance(value, list | tuple) or len(value) > bound:
        raise ValueError(f"{what} must be a list of at most {bound} token ids")
    arr = np.asarray(value)
    if arr.size and (arr.ndim != 1 or arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= bound):
        raise ValueError(f"{what} must hold integer token ids in [0, {bound})")
    return frozenset(arr.tolist())


def from_wire(obj: Any, breakers: Sequence[str], vocab: int, max_tails: int) -> BreakerSet:
    """Check a table from ``extra_args`` (resolved for ``breakers``, ids below
    ``vocab``, at most ``max_tails`` tails of at most :data:`MAX_TAIL` tokens);
    :class:`ValueError` names what is wrong. Work is linear in its size."""
    if not isinstance(obj, Mapping) or obj.get("breakers") != list(breakers):
        raise ValueError("the table was not resolved for this request's dry_sequence_breakers")
    single = _ids(obj.get("single"), vocab, "single")
    tails = obj.get("tails")
    if not isinstance(tails, list | tuple) or len(tails) > max_tails:
        raise ValueError(f"tails must be a list of at most {max_tails} [tail, heads] pairs")
    total = sum(len(t[1]) for t in tails if isinstance(t, list | tuple) and len(t) == 2
                and isinstance(t[1], list | tuple))
    if total > 8 * vocab:  # what the front end resolves is far smaller
        raise ValueError(f"the tails' heads must hold at most {8 * vocab} token ids in all, got {total}")
    seqs: dict[tuple[int, ...], frozenset[int]] = {}
    for item in tails:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise ValueError("each tail must be a [tail ids, head ids] pair")
        tail = item[0]
        _ids(tail, vocab, "a tail")
        if not 1 <= len(tail) <= MAX_TAIL:
            raise ValueError(f"a tail must have 1 to {MAX_TAIL} token ids")
        key = tuple(int(t) for t in tail)
        seqs[key] = seqs.get(key, frozenset()) | _ids(item[1], vocab, "heads")  # a repeated tail: heads merged
    return BreakerSet(single, tuple(sorted(seqs.items())))


class Resolver:
    """Decodes a tokenizer's vocabulary once; resolves breaker sets once each
    (the last ``max_sets`` distinct sets are kept)."""

    max_sets = 256

    def __init__(self, texts: Sequence[str], encode: Callable[[str], list[int]] | None = None,
                 eos_token_ids: Sequence[int] = ()) -> None:
        self.texts = string_array(texts)
        self.encode = encode
        self.index = VocabIndex(self.texts)
        #: The tokenizer's end-of-sequence id(s) (for XTC's guard).
        self.eos_token_ids = frozenset(int(i) for i in eos_token_ids)
        self._newline: np.ndarray | None = None
        self._cache: dict[tuple[str, ...], BreakerSet] = {}
        self._wire: dict[tuple[str, ...], dict[str, Any]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Resolver:
        """Decode every id of a Hugging Face tokenizer on its own (as llama.cpp's
        ``detokenize({id})``), in one batched call."""
        ids = [[i] for i in range(len(tokenizer))]
        texts = tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        eos = getattr(tokenizer, "eos_token_id", None)
        return cls(texts, lambda s: list(tokenizer.encode(s, add_special_tokens=False)),
                   () if eos is None else (eos,))

    def newline_ids(self) -> np.ndarray:
        """Ids whose decoded text contains a newline (found once, then kept)."""
        if self._newline is None:
            self._newline = np.sort(self.index.contains("\n"))
        return self._newline

    def __call__(self, breakers: Sequence[str]) -> BreakerSet:
        key = tuple(breakers)
        with self._lock:
            got = self._cache.pop(key, None)
            if got is None:
                got = resolve_breakers(key, self.texts, self.encode, self.index)
            self._cache[key] = got  # most recent last; bounded
            while len(self._cache) > self.max_sets:
                del self._cache[next(iter(self._cache))]
        return got

    def wire(self, breakers: Sequence[str]) -> dict[str, Any]:
        """:func:`to_wire` of the resolved set (cached like the sets)."""
        key = tuple(breakers)
        with self._lock:
            got = self._wire.pop(key, None)
        if got is None:
            got = to_wire(key, self(key))
        with self._lock:
            self._wire[key] = got
            while len(self._wire) > self.max_sets:
                del self._wire[next(iter(self._wire))]
        return got


_loaded: dict[tuple[str, bool, str | None], Resolver] = {}
_load_lock = threading.Lock()


def load_resolver(path: str, trust_remote_code: bool, revision: str | None) -> Resolver:
    """A :class:`Resolver` for the model's tokenizer, or a clear error naming it.

    Loaded once per process and tokenizer (DRY and XTC share it; the last 4
    tokenizers are kept)."""
    key = (path, trust_remote_code, revision)
    with _load_lock:
        got = _loaded.get(key)
        if got is None:
            got = _loaded[key] = _load(path, trust_remote_code, revision)
            while len(_loaded) > 4:
                del _loaded[next(iter(_loaded))]
    return got


def _load(path: str, trust_remote_code: bool, revision: str | None) -> Resolver:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except Exception as exc:
        raise RuntimeError(
            f"vllm-plugin-samplers: DRY resolves dry_sequence_breakers with the model's tokenizer, and "
            f"transformers.AutoTokenizer could not load {path!r} ({type(exc).__name__}: {exc}). Make the "
            f"tokenizer loadable (--tokenizer) or uninstall vllm-plugin-samplers.") from exc
    return Resolver.from_tokenizer(tok)
