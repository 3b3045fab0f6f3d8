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
"""

from __future__ import annotations

import threading

import torch

__all__ = ["GROUP", "candidates", "coin", "top_k_for", "xtc_apply", "xtc_mask"]

_M32 = 0xFFFFFFFF
#: Columns per candidate group (see the module docstring).
GROUP = 16
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
    # Strided groups: a view of any logits layout (one dimension split in two).
    maxima = logits[:, : width * GROUP].view(rows, GROUP, width).amax(1)
    top = torch.topk(maxima, k, dim=-1).indices  # [R, k] group numbers
    offsets = torch.arange(GROUP, device=logits.device) * width
    idx = (top[:, None, :] + offsets[None, :, None]).reshape(rows, GROUP * k)
    if vocab > width * GROUP:  # the last vocab % GROUP columns: always candidates
        rest = torch.arange(width * GROUP, vocab, device=logits.device).expand(rows, vocab - width * GROUP)
        idx = torch.cat([idx, rest], 1)
    return idx


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


def xtc_apply(logits: torch.Tensor, threshold: torch.Tensor, act: torch.Tensor, k: int,
              guard: torch.Tensor | None = None, eos: torch.Tensor | None = None,
              guard_on: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """XTC in place on every row of ``logits`` where ``act`` [R] is True.

    ``threshold`` [R]; ``k`` >= ``top_k_for`` of the smallest threshold.
    ``guard``: bool [>= V] over token ids, and ``eos`` [R] one more id per row
    (-1: none): a row whose removals would include one of them is left as it
    is, where ``guard_on`` [R] (default: every row) is True.
    Returns the ``[R, C]`` columns it may have written and their new values.
    """
    idx = candidates(logits, k)
    vals = logits.gather(1, idx)
    v = vals.float()
    top = v.amax(-1, keepdim=True)  # the row's maximum is a candidate
    total = _sum_exp(logits, top)
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
    logits.scatter_(1, idx, new)
    return idx, new


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
