"""Batched DRY and no-repeat n-gram on a :class:`~.suffix.SuffixBank`.

Per-slot settings live in device tensors; a step is a fixed number of batched
tensor operations (no Python loop over rows or over the context, no host
sync): append the new token to every row that has one, then penalise with one
gather and one ``scatter_reduce`` into the logits (``amin`` of ``logit -
penalty``, which applies the largest penalty per token and needs no
logits-sized temporary).
"""

from __future__ import annotations

import functools
import math
import secrets

import numpy as np
import torch

from .breakers import MAX_TAIL, BreakerSet
from .params import DryParams
from .suffix import SuffixBank, admit_packed

__all__ = ["DryBatch", "NgramBatch"]

_FLOAT32_MAX_LOG = 88.7228391  # ln(float32 max), as in llama.cpp
_NO_CAP = 2**30
_EXP_ARG_MAX = 88.0
# Columns a row with a window always keeps up to date: its window, and at
# least what the multi-token breaker check reads (the longest tail + 1).
TAIL_COLS = MAX_TAIL + 2


class _Batch:
    """Slot-indexed settings plus the bank. ``slots + 1`` rows: the last is scratch."""

    def __init__(self, slots: int, device: torch.device) -> None:
        self.slots = slots
        self.device = device
        self.bank = SuffixBank(slots, device)
        self.scratch = Scratch(device)
        self.cap = torch.zeros(slots + 1, dtype=torch.int32, device=device)
        self.window = np.zeros(slots + 1, dtype=np.int64)  # host: tokens a row needs (0 = all)
        self.last_n = torch.zeros(slots + 1, dtype=torch.int32, device=device)  # device mirror of window
        # The pass a row runs in (:meth:`column_groups`; 0: none yet), on the
        # host and its device mirror for the V2 split.
        self.band_np = np.zeros(slots + 1, dtype=np.int8)
        self.band = torch.zeros(slots + 1, dtype=torch.int8, device=device)

    def need(self, slot: int, length: int) -> int:
        w = int(self.window[slot])
        return (min(length, w) if w > 0 else length) + 1

    def need_all(self, slots: np.ndarray, length: np.ndarray) -> int:
        """Bank columns the slots ``slots`` need, given host upper bounds of their lengths."""
        if len(slots) == 0:
            return 0
        w, n = self.window[slots], length[slots]
        return int(max((np.where(w > 0, np.minimum(n, w), n) + 1).max(), TAIL_COLS))

    @staticmethod
    def columns(window: np.ndarray, length: np.ndarray) -> np.ndarray:
        """Bank columns rows with these windows (0: whole context) and host
        length bounds read and update: ``min(length, window) + 1``, at least
        :data:`TAIL_COLS`. A windowed row keeps only those (its window is fixed
        at admission; older columns are never read for it again)."""
        return np.maximum(np.where(window > 0, np.minimum(length, window), length) + 1, TAIL_COLS)

    @staticmethod
    def bands(cols: np.ndarray) -> np.ndarray:
        """The pass of rows needing ``cols`` columns: ``ceil(log2(cols))``
        (int8; ``cols`` in ``(2 ** (b - 1), 2 ** b]`` runs in pass ``b``)."""
        return np.frexp(np.asarray(cols, dtype=np.float64) - 1)[1].astype(np.int8)  # bit_length(cols - 1)

    def column_groups(self, slots: np.ndarray, length: np.ndarray) -> list[tuple[np.ndarray | None, slice]]:
        """Split the rows of a step (``slots``, host; ``length[slot]``, host upper
        bounds of their lengths) by the bank columns they need.

        A row needs :meth:`columns` columns (its whole context + 1, or its
        window + 1); rows are grouped in power-of-two bands of that
        (:meth:`bands`), and each group reads and updates the last
        ``max(need)`` columns of its own rows: every row runs at less than
        twice its own width, whatever else is in the batch (a 512-token row
        beside a 32k-token one never runs at 32k), in at most ``log2`` of the
        longest row's width passes. Returns ``(positions, columns)`` pairs,
        bands ascending: ``positions`` into ``slots`` (None: all rows);
        :attr:`band` (device) mirrors the split.
        """
        cols = self.columns(self.window[slots], length[slots])
        band = self.bands(cols)
        changed = slots[band != self.band_np[slots]]
        # Rows whose band changed: once a whole-context row's length doubles
        # (an admission sets its band with the rest of its settings).
        for s, b in zip(changed.tolist(), band[band != self.band_np[slots]].tolist(), strict=True):
            self.band_np[s] = b
            self.band[s:s + 1].fill_(b)  # a scalar kernel argument, no copy
        c = self.bank.width
        present = np.unique(band)
        if len(present) == 1:
            return [(None, slice(c - min(c, int(cols.max())), None))]
        groups = []
        for b in present.tolist():
            pick = np.flatnonzero(band == b)
            groups.append((pick, slice(c - min(c, int(cols[pick].max())), None)))
        return groups

    def reset_mask(self, tok: torch.Tensor, rows_slot: torch.Tensor) -> torch.Tensor | None:
        return None

    def release(self, slot: int) -> None:
        """The request in ``slot`` left (its settings are overwritten at the next admission)."""

    def fit(self, need: int) -> None:
        """The bank's :meth:`~.suffix.SuffixBank.fit_width`; when it gives memory
        back, so do the step buffers (they grow again to what steps use)."""
        width = self.bank.width
        self.bank.fit_width(need)
        if self.bank.width < width:
            self.scratch.clear()

    def gather(self, slots: torch.Tensor | slice, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``slots`` of the bank in columns ``cols``: views for a slice,
        else copied into step scratch (no new ``[rows, columns]`` tensor)."""
        tok, match = self.bank.tok[:, cols], self.bank.match[:, cols]
        if isinstance(slots, slice):
            return tok[slots], match[slots]
        shape = (slots.numel(), tok.shape[1])
        return (torch.index_select(tok, 0, slots, out=self.scratch.get("tok", shape, torch.int32)),
                torch.index_select(match, 0, slots, out=self.scratch.get("match", shape, torch.int32)))

    def append_rows(self, slots: torch.Tensor | slice, x: torch.Tensor, cols: slice = slice(None)) -> None:
        """Append token ``x[k]`` to slot ``slots[k]`` (distinct slots, or a slice) in
        columns ``cols``; one scatter."""
        tok, match = self.gather(slots, cols)
        tok, match = self.append_gathered(tok, match, slots, x)
        if isinstance(slots, slice):
            self.bank.tok[slots, cols] = tok  # match was updated in place, in the bank
        else:
            self.bank.tok[:, cols].index_copy_(0, slots, tok)
            self.bank.match[:, cols].index_copy_(0, slots, match)
        self.bank.length[slots] += 1

    def append_gathered(self, tok: torch.Tensor, match: torch.Tensor, slots: torch.Tensor | slice, x: torch.Tensor,
                        do: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows already gathered by slot, with ``x`` appended where ``do`` (all if
        None). ``match`` is updated in place; the new tokens come back in a
        scratch buffer other than ``tok`` (``tok`` is left as it was)."""
        r, c = tok.shape
        x = x.to(tok.dtype)
        new_tok = self.scratch.get("tok_b" if self.scratch.holds("tok_a", tok) else "tok_a", (r, c), tok.dtype)
        new_tok[:, :-1].copy_(tok[:, 1:])
        new_tok[:, -1].copy_(x)
        if do is not None:
            torch.where(do[:, None], new_tok, tok, out=new_tok)
        # match'[j] = match[j] + 1 (capped) where t[j + 1] == x, else 0; the last column: 0.
        grown = self.scratch.get("grown", (r, c - 1), torch.int32)
        torch.add(match[:, :-1], 1, out=grown)
        torch.minimum(grown, self.cap[slots][:, None], out=grown)
        same = self.scratch.get("same", (r, c - 1), torch.bool)
        torch.eq(tok[:, 1:], x[:, None], out=same)
        reset = self.reset_mask(new_tok, slots)
        if reset is not None:
            same &= ~reset[:, None]
        grown.mul_(same)
        if do is None:
            match[:, :-1].copy_(grown)
            match[:, -1].zero_()
        else:
            torch.where(do[:, None], grown, match[:, :-1], out=match[:, :-1])
            match[:, -1].masked_fill_(do, 0)
        return new_tok, match

    def penalty_index(self, nxt: torch.Tensor, vocab: int) -> torch.Tensor:
        """int64 scratch: ``nxt`` clamped into ``[0, vocab)`` (the scatter's index)."""
        index = self.scratch.get("index", nxt.shape, torch.long)
        return index.copy_(nxt).clamp_(0, vocab - 1)

    def lookup(self, table: torch.Tensor, row: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out[r, c] = table[row[r], index[r, c]]`` through a flat view of the
        table, shifting ``index`` in place and back (no new index tensor)."""
        width = table.shape[1]
        shift = row[:, None] * width
        index.add_(shift)
        torch.index_select(table.reshape(-1), 0, index.reshape(-1), out=out.reshape(-1))
        index.sub_(shift)
        return out

    def scatter_min(self, logits: torch.Tensor, rows: torch.Tensor | slice, index: torch.Tensor,
                    invalid: torch.Tensor, minus: torch.Tensor | None) -> None:
        """``logits[row, index] -= minus`` where not ``invalid``, the largest
        ``minus`` per token (None: send the token to -inf): one gather and one
        ``scatter_reduce(amin)``, in place on ``logits`` of any strides (vLLM
        hands processors a column slice of a padded vocabulary). ``rows`` a
        slice: 2-D on a view; row indices: 1-D on a flat view of the rows'
        storage (or, for overlapping strides, on a copy). ``index`` (int64
        scratch) is consumed."""
        if isinstance(rows, slice):
            _scatter_min_scratch(logits[rows], index, invalid, minus, self.scratch)
            return
        flat = flat_view(logits)
        if flat is None:
            sub = logits[rows]
            _scatter_min_scratch(sub, index, invalid, minus, self.scratch)
            logits[rows] = sub
            return
        target, (s0, s1) = flat
        if s1 != 1:
            index.mul_(s1)
        index.add_(rows[:, None] * s0)
        _scatter_min_scratch(target, index.reshape(-1), invalid.reshape(-1),
                             None if minus is None else minus.reshape(-1), self.scratch)

    #: Per-slot device tensors an admission sets, in the order of :meth:`_settings`' columns.
    settings: tuple[str, ...] = ()

    def _settings(self, entries: list) -> np.ndarray:
        """Host side of an admission: float64 ``[len(entries), len(settings)]``."""
        raise NotImplementedError

    def _limits(self, tok: torch.Tensor, pos: torch.Tensor, seg: torch.Tensor, first: torch.Tensor,
                last: torch.Tensor, slot: torch.Tensor, n_seg: int) -> torch.Tensor:
        """[K] bound of each admitted position's match."""
        return self.cap[slot[seg]]

    def admit_rows(self, entries: list, lengths: np.ndarray, source: torch.Tensor, rows: np.ndarray,
                   starts: np.ndarray) -> torch.Tensor:
        """Admit requests in one batch of tensor operations, whatever their number.

        ``entries[s][0]`` is request s's slot (distinct; the rest is what
        :meth:`_settings` reads); its context is ``source[rows[s],
        starts[s]:starts[s] + lengths[s]]`` (host arrays; ``source`` 2-D, on
        the device: the V2 runner's token history, or contexts packed in one
        row). The kept part of every context (its last ``need`` tokens) is
        gathered into one packed tensor, matched at once
        (:func:`~.suffix.admit_packed`) and scattered into the bank. Returns
        the slots as a device tensor.
        """
        values = self._settings(entries)  # host bookkeeping first (it may remap set rows)
        slots = np.asarray([e[0] for e in entries], dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        w = self.window[slots]
        self.bank.ensure_width(int((np.where(w > 0, np.minimum(lengths, w), lengths) + 1).max()))
        c = self.bank.width
        # A windowed row reads only its last max(window + 1, TAIL_COLS) columns again.
        keep = np.minimum(np.minimum(lengths, c), np.where(w > 0, np.maximum(w + 1, TAIL_COLS), c))
        at = np.concatenate([[0], np.cumsum(keep)[:-1]]).astype(np.int64)
        band = self.bands(self.columns(w, lengths))  # the pass the row runs in (column_groups)
        self.band_np[slots] = band
        meta = np.stack([slots, np.asarray(rows, dtype=np.int64), np.asarray(starts, dtype=np.int64) + lengths - keep,
                         keep, at, lengths, c - keep, band], 1).astype(np.float64)
        dev = _upload(np.concatenate([meta, values], 1), self.device)
        slot, row, src, kept, at_d, n_d, col0, band_d = dev[:, :8].T.long().contiguous()
        self.band.index_copy_(0, slot, band_d.to(torch.int8))
        for name, col in zip(self.settings, dev[:, 8:].unbind(1), strict=True):
            t = functools.reduce(getattr, name.split("."), self)
            t.index_copy_(0, slot, col.to(t.dtype))
        k = int(keep.sum())
        pos = torch.arange(k, device=self.device)
        seg = torch.searchsorted(at_d, pos, right=True) - 1
        first = at_d[seg]
        local = pos - first
        last = first + kept[seg] - 1
        tok = source[row[seg], src[seg] + local].long()
        limit = self._limits(tok, pos, seg, first, last, slot, len(entries))
        caps = values[:, self.settings.index("cap")].astype(np.int64)
        max_len = int(np.minimum(caps, keep - 1).max()) if k else 0
        match = admit_packed(tok, first, last, limit, max_len, int(keep.max()) if k else 0)
        bank = self.bank
        bank.tok.index_fill_(0, slot, -1)
        bank.match.index_fill_(0, slot, 0)
        target = (slot[seg], col0[seg] + local)
        bank.tok.index_put_(target, tok.to(torch.int32))
        bank.match.index_put_(target, match)
        bank.length.index_copy_(0, slot, n_d)
        return slot

def _upload(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """One host array to the device in one copy (from pinned memory on CUDA, not blocking the host)."""
    t = torch.from_numpy(np.ascontiguousarray(values))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def flat_view(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]] | None:
    """A 1-D view over the storage a 2-D ``t`` spans, and ``t``'s strides, so that
    ``t[i, j]`` is ``view[i * s0 + j * s1]``; None when rows or columns overlap
    (a stride of 0, or strides that interleave), where writes would be ambiguous."""
    (n, m), (s0, s1) = t.shape, t.stride()
    if n == 0 or m == 0:
        return t.new_empty(0), (0, 0)
    if not ((s1 >= 1 and (n == 1 or s0 >= m * s1)) or (s0 >= 1 and (m == 1 or s1 >= n * s0))):
        return None
    span = (n - 1) * s0 + (m - 1) * s1 + 1
    return t.as_strided((span,), (1,), t.storage_offset()), (s0, s1)


class Scratch:
    """Step buffers reused from step to step (one flat tensor per name, grown
    as a step needs, never shrunk but by :meth:`clear`): a step writes its
    ``[rows, columns]`` intermediates into them with in-place and ``out=``
    operations instead of allocating new tensors."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            buf = self.bufs[name] = torch.empty(max(n, 1), dtype=dtype, device=self.device)
        return buf[:n].view(shape)

    def holds(self, name: str, t: torch.Tensor) -> bool:
        buf = self.bufs.get(name)
        return buf is not None and t.numel() > 0 and t.data_ptr() == buf.data_ptr()

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.bufs.values())

    def clear(self) -> None:
        self.bufs.clear()


def _scatter_min_scratch(target: torch.Tensor, index: torch.Tensor, invalid: torch.Tensor,
                         minus: torch.Tensor | None, scratch: Scratch) -> None:
    """``target[..., index] = min(target[..., index], target[..., index] - minus)``
    where not invalid (``minus`` None: -inf); the values go through scratch."""
    vals = scratch.get("vals", tuple(index.shape), target.dtype)
    if minus is None:
        vals.fill_(float("-inf"))
    else:
        torch.gather(target, -1, index, out=vals)
        vals.sub_(minus)
    vals.masked_fill_(invalid, float("inf"))
    target.scatter_reduce_(-1, index, vals, reduce="amin", include_self=True)


class TokenSets:
    """Per-slot sets of token ids as rows of one ``[sets + 1, vocab]`` bool
    table (row 0: the empty set), one row per distinct set; rows no slot uses
    any more are dropped before the table outgrows the slots."""

    def __init__(self, slots: int, vocab: int, device: torch.device) -> None:
        self.vocab, self.device = vocab, device
        self.table = torch.zeros((1, vocab), dtype=torch.bool, device=device)
        self.rows: dict[frozenset[int], int] = {}
        self.row_np = np.zeros(slots + 1, dtype=np.int64)
        self.row = torch.zeros(slots + 1, dtype=torch.long, device=device)

    def assign(self, slot: int, ids: frozenset[int], device: bool = True) -> None:
        """Point ``slot`` at set ``ids``'s row (added once); ``device=False``
        leaves :attr:`row` to the caller (an admission writes it for all its slots at once)."""
        ids = frozenset(i for i in ids if i < self.vocab)
        r = 0 if not ids else self.rows.get(ids)
        if r is None:
            if len(self.rows) + 1 >= len(self.row_np):
                self._compact()
            mask = torch.zeros((1, self.vocab), dtype=torch.bool, device=self.device)
            mask[0, sorted(ids)] = True
            self.table = torch.cat([self.table, mask])
            r = self.rows[ids] = self.table.shape[0] - 1
        self.row_np[slot] = r
        if device:
            self.row[slot] = r

    def _compact(self) -> None:
        used = set(self.row_np.tolist())
        keep = [(ids, r) for ids, r in self.rows.items() if r in used]
        remap = np.zeros(self.table.shape[0], dtype=np.int64)
        for new, (_, r) in enumerate(keep, start=1):
            remap[r] = new
        self.table = torch.cat([self.table[:1], self.table[[r for _, r in keep]]]) if keep else self.table[:1]
        self.rows = {ids: new for new, (ids, _) in enumerate(keep, start=1)}
        self.row_np = remap[self.row_np]
        self.row.copy_(torch.from_numpy(self.row_np))

    def contains(self, slots: torch.Tensor | slice, tokens: torch.Tensor) -> torch.Tensor:
        """[R, C] bool: ``tokens[r, c]`` is in slot ``slots[r]``'s set."""
        inside = (tokens >= 0) & (tokens < self.vocab)
        return inside & self.table[self.row[slots][:, None], tokens.long().clamp(0, self.vocab - 1)]


class NgramBatch(_Batch):
    """No-repeat n-gram: ban ``t[j + 1]`` wherever ``match[j] >= n - 1``, the
    n-gram lies in the row's window (if any) and ``t[j + 1]`` is not whitelisted."""

    def __init__(self, slots: int, device: torch.device, vocab: int) -> None:
        super().__init__(slots, device)
        self.need_len = torch.zeros(slots + 1, dtype=torch.int32, device=device)
        self.whitelist = TokenSets(slots, vocab, device)
        self.any_whitelist = False

    settings = ("last_n", "cap", "need_len", "whitelist.row")

    def add(self, slot: int, n: int, tokens: torch.Tensor, window: int = 0,
            whitelist: frozenset[int] = frozenset()) -> None:
        """Admit one request (:meth:`admit_rows` with one entry)."""
        self.admit_rows([(slot, n, window, whitelist)], [tokens.numel()], tokens.to(self.device)[None], [0], [0])

    def _settings(self, entries: list) -> np.ndarray:
        """Entries ``(slot, n, window, whitelist)``."""
        for slot, _, window, whitelist in entries:
            self.window[slot] = window
            self.whitelist.assign(slot, whitelist, device=False)
            self.any_whitelist |= bool(whitelist)
        return np.asarray([(window, n - 1, n - 1, self.whitelist.row_np[slot])
                           for slot, n, window, _ in entries], dtype=np.float64)

    def penalize(self, logits: torch.Tensor, rows: torch.Tensor | slice, slots: torch.Tensor | slice,
                 tok: torch.Tensor | None = None, match: torch.Tensor | None = None,
                 active: torch.Tensor | None = None, cols: slice = slice(None)) -> None:
        if tok is None:
            tok, match = self.gather(slots, cols)
        r, c = tok.shape
        nxt, m = tok[:, 1:], match[:, :-1]
        need = self.need_len[slots]
        invalid = self.scratch.get("invalid", (r, c - 1), torch.bool)
        other = self.scratch.get("other", (r, c - 1), torch.bool)
        torch.lt(m, need[:, None], out=invalid)
        invalid |= torch.lt(nxt, 0, out=other)
        # A window of W: the n-gram ending at column j + 1 starts at j + 2 - n >= c - W.
        win = self.last_n[slots]
        first = torch.where(win > 0, c - win + need - 1, 0)
        j = torch.arange(c - 1, device=tok.device, dtype=torch.int32)
        invalid |= torch.lt(j[None], first[:, None], out=other)
        if self.any_whitelist:
            wl = self.whitelist
            index = self.penalty_index(nxt, wl.vocab)
            self.lookup(wl.table, wl.row[slots], index, other)
            other &= torch.lt(nxt, wl.vocab, out=self.scratch.get("other2", (r, c - 1), torch.bool))
            invalid |= other  # whitelisted: never banned
            index.copy_(nxt).clamp_(0, logits.shape[1] - 1)
        else:
            index = self.penalty_index(nxt, logits.shape[1])
        if active is not None:
            invalid |= ~active[:, None]
        self.scatter_min(logits, rows, index, invalid, None)


def draw_tail_bases() -> tuple[int, int]:
    """Random bases of the tail hashes (one pair per table owner, redrawn only on a collision)."""
    from .suffix import P1, P2

    return secrets.randbelow(P1 - 1 - 2**20) + 2**20, secrets.randbelow(P2 - 1 - 2**20) + 2**20


def _tail_powers(bases: tuple[int, int], n: int) -> np.ndarray:
    """int64 ``[2, n]``: ``base ** j`` mod each prime."""
    from .suffix import P1, P2

    out = np.ones((2, max(n, 1)), dtype=np.int64)
    for r, (b, p) in enumerate(zip(bases, (P1, P2), strict=True)):
        for j in range(1, n):  # n <= MAX_TAIL
            out[r, j] = out[r, j - 1] * b % p
    return out[:, :n]


class HashedTails:
    """One breaker set's tails, merged (a tail listed twice: one entry, heads
    merged) and hashed once under its owner's bases: per tail its length and
    the two polynomial hashes of the reversed tail; per head id (below the
    vocabulary) its tail's index. A table rebuild concatenates these."""

    __slots__ = ("count", "h1", "h2", "head", "head_tail", "length", "longest")

    def __init__(self, length: np.ndarray, h1: np.ndarray, h2: np.ndarray, head_tail: np.ndarray,
                 head: np.ndarray) -> None:
        self.count = len(length)
        self.length, self.h1, self.h2, self.head_tail, self.head = length, h1, h2, head_tail, head
        self.longest = int(length.max()) if len(length) else 0

    @classmethod
    def of(cls, tails: tuple, bases: tuple[int, int], vocab: int) -> HashedTails | None:
        """``BreakerSet.tails`` hashed with ``bases``; None when two distinct
        tails of the set share a length and hash1 (draw other bases)."""
        from .suffix import P1, P2

        lens, toks, head_tail, heads = [], [], [], []
        for k, (tail, hs) in enumerate(tails):  # the one pass in Python over the set's tails
            lens.append(len(tail))
            toks.extend(tail)
            heads.extend(hs)
            head_tail.extend([k] * len(hs))
        length = np.asarray(lens, dtype=np.int64)
        if not len(length):
            e = np.zeros(0, dtype=np.int64)
            return cls(e, e, e, e, e)
        m = int(length.max())
        # rev[k, j] = the token j before the last of tail k, + 1 (0: none, as a query's padding).
        ends = np.cumsum(length) - 1
        j = np.arange(m)
        rev = np.where(j[None] < length[:, None], np.asarray(toks, dtype=np.int64)[np.maximum(ends[:, None] - j, 0)] + 1,
                       0)
        uniq, inv = np.unique(np.concatenate([length[:, None], rev], 1), axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        length, rev = uniq[:, 0], uniq[:, 1:]
        pw = _tail_powers(bases, m)
        h1 = (rev * pw[0] % P1).sum(1) % P1
        h2 = (rev * pw[1] % P2).sum(1) % P2
        if len(np.unique((length << 31) | h1)) < len(length):
            return None
        head = np.asarray(heads, dtype=np.int64)
        pair = np.unique(inv[np.asarray(head_tail, dtype=np.int64)] * (vocab + 1) + head)  # merged, sorted
        pair = pair[pair % (vocab + 1) < vocab]
        return cls(length, h1, h2, pair // (vocab + 1), pair % (vocab + 1))


class _SetKey:
    """A held breaker set as a dict key: its hash computed once (hashing a
    set walks all its tails), and its tails hashed once (:class:`HashedTails`)."""

    __slots__ = ("bs", "h", "hashed")

    def __init__(self, bs: BreakerSet) -> None:
        self.bs, self.h = bs, hash(bs)
        self.hashed: HashedTails | None = None

    def __hash__(self) -> int:
        return self.h

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SetKey) and self.h == other.h and self.bs == other.bs


class TailTable:
    """Multi-token breakers of many sets as one packed, bounded table.

    A tail ``t_1 .. t_k`` of set ``s`` with head ids ``H`` ends a breaker at a
    position whose last ``k`` tokens are the tail and whose token before them
    is in ``H``. Tails are keyed by ``(s, k, hash1)`` in one sorted int64
    array (hash1, hash2: polynomial hashes of the reversed tail under two
    primes with random bases, redrawn until no two tails of a set share a
    key), heads by ``tail id * (vocab + 1) + head`` in another. Each set's
    tails are hashed once (:class:`HashedTails`); a table is a concatenation
    and a sort of those. A query for a position
    hashes its last 1 .. ``longest`` tokens (one cumulative sum), looks every
    length up with one ``searchsorted``, checks hash2 and looks the head up
    with a second ``searchsorted``: a fixed number of tensor operations for
    any number of tails (no loop over them), ``[rows, longest]`` elements.
    Memory: 24 B per tail and 8 B per head id.
    """

    def __init__(self, keys: torch.Tensor, tail_id: torch.Tensor, hash2: torch.Tensor, heads: torch.Tensor,
                 powers: torch.Tensor, longest: int, vocab: int) -> None:
        self.keys, self.tail_id, self.hash2, self.heads = keys, tail_id, hash2, heads
        self.powers, self.longest, self.vocab = powers, longest, vocab

    @classmethod
    def build(cls, sets: list[tuple[int, tuple]], vocab: int, device: torch.device) -> TailTable | None:
        """From ``(set index, BreakerSet.tails)`` pairs (hashed here, with bases
        drawn here); None when no set has a tail."""
        for _attempt in range(16):  # distinct tails collide with probability ~n^2 / 2^31 per draw
            bases = draw_tail_bases()
            hashed = [(idx, HashedTails.of(tails, bases, vocab)) for idx, tails in sets]
            if all(h is not None for _, h in hashed):
                return cls.pack(hashed, bases, vocab, device)
        raise RuntimeError(f"breaker tail table: tails still collide after 16 hash draws ({len(sets)} sets)")

    @classmethod
    def pack(cls, sets: list[tuple[int, HashedTails]], bases: tuple[int, int], vocab: int,
             device: torch.device) -> TailTable | None:
        """From ``(set index < 2**27, its tails hashed with bases)`` pairs: a
        concatenation and two sorts, no Python loop over tails."""
        sets = [(idx, h) for idx, h in sets if h.count]
        if not sets:
            return None
        longest = max(h.longest for _, h in sets)
        offset = np.cumsum([0] + [h.count for _, h in sets])[:-1]
        keys = np.concatenate([((idx * 32 + h.length) << 31) | h.h1 for idx, h in sets])
        hash2 = np.concatenate([h.h2 for _, h in sets])
        heads = np.sort(np.concatenate([(h.head_tail + o) * (vocab + 1) + h.head
                                        for (_, h), o in zip(sets, offset, strict=True)]))
        order = np.argsort(keys, kind="stable")
        big = np.iinfo(np.int64).max  # a sentinel: lookups never run past the end

        def dev(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)

        return cls(dev(np.append(keys[order], big)), dev(np.append(order, 0)), dev(hash2),
                   dev(np.append(heads, big)), dev(_tail_powers(bases, longest)), longest, vocab)

    def ends(self, window: torch.Tensor, set_idx: torch.Tensor) -> torch.Tensor:
        """[N] bool: a tail of set ``set_idx[n]`` (with its head) ends at the last
        column of ``window[n]`` (the last tokens, -1 for none; ``longest + 1``
        columns are read, fewer are padded)."""
        from .suffix import P1, P2

        m = self.longest
        window = window.long()
        if window.shape[1] < m + 1:
            window = torch.cat([window.new_full((window.shape[0], m + 1 - window.shape[1]), -1), window], 1)
        rev = window[:, -(m + 1):].flip(1)  # rev[:, j] = the token j before the last
        terms = rev[:, :m] + 1  # padding (-1) hashes as 0, no token does
        h1 = torch.cumsum(terms * self.powers[0] % P1, 1) % P1  # [:, k - 1]: the last k tokens
        h2 = torch.cumsum(terms * self.powers[1] % P2, 1) % P2
        k = torch.arange(1, m + 1, device=window.device)
        key = ((set_idx.long()[:, None] * 32 + k) << 31) | h1
        at = torch.searchsorted(self.keys, key)
        tid = self.tail_id[at]
        ok = (self.keys[at] == key) & (self.hash2[tid] == h2)
        head = rev[:, 1:]  # the token before the last k
        head_key = tid * (self.vocab + 1) + head
        ok &= (self.heads[torch.searchsorted(self.heads, head_key)] == head_key) & (head >= 0)
        return ok.any(1)


class DryBatch(_Batch):
    """DRY: penalty ``multiplier * base ** min(L - allowed, max_exp)`` on ``t[j + 1]``."""

    def __init__(self, slots: int, device: torch.device, vocab: int) -> None:
        super().__init__(slots, device)
        self.vocab = vocab
        f = dict(device=device)
        self.mult = torch.zeros(slots + 1, **f)
        self.log_base = torch.zeros(slots + 1, **f)
        self.max_exp = torch.full((slots + 1,), float("inf"), **f)
        self.allowed = torch.ones(slots + 1, dtype=torch.int32, **f)
        self.last_n = torch.zeros(slots + 1, dtype=torch.int32, **f)
        self.set_idx = torch.zeros(slots + 1, dtype=torch.long, **f)
        self.set_np = np.zeros(slots + 1, dtype=np.int64)  # host mirror of set_idx
        # Held sets (keys with their hash and their tails' hashes cached) -> table row.
        self._sets: dict[_SetKey, int] = {}
        self.single = torch.zeros((1, vocab), dtype=torch.bool, **f)
        # Multi-token breakers of every held set, as one packed table (:class:`TailTable`),
        # packed from each held set's tails hashed once, when the set came (under
        # bases fixed here, redrawn only on a collision).
        self.tails: TailTable | None = None
        self._tails_stale = False
        self._tail_bases = draw_tail_bases()

    def set_breakers(self, slot: int, bs: BreakerSet, device: bool = True) -> None:
        """Point ``slot`` at the device tables of breaker set ``bs`` (added once);
        ``device=False`` leaves :attr:`set_idx` to the caller (an admission)."""
        key = _SetKey(bs)
        idx = self._sets.get(key)
        if idx is None:
            # Sets no live request uses are dropped once they are as many as
            # the used ones (at least 8): every step walks the held sets' tails,
            # and a rebuild costs all held tables, so it is amortised.
            used = set(self.set_np.tolist()) - {0}
            if len(self._sets) - len(used) >= max(8, len(used)):
                self._rebuild([k for k, i in self._sets.items() if i in used])
            idx = self._sets[key] = len(self._sets) + 1
            self._add_tables(key, idx)
        if device:
            self.set_idx[slot] = idx
        self.set_np[slot] = idx

    def release(self, slot: int) -> None:
        """The request in ``slot`` left: its breaker set no longer counts as used."""
        if self.set_np[slot]:
            self.set_np[slot] = 0
            self.set_idx[slot:slot + 1].fill_(0)

    def _add_tables(self, key: _SetKey, idx: int) -> None:
        row = torch.zeros((1, self.vocab), dtype=torch.bool, device=self.device)
        ids = [i for i in key.bs.single if i < self.vocab]
        if ids:
            row[0, ids] = True
        self.single = torch.cat([self.single, row])
        if key.bs.tails:
            if key.hashed is None:
                self._hash_tails(key)
            self._tails_stale = True

    def _hash_tails(self, key: _SetKey) -> None:
        """Hash a new set's tails, once; on a collision draw other bases and
        hash every held set again, once (at most 16 draws, then an error that
        leaves the held sets as they were)."""
        key.hashed = HashedTails.of(key.bs.tails, self._tail_bases, self.vocab)
        if key.hashed is not None:
            return
        keys = [k for k in self._sets if k.bs.tails]
        for _attempt in range(16):  # distinct tails of a set collide with probability ~n^2 / 2^31 per draw
            bases = draw_tail_bases()
            again = [HashedTails.of(k.bs.tails, bases, self.vocab) for k in keys]
            if all(h is not None for h in again):
                for k, h in zip(keys, again, strict=True):
                    k.hashed = h
                self._tail_bases = bases
                return
        raise RuntimeError(f"breaker tail table: {len(key.bs.tails)} tails still collide after 16 hash draws")

    def _rebuild(self, keep: list[_SetKey]) -> None:
        old = dict(self._sets)
        self._sets = {}
        self.single = self.single[:1]
        self._tails_stale = True
        remap = np.zeros(len(old) + 2, dtype=np.int64)
        for key in keep:
            idx = self._sets[key] = len(self._sets) + 1
            self._add_tables(key, idx)
            remap[old[key]] = idx
        self.set_np = remap[self.set_np]
        self.set_idx.copy_(torch.from_numpy(self.set_np))

    def _tail_table(self) -> TailTable | None:
        """The held sets' multi-token breakers (packed again, on the host, from
        each set's cached hashes after a set came or went)."""
        if self._tails_stale:
            self._tails_stale = False
            self.tails = TailTable.pack([(i, k.hashed) for k, i in self._sets.items() if k.hashed is not None],
                                        self._tail_bases, self.vocab, self.device)
        return self.tails

    def _is_single(self, set_idx: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        inside = (tokens >= 0) & (tokens < self.vocab)
        return inside & self.single[set_idx, tokens.long().clamp(0, self.vocab - 1)]

    def reset_mask(self, tok: torch.Tensor, rows_slot: torch.Tensor | slice) -> torch.Tensor:
        """[R] bool: the row's context (``tok``, right-aligned) now ends with a breaker."""
        sidx = self.set_idx[rows_slot]
        reset = self._is_single(sidx, tok[:, -1])
        table = self._tail_table()
        if table is not None:
            reset |= table.ends(tok[:, max(0, tok.shape[1] - table.longest - 1):], sidx)
        return reset

    settings = ("mult", "log_base", "max_exp", "allowed", "last_n", "cap", "set_idx")

    def add(self, slot: int, p: DryParams, tokens: torch.Tensor, bs: BreakerSet | None = None) -> None:
        """Admit one request (:meth:`admit_rows` with one entry); ``bs`` None:
        the set :meth:`set_breakers` gave the slot."""
        if bs is None:
            bs = next((k.bs for k, i in self._sets.items() if i == self.set_np[slot]), BreakerSet(frozenset()))
        self.admit_rows([(slot, p, bs)], [tokens.numel()], tokens.to(self.device)[None], [0], [0])

    def _settings(self, entries: list) -> np.ndarray:
        """Entries ``(slot, DryParams, BreakerSet)``."""
        for slot, p, bs in entries:
            self.set_breakers(slot, bs, device=False)
            self.window[slot] = p.penalty_last_n if p.penalty_last_n > 0 else 0
        values = []
        for slot, p, _ in entries:
            max_exp = int(_FLOAT32_MAX_LOG / math.log(p.base)) if p.base > 1.000001 else None
            cap = p.allowed_length + max_exp if max_exp is not None else _NO_CAP
            values.append((p.multiplier, math.log(p.base), math.inf if max_exp is None else float(max_exp),
                           p.allowed_length, self.window[slot], min(cap, _NO_CAP), self.set_np[slot]))
        return np.asarray(values, dtype=np.float64)

    def _limits(self, tok: torch.Tensor, pos: torch.Tensor, seg: torch.Tensor, first: torch.Tensor,
                last: torch.Tensor, slot: torch.Tensor, n_seg: int) -> torch.Tensor:
        """rep_limit: matches never reach back across the end of the last breaker."""
        sidx = self.set_idx[slot][seg]
        ends = self._is_single(sidx, tok)
        table = self._tail_table()
        if table is not None:  # each position with the tokens before it in its own context
            back = torch.arange(table.longest, -1, -1, device=tok.device)
            at = pos[:, None] - back
            ends |= table.ends(torch.where(at >= first[:, None], tok[at.clamp(min=0)], -1), sidx)
        mark = torch.where(ends, pos, first - 1)
        last_end = torch.zeros(n_seg, dtype=torch.long, device=tok.device)
        last_end.scatter_reduce_(0, seg, mark, reduce="amax", include_self=False)
        return torch.minimum(last - last_end[seg], self.cap[slot][seg].long())

    def penalize(self, logits: torch.Tensor, rows: torch.Tensor | slice, slots: torch.Tensor | slice,
                 tok: torch.Tensor | None = None, match: torch.Tensor | None = None,
                 active: torch.Tensor | None = None, cols: slice = slice(None)) -> None:
        if tok is None:
            tok, match = self.gather(slots, cols)
        r, c = tok.shape
        nxt = tok[:, 1:]
        # length = min(match, j - start + 1): a window starts at column c - W.
        win = self.last_n[slots]
        start = torch.where(win > 0, c - win, 0)
        length = self.scratch.get("length", (r, c - 1), torch.int32)
        torch.sub(torch.arange(1, c, device=tok.device, dtype=torch.int32)[None], start[:, None], out=length)
        torch.minimum(length, match[:, :-1], out=length)
        allowed = self.allowed[slots]
        invalid = self.scratch.get("invalid", (r, c - 1), torch.bool)
        other = self.scratch.get("other", (r, c - 1), torch.bool)
        torch.lt(length, allowed[:, None], out=invalid)
        invalid |= torch.lt(nxt, 0, out=other)
        index = self.penalty_index(nxt, self.vocab)
        self.lookup(self.single, self.set_idx[slots], index, other)
        other &= torch.lt(nxt, self.vocab, out=self.scratch.get("other2", (r, c - 1), torch.bool))
        invalid |= other  # breakers: never penalised
        if active is not None:
            invalid |= ~active[:, None]
        # pen = mult * base ** min(length - allowed, max_exp), in float32 scratch.
        pen = self.scratch.get("pen", (r, c - 1), torch.float32)
        torch.sub(length, allowed[:, None], out=pen)
        torch.minimum(pen, self.max_exp[slots][:, None], out=pen)
        # exp(88) < float32's largest: the factor stays finite, so a multiplier that
        # rounds to 0 gives 0, never 0 * inf = NaN (the clamp in float64 can round up).
        pen.mul_(self.log_base[slots][:, None]).clamp_(max=_EXP_ARG_MAX).exp_().mul_(self.mult[slots][:, None])
        if logits.shape[1] != self.vocab:
            index.copy_(nxt).clamp_(0, logits.shape[1] - 1)
        self.scatter_min(logits, rows, index, invalid, pen if logits.dtype == torch.float32 else pen.to(logits.dtype))
