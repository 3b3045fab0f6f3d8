"""No-repeat n-gram logic, checked against transformers."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor

from vllm_plugin_samplers.ngram import NgramIndex, banned_tokens

VOCAB = 6


def _hf_banned(tokens: list[int], n: int) -> set[int]:
    proc = NoRepeatNGramLogitsProcessor(n)
    input_ids = torch.tensor([tokens], dtype=torch.long)
    scores = torch.zeros(1, VOCAB)
    out = proc(input_ids, scores)
    return set(torch.nonzero(torch.isinf(out[0])).flatten().tolist())


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_matches_transformers(n: int) -> None:
    rng = random.Random(1234 + n)
    for _ in range(150):
        length = rng.randint(1, 40)
        vocab = rng.randint(2, VOCAB)
        tokens = [rng.randrange(vocab) for _ in range(length)]
        got = banned_tokens(tokens, n)
        assert len(got) == len(set(got))
        assert set(got) == _hf_banned(tokens, n), (tokens, n)


def test_hand_examples() -> None:
    assert banned_tokens([1, 2, 3, 1, 2], 3) == [3]
    assert banned_tokens([1, 2, 3, 1, 2], 2) == [3]
    assert banned_tokens([1, 2, 3, 1, 4], 2) == []
    assert banned_tokens([1, 2, 1], 2) == [2]
    assert sorted(banned_tokens([4, 2, 4, 3], 1)) == [2, 3, 4]
    assert banned_tokens([], 1) == []
    assert banned_tokens([7], 3) == []  # len + 1 < n
    assert banned_tokens([7, 7], 3) == []
    assert banned_tokens([7, 7, 7], 3) == [7]


def test_invalid_n() -> None:
    with pytest.raises(ValueError):
        banned_tokens([1], 0)
    with pytest.raises(ValueError):
        NgramIndex(0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_index_matches_scratch_every_step(n: int) -> None:
    rng = random.Random(99 + n)
    for _ in range(20):
        vocab = rng.randint(2, 5)
        seq = [rng.randrange(vocab) for _ in range(rng.randint(0, 10))]
        index = NgramIndex(n, seq)  # prompt
        assert index.banned() == frozenset(banned_tokens(seq, n))
        for _ in range(60):
            new = [rng.randrange(vocab) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
            seq.extend(new)
            index.extend(new)
            assert len(index) == len(seq)
            assert index.banned() == frozenset(banned_tokens(seq, n)), (seq, n)


def test_banned_is_a_snapshot() -> None:
    index = NgramIndex(1, [1, 2])
    snap = index.banned()
    index.extend([3])
    assert snap == {1, 2}
    assert index.banned() == {1, 2, 3}
