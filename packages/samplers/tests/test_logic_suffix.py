"""The batched suffix-match engine: admission against brute force, and
multi-token sequence breakers as llama.cpp resolves and applies them."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from test_runner_interfaces import needs_v1

from vllm_plugin_samplers.breakers import Resolver, resolve_breakers
from vllm_plugin_samplers.params import DryParams
from vllm_plugin_samplers.penalties import DryBatch
from vllm_plugin_samplers.suffix import admit


def brute_match(tokens, cap):
    e = len(tokens) - 1
    out = []
    for i in range(e):
        n = 0
        while n < cap and i - n >= 0 and tokens[i - n] == tokens[e - n]:
            n += 1
        out.append(n)
    return [*out, 0] if tokens else []


@pytest.mark.parametrize("seed", range(6))
def test_admission_equals_brute_force(seed):
    rng = random.Random(seed)
    for _ in range(60):
        vocab = rng.choice([1, 2, 3, 7])
        tokens = [rng.randrange(vocab) for _ in range(rng.randrange(0, 80))]
        if len(tokens) > 8 and rng.random() < 0.5:
            tokens += tokens[: rng.randrange(1, len(tokens))]
        cap = rng.choice([1, 3, 10, 1000])
        got = admit(torch.tensor(tokens, dtype=torch.long), cap, cap).tolist()
        assert got == brute_match(tokens, cap), (tokens, cap)


def test_admission_single_repeated_token_32k():
    tokens = torch.full((32768,), 5)
    m = admit(tokens, 2**30, 2**30)
    assert m[:-1].tolist() == list(range(1, 32768))


# A vocabulary where "Alice:" is several tokens: "Al", "ice", ":" (and "ice:").
TEXTS = ["<pad>", "Al", "ice", ":", "ice:", "Bob", " said", "\n", "x", "y", "z", "Alice:"]
IDS = {t: i for i, t in enumerate(TEXTS)}


def encode(s: str) -> list[int]:
    out, i = [], 0
    while i < len(s):  # greedy longest match over TEXTS
        best = max((t for t in TEXTS[1:] if s.startswith(t, i)), key=len)
        out.append(IDS[best])
        i += len(best)
    return out


def test_resolution_as_llama_cpp():
    bs = resolve_breakers(["Alice:"], np.asarray(TEXTS), encode)
    assert bs.single == {IDS["Alice:"]}  # contains the whole string
    tails = dict(bs.tails)
    # "Al" ends with the prefix "Al": tail = tokenize("ice:") = ["ice:"]
    assert IDS["Al"] in tails[(IDS["ice:"],)]
    # "ice:" does not end with a proper prefix; "ice" neither ("A..." prefixes only).
    assert all(IDS["ice"] not in heads for heads in tails.values())
    # Without a tokenizer to split tails, only single tokens.
    assert resolve_breakers(["Alice:"], np.asarray(TEXTS), None).tails == ()


def ref_multi(tokens, mult, base, allowed, seqs):
    """llama.cpp-style: the repeat may not reach back across the end of the
    last complete breaker sequence (a tuple of ids)."""
    e = len(tokens) - 1
    limit = e + 1
    for end in range(e, -1, -1):
        if any(tuple(tokens[end - len(s) + 1: end + 1]) == s for s in seqs if end - len(s) + 1 >= 0):
            limit = e - end
            break
    best = {}
    for i in range(e):
        n = 0
        while n < limit and i - n >= 0 and tokens[i - n] == tokens[e - n]:
            n += 1
        if n >= allowed:
            best[tokens[i + 1]] = max(best.get(tokens[i + 1], 0), n)
    return {t: mult * base ** (n - allowed) for t, n in best.items()}


def test_multi_token_breaker_stops_the_match():
    """'Bob said Alice: x y z ... Bob said Alice: x y' with "Alice:" as a breaker:
    the repeat is only 'x y' (as llama.cpp), not the whole line."""
    resolver = Resolver(TEXTS, encode)
    bs = resolver(("Alice:",))
    p = DryParams(multiplier=1.0, base=2.0, allowed_length=1)
    line = [IDS["Bob"], IDS[" said"], IDS["Al"], IDS["ice:"], IDS["x"], IDS["y"], IDS["z"]]
    ctx = [*line, IDS["\n"], *line[:-1]]
    batch = DryBatch(2, torch.device("cpu"), len(TEXTS))
    batch.set_breakers(0, bs)
    batch.add(0, p, torch.tensor(ctx))
    logits = torch.zeros(2, len(TEXTS))
    batch.penalize(logits, torch.tensor([0]), torch.tensor([0]))
    want = ref_multi(ctx, 1.0, 2.0, 1, [(IDS["Al"], IDS["ice:"]), (IDS["Alice:"],)])
    assert want == {IDS["z"]: 2.0}  # 'x y' (L=2), not the 6-token repeat
    assert {i: -v for i, v in enumerate(logits[0].tolist()) if v} == want
    # Incrementally: appending the breaker's two tokens resets the match.
    batch.set_breakers(1, bs)
    batch.add(1, p, torch.tensor([*line[:2], IDS["\n"], *line[:2]]))
    assert int(batch.bank.match[1].max()) == 2
    for t in (IDS["Al"], IDS["ice:"]):
        batch.append_rows(torch.tensor([1]), torch.tensor([t]))
    assert int(batch.bank.match[1].max()) == 0


@pytest.mark.parametrize("seed", range(4))
def test_incremental_multi_token_breakers_equal_reference(seed):
    rng = random.Random(seed)
    resolver = Resolver(TEXTS, encode)
    bs = resolver(("Alice:", "\n"))
    seqs = [(IDS["Al"], IDS["ice:"]), (IDS["Alice:"],), (IDS["\n"],)]
    p = DryParams(multiplier=1.0, base=1.5, allowed_length=2)
    alphabet = [IDS[t] for t in ("Al", "ice:", "x", "y", "Bob", "\n")]
    ctx = [rng.choice(alphabet) for _ in range(20)]
    batch = DryBatch(1, torch.device("cpu"), len(TEXTS))
    batch.set_breakers(0, bs)
    batch.add(0, p, torch.tensor(ctx))
    for _ in range(40):
        logits = torch.zeros(1, len(TEXTS))
        batch.penalize(logits, torch.tensor([0]), torch.tensor([0]))
        want = ref_multi(ctx, 1.0, 1.5, 2, seqs)
        want = {t: v for t, v in want.items() if t not in bs.single}  # breakers are never penalised
        got = {i: -v for i, v in enumerate(logits[0].tolist()) if v}
        assert got == pytest.approx(want, rel=1e-5), ctx
        t = rng.choice(alphabet)
        ctx.append(t)
        batch.bank.ensure_width(len(ctx) + 1)
        batch.append_rows(torch.tensor([0]), torch.tensor([t]))


@needs_v1
def test_unseeded_xtc_seeds_identical_across_ranks():
    """Two processors built from the same config (two tensor-parallel ranks)
    give unseeded requests the same seeds."""
    from vllm import SamplingParams

    from vllm_plugin_core import compat
    from vllm_plugin_samplers.processors import XtcLogitsProcessor

    BatchUpdate, _ = compat.batch_update_types()
    seeds = []
    for _ in range(2):
        proc = XtcLogitsProcessor(None, torch.device("cpu"), False)
        proc.update_state(BatchUpdate(batch_size=3, removed=[], moved=[], added=[
            (i, SamplingParams(extra_args={"xtc_probability": 0.5}), [1], []) for i in range(3)]))
        seeds.append(proc.seed[:3].tolist())
    assert seeds[0] == seeds[1] and len(set(seeds[0])) == 3


def test_unloadable_tokenizer_is_a_clear_error_at_start(tmp_path):
    """DRY's processor loads the tokenizer when built (engine start), never in a step."""
    from vllm_plugin_samplers.breakers import load_resolver

    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="dry_sequence_breakers") as err:
        load_resolver(str(tmp_path), False, None)
    assert str(tmp_path) in str(err.value)


def test_distinct_breaker_sets_have_bounded_tables():
    """Hostile input: every request names new breakers; the device tables stay
    bounded by the slots in use, and a slot keeps its own set."""
    from vllm_plugin_samplers.breakers import BreakerSet

    batch = DryBatch(2, torch.device("cpu"), 50)
    batch.set_breakers(1, BreakerSet(frozenset({7})))
    for k in range(20):
        batch.set_breakers(0, BreakerSet(frozenset({10 + k})))
    # Unused sets are dropped once they are as many as the used ones (at least 8).
    assert len(batch._sets) <= 2 + 8 + 1 and batch.single.shape[0] <= 12
    assert batch.single[batch.set_idx[1], 7] and not batch.single[batch.set_idx[1], 29]
    assert batch.single[batch.set_idx[0], 29]
    resolver = Resolver([str(i) for i in range(50)])
    for k in range(300):
        resolver((f"{k}x",))
    assert len(resolver._cache) == Resolver.max_sets


def test_sets_of_requests_that_left_are_dropped():
    """Hostile review: finished requests' breaker sets (and their tails, walked
    every step) were kept until more sets than slots existed. A released slot
    no longer holds its set, and held sets stay within 8 + twice the live ones."""
    from vllm_plugin_samplers.breakers import BreakerSet

    batch = DryBatch(64, torch.device("cpu"), 50)
    batch.set_breakers(5, BreakerSet(frozenset({7})))
    for k in range(40):  # one request after another in slot 0, each with its own set
        batch.set_breakers(0, BreakerSet(frozenset({10 + k % 40})))
        batch.release(0)
    assert len(batch._sets) <= 8 + 2 * 1 + 1, len(batch._sets)
    assert batch.single[batch.set_idx[5], 7]  # the live request keeps its set


def test_wire_round_trip_gives_the_same_set():
    """What the front end sends (to_wire) is what the engine rebuilds (from_wire)."""
    from vllm_plugin_samplers.breakers import from_wire

    resolver = Resolver(TEXTS, encode)
    for breakers in (("Alice:",), ("Alice:", "\n", "x"), ()):
        wire = resolver.wire(breakers)
        assert resolver.wire(breakers) is wire  # cached per set
        assert from_wire(wire, breakers, len(TEXTS), 100) == resolver(breakers)


@pytest.mark.parametrize(("change", "problem"), [
    (lambda w: {**w, "breakers": ["other"]}, "not resolved for this request"),
    (lambda w: "not a dict", "not resolved for this request"),
    (lambda w: {**w, "single": [1, 99]}, r"integer token ids in \[0, 12\)"),
    (lambda w: {**w, "single": [-1]}, r"integer token ids in \[0, 12\)"),
    (lambda w: {**w, "single": [1.5]}, "integer token ids"),
    (lambda w: {**w, "single": [[1, 2], [3, 4]]}, "integer token ids"),
    (lambda w: {**w, "single": list(range(13))}, "at most 12 token ids"),
    (lambda w: {**w, "tails": [[[1]] * 2] * 5}, "at most 4"),
    (lambda w: {**w, "tails": [[[], [1]]]}, "1 to 20 token ids"),
    (lambda w: {**w, "tails": [[[1] * 21, [1]]]}, "at most 12 token ids|1 to 20 token ids"),
    (lambda w: {**w, "tails": [[1, 2, 3]]}, r"\[tail ids, head ids\] pair"),
    (lambda w: {**w, "tails": None}, "tails must be a list"),
    (lambda w: {**w, "tails": [[[1], list(range(12)) * 3]] * 4}, "at most 96 token ids in all, got 144"),
])
def test_wire_from_a_client_is_checked(change, problem):
    """A client can write the key itself: every bound is checked, with the problem named."""
    from vllm_plugin_samplers.breakers import from_wire

    wire = Resolver(TEXTS, encode).wire(("Alice:",))
    with pytest.raises(ValueError, match=problem):
        from_wire(change(wire), ("Alice:",), len(TEXTS), 4)


@pytest.mark.parametrize("seed", range(3))
def test_vocab_index_equals_a_scan(seed):
    """contains/ends_with by index give exactly what scans of every token give,
    for any query length (up to and past the longest token) and non-ASCII text."""
    from vllm_plugin_samplers.breakers import VocabIndex

    rng = random.Random(seed)
    alphabet = "ab:\n é中"
    texts = np.asarray(["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(400)],
                       dtype=str)
    index = VocabIndex(texts)
    for _ in range(200):
        q = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        assert index.ends_with(q).tolist() == np.flatnonzero(np.char.endswith(texts, q)).tolist(), q
        assert sorted(index.contains(q).tolist()) == np.flatnonzero(np.char.find(texts, q) >= 0).tolist(), q


def _random_set(rng, alphabet, tails, longest):
    from vllm_plugin_samplers.breakers import BreakerSet

    single = frozenset(rng.sample(alphabet, 1))
    seqs = {tuple(rng.choice(alphabet) for _ in range(rng.randrange(1, longest + 1))):
            frozenset(rng.sample(alphabet, rng.randrange(1, 4))) for _ in range(tails)}
    return BreakerSet(single, tuple(sorted(seqs.items())))


@pytest.mark.parametrize("seed", range(4))
def test_packed_tail_table_equals_reference_across_sets(seed):
    """Rows with different multi-token breaker sets (tails of 1 to 6 tokens,
    overlapping, several heads each), admitted together and then appended to,
    get the llama.cpp-style reference penalties at every step."""
    rng = random.Random(seed)
    alphabet = list(range(7))
    sets = [_random_set(rng, alphabet, rng.randrange(1, 6), 6) for _ in range(3)]
    p = DryParams(multiplier=1.0, base=1.5, allowed_length=1)
    rows = 3
    ctxs = [[rng.choice(alphabet) for _ in range(rng.randrange(1, 40))] for _ in range(rows)]
    batch = DryBatch(rows, torch.device("cpu"), 16)
    flat = torch.tensor([t for c in ctxs for t in c])
    starts = np.cumsum([0] + [len(c) for c in ctxs])[:-1]
    batch.admit_rows([(s, p, sets[s]) for s in range(rows)], [len(c) for c in ctxs], flat[None], np.zeros(rows),
                     starts)
    for _ in range(30):
        logits = torch.zeros(rows, 16)
        batch.penalize(logits, torch.arange(rows), torch.arange(rows))
        for s, c in enumerate(ctxs):
            seqs = [(t,) for t in sets[s].single] + [(h, *tail) for tail, heads in sets[s].tails for h in heads]
            want = {t: v for t, v in ref_multi(c, 1.0, 1.5, 1, seqs).items() if t not in sets[s].single}
            got = {i: -v for i, v in enumerate(logits[s].tolist()) if v}
            assert got == pytest.approx(want, rel=1e-5), (s, c, sets[s])
        new = [rng.choice(alphabet) for _ in range(rows)]
        for c, t in zip(ctxs, new, strict=True):
            c.append(t)
        batch.bank.ensure_width(max(len(c) for c in ctxs) + 1)
        batch.append_rows(torch.arange(rows), torch.tensor(new))


def test_a_step_with_many_breaker_tails_runs_the_ops_of_one():
    """32 worst-case breakers (32 x 39 tails of 20 tokens) cost a step the
    same tensor operations as one tail: one packed table, looked up with
    searchsorted, no loop over tails (the old step ran about 25 per tail)."""
    from test_runner_interfaces import _ops

    from vllm_plugin_samplers.breakers import MAX_TAIL, BreakerSet

    rng = random.Random(3)
    vocab = 5000
    p = DryParams(multiplier=1.0, base=1.75, allowed_length=2)

    def step_ops(bs):
        batch = DryBatch(4, torch.device("cpu"), vocab)
        for s in range(4):
            batch.set_breakers(s, bs)
            batch.add(s, p, torch.tensor([rng.randrange(50) for _ in range(300)]))
        batch.bank.ensure_width(302)
        logits = torch.zeros(4, vocab)

        def step():
            batch.append_rows(torch.arange(4), torch.tensor([1, 2, 3, 4]))
            batch.penalize(logits, torch.arange(4), torch.arange(4))
        step()
        return _ops(step)

    one = BreakerSet(frozenset({7}), (((5,) * MAX_TAIL, frozenset({9})),))
    worst = BreakerSet(frozenset({7}), tuple(sorted(
        (tuple(rng.randrange(vocab) for _ in range(MAX_TAIL)), frozenset(rng.randrange(vocab) for _ in range(50)))
        for _ in range(32 * 39))))
    assert step_ops(worst) == step_ops(one)


def test_a_table_listing_a_tail_twice_is_merged_and_the_tail_table_builds():
    """A table sent in extra_args without the front end (VLLM_PLUGINS leaving
    `samplers` out) may list one tail twice: its heads are merged, and the
    engine's packed tail table builds (it used to redraw hashes forever, a
    stalled engine)."""
    import torch

    from vllm_plugin_samplers.breakers import from_wire
    from vllm_plugin_samplers.penalties import TailTable

    wire = {"breakers": ["xy"], "single": [], "tails": [[[3], [1]], [[3], [2]], [[4, 3], [1]]]}
    got = from_wire(wire, ("xy",), 10, 8)
    assert got.tails == (((3,), frozenset({1, 2})), ((4, 3), frozenset({1})))
    table = TailTable.build([(0, (((3,), frozenset({1})), ((3,), frozenset({2}))))], 10, torch.device("cpu"))
    assert table is not None and table.keys.numel() == 2  # one tail (and the sentinel)


class _CountedTails(tuple):
    """A set's tails that count how many are walked in Python."""

    walked = [0]

    def __iter__(self):
        for item in tuple.__iter__(self):
            _CountedTails.walked[0] += 1
            yield item


def test_a_new_breaker_set_hashes_only_its_own_tails():
    """Each set's tails are hashed once, when the set comes; admitting a
    request with a 9th set walks that set's tails only, and the table packs
    the other eight from their cached hashes (the old build hashed every
    held set's tails again in Python: 9 x here, 491 ms with 32 worst-case
    sets held)."""
    from vllm_plugin_samplers.breakers import MAX_TAIL, BreakerSet

    rng = random.Random(5)
    vocab = 5000

    def new_set():
        return BreakerSet(frozenset({7}), _CountedTails(sorted(
            (tuple(rng.randrange(vocab) for _ in range(MAX_TAIL)), frozenset({rng.randrange(vocab)}))
            for _ in range(100))))

    batch = DryBatch(16, torch.device("cpu"), vocab)
    p = DryParams(multiplier=1.0)
    context = torch.tensor([rng.randrange(50) for _ in range(40)])
    for slot in range(8):
        batch.add(slot, p, context, new_set())
    ninth = new_set()
    before = _CountedTails.walked[0]
    batch.add(8, p, context, ninth)
    assert _CountedTails.walked[0] - before == len(ninth.tails) == 100
    table = batch._tail_table()
    assert table.keys.numel() == 9 * 100 + 1  # every held set's tails (and the sentinel)
    tail, heads = tuple.__getitem__(ninth.tails, 0)
    window = torch.tensor([[next(iter(heads)), *tail], [(next(iter(heads)) + 1) % vocab, *tail]])
    assert table.ends(window, torch.tensor([9, 9])).tolist() == [True, False]


def test_a_tail_hash_collision_redraws_the_bases_once_for_every_set(monkeypatch):
    """Two tails of one set that share hash1 under the owner's bases: the
    bases are drawn again and every held set is hashed again under them,
    once; lookups stay exact for all sets."""
    import vllm_plugin_samplers.penalties as pen
    from vllm_plugin_samplers.breakers import BreakerSet

    draws = []
    real = pen.draw_tail_bases

    def draw():
        draws.append(1)
        return (2**20, 3**12) if len(draws) == 1 else real()

    monkeypatch.setattr(pen, "draw_tail_bases", draw)
    vocab = 2**20 + 8
    batch = DryBatch(4, torch.device("cpu"), vocab)
    p = DryParams(multiplier=1.0)
    first = BreakerSet(frozenset(), (((4, 5), frozenset({6})),))
    # Reversed and + 1, with base 2**20: (2**20 + 1) + 1 * 2**20 == 1 + 2 * 2**20.
    colliding = BreakerSet(frozenset(), (((0, 2**20), frozenset({3})), ((1, 0), frozenset({2}))))
    context = torch.tensor([1, 2, 3])
    batch.add(0, p, context, first)
    assert len(draws) == 1
    batch.add(1, p, context, colliding)
    assert len(draws) == 2 and batch._tail_bases != (2**20, 3**12)
    table = batch._tail_table()
    windows = torch.tensor([[3, 0, 2**20], [2, 1, 0], [3, 1, 0], [2, 0, 2**20], [6, 4, 5], [6, 4, 5]])
    sets = torch.tensor([2, 2, 2, 2, 1, 2])
    assert table.ends(windows, sets).tolist() == [True, True, False, False, True, False]
