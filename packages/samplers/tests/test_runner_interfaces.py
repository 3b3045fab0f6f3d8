"""The processors' batch bookkeeping with vLLM's own interface types, no engine:
V1 ``update_state`` (removed, then added, then moved, in vLLM's order) and, where
this vLLM has it (0.31+), the V2 runner's ``add_request``/``apply(logits, ctx)``.
The V2 runner itself only runs on CUDA builds; GitHub CI runs it for real."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vllm_plugin_core import compat
from vllm_plugin_samplers.processors import (
    DryLogitsProcessor,
    NoRepeatNgramLogitsProcessor,
    XtcLogitsProcessor,
)

VOCAB = 16

#: V1 model-runner tests: vLLM 0.34 removed that runner (they run on 0.31 to 0.33).
needs_v1 = pytest.mark.skipif(compat.v1_logits_interface() is None, reason="vLLM 0.34+ has no V1 model runner; "
                              "this V1 test runs in the sessions of vLLM 0.31 to 0.33")


def sp(**extra):
    from vllm import SamplingParams

    return SamplingParams(extra_args=extra or None, seed=3)


def v1(cls):
    return cls(None, torch.device("cpu"), False)


def banned_rows(logits):
    return [sorted(torch.nonzero(torch.isinf(row)).flatten().tolist()) for row in logits]


@needs_v1
def test_v1_untouched_without_active_requests():
    BatchUpdate, _ = compat.batch_update_types()
    proc = v1(NoRepeatNgramLogitsProcessor)
    proc.update_state(BatchUpdate(batch_size=2, removed=[], added=[(0, sp(), [1, 2], []), (1, sp(), [3], [])],
                                  moved=[]))
    logits = torch.randn(2, VOCAB)
    out = proc.apply(logits)
    assert out is logits and not torch.isinf(out).any()


@needs_v1
def test_v1_added_removed_moved_in_vllms_order():
    BatchUpdate, Move = compat.batch_update_types()
    proc = v1(NoRepeatNgramLogitsProcessor)
    out_a, out_b, out_c = [4], [5], [6]
    proc.update_state(BatchUpdate(batch_size=3, removed=[], moved=[], added=[
        (0, sp(no_repeat_ngram_size=1), [1, 2], out_a),
        (1, sp(), [3], out_b),
        (2, sp(no_repeat_ngram_size=1), [7], out_c),
    ]))
    assert banned_rows(proc.apply(torch.zeros(3, VOCAB))) == [[1, 2, 4], [], [6, 7]]
    out_a.append(9)  # the live output list grows between steps
    assert banned_rows(proc.apply(torch.zeros(3, VOCAB)))[0] == [1, 2, 4, 9]
    # Request 1 leaves; request 2 moves into its slot; a new request takes slot 2.
    proc.update_state(BatchUpdate(batch_size=3, removed=[1], added=[(2, sp(no_repeat_ngram_size=1), [11], [])],
                                  moved=[(2, 1, Move.UNIDIRECTIONAL)]))
    # removed first, then added (slot 2 <- new request), then moved (2 -> 1): the
    # new request's state moves to 1, slot 2 becomes empty.
    assert banned_rows(proc.apply(torch.zeros(3, VOCAB))) == [[1, 2, 4, 9], [11], []]
    proc.update_state(BatchUpdate(batch_size=3, removed=[], added=[(2, sp(no_repeat_ngram_size=1), [12], [])],
                                  moved=[(0, 2, Move.SWAP)]))
    assert banned_rows(proc.apply(torch.zeros(3, VOCAB))) == [[12], [11], [1, 2, 4, 9]]


@needs_v1
def test_v1_request_replaced_by_one_without_arguments():
    BatchUpdate, _ = compat.batch_update_types()
    proc = v1(NoRepeatNgramLogitsProcessor)
    proc.update_state(BatchUpdate(batch_size=1, removed=[], moved=[],
                                  added=[(0, sp(no_repeat_ngram_size=1), [1], [])]))
    proc.update_state(BatchUpdate(batch_size=1, removed=[], moved=[], added=[(0, sp(), [1], [])]))
    logits = torch.zeros(1, VOCAB)
    assert proc.apply(logits) is logits and not torch.isinf(logits).any()


def v2_state(v2, tokens: torch.Tensor, prompt_len: list[int], prefill_len: list[int]):
    """vLLM's own ``LogitsProcRequestState`` over plain CPU buffers with the
    ``.gpu`` / ``.np`` views the runner's staging buffers give processors (the
    buffers themselves need a CUDA device from 0.34 on)."""
    import numpy as np

    def buf(values):
        t = torch.as_tensor(values, dtype=torch.int32).clone()
        return SimpleNamespace(gpu=t, np=t.numpy())

    slots = tokens.shape[0]
    ids = SimpleNamespace(gpu=tokens.to(torch.int32).clone())
    return v2.LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=slots, vocab_size=VOCAB,
                                     all_token_ids=ids, prompt_len=buf(np.asarray(prompt_len)),
                                     prefill_len=buf(np.asarray(prefill_len)), total_len=buf(np.asarray(prefill_len)))


def v2_ctx(v2, slots, local, input_ids, pos, upper):
    import numpy as np

    reqs = sorted(set(slots), key=slots.index)
    return v2.LogitsContext(
        expanded_idx_mapping=torch.tensor(slots, dtype=torch.int32), idx_mapping=torch.tensor(reqs, dtype=torch.int32),
        idx_mapping_np=np.array(reqs, dtype=np.int32), expanded_local_pos=torch.tensor(local, dtype=torch.int32),
        input_ids=torch.tensor(input_ids, dtype=torch.int32), pos=torch.tensor(pos, dtype=torch.int64),
        seq_lens_upper_bound_np=np.array(upper, dtype=np.int32))


class Cfg:
    """The parts of VllmConfig the processors read."""

    speculative_config = None

    class model_config:
        tokenizer = "unused"
        trust_remote_code = False
        seed = 0

        @staticmethod
        def get_vocab_size():
            return VOCAB


ARGS = {NoRepeatNgramLogitsProcessor: {"no_repeat_ngram_size": 2},
        DryLogitsProcessor: {"dry_multiplier": 1.0, "dry_allowed_length": 1},
        XtcLogitsProcessor: {"xtc_threshold": 0.01, "xtc_probability": 1.0}}


@pytest.mark.parametrize("cls", [NoRepeatNgramLogitsProcessor, DryLogitsProcessor, XtcLogitsProcessor])
def test_v2_interface(cls, digits_tokenizer):
    v2 = compat.v2_logits_interface()
    assert issubclass(cls, v2.LogitsProcessor)
    tokens = torch.zeros(4, 32, dtype=torch.long)
    tokens[2, :5] = torch.tensor([1, 2, 3, 1, 2])
    req_states = v2_state(v2, tokens, [0, 0, 3, 0], [0, 0, 5, 0])
    proc = cls(Cfg, req_states)
    assert proc.v2
    assert proc.add_request(2, sp(**ARGS[cls])) is True
    assert proc.add_request(1, sp()) is False
    proc.apply_staged_writes()
    # Row 0 is slot 1 (no arguments), row 1 is slot 2 at position 4 (5 tokens seen).
    ctx = v2_ctx(v2, [1, 2], [0, 0], [0, 2], [7, 4], [8, 5])
    logits = torch.randn(2, VOCAB)
    before = logits.clone()
    out = proc.apply(logits, ctx)
    assert torch.equal(out[0], before[0]), "a request without arguments is untouched"
    if cls is NoRepeatNgramLogitsProcessor:
        assert banned_rows(out[1:]) == [[3]]  # "1 2" was followed by 3 before
    elif cls is DryLogitsProcessor:
        # context 1 2 3 1 2: extending the repeat "1 2" (L=2) with 3 costs 1.75 ** 1
        assert torch.allclose(out[1, 3], before[1, 3] - 1.75)
    else:
        assert torch.isinf(out[1]).sum() >= 1
    # The slot is reused by a request without arguments: the shortcut returns at once.
    assert proc.add_request(2, sp()) is False
    proc.apply_staged_writes()
    logits = torch.randn(2, VOCAB)
    assert proc.apply(logits, ctx) is logits and not torch.isinf(logits).any()


def _expected(cls, context):
    from reference import dry_penalty, ngram_banned

    row = torch.zeros(VOCAB)
    if cls is NoRepeatNgramLogitsProcessor:
        row[sorted(ngram_banned(context, 2))] = float("-inf")
    else:
        for t, p in dry_penalty(context, 1.0, 1.75, 1, set()).items():
            row[t] -= p
    return row


@pytest.mark.parametrize("cls", [NoRepeatNgramLogitsProcessor, DryLogitsProcessor])
def test_v2_speculative_draft_rows(cls, digits_tokenizer):
    """Draft rows see committed + the drafts before them (ctx.input_ids), and
    drafts are never committed: the next step continues from what was accepted."""
    v2 = compat.v2_logits_interface()

    class Spec(Cfg):
        class speculative_config:
            num_speculative_tokens = 2

    committed = [1, 2, 3, 1, 2, 3, 4]
    tokens = torch.zeros(2, 32, dtype=torch.long)
    tokens[1, :5] = torch.tensor(committed[:5])
    req_states = v2_state(v2, tokens, [0, 5], [0, 5])
    proc = cls(Spec, req_states)
    assert proc.add_request(1, sp(**ARGS[cls])) and proc.num_spec == 2
    proc.apply_staged_writes()
    # Step 1: last committed token 2 at position 4, drafts 3 and 1 (rows 1, 2).
    ctx = v2_ctx(v2, [1, 1, 1], [0, 1, 2], [2, 3, 1], [4, 5, 6], [7])
    out = proc.apply(torch.zeros(3, VOCAB), ctx)
    for r, ctx_tokens in enumerate([committed[:5], [*committed[:5], 3], [*committed[:5], 3, 1]]):
        assert torch.allclose(out[r], _expected(cls, ctx_tokens)), r
    # Draft 3 accepted, 1 rejected, bonus token 4: committed is now 1 2 3 1 2 3 4.
    tokens[1, :7] = torch.tensor(committed)
    req_states.all_token_ids.gpu[:] = tokens
    ctx = v2_ctx(v2, [1, 1, 1], [0, 1, 2], [4, 1, 2], [6, 7, 8], [9])
    out = proc.apply(torch.zeros(3, VOCAB), ctx)
    for r, ctx_tokens in enumerate([committed, [*committed, 1], [*committed, 1, 2]]):
        assert torch.allclose(out[r], _expected(cls, ctx_tokens)), r


def _no_sync_mode():
    from torch.utils._python_dispatch import TorchDispatchMode

    syncing = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "item",
               "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave", "_assert_async"}

    class NoHostSync(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in syncing:
                raise AssertionError(f"host sync in the per-step path: {func}")
            if name.startswith("index") and any(
                    isinstance(a, torch.Tensor) and a.dtype == torch.bool
                    for a in (args[1] if len(args) > 1 and isinstance(args[1], list | tuple) else ())):
                raise AssertionError(f"boolean-mask indexing (a host sync) in the per-step path: {func}")
            return func(*args, **(kwargs or {}))

    return NoHostSync()


def _to_meta(req_states):
    """Device tensors on the meta device: any read back to the host fails."""
    for buf in (req_states.all_token_ids, req_states.prompt_len, req_states.prefill_len, req_states.total_len):
        buf.gpu = buf.gpu.to("meta")
    return req_states


@pytest.mark.parametrize("spec", [0, 2])
@pytest.mark.parametrize("cls", [NoRepeatNgramLogitsProcessor, DryLogitsProcessor, XtcLogitsProcessor])
def test_v2_apply_has_no_host_sync(cls, spec, digits_tokenizer):
    """apply(logits, ctx) under a dispatch mode that fails on any host-sync op,
    with every tensor on the meta device (a .tolist()/.numpy() would fail too)."""
    import dataclasses

    v2 = compat.v2_logits_interface()

    class C(Cfg):
        class speculative_config:
            num_speculative_tokens = spec

    tokens = torch.randint(0, VOCAB, (4, 64))
    req_states = v2_state(v2, tokens, [3, 5, 8, 2], [3, 5, 8, 2])
    req_states = dataclasses.replace(req_states, device=torch.device("meta"))
    _to_meta(req_states)
    proc = cls(C, req_states)
    for slot in (0, 2, 3):
        proc.add_request(slot, sp(**ARGS[cls]))
    proc.add_request(1, sp())
    proc.apply_staged_writes()
    rows = [s for s in (2, 0, 1, 3) for _ in range(spec + 1)]
    local = [j for _ in (2, 0, 1, 3) for j in range(spec + 1)]
    ctx = v2_ctx(v2, rows, local, [1] * len(rows), [10 + j for j in local], [12, 12, 12, 12])
    ctx = dataclasses.replace(ctx, **{f.name: getattr(ctx, f.name).to("meta") for f in dataclasses.fields(ctx)
                                      if isinstance(getattr(ctx, f.name), torch.Tensor)})
    logits = torch.empty(len(rows), VOCAB, device="meta")
    with _no_sync_mode():
        for _ in range(3):
            proc.apply(logits, ctx)
    assert not proc.failures  # a sync caught by the mode is contained inside apply: fail here


@needs_v1
@pytest.mark.parametrize("cls", [NoRepeatNgramLogitsProcessor, DryLogitsProcessor, XtcLogitsProcessor])
def test_v1_apply_has_no_device_sync(cls, digits_tokenizer):
    """V1: the only host work is reading vLLM's Python lists; no tensor is read back."""
    BatchUpdate, _ = compat.batch_update_types()
    proc = cls(Cfg, torch.device("meta"), False)
    outs = [[1, 2], [3], [4, 5, 6]]
    proc.update_state(BatchUpdate(batch_size=3, removed=[], moved=[], added=[
        (i, sp(**ARGS[cls]), [7, 8, 7], outs[i]) for i in range(3)]))
    logits = torch.empty(3, VOCAB, device="meta")
    with _no_sync_mode():
        for t in range(3):
            for o in outs:
                o.append(t)
            proc.update_state(None)
            proc.apply(logits)
    assert not proc.failures  # a sync caught by the mode is contained inside apply: fail here


def _dry_rows(extras, contexts):
    """Expected DRY logits rows (reference brute force) for each request's context."""
    from reference import dry_penalty

    rows = torch.zeros(len(contexts), VOCAB)
    for r, (extra, ctx_tokens) in enumerate(zip(extras, contexts, strict=True)):
        for t, p in dry_penalty(ctx_tokens, 1.0, 1.75, 1, set(), extra.get("dry_penalty_last_n", 0)).items():
            rows[r, t] -= p
    return rows


MIXED = [{"dry_multiplier": 1.0, "dry_allowed_length": 1},
         {"dry_multiplier": 1.0, "dry_allowed_length": 1, "dry_penalty_last_n": 6},
         {"dry_multiplier": 1.0, "dry_allowed_length": 1},
         {"dry_multiplier": 1.0, "dry_allowed_length": 1, "dry_penalty_last_n": 3}]


@needs_v1
def test_v1_mixed_windows_match_the_reference(digits_tokenizer):
    """Whole-context and dry_penalty_last_n rows in one batch (two passes over
    different bank columns) each get exactly the reference penalties, step after step."""
    import random

    BatchUpdate, _ = compat.batch_update_types()
    rng = random.Random(1)
    prompts = [[rng.randrange(4) for _ in range(rng.randrange(20, 90))] for _ in MIXED]
    outs = [[] for _ in MIXED]
    proc = DryLogitsProcessor(Cfg, torch.device("cpu"), False)
    proc.update_state(BatchUpdate(batch_size=4, removed=[], moved=[], added=[
        (i, sp(**e), prompts[i], outs[i]) for i, e in enumerate(MIXED)]))
    for _ in range(12):
        got = proc.apply(torch.zeros(4, VOCAB))
        want = _dry_rows(MIXED, [p + o for p, o in zip(prompts, outs, strict=True)])
        assert torch.allclose(got, want), (got, want)
        for o in outs:
            o.append(rng.randrange(4))
        proc.update_state(None)


def _elements(fn) -> int:
    """Elements every tensor op ``fn`` runs produces or writes (counted, not timed)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    total = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.is_view:  # a view (slice, select, as_strided) moves no data
                return out
            # An in-place op returns the whole tensor it wrote into: count what it wrote.
            written = args[1:] if func._schema.is_mutable else (out if isinstance(out, tuple | list) else (out,))
            for t in written:
                for u in t if isinstance(t, tuple | list) else (t,):
                    if isinstance(u, torch.Tensor):
                        total[0] += u.numel()
            return out

    with Count():
        fn()
    return total[0]


def v2_step(cls, extras, prefill: int | list[int], upper: list[int]):
    """A V2 processor with requests ``extras`` (None: no sampler) in slots 0..n-1,
    each with a ``prefill``-token context of period 2 (one length for all, or
    one per request), and one step where request s's length bound is
    ``upper[s]``; returns (processor, the step)."""
    v2 = compat.v2_logits_interface()
    n = len(extras)
    prefill = [prefill] * n if isinstance(prefill, int) else list(prefill)
    tokens = torch.tensor([[s % VOCAB, 3] * (max(prefill) // 2 + 4) for s in range(n)])
    proc = cls(Cfg, v2_state(v2, tokens, prefill, prefill))
    for s, e in enumerate(extras):
        proc.add_request(s, sp(**(e or {})))
    proc.apply_staged_writes()
    ctx = v2_ctx(v2, list(range(n)), [0] * n, [3] * n, [u - 1 for u in upper], upper)
    logits = torch.zeros(n, VOCAB)
    return proc, lambda: proc.apply(logits, ctx)


@needs_v1
def test_v1_windowed_rows_stay_bounded_beside_a_whole_context_row(digits_tokenizer):
    """Counted ops: 15 rows with dry_penalty_last_n 8 next to one whole-context
    row of 4000 tokens cost about what they cost alone, not 15 x 4000 columns."""
    BatchUpdate, _ = compat.batch_update_types()
    whole = {"dry_multiplier": 1.0}
    windowed = {"dry_multiplier": 1.0, "dry_penalty_last_n": 8}

    def step_cost(extras):
        n = len(extras)
        outs = [[] for _ in range(n)]
        proc = DryLogitsProcessor(Cfg, torch.device("cpu"), False)
        proc.update_state(BatchUpdate(batch_size=n, removed=[], moved=[], added=[
            (i, sp(**e), [i % VOCAB, 3] * 2000, outs[i]) for i, e in enumerate(extras)]))
        logits = torch.zeros(n, VOCAB)

        def step():
            for o in outs:
                o.append(5)
            proc.update_state(None)
            proc.apply(logits)
        step()
        return _elements(step)

    alone = step_cost([whole]) + step_cost([windowed] * 15)
    mixed = step_cost([whole] + [windowed] * 15)
    assert mixed <= 1.25 * alone, (mixed, alone)


def test_v2_mixed_windows_match_the_reference(digits_tokenizer):
    """The V2 split (whole-context rows, then windowed rows, found on the device
    by a stable sort) gives each row the reference penalties."""
    import random

    v2 = compat.v2_logits_interface()
    rng = random.Random(2)
    n = len(MIXED)
    contexts = [[rng.randrange(4) for _ in range(rng.randrange(20, 60))] for _ in MIXED]
    tokens = torch.zeros(n, 128, dtype=torch.long)
    for s, c in enumerate(contexts):
        tokens[s, :len(c)] = torch.tensor(c)
    lens = [len(c) for c in contexts]
    req_states = v2_state(v2, tokens, lens, lens)
    proc = DryLogitsProcessor(Cfg, req_states)
    for s, e in enumerate(MIXED):
        proc.add_request(s, sp(**e))
    proc.apply_staged_writes()
    order = [2, 1, 3, 0]  # rows in an order unlike the slots
    for _ in range(6):
        last = [contexts[s][-1] for s in order]
        ctx = v2_ctx(v2, order, [0] * n, last, [len(contexts[s]) - 1 for s in order],
                     [len(contexts[s]) for s in order])
        got = proc.apply(torch.zeros(n, VOCAB), ctx)
        want = _dry_rows([MIXED[s] for s in order], [contexts[s] for s in order])
        assert torch.allclose(got, want), (got, want)
        for s in range(n):  # the sampled token joins the history
            contexts[s].append(rng.randrange(4))
            tokens[s, len(contexts[s]) - 1] = contexts[s][-1]
        req_states.all_token_ids.gpu[:] = tokens


def test_v2_windowed_rows_stay_bounded_beside_a_whole_context_row(digits_tokenizer):
    """Counted ops, V2 interface: as on V1, the windowed rows' pass reads only their windows."""
    whole = {"dry_multiplier": 1.0}
    windowed = {"dry_multiplier": 1.0, "dry_penalty_last_n": 8}

    def step_cost(extras):
        _, step = v2_step(DryLogitsProcessor, extras, 4000, [4000] * len(extras))
        step()
        return _elements(step)

    alone = step_cost([whole]) + step_cost([windowed] * 15)
    mixed = step_cost([whole] + [windowed] * 15)
    assert mixed <= 1.25 * alone, (mixed, alone)


SUFFIX_CLASSES = [NoRepeatNgramLogitsProcessor, DryLogitsProcessor]


@needs_v1
@pytest.mark.parametrize("cls", SUFFIX_CLASSES)
def test_v1_short_whole_context_rows_stay_bounded_beside_a_long_one(cls, digits_tokenizer):
    """Counted ops: 15 whole-context rows of 100 tokens next to one of 4000
    cost about what the two groups cost alone (rows run in power-of-two bands
    of their own lengths), not 16 x 4000 columns (the old one whole-context
    pass: about 8x here)."""
    BatchUpdate, _ = compat.batch_update_types()

    def step_cost(lengths):
        n = len(lengths)
        outs = [[] for _ in range(n)]
        proc = cls(Cfg, torch.device("cpu"), False)
        proc.update_state(BatchUpdate(batch_size=n, removed=[], moved=[], added=[
            (i, sp(**ARGS[cls]), [i % VOCAB, 3] * (k // 2), outs[i]) for i, k in enumerate(lengths)]))
        logits = torch.zeros(n, VOCAB)

        def step():
            for o in outs:
                o.append(5)
            proc.update_state(None)
            proc.apply(logits)
        step()
        return _elements(step)

    alone = step_cost([4000]) + step_cost([100] * 15)
    mixed = step_cost([4000] + [100] * 15)
    assert mixed <= 1.25 * alone, (mixed, alone)


@pytest.mark.parametrize("cls", SUFFIX_CLASSES)
def test_v2_short_whole_context_rows_stay_bounded_beside_a_long_one(cls, digits_tokenizer):
    """Counted ops, V2 interface: as on V1 (the bands are found on the device
    by the stable sort)."""

    def step_cost(lengths):
        _, step = v2_step(cls, [ARGS[cls]] * len(lengths), lengths, [k + 1 for k in lengths])
        step()
        return _elements(step)

    alone = step_cost([4000]) + step_cost([100] * 15)
    mixed = step_cost([4000] + [100] * 15)
    assert mixed <= 1.25 * alone, (mixed, alone)


def test_v2_rows_of_every_band_match_the_reference(digits_tokenizer):
    """Whole-context rows of 5 to 300 tokens (bands 32 to 512) and windowed
    rows in one batch, in an order unlike the slots, step after step: each
    row gets the reference penalties, also as its band changes (the 126-token
    row moves from the 128-column band to the 256-column one)."""
    import random

    v2 = compat.v2_logits_interface()
    rng = random.Random(4)
    extras = [MIXED[0], MIXED[1], MIXED[0], MIXED[3], MIXED[0], MIXED[0]]
    n = len(extras)
    contexts = [[rng.randrange(4) for _ in range(k)] for k in (5, 80, 40, 200, 126, 300)]
    tokens = torch.zeros(n, 320, dtype=torch.long)
    for s, c in enumerate(contexts):
        tokens[s, :len(c)] = torch.tensor(c)
    lens = [len(c) for c in contexts]
    req_states = v2_state(v2, tokens, lens, lens)
    proc = DryLogitsProcessor(Cfg, req_states)
    for s, e in enumerate(extras):
        proc.add_request(s, sp(**e))
    proc.apply_staged_writes()
    order = [3, 5, 0, 2, 4, 1]
    for _ in range(5):
        ctx = v2_ctx(v2, order, [0] * n, [contexts[s][-1] for s in order], [len(contexts[s]) - 1 for s in order],
                     [len(contexts[s]) for s in order])
        assert len(proc.batch.column_groups(ctx.idx_mapping_np, proc.len_ub)) >= 4
        got = proc.apply(torch.zeros(n, VOCAB), ctx)
        want = _dry_rows([extras[s] for s in order], [contexts[s] for s in order])
        assert torch.allclose(got, want), (got, want)
        for s in range(n):
            contexts[s].append(rng.randrange(4))
            tokens[s, len(contexts[s]) - 1] = contexts[s][-1]
        req_states.all_token_ids.gpu[:] = tokens


@needs_v1
def test_v1_custom_breakers_come_resolved_from_the_front_end(digits_tokenizer, caplog):
    """The engine takes a custom set's table from extra_args (no resolution in
    the step); without one, or with a bad one, it resolves itself and says so once."""
    from vllm_plugin_samplers.breakers import WIRE_KEY

    BatchUpdate, _ = compat.batch_update_types()
    proc = DryLogitsProcessor(Cfg, torch.device("cpu"), False)
    calls = []
    real = proc.resolver
    proc.resolver = lambda breakers: (calls.append(tuple(breakers)), real(breakers))[1]
    dry = {"dry_multiplier": 1.0, "dry_allowed_length": 1, "dry_sequence_breakers": ["3"]}

    def penalty_on_3(extra):
        proc.update_state(BatchUpdate(batch_size=1, removed=[0], moved=[], added=[(0, sp(**extra), [1, 2, 3, 1, 2], [])]))
        return float(proc.apply(torch.zeros(1, VOCAB))[0, 3])

    # A table (valid, though not what "3" resolves to: 5 is the breaker) is used as sent.
    assert penalty_on_3({**dry, WIRE_KEY: {"breakers": ["3"], "single": [5], "tails": []}}) == -1.75
    assert calls == []
    with caplog.at_level("WARNING", logger="vllm.plugins.samplers"):
        assert penalty_on_3(dry) == 0.0  # resolved here: "3" is a breaker, never penalised
        assert penalty_on_3({**dry, WIRE_KEY: {"breakers": ["3"], "single": [99], "tails": []}}) == 0.0
    assert calls == [("3",), ("3",)]
    warnings = [r.getMessage() for r in caplog.records if "resolved inside the engine step" in r.getMessage()]
    assert len(warnings) == 1 and "sent no resolved table" in warnings[0], warnings


def test_v2_mixed_windows_with_draft_rows(digits_tokenizer):
    """Speculative steps split too: each draft row of a whole-context and of a
    windowed request gets the reference penalties for committed + earlier drafts."""
    v2 = compat.v2_logits_interface()

    class Spec(Cfg):
        class speculative_config:
            num_speculative_tokens = 2

    extras = [MIXED[0], MIXED[3]]  # whole context, last_n 3
    # Longer than the windowed pass's 22 columns: a whole-context row put in
    # that pass would lose its early repeats.
    contexts = [[5, 6, 7, 1, 2] + [4] * 30 + [5, 6, 7, 1, 2], [2, 1, 2, 1, 3, 2, 1, 2] * 5]
    tokens = torch.zeros(2, 64, dtype=torch.long)
    for s, c in enumerate(contexts):
        tokens[s, :len(c)] = torch.tensor(c)
    req_states = v2_state(v2, tokens, [40, 40], [40, 40])
    proc = DryLogitsProcessor(Spec, req_states)
    for s, e in enumerate(extras):
        proc.add_request(s, sp(**e))
    proc.apply_staged_writes()
    drafts = {0: [4, 4], 1: [1, 3]}  # "... 1 2" + 4 repeats the row's first six tokens
    order = [1, 0]
    rows = [s for s in order for _ in range(3)]
    local = [j for _ in order for j in range(3)]
    ids = [tok for s in order for tok in [contexts[s][-1], *drafts[s]]]
    ctx = v2_ctx(v2, rows, local, ids, [39 + j for j in local], [43, 43])
    got = proc.apply(torch.zeros(len(rows), VOCAB), ctx)
    want = _dry_rows([extras[s] for s in rows], [contexts[s] + drafts[s][:j] for s, j in zip(rows, local, strict=True)])
    assert torch.allclose(got, want), (got, want)


@pytest.mark.parametrize("spec", [0, 2])
def test_v2_mixed_windows_have_no_host_sync(spec, digits_tokenizer):
    """The two-pass split (stable sort on the device) syncs nothing either."""
    import dataclasses

    v2 = compat.v2_logits_interface()

    class C(Cfg):
        class speculative_config:
            num_speculative_tokens = spec

    req_states = v2_state(v2, torch.randint(0, VOCAB, (4, 64)), [30, 50, 40, 20], [30, 50, 40, 20])
    req_states = dataclasses.replace(req_states, device=torch.device("meta"))
    _to_meta(req_states)
    proc = DryLogitsProcessor(C, req_states)
    for slot, extra in enumerate(MIXED):
        proc.add_request(slot, sp(**extra))
    proc.apply_staged_writes()
    order = (2, 0, 1, 3)
    rows = [s for s in order for _ in range(spec + 1)]
    local = [j for _ in order for j in range(spec + 1)]
    ctx = v2_ctx(v2, rows, local, [1] * len(rows), [10 + j for j in local], [12, 12, 12, 12])
    ctx = dataclasses.replace(ctx, **{f.name: getattr(ctx, f.name).to("meta") for f in dataclasses.fields(ctx)
                                      if isinstance(getattr(ctx, f.name), torch.Tensor)})
    assert len(proc.batch.column_groups(ctx.idx_mapping_np, proc.len_ub)) == 2  # the split path runs
    logits = torch.empty(len(rows), VOCAB, device="meta")
    with _no_sync_mode():
        for _ in range(3):
            proc.apply(logits, ctx)
    assert not proc.failures  # a sync caught by the mode is contained inside apply: fail here


@pytest.mark.parametrize("cls", [NoRepeatNgramLogitsProcessor, DryLogitsProcessor])
def test_v2_a_finished_request_is_released_at_removal(cls, digits_tokenizer):
    """V2 gives processors no "request finished" callback; vLLM's runner frees
    the slot with its request state's remove_request. Called here as vLLM
    defines it (on a stand-in holding the same token history): the slot stops
    counting as active at once and the bank gives the long request's width
    back, without waiting for the slot to be reused; the short request still
    gets its penalties."""
    from vllm.v1.worker.gpu.states import RequestState

    v2 = compat.v2_logits_interface()
    tokens = torch.tensor([[1, 2, 3] * 6, [4, 5] * 9]).repeat(1, 230)
    tokens[0, 8:] = 0
    req_states = v2_state(v2, tokens, [8, 4000], [8, 4000])
    proc = cls(Cfg, req_states)
    extra = {"dry_sequence_breakers": ["9"], **ARGS[cls]} if cls is DryLogitsProcessor else ARGS[cls]
    for s in (0, 1):
        proc.add_request(s, sp(**extra))
    proc.apply_staged_writes()
    proc.apply(torch.zeros(2, VOCAB), v2_ctx(v2, [0, 1], [0, 0], [3, 5], [7, 3999], [8, 4000]))
    assert proc.batch.bank.width > 4000
    runner_state = SimpleNamespace(req_id_to_index={"a": 0, "b": 1}, index_to_req_id={0: "a", 1: "b"},
                                   free_indices=[], all_token_ids=req_states.all_token_ids)
    assert RequestState.remove_request(runner_state, "b") == 1
    assert runner_state.free_indices == [1]
    assert not proc.active_np[1] and not bool(proc.active[1]) and proc.len_ub[1] == 0
    assert proc.batch.bank.width == 256
    if cls is DryLogitsProcessor:
        assert proc.batch.set_np[1] == 0  # its breaker set no longer counts as used
    tokens[0, 8] = 3
    got = proc.apply(torch.zeros(1, VOCAB), v2_ctx(v2, [0], [0], [3], [8], [9]))
    assert torch.isinf(got[0, 1]) if cls is NoRepeatNgramLogitsProcessor else got[0, 1] < 0


def _ops(fn) -> int:
    """Tensor operations ``fn`` dispatches (views aside)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    count = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            count[0] += not func.is_view
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return count[0]


BATCH_ARGS = {NoRepeatNgramLogitsProcessor: [{"no_repeat_ngram_size": 2}, {"no_repeat_ngram_size": 3},
                                             {"no_repeat_ngram_size": 2, "no_repeat_ngram_window": 7}],
              DryLogitsProcessor: [{"dry_multiplier": 1.0, "dry_allowed_length": 1},
                                   {"dry_multiplier": 1.0, "dry_allowed_length": 2, "dry_penalty_last_n": 9},
                                   {"dry_multiplier": 1.0, "dry_allowed_length": 1, "dry_sequence_breakers": ["3"]}]}


def _expected_row(extra, ctx_tokens):
    row = torch.zeros(VOCAB)
    if "no_repeat_ngram_size" in extra:
        from reference import ngram_banned_window

        for t in ngram_banned_window(ctx_tokens, extra["no_repeat_ngram_size"], extra.get("no_repeat_ngram_window", 0)):
            row[t] = float("-inf")
        return row
    from reference import dry_penalty

    breakers = {3} if "dry_sequence_breakers" in extra else set()
    for t, p in dry_penalty(ctx_tokens, 1.0, 1.75, extra["dry_allowed_length"], breakers,
                            extra.get("dry_penalty_last_n", 0)).items():
        row[t] -= p
    return row


@pytest.mark.parametrize("cls", [NoRepeatNgramLogitsProcessor, DryLogitsProcessor])
def test_v2_admitting_many_requests_is_a_fixed_number_of_ops(cls, digits_tokenizer):
    """A step that admits many requests runs as many tensor operations as one
    that admits one (their contexts packed into one tensor, matched at once,
    scattered into the bank once), and every request then gets exactly what
    it gets when admitted alone, step by step, and the brute-force penalties."""
    import random

    v2 = compat.v2_logits_interface()
    rng = random.Random(7)
    n = 24
    contexts = [[rng.randrange(5) for _ in range(rng.randrange(3, 50))] for _ in range(n)]
    extras = [BATCH_ARGS[cls][s % 3] for s in range(n)]
    tokens = torch.zeros(n, 64, dtype=torch.long)
    for s, c in enumerate(contexts):
        tokens[s, :len(c)] = torch.tensor(c)
    lens = [len(c) for c in contexts]

    def processor():
        return cls(Cfg, v2_state(v2, tokens, lens, lens))

    def admit(proc, slots):
        for s in slots:
            proc.add_request(s, sp(**extras[s]))
        return lambda: proc.apply_staged_writes()

    together, alone = processor(), processor()
    admit(together, range(n))()
    for s in range(n):
        admit(alone, [s])()
    ctx = v2_ctx(v2, list(range(n)), [0] * n, [c[-1] for c in contexts], [x - 1 for x in lens], lens)
    got, want = together.apply(torch.zeros(n, VOCAB), ctx), alone.apply(torch.zeros(n, VOCAB), ctx)
    assert torch.equal(got, want)
    for s in range(n):
        assert torch.allclose(got[s], _expected_row(extras[s], contexts[s])), s
    # Counted: requests of one length (the binary search's rounds follow the longest match).
    same = [[1, 2, 3, 1, 2, 4] * 5 for _ in range(n)]
    for s, c in enumerate(same):
        tokens[s, :30] = torch.tensor(c)
    lens[:] = [30] * n
    one, many = processor(), processor()
    admit(one, [0, 1, 2])(), admit(many, [0, 1, 2])()  # each breaker set gets its tables once: not counted
    # One request of each kind (the rounds follow the largest cap) against 21.
    ops_one, ops_many = _ops(admit(one, [3, 4, 5])), _ops(admit(many, range(3, n)))
    assert ops_many == ops_one, (ops_one, ops_many)


def _bytes_allocated(fn) -> int:
    """Bytes of the new tensors ``fn``'s operations return (views and in-place writes allocate nothing)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    total = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func._schema.is_mutable and not func.is_view:
                for t in out if isinstance(out, tuple | list) else (out,):
                    if isinstance(t, torch.Tensor):
                        total[0] += t.numel() * t.element_size()
            return out

    with Count():
        fn()
    return total[0]


@pytest.mark.parametrize("spec", [0, 2])
@pytest.mark.parametrize("cls", [NoRepeatNgramLogitsProcessor, DryLogitsProcessor])
def test_v2_a_step_allocates_at_most_64_bytes_per_column(cls, spec, digits_tokenizer):
    """A step writes its [rows, columns] intermediates into reused step buffers:
    at most 64 B of new tensors per row per column of the rows' context (the
    old code allocated about 200 B: each append and penalty built new tensors)."""
    v2 = compat.v2_logits_interface()

    class C(Cfg):
        class speculative_config:
            num_speculative_tokens = spec

    n, rows = 2000, 3
    tokens = torch.randint(0, 6, (rows, 2100))
    proc = cls(C, v2_state(v2, tokens, [n] * rows, [n] * rows))
    for s in range(rows):
        proc.add_request(s, sp(**{**ARGS[cls], "no_repeat_ngram_whitelist": [2]} if s == 1 and
                               cls is NoRepeatNgramLogitsProcessor else ARGS[cls]))
    proc.apply_staged_writes()
    slots = [s for s in range(rows) for _ in range(spec + 1)]
    local = [j for _ in range(rows) for j in range(spec + 1)]
    ctx = v2_ctx(v2, slots, local, [1] * len(slots), [n - 1 + j for j in local], [n + spec] * rows)
    logits = torch.zeros(len(slots), VOCAB)
    proc.apply(logits, ctx)  # the step buffers grow once
    per_column = _bytes_allocated(lambda: proc.apply(logits, ctx)) / (len(slots) * (n + 1))
    assert per_column <= 64, per_column
    assert not proc.failures
