"""Property-based tests (hypothesis) of the processors' own code paths against
the brute-force references: random batches of unequal contexts, per-request
settings, requests without the sampler in between, padded (non-contiguous)
logits, several steps; through the V2 interface where this vLLM has it and
the V1 interface where it has that."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import dry_penalty, ngram_banned, ngram_banned_window
from test_runner_interfaces import VOCAB, Cfg, needs_v1, sp, v2_ctx, v2_state

from vllm_plugin_core import compat
from vllm_plugin_samplers.breakers import Resolver
from vllm_plugin_samplers.processors import DryLogitsProcessor, NoRepeatNgramLogitsProcessor

ALPHABET = 12


def _ngram_args(draw) -> dict | None:
    return draw(st.one_of(st.none(), st.builds(
        lambda n, w, white: {"no_repeat_ngram_size": n, "no_repeat_ngram_window": w,
                             "no_repeat_ngram_whitelist": white},
        st.integers(1, 4), st.sampled_from([0, 0, 3, 6, 25, 60]),
        st.lists(st.integers(0, ALPHABET - 1), max_size=2))))


def _dry_args(draw) -> dict | None:
    return draw(st.one_of(st.none(), st.builds(
        lambda m, b, a, w: {"dry_multiplier": m, "dry_base": b, "dry_allowed_length": a, "dry_penalty_last_n": w},
        st.sampled_from([0.5, 1.0, 2.0]), st.sampled_from([1.0, 1.75, 2.0]), st.integers(1, 3),
        st.sampled_from([0, -1, 3, 8, 30]))))


@st.composite
def _context(draw) -> list[int]:
    """Random tokens, or a block repeated with noise and a random tail: long
    repeats whose start lies far back (what a narrowed pass would miss)."""
    tok = st.integers(0, ALPHABET - 1)
    if draw(st.booleans()):
        return draw(st.lists(tok, min_size=1, max_size=90))
    block = draw(st.lists(tok, min_size=3, max_size=48) if draw(st.booleans()) else
                 st.lists(tok, min_size=32, max_size=48))  # longer than a windowed pass's columns
    reps = draw(st.integers(2, 3))
    noise = draw(st.lists(tok, max_size=4))
    return (block * reps + noise + block[: draw(st.integers(0, len(block)))])[:150]


@st.composite
def batches(draw, kind: str):
    n = draw(st.integers(1, 4))
    args = [(_ngram_args if kind == "ngram" else _dry_args)(draw) for _ in range(n)]
    contexts = [draw(_context()) for _ in range(n)]
    order = draw(st.permutations(range(n)))
    appended = [draw(st.lists(st.integers(0, ALPHABET - 1), min_size=2, max_size=2)) for _ in range(n)]
    return args, contexts, list(order), appended


def _expected(kind: str, extra: dict | None, context: list[int]) -> torch.Tensor:
    row = torch.zeros(VOCAB)
    if extra is None:
        return row
    if kind == "ngram":
        n, w, white = extra["no_repeat_ngram_size"], extra["no_repeat_ngram_window"], extra["no_repeat_ngram_whitelist"]
        banned = ngram_banned_window(context, n, w, white)
        if w == 0 and not white:  # the whole context: as transformers' NoRepeatNGramLogitsProcessor
            assert banned == ngram_banned(context, n)
        row[sorted(banned)] = float("-inf")
    else:
        last_n = max(extra["dry_penalty_last_n"], 0)
        for t, p in dry_penalty(context, extra["dry_multiplier"], extra["dry_base"], extra["dry_allowed_length"],
                                set(), last_n).items():
            row[t] -= p
    return row


def _padded(n: int) -> torch.Tensor:
    return torch.zeros(n, VOCAB + 5)[:, :VOCAB]


def _digits(monkeypatch):
    monkeypatch.setattr("vllm_plugin_samplers.processors.make_resolver",
                        lambda cfg: Resolver([str(i) for i in range(VOCAB)]))


CLS = {"ngram": NoRepeatNgramLogitsProcessor, "dry": DryLogitsProcessor}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("kind", ["ngram", "dry"])
@SETTINGS
@given(data=st.data())
def test_v2_steps_equal_the_brute_force(kind, data, monkeypatch):
    _digits(monkeypatch)
    args, contexts, order, appended = data.draw(batches(kind))
    contexts = [list(c) for c in contexts]
    v2 = compat.v2_logits_interface()
    n = len(args)
    tokens = torch.zeros(n, 160, dtype=torch.long)
    for s, c in enumerate(contexts):
        tokens[s, :len(c)] = torch.tensor(c)
    lens = [len(c) for c in contexts]
    req_states = v2_state(v2, tokens, lens, lens)
    proc = CLS[kind](Cfg, req_states)
    for s, e in enumerate(args):
        proc.add_request(s, sp(**(e or {})))
    proc.apply_staged_writes()
    for step in range(3):
        ctx = v2_ctx(v2, order, [0] * n, [contexts[s][-1] for s in order], [len(contexts[s]) - 1 for s in order],
                     [len(contexts[s]) for s in order])
        got = proc.apply(_padded(n), ctx)
        want = torch.stack([_expected(kind, args[s], contexts[s]) for s in order])
        assert torch.allclose(got, want, rtol=1e-5), (step, got, want)
        assert not proc.failures
        if step < 2:
            for s in range(n):  # the sampled token joins the history
                contexts[s].append(appended[s][step])
                tokens[s, len(contexts[s]) - 1] = contexts[s][-1]
            req_states.all_token_ids.gpu[:] = tokens.to(torch.int32)


@needs_v1
@pytest.mark.parametrize("kind", ["ngram", "dry"])
@SETTINGS
@given(data=st.data())
def test_v1_steps_equal_the_brute_force(kind, data, monkeypatch):
    _digits(monkeypatch)
    args, contexts, order, appended = data.draw(batches(kind))
    BatchUpdate, _ = compat.batch_update_types()
    n = len(args)
    proc = CLS[kind](Cfg, torch.device("cpu"), False)
    outs = [[] for _ in range(n)]
    # Row r holds request order[r]; the prompt is the context, outputs grow live.
    proc.update_state(BatchUpdate(batch_size=n, removed=[], moved=[], added=[
        (r, sp(**(args[s] or {})), list(contexts[s]), outs[s]) for r, s in enumerate(order)]))
    for step in range(3):
        got = proc.apply(_padded(n))
        want = torch.stack([_expected(kind, args[s], contexts[s] + outs[s]) for s in order])
        assert torch.allclose(got, want, rtol=1e-5), (step, got, want)
        assert not proc.failures
        if step < 2:
            for s in range(n):
                outs[s].append(appended[s][step])
            proc.update_state(None)


def test_properties_cover_unequal_lengths():
    """The strategy draws batches of unequal contexts (what the width and
    window bookkeeping must get right), not only equal ones."""
    from hypothesis import find

    found = find(batches("dry"), lambda b: len({len(c) for c in b[1]}) >= 3 and any(
        a and a["dry_penalty_last_n"] > 0 for a in b[0]) and None in b[0])
    assert len(found[0]) >= 3 and np.std([len(c) for c in found[1]]) > 0
