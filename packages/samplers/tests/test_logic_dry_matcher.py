"""The incremental, vectorised DryMatcher gives dry_penalties' result at every step."""

from __future__ import annotations

import random

import pytest

from vllm_plugin_samplers.dry import DryMatcher, dry_penalties
from vllm_plugin_samplers.params import DryParams


def as_dict(matcher: DryMatcher) -> dict[int, float]:
    ids, pens = matcher.penalties()
    return {int(i): float(p) for i, p in zip(ids.tolist(), pens.tolist(), strict=True)}


@pytest.mark.parametrize("seed", range(12))
def test_incremental_equals_reference(seed):
    rng = random.Random(seed)
    vocab = rng.choice([3, 5, 8])
    params = DryParams(multiplier=rng.choice([0.5, 1.0, 3.0]), base=rng.choice([1.5, 1.75, 2.0]),
                       allowed_length=rng.choice([1, 2, 3]), penalty_last_n=rng.choice([0, 0, 7, 20]))
    breakers = frozenset(rng.sample(range(vocab), k=rng.choice([0, 1])))
    prompt = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
    # Splice in a repeat so long matches happen.
    if len(prompt) > 6:
        prompt += prompt[:6]
    m = DryMatcher(params, breakers, prompt)
    seq = list(prompt)
    for _ in range(40):
        expected = {k: pytest.approx(v, rel=1e-5) for k, v in dry_penalties(seq, params, breakers).items()}
        assert as_dict(m) == expected, (seq, params, breakers)
        tok = rng.randrange(vocab)
        seq.append(tok)
        m.extend([tok])


def test_penalty_formula_on_worked_example():
    # A B C D A B C: extending "A B C" (L=3) with D costs multiplier * base ** (3 - 2).
    m = DryMatcher(DryParams(multiplier=0.8, base=1.75, allowed_length=2), frozenset(), [1, 2, 3, 4, 1, 2, 3])
    assert as_dict(m) == {4: pytest.approx(0.8 * 1.75)}
