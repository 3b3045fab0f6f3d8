"""XTC ("Exclude Top Choices") sampler logic.

With probability ``probability`` per step, remove every token whose
probability is >= ``threshold`` except the least probable of them, so the
model is pushed off its most obvious choices while one viable choice remains.
"""

from __future__ import annotations

import torch

__all__ = ["should_apply", "xtc_mask"]


def xtc_mask(logits_row: torch.Tensor, threshold: float) -> torch.Tensor:
    """Bool mask (same shape as the 1-D ``logits_row``) of tokens to remove.

    Among tokens with softmax probability >= ``threshold`` all are removed
    except the least probable one (ties: the lowest id is kept); when fewer
    than two tokens reach the threshold nothing is removed. O(vocab), no sort.
    """
    if logits_row.dim() != 1:
        raise ValueError(f"logits_row must be 1-D, got shape {tuple(logits_row.shape)}")
    probs = torch.softmax(logits_row.float(), dim=-1)
    above = probs >= threshold
    if int(above.sum()) < 2:
        return torch.zeros_like(above)
    keep = torch.where(above, probs, torch.full_like(probs, float("inf"))).argmin()
    above[keep] = False
    return above


def should_apply(generator: torch.Generator | None, probability: float) -> bool:
    """Per-step coin flip: True with ``probability``.

    Draws exactly one number from ``generator`` (the global RNG when None) on
    every call, whatever ``probability`` is, so seeded runs stay reproducible.
    """
    draw = float(torch.rand(1, generator=generator))
    return draw < probability
