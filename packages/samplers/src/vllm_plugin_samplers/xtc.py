"""XTC ("Exclude Top Choices") sampler logic.

With probability ``probability`` per step, remove every token whose
probability is >= ``threshold`` except the least probable of them, so the
model is pushed off its most obvious choices while one viable choice remains.
As text-generation-webui, a step whose removals would include a guarded token
(end of sequence, newline) removes nothing (``guard``).

The batched form takes no ``topk`` over the vocabulary. At most
``floor(1 / threshold)`` tokens can reach the threshold, so the columns are
split into :data:`GROUP` strided groups (column ``j`` of group ``g`` is token
``j * (V // GROUP) + g``), each group's maximum is taken (one read of the
logits), and only the tokens of the ``floor(1 / threshold) + 1`` groups with
the largest maxima are candidates: a group holding a token at or above the
threshold has a maximum at or above it too, and fewer groups than that can.
The exact probabilities need one sum of ``exp`` over each row (the softmax's
denominator, computed as softmax does: ``exp(x - max)``); everything else
works on the ``[rows, candidates]`` columns. The per-step coin is a pure
function of the request's seed and the output position, computed on the
device, so the same seed gives the same text whatever else runs in the batch.

Rows of one step run in groups of similar ``k`` (:data:`BANDS`, :func:`group_keys`):
the per-row passes over the vocabulary (maximum, ``exp`` sum, group maxima)
run once for every row, and each group takes the candidates of its own
largest ``k``, so a row's cost follows its own threshold, not the smallest
threshold of the step.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

__all__ = ["BANDS", "FULL", "GROUP", "band_of", "candidates", "coin", "group_keys", "group_plan", "top_k_for",
           "xtc_apply", "xtc_mask"]

_M32 = 0xFFFFFFFF
#: Columns per candidate group (see the module docstring).
GROUP = 16
#: Upper ends of the bands of ``k`` whose rows share a pass: up to 32 the
#: candidates cost little beside the passes over the vocabulary, then one band
#: per factor 4 (a row runs with at most 4 times its own ``k``; 4 bands).
BANDS = (32, 128, 512)
#: The group key of rows that take every column (:func:`candidates`), after the bands.
FULL = len(BANDS) + 1
#: Rows per chunk of the ``exp`` sum on the CPU: the temporary stays in cache.
_CPU_ROWS = 16
_local = threading.local()  # the CPU chunk buffer (per thread: two engines in one process may step at once)


def xtc_mask(logits_row: torch.Tensor, threshold: float, guard: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask (same shape as the 1-D ``logits_row``) of tokens to remove.

    Among tokens with softmax probability >= ``threshold`` all are removed
    except the least probable one (ties: the lowest id is kept); when fewer
    than two tokens reach the threshold nothing is removed, nor when a token
    of ``guard`` (a bool mask over the vocabulary) would be.
    """
    if logits_row.dim() != 1:
        raise ValueError(f"logits_row must be 1-D, got shape {tuple(logits_row.shape)}")
    row = logits_row.float()[None].clone()
    xtc_apply(row, torch.tensor([threshold]), torch.tensor([True]), top_k_for(threshold, row.shape[1]), guard)
    return torch.isinf(row[0]) & ~torch.isinf(logits_row.float())


def top_k_for(threshold: float, vocab: int) -> int:
    """How many of the most probable tokens can reach ``threshold`` (plus one)."""
    return max(1, min(vocab, int(1.0 / threshold) + 1))


def candidates(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``[R, C]`` token ids holding, in every row, each token that is among the
    ``k`` largest of its row (every token when the vocabulary is small)."""
    rows, vocab = logits.shape
    width = vocab // GROUP
    if width <= 4 * k:
        return torch.arange(vocab, device=logits.device).expand(rows, vocab)
    return _from_maxima(_maxima(logits), k, vocab)


def _maxima(logits: torch.Tensor) -> torch.Tensor:
    """``[R, V // GROUP]``: the maximum of each strided group of columns."""
    rows, vocab = logits.shape
    width = vocab // GROUP
    # Strided groups: a view of any logits layout (one dimension split in two).
    return logits[:, : width * GROUP].view(rows, GROUP, width).amax(1)


def _from_maxima(maxima: torch.Tensor, k: int, vocab: int) -> torch.Tensor:
    """The candidates of :func:`candidates` from the rows' group maxima."""
    rows, width = maxima.shape
    top = torch.topk(maxima, k, dim=-1).indices  # [R, k] group numbers
    offsets = torch.arange(GROUP, device=maxima.device) * width
    idx = (top[:, None, :] + offsets[None, :, None]).reshape(rows, GROUP * k)
    if vocab > width * GROUP:  # the last vocab % GROUP columns: always candidates
        rest = torch.arange(width * GROUP, vocab, device=maxima.device).expand(rows, vocab - width * GROUP)
        idx = torch.cat([idx, rest], 1)
    return idx


def group_keys(k: np.ndarray, band: np.ndarray, vocab: int) -> np.ndarray:
    """Host: the group key of rows with candidates for ``k`` (their own
    :func:`top_k_for`) in band ``band`` (:func:`band_of`): the band, or
    :data:`FULL` where the vocabulary is small enough for every column."""
    return np.where(4 * k >= vocab // GROUP, FULL, band)


def band_of(k: np.ndarray) -> np.ndarray:
    """The band (:data:`BANDS`) of each ``k``."""
    return np.searchsorted(BANDS, k, side="left")


def group_plan(keys: np.ndarray, k: np.ndarray, vocab: int, per: int = 1) -> list[tuple[int, int]]:
    """Host: ``(rows, k)`` of each group of a step, in ascending key order,
    from each request's key and ``k``; ``per`` rows per request. A group runs
    with the largest ``k`` of its requests."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    counts = np.diff(np.r_[starts, len(keys)])
    top = np.maximum.reduceat(k[order], starts)
    return [(int(c) * per, int(min(t, vocab))) for c, t in zip(counts, top, strict=True)]


def _sum_exp(logits: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """``sum(exp(logits - top))`` per row, ``[R, 1]`` float32, as softmax computes it."""
    rows = logits.shape[0]
    if logits.device.type != "cpu" or rows <= _CPU_ROWS:
        return (logits.float() - top).exp_().sum(-1, keepdim=True)
    # CPU: in chunks of rows through one buffer that stays in cache (half the
    # time of one pass), kept between steps (a fresh one costs page faults).
    buf = getattr(_local, "buf", None)
    if buf is None or buf.shape[1] != logits.shape[1]:
        buf = _local.buf = torch.empty(_CPU_ROWS, logits.shape[1], device=logits.device)
    out = torch.empty(rows, 1, device=logits.device)
    for i in range(0, rows, _CPU_ROWS):
        n = min(_CPU_ROWS, rows - i)
        b = buf[:n]
        torch.sub(logits[i:i + n], top[i:i + n], out=b)
        torch.sum(b.exp_(), -1, keepdim=True, out=out[i:i + n])
    return out


def xtc_apply(logits: torch.Tensor, threshold: torch.Tensor, act: torch.Tensor, k: int | list[tuple[int, int]],
              guard: torch.Tensor | None = None, eos: torch.Tensor | None = None,
              guard_on: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> None:
    """XTC in place on the rows ``rows`` (``[N]`` distinct row numbers on the
    device; None: every row, in order) of ``logits``, where ``act`` is True.

    ``threshold``, ``act``, ``eos``, ``guard_on``: ``[N]``, in the order of
    ``rows``. ``k``: >= ``top_k_for`` of every row's threshold, or a list of
    groups ``(n, k)``: the next ``n`` rows (in the order of ``rows``) take the
    candidates of ``k`` (each >= ``top_k_for`` of its rows' thresholds).
    ``guard``: bool [>= V] over token ids, and ``eos`` one more id per row
    (-1: none): a row whose removals would include one of them is left as it
    is, where ``guard_on`` (default: every row) is True. Only the candidate
    columns are written.
    """
    vocab = logits.shape[1]
    n_rows = logits.shape[0] if rows is None else rows.shape[0]
    groups = [(n_rows, k)] if isinstance(k, int) else k
    width = vocab // GROUP
    # The rows' passes over the vocabulary run on the logits in place, or on
    # a copy of the listed rows where they are a subset.
    whole = rows is None or n_rows == logits.shape[0]
    x = logits if whole else logits[rows]
    maxima = _maxima(x) if any(width > 4 * g for _, g in groups) else None
    if maxima is None:
        top = x.amax(-1, keepdim=True).float()
    else:
        top = maxima.amax(-1, keepdim=True)
        if vocab > width * GROUP:
            top = torch.maximum(top, x[:, width * GROUP:].amax(-1, keepdim=True))
        top = top.float()
    total = _sum_exp(x, top)
    start = 0
    for n, g in groups:
        if n:
            part = slice(start, start + n)
            at = rows[part] if rows is not None else part  # logits rows written
            xi = at if whole else part  # rows of x read
            _group(logits, x, at, xi, g, threshold[part], act[part], top[xi], total[xi], maxima, guard,
                   None if eos is None else eos[part], None if guard_on is None else guard_on[part])
        start += n


def _group(logits: torch.Tensor, x: torch.Tensor, at: Any, xi: Any, k: int, threshold: torch.Tensor,
           act: torch.Tensor, top: torch.Tensor, total: torch.Tensor, maxima: torch.Tensor | None,
           guard: torch.Tensor | None, eos: torch.Tensor | None, guard_on: torch.Tensor | None) -> None:
    """XTC on one group: the rows ``xi`` of ``x`` (a slice or index tensor),
    written to the rows ``at`` of ``logits``, with the candidates of ``k``."""
    vocab = x.shape[1]
    rows = threshold.shape[0]
    if maxima is None or vocab // GROUP <= 4 * k:
        idx = torch.arange(vocab, device=x.device).expand(rows, vocab)
    else:
        idx = _from_maxima(maxima[xi], k, vocab)
    vals = x[xi].gather(1, idx) if isinstance(xi, slice) else x[xi[:, None], idx]
    v = vals.float()
    probs = torch.exp(v - top) / total
    above = probs >= threshold.to(probs.dtype)[:, None]
    # Keep the least probable token above the threshold (ties: the lowest id).
    least = torch.where(above, probs, float("inf")).amin(-1, keepdim=True)
    cand = above & (probs == least)
    big = torch.iinfo(idx.dtype).max
    keep_id = torch.where(cand, idx, big).amin(-1, keepdim=True)
    drop = above & (idx != keep_id)
    fire = act & (above.sum(-1) >= 2)
    if guard is not None or eos is not None:
        hit = torch.zeros_like(drop)
        if guard is not None:
            hit |= guard[idx]
        if eos is not None:
            hit |= idx == eos[:, None]
        blocked = (drop & hit).any(-1)
        fire = fire & ~(blocked if guard_on is None else blocked & guard_on)
    new = vals.masked_fill(drop & fire[:, None], float("-inf"))
    if isinstance(at, slice):
        logits[at].scatter_(1, idx, new)
    else:
        logits[at[:, None], idx] = new


def _fmix(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding 32-bit values."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def coin(seed: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Uniform draws in [0, 1), a pure function of (int64 ``seed``, ``position``)."""
    seed = seed.long()
    h = _fmix((seed & _M32) ^ 0x9E3779B9)
    h = _fmix(h ^ ((seed >> 32) & _M32))
    h = _fmix(h ^ (position.long() & _M32))
    h = _fmix(h ^ 0x6A09E667)
    return h.double() / 2**32
