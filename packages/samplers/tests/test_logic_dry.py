"""DRY penalty logic."""

from __future__ import annotations

import math
import random

import pytest

from vllm_plugin_samplers.dry import breaker_token_ids, dry_penalties
from vllm_plugin_samplers.params import DryParams

A, B, C, D, E, X = 1, 2, 3, 4, 5, 9


def _ref(tokens, params: DryParams, breakers) -> dict[int, float]:
    """Brute force, O(n^2), after text-generation-webui's DRYLogitsProcessor."""
    if params.penalty_last_n > 0:
        tokens = tokens[-params.penalty_last_n :]
    tokens = list(tokens)
    if not tokens or tokens[-1] in breakers:
        return {}
    best: dict[int, int] = {}
    for i in range(len(tokens) - 1):
        if tokens[i] != tokens[-1]:
            continue
        nxt = tokens[i + 1]
        if nxt in breakers:
            continue
        length = 1
        while i - length >= 0:
            prev = tokens[-(length + 1)]
            if tokens[i - length] != prev or prev in breakers:
                break
            length += 1
        best[nxt] = max(best.get(nxt, 0), length)
    return {
        t: params.multiplier * params.base ** (n - params.allowed_length)
        for t, n in best.items()
        if n >= params.allowed_length
    }


def test_hand_worked() -> None:
    p = DryParams(multiplier=0.8, base=1.75, allowed_length=2)
    got = dry_penalties([A, B, C, D, A, B, C], p, frozenset())
    assert got == {D: pytest.approx(0.8 * 1.75 ** (3 - 2))}


def test_below_allowed_length() -> None:
    p = DryParams(multiplier=0.8, allowed_length=4)
    assert dry_penalties([A, B, C, D, A, B, C], p, frozenset()) == {}
    p3 = DryParams(multiplier=0.8, allowed_length=3)
    assert dry_penalties([A, B, C, D, A, B, C], p3, frozenset()) == {D: pytest.approx(0.8)}


def test_max_over_occurrences() -> None:
    p = DryParams(multiplier=1.0, base=2.0, allowed_length=1)
    # C follows "A B" (length 2 match with suffix "A B"), D follows "B" only (length 1).
    got = dry_penalties([A, B, C, X, B, D, E, A, B], p, frozenset())
    assert got == {C: pytest.approx(2.0), D: pytest.approx(1.0)}


def test_breaker_stops_match() -> None:
    p = DryParams(multiplier=1.0, base=2.0, allowed_length=2)
    # Without breakers the suffix "A X B C" matches length 4.
    tokens = [A, X, B, C, D, A, X, B, C]
    assert dry_penalties(tokens, p, frozenset()) == {D: pytest.approx(4.0)}
    # X in the middle of the suffix caps the match at "B C" (length 2).
    assert dry_penalties(tokens, p, frozenset({X})) == {D: pytest.approx(1.0)}
    # Breaker as last token: no penalty at all.
    assert dry_penalties([A, B, X, A, B, X], p, frozenset({X})) == {}
    # A breaker is never penalised itself.
    assert dry_penalties([A, B, X, A, B], p, frozenset({X})) == {}


def test_penalty_last_n_window() -> None:
    tokens = [A, B, C, D, E, E, E, X, A, B, C]
    whole = DryParams(multiplier=1.0, penalty_last_n=0)
    assert set(dry_penalties(tokens, whole, frozenset())) == {D}
    assert dry_penalties(tokens, DryParams(multiplier=1.0, penalty_last_n=-1), frozenset()) == (
        dry_penalties(tokens, whole, frozenset())
    )
    # The earlier "A B C" is outside the last 7 tokens.
    assert dry_penalties(tokens, DryParams(multiplier=1.0, penalty_last_n=7), frozenset()) == {}
    # Window of 10 keeps "B C D" but loses the A: match length 2.
    got = dry_penalties(tokens, DryParams(multiplier=1.0, penalty_last_n=10), frozenset())
    assert got == {D: pytest.approx(1.0)}


def test_overlapping_repeat() -> None:
    p = DryParams(multiplier=1.0, base=2.0, allowed_length=2)
    # "A A A A": suffix ending at index 2 matches length 3 -> next token A.
    assert dry_penalties([A, A, A, A], p, frozenset()) == {A: pytest.approx(2.0)}


def test_exponent_is_clamped() -> None:
    p = DryParams(multiplier=1.0, base=1.75, allowed_length=2)
    got = dry_penalties([A] * 5000, p, frozenset())
    max_exp = int(88.7228391 / math.log(1.75))
    assert got[A] == pytest.approx(1.75**max_exp)
    assert math.isfinite(got[A])


def test_zero_multiplier_and_short_context() -> None:
    assert dry_penalties([A, B, A, B], DryParams(multiplier=0.0), frozenset()) == {}
    assert dry_penalties([], DryParams(multiplier=1.0), frozenset()) == {}
    assert dry_penalties([A, A], DryParams(multiplier=1.0), frozenset()) == {}


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        vocab = rng.randint(1, 6)
        tokens = [rng.randrange(vocab) for _ in range(rng.randint(0, 60))]
        if rng.random() < 0.3 and len(tokens) > 4:  # inject a long repeat
            cut = rng.randrange(len(tokens) - 2)
            tokens += tokens[cut : cut + rng.randint(2, 20)]
        breakers = frozenset(rng.sample(range(vocab), rng.randint(0, min(2, vocab))))
        p = DryParams(
            multiplier=rng.choice([0.5, 1.0, 2.0]),
            base=rng.choice([1.1, 1.75, 3.0]),
            allowed_length=rng.randint(1, 4),
            penalty_last_n=rng.choice([0, -1, 5, 20, 100]),
        )
        got = dry_penalties(tokens, p, breakers)
        want = _ref(tokens, p, breakers)
        assert got.keys() == want.keys(), (tokens, p, breakers)
        for t in want:
            assert got[t] == pytest.approx(want[t]), (tokens, p, breakers)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for word in ["Ġhello", "Ċ", "ĊĊ", "a:", "Ġ*", "\"x", "world"]:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok), vocab


def test_breaker_token_ids() -> None:
    tokenizer, vocab = _tiny_tokenizer()
    ids = breaker_token_ids(["\n", ":", '"', "*"], tokenizer)
    for piece in ["Ċ", "ĊĊ", "a:", "Ġ*", "\"x", ":", '"', "*"]:
        assert vocab[piece] in ids, piece
    for piece in ["Ġhello", "world", "a", "Ġ"]:
        assert vocab[piece] not in ids, piece
    # Brute-force check over the whole vocab.
    want = {
        i
        for i in range(len(tokenizer))
        if any(
            b in tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(i)])
            for b in ["\n", ":", '"', "*"]
        )
    }
    assert ids == want
    assert breaker_token_ids([], tokenizer) == frozenset()


@pytest.mark.parametrize("period", [1, 2, 3, 7])
def test_matches_brute_force_periodic(period: int) -> None:
    rng = random.Random(period)
    for _ in range(20):
        unit = [rng.randrange(4) for _ in range(period)]
        tokens = (unit * (300 // period + 1))[:300]
        for _ in range(rng.randint(0, 3)):  # sprinkle noise
            tokens[rng.randrange(len(tokens))] = rng.randrange(4)
        breakers = frozenset(rng.sample(range(4), rng.randint(0, 1)))
        p = DryParams(multiplier=1.0, base=1.05, allowed_length=rng.randint(1, 3))
        got = dry_penalties(tokens, p, breakers)
        want = _ref(tokens, p, breakers)
        assert got.keys() == want.keys()
        for t in want:
            assert got[t] == pytest.approx(want[t])
