"""Merging the chunk embeddings of one document (torch, imported lazily by callers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

EPS = 1e-12


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / ||x||`` along the last dimension (zero vectors stay zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def merge(vectors: torch.Tensor, weights: Sequence[int], mode: str, normalize: bool) -> torch.Tensor:
    """One vector from ``vectors`` (``[num_chunks, dim]``, float32).

    * ``mean``: the average weighted by each chunk's token count;
    * ``max``: the elementwise maximum;
    * ``cls_first``: the first chunk's vector.

    ``normalize`` L2-normalises the result.
    """
    vectors = vectors.to(torch.float32)
    if mode == "mean":
        w = torch.tensor(list(weights), dtype=torch.float32).unsqueeze(1)
        if w.shape[0] != vectors.shape[0]:
            raise ValueError(f"{w.shape[0]} weights for {vectors.shape[0]} vectors")
        out = (vectors * w).sum(dim=0) / w.sum()
    elif mode == "max":
        out = vectors.max(dim=0).values
    elif mode == "cls_first":
        out = vectors[0]
    else:
        raise ValueError(f"unknown aggregate {mode!r}")
    return l2_normalize(out) if normalize else out
