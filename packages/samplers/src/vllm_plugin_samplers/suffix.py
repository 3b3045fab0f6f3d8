"""Suffix matches, batched and device-resident (what DRY and no-repeat n-gram share).

For a context ``t[0..e]`` and every earlier position ``i < e``, ``match[i]`` is
the length of the longest common suffix of ``t[..i]`` and ``t[..e]``, capped
(at a per-request ``cap``, and so that it never reaches back across the end of
a DRY sequence breaker). The token that followed ``t[i]`` would extend that
repeat.

Layout: one row per request slot, right-aligned (column ``C - 1`` holds the
last token, padding is token ``-1``), so appending a token is one shift and
one compare for the whole batch, ``match'[j] = match[j] + 1 if t[j + 1] == x``,
with no per-row offsets. Rows keep at most ``C`` tokens; a row that only needs
its last ``N`` tokens (``dry_penalty_last_n``) stays correct when older ones
drop off.

Admission (:func:`admit`) computes ``match`` for a whole prompt in
O(n log n) vectorised work, the same for any content: polynomial hashes of all
prefixes under two primes with a random base, then a binary search on the
length for every position at once.
"""

from __future__ import annotations

import secrets

import torch

__all__ = ["P1", "P2", "SuffixBank", "admit", "admit_packed", "append"]

P1, P2 = 2147483647, 2147483629  # primes < 2**31: products fit in int64
_B1 = secrets.randbelow(P1 - 2**20) + 2**20
_B2 = secrets.randbelow(P2 - 2**20) + 2**20


def _powers(base: int, n: int, p: int, device: torch.device) -> torch.Tensor:
    """``base ** j mod p`` for ``j < n`` (binary exponentiation, vectorised)."""
    j = torch.arange(n, device=device)
    out = torch.ones(n, dtype=torch.long, device=device)
    sq, bit = base % p, 0
    while (1 << bit) < n:
        out = torch.where(((j >> bit) & 1).bool(), out * sq % p, out)
        sq, bit = sq * sq % p, bit + 1
    return out


def admit(tokens: torch.Tensor, cap: int | torch.Tensor, max_len: int) -> torch.Tensor:
    """``match`` (int32, same length as ``tokens``; the last entry is 0).

    ``cap`` bounds every value (an int or a 0-d tensor); ``max_len`` is an int
    upper bound of it (sets the number of binary-search rounds).
    """
    n = tokens.numel()
    dev = tokens.device
    if n <= 1 or max_len <= 0:
        return torch.zeros(n, dtype=torch.int32, device=dev)
    first = torch.zeros(n, dtype=torch.long, device=dev)
    limit = cap.to(torch.long).expand(n) if isinstance(cap, torch.Tensor) else torch.full((n,), int(cap), device=dev)
    return admit_packed(tokens, first, first + (n - 1), limit, min(int(max_len), n - 1), n)


def admit_packed(tokens: torch.Tensor, first: torch.Tensor, last: torch.Tensor, limit: torch.Tensor,
                 max_len: int, max_seg: int) -> torch.Tensor:
    """:func:`admit` for many contexts at once, packed one after the other in
    ``tokens`` [K]: the context holding position ``q`` spans ``first[q] ..
    last[q]`` (global positions), and ``limit[q]`` bounds ``match[q]``.
    ``max_len`` (host) bounds every match, ``max_seg`` (host) every context's
    length. A fixed number of tensor operations whatever the number of contexts
    (``log2(max_len)`` binary-search rounds over all positions together).

    Prefix hashes use each position's power within its own context, so the
    difference of two prefix hashes inside one context covers that context only.
    """
    k = tokens.numel()
    dev = tokens.device
    out = torch.zeros(k, dtype=torch.int32, device=dev)
    if k == 0 or max_len <= 0:
        return out
    t = tokens.long() + 1
    i = torch.arange(k, device=dev)
    local = i - first
    hi = torch.minimum(local + 1, limit.to(torch.long)).clamp_(max=max_len)
    hi = torch.where(i == last, 0, hi)  # the context's last position: no earlier match ends there
    lo = torch.zeros_like(i)
    ends = last + 1
    prefix = []
    for base, p in ((_B1, P1), (_B2, P2)):
        pw = _powers(base, max_seg, p, dev)
        h = torch.zeros(k + 1, dtype=torch.long, device=dev)
        h[1:] = torch.cumsum(t % p * pw[local] % p, 0) % p
        # The segment ending at i, shifted by base ** (e - i), aligns with the one
        # ending at e. Differences are kept non-negative (+ p) and reduced once:
        # (h_i + p - h_j) * shift < 2**63, and equal mod p iff the difference is.
        prefix.append((h, p, h[1:] + p, pw[last - i], h[ends] + p))
    # [lo, hi] holds at most max_len + 1 candidates: bit_length(max_len) halvings.
    # The rounds write into buffers allocated once (in place and out=): no new
    # [K] tensor per operation (on the CPU each was fresh memory to fault in).
    i1 = i.add_(1)  # i + 1 (i is not needed any more)
    mid, at, a, b = (torch.empty_like(lo) for _ in range(4))
    ok, same = torch.empty(k, dtype=torch.bool, device=dev), torch.empty(k, dtype=torch.bool, device=dev)
    for _ in range(int(max_len).bit_length()):
        torch.add(lo, hi, out=mid).add_(1).bitwise_right_shift_(1)  # (lo + hi + 1) // 2, both >= 0
        for n, (h, p, h_i, shift, h_e) in enumerate(prefix):
            torch.index_select(h, 0, torch.sub(i1, mid, out=at), out=a)
            torch.sub(h_i, a, out=a).mul_(shift)
            torch.index_select(h, 0, torch.sub(ends, mid, out=at), out=b)
            a.sub_(torch.sub(h_e, b, out=b)).remainder_(p)
            torch.eq(a, 0, out=ok if n == 0 else same)
            if n:
                ok.logical_and_(same)
        torch.where(ok, mid, lo, out=lo)
        torch.where(ok, hi, mid.sub_(1), out=hi)
    return lo.to(torch.int32)


def append(tok: torch.Tensor, match: torch.Tensor, x: torch.Tensor, cap: torch.Tensor,
           reset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``tok``/``match`` [R, C] with token ``x`` [R] appended (new tensors).

    ``cap`` [R] bounds the new values; rows where ``reset`` [R] is True (the
    context now ends with a breaker) get all-zero matches.
    """
    x = x.to(tok.dtype)[:, None]
    new_tok = torch.cat([tok[:, 1:], x], 1)
    grown = torch.minimum(match[:, :-1] + 1, cap.to(match.dtype)[:, None])
    keep = tok[:, 1:] == x
    if reset is not None:
        keep &= ~reset[:, None]
    new_match = torch.cat([torch.where(keep, grown, 0), torch.zeros_like(match[:, :1])], 1)
    return new_tok, new_match


class SuffixBank:
    """``tok``/``match`` rows for ``slots`` request slots plus one scratch row
    (index ``slots``, the target of masked-out scatters); ``length`` counts all
    tokens a row has seen (it may hold fewer)."""

    def __init__(self, slots: int, device: torch.device, width: int = 64) -> None:
        self.slots = slots
        self.device = device
        self.tok = torch.full((slots + 1, width), -1, dtype=torch.int32, device=device)
        self.match = torch.zeros((slots + 1, width), dtype=torch.int32, device=device)
        self.length = torch.zeros(slots + 1, dtype=torch.long, device=device)

    @property
    def width(self) -> int:
        return self.tok.shape[1]

    def ensure_width(self, need: int) -> None:
        """Grow (left-pad by a quarter or more, in steps of 256) so rows can hold ``need`` tokens."""
        c = self.width
        if need <= c:
            return
        new = -(-max(need, c + c // 4) // 256) * 256
        pad = new - c
        self.tok = torch.cat([torch.full((self.slots + 1, pad), -1, dtype=torch.int32, device=self.device),
                              self.tok], 1)
        self.match = torch.cat([torch.zeros((self.slots + 1, pad), dtype=torch.int32, device=self.device),
                                self.match], 1)

    def fit_width(self, need: int) -> None:
        """Grow to hold ``need`` tokens, or give memory back once the active rows
        need a quarter of the width or less (rows are right-aligned: the last
        ``need`` columns hold everything any active row still reads)."""
        c = self.width
        if need > c:
            self.ensure_width(need)
        elif c > 256 and 4 * need <= c:
            new = max(256, -(-need // 256) * 256)  # what growth from scratch would give
            self.tok = self.tok[:, c - new:].clone()
            self.match = self.match[:, c - new:].clone()

    def write(self, slot: int, tokens: torch.Tensor, match: torch.Tensor, length: int | torch.Tensor) -> None:
        """Set a row from a context's tokens and matches (its last ``width`` ones)."""
        c = self.width
        tokens, match = tokens[-c:], match[-c:]
        k = tokens.numel()
        self.tok[slot, : c - k] = -1
        self.match[slot, : c - k] = 0
        self.tok[slot, c - k:] = tokens.to(torch.int32)
        self.match[slot, c - k:] = match
        self.length[slot] = length

    def move(self, src: int, dst: int, swap: bool) -> None:
        """V1 batch moves: row ``src`` goes to ``dst`` (and back when ``swap``)."""
        for t in (self.tok, self.match, self.length):
            if swap:
                t[[src, dst]] = t[[dst, src]]
            else:
                t[dst] = t[src]
