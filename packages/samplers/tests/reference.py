"""Small independent reference implementations, written from the definitions
in the issue, and a greedy decoding loop over a transformers model that
applies them. Used to check what vLLM generates with the plugin."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch


def ngram_banned(tokens: Sequence[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already in ``tokens``."""
    if len(tokens) + 1 < n:
        return set()
    prefix = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == prefix}


def ngram_banned_window(tokens: Sequence[int], n: int, window: int = 0,
                        whitelist: Collection[int] = ()) -> set[int]:
    """DeepSeek-OCR's no-repeat n-gram, scanned as it does: the n-grams that
    start inside the last ``window`` tokens (0: all) and continue the last
    ``n - 1`` tokens, minus the whitelist."""
    if len(tokens) < n:
        return set()
    prefix = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
    start = max(0, len(tokens) - window) if window > 0 else 0
    banned = set()
    for i in range(start, len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        if gram[:-1] == prefix:
            banned.add(gram[-1])
    return banned - set(whitelist)


def dry_penalty(tokens: Sequence[int], multiplier: float, base: float, allowed: int,
                breakers: set[int], last_n: int = 0) -> dict[int, float]:
    """Brute force: for each earlier occurrence of the last token, the length L
    of the repeated suffix (not crossing a breaker); the token that followed it
    gets multiplier * base ** (L - allowed) when L >= allowed (max over occurrences)."""
    ctx = list(tokens[-last_n:]) if last_n > 0 else list(tokens)
    e = len(ctx) - 1
    out: dict[int, float] = {}
    for i in range(e):
        length = 0
        while i - length >= 0 and ctx[i - length] == ctx[e - length] and ctx[e - length] not in breakers:
            length += 1
        nxt = ctx[i + 1]
        if length >= allowed and nxt not in breakers:
            out[nxt] = max(out.get(nxt, 0.0), multiplier * base ** (length - allowed))
    return out


def xtc_remove(logits: torch.Tensor, threshold: float, guard: Collection[int] = ()) -> torch.Tensor:
    """XTC: every token with probability >= ``threshold`` but the least probable
    (ties: the lowest id) is removed; nothing is when fewer than two reach it,
    or when a removed token would be one of ``guard`` (text-generation-webui
    returns the scores as they were when its newline or EOS would go)."""
    probs = torch.softmax(logits.double(), -1)
    above = [i for i in range(len(probs)) if probs[i] >= threshold]
    if len(above) < 2:
        return logits
    least = min(above, key=lambda i: (probs[i].item(), i))
    removed = [i for i in above if i != least]
    if set(removed) & set(guard):
        return logits
    out = logits.clone()
    out[removed] = float("-inf")
    return out


def greedy(model, prompt: Sequence[int], max_tokens: int,
           edit: Callable[[torch.Tensor, list[int]], torch.Tensor] | None = None,
           eos: int | None = None) -> list[int]:
    """Greedy decoding with transformers, ``edit(logits, context)`` applied per step."""
    ctx = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(torch.tensor([ctx])).logits[0, -1].float()
            if edit is not None:
                logits = edit(logits, ctx)
            tok = int(torch.argmax(logits))
            ctx.append(tok)
            out.append(tok)
            if tok == eos:
                break
    return out
