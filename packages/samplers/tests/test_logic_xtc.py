"""XTC logic."""

from __future__ import annotations

import torch

from vllm_plugin_samplers.xtc import should_apply, xtc_mask


def _logits(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs).log()


def test_removes_all_but_least_probable_above_threshold() -> None:
    mask = xtc_mask(_logits([0.4, 0.3, 0.2, 0.1]), 0.15)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [True, True, False, False]


def test_unsorted_input() -> None:
    mask = xtc_mask(_logits([0.1, 0.3, 0.05, 0.4, 0.15]), 0.1)
    # above threshold: 0.1, 0.3, 0.4, 0.15 -> keep 0.1 (index 0)
    assert mask.tolist() == [False, True, False, True, True]


def test_only_one_above_threshold_removes_nothing() -> None:
    mask = xtc_mask(_logits([0.7, 0.1, 0.1, 0.1]), 0.2)
    assert not mask.any()
    assert not xtc_mask(_logits([0.25] * 4), 0.5).any()


def test_ties_keep_exactly_one() -> None:
    mask = xtc_mask(_logits([0.25] * 4), 0.25)
    assert int(mask.sum()) == 3


def test_half_precision_and_neg_inf() -> None:
    row = torch.tensor([2.0, 2.0, float("-inf"), 0.0], dtype=torch.float16)
    mask = xtc_mask(row, 0.3)
    assert int(mask.sum()) == 1 and not mask[2] and not mask[3]


def test_should_apply_is_reproducible() -> None:
    g1 = torch.Generator().manual_seed(42)
    g2 = torch.Generator().manual_seed(42)
    a = [should_apply(g1, 0.5) for _ in range(200)]
    b = [should_apply(g2, 0.5) for _ in range(200)]
    assert a == b
    assert 50 < sum(a) < 150


def test_should_apply_extremes_and_one_draw_per_call() -> None:
    g = torch.Generator().manual_seed(7)
    assert not any(should_apply(g, 0.0) for _ in range(500))
    assert all(should_apply(g, 1.0) for _ in range(500))
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    should_apply(g1, 0.0)
    should_apply(g1, 1.0)
    torch.rand(2, generator=g2)
    assert torch.rand(1, generator=g1).item() == torch.rand(1, generator=g2).item()


def test_should_apply_without_generator() -> None:
    assert should_apply(None, 1.0) is True
    assert should_apply(None, 0.0) is False
