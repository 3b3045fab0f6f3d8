"""XTC ("Exclude Top Choices") sampler logic.

With probability ``probability`` per step, remove every token whose
probability is >= ``threshold`` except the least probable of them, so the
model is pushed off its most obvious choices while one viable choice remains.

At most ``floor(1 / threshold)`` tokens can reach the threshold, so the batched
form needs one ``topk(floor(1 / threshold) + 1)`` and one sum of ``exp`` over the
logits (about 3 passes, one logits-sized temporary for the ``exp``); the
rest works on ``[rows, k]``. The per-step coin is a pure function of the
request's seed and the output position, computed on the device, so the same
seed gives the same text whatever else runs in the batch.
"""

from __future__ import annotations

import torch

__all__ = ["coin", "top_k_for", "xtc_apply", "xtc_mask"]

_M32 = 0xFFFFFFFF


def xtc_mask(logits_row: torch.Tensor, threshold: float) -> torch.Tensor:
    """Bool mask (same shape as the 1-D ``logits_row``) of tokens to remove.

    Among tokens with softmax probability >= ``threshold`` all are removed
    except the least probable one (ties: the lowest id is kept); when fewer
    than two tokens reach the threshold nothing is removed.
    """
    if logits_row.dim() != 1:
        raise ValueError(f"logits_row must be 1-D, got shape {tuple(logits_row.shape)}")
    row = logits_row.float()[None].clone()
    xtc_apply(row, torch.tensor([threshold]), torch.tensor([True]), top_k_for(threshold, row.shape[1]))
    return torch.isinf(row[0]) & ~torch.isinf(logits_row.float())


def top_k_for(threshold: float, vocab: int) -> int:
    """How many of the most probable tokens can reach ``threshold`` (plus one)."""
    return max(1, min(vocab, int(1.0 / threshold) + 1))


def xtc_apply(logits: torch.Tensor, threshold: torch.Tensor, act: torch.Tensor,
              k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """XTC in place on every row of ``logits`` where ``act`` [R] is True.

    ``threshold`` [R]; ``k`` >= ``top_k_for`` of the smallest threshold.
    Returns the ``[R, k]`` columns it may have written and their new values.
    """
    vals, idx = torch.topk(logits, k, dim=-1)
    top = vals[:, :1].float()
    # As softmax computes it: exp(x - max) / sum(exp(x - max)).
    total = (logits.float() - top).exp_().sum(-1, keepdim=True)  # the one logits-sized temporary
    probs = torch.exp(vals.float() - top) / total
    above = probs >= threshold.to(probs.dtype)[:, None]
    # Keep the least probable token above the threshold (ties: the lowest id).
    least = torch.where(above, probs, float("inf")).amin(-1, keepdim=True)
    cand = above & (probs == least)
    big = torch.iinfo(idx.dtype).max
    keep_id = torch.where(cand, idx, big).amin(-1, keepdim=True)
    drop = above & (idx != keep_id) & (above.sum(-1, keepdim=True) >= 2) & act[:, None]
    new = vals.masked_fill(drop, float("-inf"))
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
