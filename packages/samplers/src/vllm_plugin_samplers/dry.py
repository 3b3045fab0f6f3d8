"""DRY ("Don't Repeat Yourself") penalty, llama.cpp / text-generation-webui semantics.

For the context (optionally only its last ``penalty_last_n`` tokens) find every
earlier position ``i`` whose token equals the last token, and the length ``L``
of the longest suffix ending at ``i`` that equals the suffix ending at the end
of the context. Emitting ``tokens[i + 1]`` would extend that repeat, so if
``L >= allowed_length`` it is penalised by ``multiplier * base ** (L -
allowed_length)``; each token gets the maximum over its occurrences.

Sequence breakers: the context suffix being matched never extends back across
a breaker token (as llama.cpp's ``rep_limit``, and webui's backward scan), so a
breaker as the last token disables the penalty for that step; breaker tokens
are never penalised themselves (both references skip them).

Algorithm: the Z-algorithm on the reversed context, as in llama.cpp, but only
evaluated at positions holding the last token (the only ones with a non-zero
Z value; that set is closed under the Z-box shortcut, so the total work stays
O(context) however repetitive it is). There is no fixed cap on the match
length (webui caps at 50) other than the breaker limit and the window; instead
the exponent is clamped as llama.cpp does, so ``base ** exponent`` stays
within float32 range (the penalty itself may still exceed it for a large
multiplier, which just sends the logit to -inf in float32).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from .params import DryParams

__all__ = ["DryMatcher", "breaker_token_ids", "dry_penalties"]

_FLOAT32_MAX_LOG = 88.7228391  # ln(float32 max), as in llama.cpp


def _max_exponent(base: float) -> int | None:
    if base > 1.000001:
        return int(_FLOAT32_MAX_LOG / math.log(base))
    return None


def dry_penalties(
    tokens: Sequence[int], params: DryParams, breaker_ids: frozenset[int]
) -> dict[int, float]:
    """Return ``{token_id: penalty}``; subtract each penalty from that token's logit.

    ``tokens`` is the whole context (prompt + output so far); it is limited to
    the last ``params.penalty_last_n`` tokens when that is > 0 (0 and -1 mean
    the whole context). Runs in O(len(window)).
    """
    allowed = params.allowed_length
    last_n = params.penalty_last_n
    # Reversed window: rev[0] is the last token.
    rev = list(reversed(tokens[-last_n:] if last_n > 0 else tokens))
    m = len(rev)
    if m <= allowed or params.multiplier == 0:
        return {}

    first = rev[0]
    if first in breaker_ids:
        return {}

    # Positions k >= 1 where rev[k] == rev[0]; all other Z-values are 0.
    candidates: list[int] = []
    index = rev.index
    k = 0
    try:
        while True:
            k = index(first, k + 1)
            candidates.append(k)
    except ValueError:
        pass
    if not candidates:
        return {}

    # Z-values (longest common prefix of rev and rev[k:]) at the candidates.
    # If rev[k] == first and k lies inside the Z-box [box_l, box_r), then
    # rev[k - box_l] == first too, so its Z-value is already known.
    z: dict[int, int] = {}
    box_l = box_r = 0
    for k in candidates:
        length = 0
        if k < box_r:
            length = min(box_r - k, z[k - box_l])
        if k + length >= box_r:
            while k + length < m and rev[length] == rev[k + length]:
                length += 1
            if k + length > box_r:
                box_l, box_r = k, k + length
        z[k] = length

    # rep_limit: the context suffix may not extend back across a breaker.
    # Capping afterwards (min(z, rep_limit)) equals capping during the match,
    # and only the first max(z) tokens of rev need scanning.
    longest = max(z.values())
    if longest < allowed:
        return {}
    rep_limit = longest
    if breaker_ids:
        for j in range(longest):
            if rev[j] in breaker_ids:
                rep_limit = j
                break
        if rep_limit < allowed:
            return {}

    max_len: dict[int, int] = {}
    for k, length in z.items():
        if length > rep_limit:
            length = rep_limit
        if length >= allowed:
            nxt = rev[k - 1]  # token that followed this earlier occurrence
            if nxt not in breaker_ids and max_len.get(nxt, 0) < length:
                max_len[nxt] = length

    max_exp = _max_exponent(params.base)
    out: dict[int, float] = {}
    for tok, length in max_len.items():
        exp = length - allowed
        if max_exp is not None and exp > max_exp:
            exp = max_exp
        out[tok] = params.multiplier * params.base**exp
    return out


def breaker_token_ids(breakers: Sequence[str], tokenizer: Any) -> frozenset[int]:
    """Ids of vocab tokens whose decoded text contains any breaker string.

    ``tokenizer`` is a Hugging Face tokenizer. Each token is decoded on its own
    with ``convert_ids_to_tokens`` + ``convert_tokens_to_string``; one pass
    over ``range(len(tokenizer))`` (added tokens included).
    """
    wanted = tuple(b for b in breakers if b)
    if not wanted:
        return frozenset()
    ids = list(range(len(tokenizer)))
    pieces: Iterable[str | None] = tokenizer.convert_ids_to_tokens(ids)
    to_string = tokenizer.convert_tokens_to_string
    found: list[int] = []
    for tid, piece in zip(ids, pieces, strict=True):
        if piece is None:
            continue
        text = to_string([piece])
        for b in wanted:
            if b in text:
                found.append(tid)
                break
    return frozenset(found)


class DryMatcher:
    """One request's DRY state on the batched engine (:mod:`.suffix`, :mod:`.penalties`):
    admission in one vectorised pass, one shift-and-compare per appended token.
    Gives the same penalties as :func:`dry_penalties` (single-token breakers)."""

    def __init__(self, params: DryParams, breaker_ids: frozenset[int], tokens: Sequence[int] = ()) -> None:
        import torch

        from .breakers import BreakerSet
        from .penalties import DryBatch

        self._torch = torch
        vocab = max([*breaker_ids, *tokens, 1023]) + 1
        self._vocab = vocab
        self.batch = DryBatch(1, torch.device("cpu"), vocab)
        self.batch.set_breakers(0, BreakerSet(frozenset(breaker_ids)))
        self.batch.add(0, params, torch.as_tensor(list(tokens), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.batch.bank.length[0])

    def extend(self, new_tokens: Sequence[int]) -> None:
        """Append tokens (one batched step each)."""
        torch = self._torch
        for t in new_tokens:
            self.batch.bank.ensure_width(self.batch.need(0, len(self) + 1))
            self.batch.append_rows(torch.tensor([0]), torch.tensor([t]))

    def penalties(self) -> tuple[Any, Any]:
        """``(token ids, penalties)`` tensors for the current context."""
        torch = self._torch
        vocab = max(self._vocab, int(self.batch.bank.tok.max()) + 1)
        logits = torch.zeros(1, vocab)
        self.batch.penalize(logits, torch.tensor([0]), torch.tensor([0]))
        ids = torch.nonzero(logits[0]).flatten()
        return ids, -logits[0, ids]
