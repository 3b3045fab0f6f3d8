"""XTC logic."""

from __future__ import annotations

import torch

from vllm_plugin_samplers.xtc import coin, top_k_for, xtc_apply, xtc_mask


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


def test_batched_equals_reference_on_random_rows() -> None:
    """xtc_apply on a batch (per-row thresholds) equals the brute-force reference row by row."""
    from reference import xtc_remove

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 300, generator=g) * torch.rand(64, 1, generator=g) * 6
    thresholds = torch.tensor([0.02, 0.05, 0.1, 0.2, 0.5] * 13)[:64]
    act = torch.rand(64, generator=g) < 0.7
    out = logits.clone()
    xtc_apply(out, thresholds, act, top_k_for(0.02, 300))
    changed = 0
    for r in range(64):
        want = xtc_remove(logits[r], float(thresholds[r])) if act[r] else logits[r]
        assert torch.equal(out[r], want), r
        changed += not torch.equal(want, logits[r])
    assert changed > 10


def test_coin_is_a_pure_function_of_seed_and_position() -> None:
    seeds = torch.tensor([42, 42, -5, 2**62 + 3])
    pos = torch.tensor([0, 7, 7, 7])
    a = coin(seeds, pos)
    assert torch.equal(a, coin(seeds.clone(), pos.clone()))
    assert a[0] != a[1] and a[1] != a[2] and a[2] != a[3]
    assert bool(((a >= 0) & (a < 1)).all())
    # Order/batch independent: one row alone gives the same draw.
    assert coin(seeds[1:2], pos[1:2])[0] == a[1]


def test_coin_is_uniform_enough() -> None:
    draws = coin(torch.full((20000,), 11), torch.arange(20000))
    assert abs(float(draws.mean()) - 0.5) < 0.01
    assert abs(float((draws < 0.3).double().mean()) - 0.3) < 0.015
