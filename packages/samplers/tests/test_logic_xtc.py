"""XTC logic."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


# ---- the EOS / newline guard (text-generation-webui's rule) ---------------------

def _guard(vocab: int, ids) -> torch.Tensor:
    g = torch.zeros(vocab, dtype=torch.bool)
    g[list(ids)] = True
    return g


def test_a_step_that_would_remove_a_guarded_token_removes_nothing() -> None:
    logits = _logits([0.4, 0.3, 0.2, 0.1])  # threshold 0.15: 0 and 1 go, 2 stays
    assert xtc_mask(logits, 0.15, _guard(4, [1])).tolist() == [False] * 4
    assert xtc_mask(logits, 0.15, _guard(4, [0, 3])).tolist() == [False] * 4


def test_the_guard_allows_removals_that_spare_its_tokens() -> None:
    logits = _logits([0.4, 0.3, 0.2, 0.1])
    # the guarded token is the one kept, or below the threshold: XTC acts as without a guard
    assert xtc_mask(logits, 0.15, _guard(4, [2])).tolist() == [True, True, False, False]
    assert xtc_mask(logits, 0.15, _guard(4, [3])).tolist() == [True, True, False, False]


def test_eos_per_row_and_guard_on_per_row() -> None:
    logits = _logits([0.4, 0.3, 0.2, 0.1]).repeat(3, 1)
    out = logits.clone()
    eos = torch.tensor([0, 0, 3])
    on = torch.tensor([True, False, True])
    xtc_apply(out, torch.full((3,), 0.15), torch.ones(3, dtype=torch.bool), 7, None, eos, on)
    assert torch.equal(out[0], logits[0])  # its EOS (0) would go: nothing goes
    assert torch.isinf(out[1, :2]).all()  # same EOS, guard off for this row
    assert torch.isinf(out[2, :2]).all()  # its EOS (3) stays anyway


# ---- the candidates (no topk over the vocabulary) equal the reference -------------

def _check_rows(logits, thresholds, act, guard_ids=()):
    from reference import xtc_remove

    vocab = logits.shape[1]
    out = logits.clone()
    guard = _guard(vocab, guard_ids) if guard_ids else None
    xtc_apply(out, thresholds, act, top_k_for(float(thresholds.min()), vocab), guard)
    for r in range(logits.shape[0]):
        want = xtc_remove(logits[r], float(thresholds[r]), guard_ids) if act[r] else logits[r]
        assert torch.equal(out[r], want), r
    return out


def test_large_vocabulary_takes_the_group_path_and_equals_the_reference() -> None:
    """A vocabulary wide enough for the strided groups (not a multiple of their
    size), the top tokens of a row in one group, in many groups and in the
    last columns, ties, and the smallest threshold (1001 candidate groups)."""
    from vllm_plugin_samplers.xtc import GROUP, candidates

    g = torch.Generator().manual_seed(3)
    vocab = 70_007
    logits = torch.randn(8, vocab, generator=g)
    width = vocab // GROUP
    logits[0, [5, 5 + width, 5 + 2 * width]] = torch.tensor([14.0, 13.5, 13.0])  # one group
    logits[1, [1, 2, 3, 4]] = 14.0  # ties across groups
    logits[2, [vocab - 1, vocab - 2, 7]] = torch.tensor([14.0, 13.8, 13.7])  # the last columns
    logits[3, :] = float("-inf")
    logits[3, [10, 20, 30]] = 0.0
    logits[4] = torch.randn(vocab, generator=g) * 0.01  # flat: nothing reaches 0.001
    logits[5, torch.arange(0, vocab, 97)] += 8.0  # many tokens near 0.001
    assert candidates(logits, 12).shape[1] < vocab  # the group path, not every column
    thresholds = torch.tensor([0.1, 0.2, 0.1, 0.3, 0.001, 0.001, 0.05, 0.5])
    act = torch.ones(8, dtype=torch.bool)
    out = _check_rows(logits, thresholds, act)
    assert int(torch.isinf(out[:3]).sum()) == 2 + 3 + 2


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_xtc_apply_equals_the_reference(data) -> None:
    """Random rows (ties, -inf, peaked and flat), per-row thresholds, coins and
    guard sets, through the full-row path and the group path."""
    rows = data.draw(st.integers(1, 5))
    vocab = data.draw(st.sampled_from([2, 7, 40, 700, 5000]))
    seed = data.draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    scale = data.draw(st.sampled_from([0.1, 1.0, 4.0, 12.0]))
    logits = torch.randn(rows, vocab, generator=g) * scale
    if data.draw(st.booleans()):
        logits = logits.round()  # ties
    if data.draw(st.booleans()):
        logits[:, : vocab // 3] = float("-inf")
    thresholds = torch.tensor(data.draw(st.lists(st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0]),
                                                 min_size=rows, max_size=rows)))
    act = torch.tensor(data.draw(st.lists(st.booleans(), min_size=rows, max_size=rows)))
    guard_ids = data.draw(st.lists(st.integers(0, vocab - 1), max_size=3))
    _check_rows(logits, thresholds, act, tuple(guard_ids))
