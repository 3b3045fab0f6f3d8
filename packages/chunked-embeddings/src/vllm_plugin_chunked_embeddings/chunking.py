"""Tokenising long documents and cutting token windows (pure: no vLLM, no torch).

Memory: a document's tokens are kept as three ``array('i')`` (ids, start and
end character offsets: 12 bytes a token). Documents longer than
``slice_chars`` are tokenised slice by slice, each slice cut just before a
single space that follows a non-space character (a pre-tokenisation boundary
for byte-level BPE, WordPiece and Metaspace tokenizers), so the tokenizer's
own per-token Python objects (lists, offset tuples, ~250 bytes a token) exist
for one slice at a time. Whether slicing reproduces whole-text tokenisation
is checked once per tokenizer on a probe text (:func:`slicing_is_exact`); where
it does not (e.g. a normalizer that prepends ``▁`` to every text), documents
are tokenised whole.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

#: Characters per tokenizer call for long documents.
SLICE_CHARS = 1 << 16

PROBE = (
    "The quick brown fox, 12 times: jumps over the lazy dog.\n"
    "Ünïcödé text (naïve café) with emoji \U0001f642 and tabs\tand  double spaces end."
)


@dataclass
class TokenizedDoc:
    ids: array  # array('i') of token ids, no special tokens
    starts: array  # array('i'): character offset where each token starts
    ends: array  # array('i'): character offset where each token ends

    def __len__(self) -> int:
        return len(self.ids)


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """``(ids, offsets)`` of ``text`` without special tokens (a fast HF tokenizer)."""
    enc = tokenizer(
        text,
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    return enc["input_ids"], enc["offset_mapping"]


def special_tokens(tokenizer: Any, probe: str = "hello world") -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer adds around a text: ``(prefix, suffix)``.

    Found by encoding ``probe`` with and without special tokens and locating the
    plain ids inside the full ones, so it follows whatever the tokenizer's
    post-processor does (``[CLS] x [SEP]``, ``<s> x </s>``, ``<bos> x``, ...).
    """
    full = list(tokenizer(probe, add_special_tokens=True, verbose=False)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False, verbose=False)["input_ids"])
    n = len(plain)
    for i in range(len(full) - n + 1):
        if full[i:i + n] == plain:
            return full[:i], full[i + n:]
    raise ValueError(
        "cannot tell where this tokenizer puts its special tokens: "
        f"{probe!r} encodes to {full} with them and {plain} without")


def _cut_point(text: str, lo: int, hi: int) -> int:
    """The last index p in (lo, hi] with ``text[p] == " "`` and ``text[p-1]`` not
    whitespace; ``hi`` when there is none (a very long run without spaces)."""
    p = text.rfind(" ", lo + 1, hi + 1)
    while p > lo:
        if not text[p - 1].isspace():
            return p
        p = text.rfind(" ", lo + 1, p)
    return hi


def slice_bounds(text: str, slice_chars: int = SLICE_CHARS) -> Iterator[tuple[int, int]]:
    """``[start, end)`` character slices of about ``slice_chars`` (>= half of it)."""
    n = len(text)
    start = 0
    while n - start > slice_chars:
        end = _cut_point(text, start + slice_chars // 2, start + slice_chars)
        yield start, end
        start = end
    yield start, n


def tokenize_document(tokenizer: Any, text: str, *, slice_chars: int | None = SLICE_CHARS) -> TokenizedDoc:
    """Tokenise ``text`` once (in slices when ``slice_chars`` is set and the text is longer)."""
    ids, starts, ends = array("i"), array("i"), array("i")
    bounds = [(0, len(text))] if not slice_chars else slice_bounds(text, slice_chars)
    for lo, hi in bounds:
        part_ids, offsets = encode_with_offsets(tokenizer, text[lo:hi] if (lo, hi) != (0, len(text)) else text)
        ids.extend(part_ids)
        starts.extend([s + lo for s, _ in offsets])
        ends.extend([e + lo for _, e in offsets])
        del part_ids, offsets
    return TokenizedDoc(ids, starts, ends)


def slicing_is_exact(tokenizer: Any, probe: str = PROBE) -> bool:
    """Whether tokenising ``probe`` cut at every slice boundary gives the same
    ids and offsets as tokenising it whole."""
    whole = tokenize_document(tokenizer, probe, slice_chars=None)
    for p in range(1, len(probe)):
        if probe[p] == " " and not probe[p - 1].isspace():
            ids, starts, ends = array("i"), array("i"), array("i")
            for lo, hi in ((0, p), (p, len(probe))):
                part_ids, offsets = encode_with_offsets(tokenizer, probe[lo:hi])
                ids.extend(part_ids)
                starts.extend(s + lo for s, _ in offsets)
                ends.extend(e + lo for _, e in offsets)
            if ids != whole.ids or starts != whole.starts or ends != whole.ends:
                return False
    return True


def num_windows(n: int, chunk: int, overlap: int) -> int:
    """How many windows :func:`windows` yields for ``n`` tokens."""
    if n <= 0:
        return 0
    if n <= chunk:
        return 1
    step = chunk - overlap
    return 1 + -(-(n - chunk) // step)


def windows(n: int, chunk: int, overlap: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` token windows of at most ``chunk`` tokens, consecutive
    windows sharing ``overlap`` tokens; the last one ends at ``n``."""
    if not 0 <= overlap < chunk:
        raise ValueError(f"need 0 <= overlap ({overlap}) < chunk ({chunk})")
    step = chunk - overlap
    start = 0
    while n > 0:
        end = min(start + chunk, n)
        yield start, end
        if end >= n:
            return
        start += step


def chunk_prompt(doc: TokenizedDoc, start: int, end: int, prefix: Sequence[int],
                 suffix: Sequence[int]) -> dict[str, list[int]]:
    """The engine prompt of one window: the model's special tokens around its ids."""
    return {"prompt_token_ids": [*prefix, *doc.ids[start:end], *suffix]}


def char_span(doc: TokenizedDoc, start: int, end: int) -> tuple[int, int]:
    """``[start, end)`` characters of the original text that tokens ``start:end`` cover."""
    return doc.starts[start], doc.ends[end - 1]

