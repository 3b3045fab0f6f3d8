"""XTC rows of one step run in groups of similar ``k`` (each with its own
candidates): a row's cost follows its own ``xtc_threshold``, not the smallest
threshold of the step; and a step's admissions are one upload, whatever
their number. Through the processor's V1 and V2 paths, against the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_runner_interfaces import Cfg, _no_sync_mode, _ops, _to_meta, needs_v1, sp, v2_ctx, v2_state

from vllm_plugin_core import compat
from vllm_plugin_samplers.processors import XtcLogitsProcessor

#: Wide enough for the candidate groups at threshold 0.001 (vocab // 16 > 4 * 1001).
WIDE = 70_000


def _logits(rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * torch.rand(rows, 1, generator=g) * 4
    logits[:, :40] += torch.rand(rows, 40, generator=g) * 12  # peaked rows: several tokens above thresholds
    return logits


def _v2(thresholds, logits, order=None, spec=0):
    """A V2 XTC processor with one request per threshold (None: no XTC) and
    its step on ``logits``: the requests in ``order`` (default: slot order),
    ``1 + spec`` rows each."""
    v2 = compat.v2_logits_interface()
    n = len(thresholds)

    class C(Cfg):
        class speculative_config:
            num_speculative_tokens = spec

    proc = XtcLogitsProcessor(C, v2_state(v2, torch.zeros(n, 8, dtype=torch.long), [2] * n, [2] * n))
    for s, t in enumerate(thresholds):
        proc.add_request(s, sp() if t is None else sp(xtc_threshold=t, xtc_probability=1.0))
    proc.apply_staged_writes()
    order = list(range(n)) if order is None else order
    slots = [s for s in order for _ in range(spec + 1)]
    local = [j for _ in order for j in range(spec + 1)]
    ctx = v2_ctx(v2, slots, local, [1] * len(slots), [2 + j for j in local], [3 + spec] * n)
    return proc, lambda: proc.apply(logits, ctx)


def _v1(thresholds, logits):
    BatchUpdate, _ = compat.batch_update_types()
    proc = XtcLogitsProcessor(Cfg, torch.device("cpu"), False)
    proc.update_state(BatchUpdate(batch_size=len(thresholds), removed=[], moved=[], added=[
        (s, sp(xtc_threshold=t, xtc_probability=1.0), [1, 2], []) for s, t in enumerate(thresholds)]))
    return proc, lambda: proc.apply(logits)


_INDEXED = {"scatter_", "scatter_add_", "index_put_", "index_copy_", "index_add_"}


def _elements(fn) -> int:
    """Elements every tensor op ``fn`` runs produces or writes (``out=`` included; counted, not timed)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    total = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.is_view:  # a view (slice, select, as_strided) moves no data
                return out
            if func._schema.is_mutable:  # what it wrote: out=, an indexed write's values, or the whole tensor
                name = func.overloadpacket.__name__
                written = (kwargs or {}).get("out", args[1:] if name in _INDEXED else args[0])
            else:
                written = out
            for t in written if isinstance(written, tuple | list) else (written,):
                if isinstance(t, torch.Tensor):
                    total[0] += t.numel()
            return out

    with Count():
        fn()
    return total[0]


def _counted(make, thresholds, logits):
    """(elements a step writes, logits after it); a first step grows the
    processor's buffers (the guard mask, the exp sum's chunk) uncounted."""
    out = logits.clone()
    proc, step = make(thresholds, out)
    step()
    out.copy_(logits)
    n = _elements(step)
    assert not proc.failures
    return n, out


@pytest.mark.parametrize("make", [pytest.param(_v1, marks=needs_v1), _v2], ids=["v1", "v2"])
def test_a_low_threshold_row_costs_its_own_k_only(make, digits_tokenizer):
    """One row at threshold 0.001 (k = 1001) beside 63 at 0.1 (k = 11): the
    step writes about what the 63 rows alone and the one row alone write (the
    old step ran every row with k = 1001: 1.9x), and gives the same logits."""
    logits = _logits(64, WIDE)
    low = [0.1] * 64
    low[5] = 0.001
    mixed, got = _counted(make, low, logits)
    many, got_many = _counted(make, [0.1] * 63, torch.cat([logits[:5], logits[6:]]))
    one, got_one = _counted(make, [0.001], logits[5:6])
    assert mixed <= 1.3 * (many + one), (mixed, many, one)
    assert torch.equal(got, torch.cat([got_many[:5], got_one, got_many[5:]]))
    assert torch.isinf(got).any(1).sum() > 32  # XTC acted on most rows


def _reference(logits, thresholds):
    from reference import xtc_remove

    return torch.stack([row if t is None else xtc_remove(row, t) for row, t in zip(logits, thresholds, strict=True)])


#: vocab 5000 (width 312): 0.1 (k 11) and 0.3 share band 0, 0.02 (k 51) band 1,
#: 0.005 (k 201) and 0.001 take every column.
THRESHOLDS = [None, 0.001, 0.005, 0.02, 0.1, 0.3]


@settings(max_examples=12, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_v2_groups_equal_the_reference(data, seed):
    """Rows of several groups (and rows without XTC between them), in any
    batch order, with draft rows or without, each exactly the brute-force
    reference for its own threshold."""
    import vllm_plugin_samplers.processors as mod
    from vllm_plugin_samplers.breakers import Resolver

    picks = data.draw(st.lists(st.sampled_from(THRESHOLDS), min_size=1, max_size=6))
    order = data.draw(st.permutations(range(len(picks))))
    spec = data.draw(st.sampled_from([0, 1]))
    rows = [picks[s] for s in order for _ in range(spec + 1)]
    real = mod.make_resolver
    mod.make_resolver = lambda cfg: Resolver([str(i) for i in range(16)])
    try:
        logits = _logits(len(rows), 5000, seed)
        out = logits.clone()
        proc, step = _v2(picks, out, order, spec)
        step()
    finally:
        mod.make_resolver = real
    assert not proc.failures
    assert torch.equal(out, _reference(logits, rows))


@pytest.mark.parametrize("spec", [0, 2])
def test_v2_groups_have_no_host_sync(spec, digits_tokenizer):
    """Three groups and a row without XTC, every tensor on the meta device,
    under the dispatch mode that fails on any host sync."""
    import dataclasses

    v2 = compat.v2_logits_interface()

    class C(Cfg):
        class speculative_config:
            num_speculative_tokens = spec

    req_states = v2_state(v2, torch.zeros(4, 16, dtype=torch.long), [3, 5, 8, 2], [3, 5, 8, 2])
    req_states = dataclasses.replace(req_states, device=torch.device("meta"))
    _to_meta(req_states)
    proc = XtcLogitsProcessor(C, req_states)
    for slot, t in ((0, 0.1), (2, 0.001), (3, 0.02)):
        proc.add_request(slot, sp(xtc_threshold=t, xtc_probability=0.5))
    proc.add_request(1, sp())
    proc.apply_staged_writes()
    rows = [s for s in (2, 0, 1, 3) for _ in range(spec + 1)]
    local = [j for _ in (2, 0, 1, 3) for j in range(spec + 1)]
    ctx = v2_ctx(v2, rows, local, [1] * len(rows), [10 + j for j in local], [12, 12, 12, 12])
    ctx = dataclasses.replace(ctx, **{f.name: getattr(ctx, f.name).to("meta") for f in dataclasses.fields(ctx)
                                      if isinstance(getattr(ctx, f.name), torch.Tensor)})
    logits = torch.empty(len(rows), WIDE, device="meta")
    with _no_sync_mode():
        for _ in range(2):
            proc.apply(logits, ctx)
    assert not proc.failures  # a sync caught by the mode is contained inside apply: fail here


@needs_v1
def test_v1_groups_equal_the_reference(digits_tokenizer):
    picks = [0.1, 0.001, 0.02, 0.3, 0.005, 0.1, 0.02]
    logits = _logits(len(picks), 5000, 1)
    out = logits.clone()
    proc, step = _v1(picks, out)
    step()
    assert not proc.failures
    assert torch.equal(out, _reference(logits, picks))
    assert torch.isinf(out).any(1).sum() >= 5


def test_v2_admitting_many_requests_is_a_fixed_number_of_ops(digits_tokenizer):
    """A step admitting 21 XTC requests runs as many tensor operations as one
    admitting 3 (their settings in one upload), and each gets its settings."""
    v2 = compat.v2_logits_interface()

    def admit(n):
        proc = XtcLogitsProcessor(Cfg, v2_state(v2, torch.zeros(24, 8, dtype=torch.long), [2] * 24, [2] * 24))
        for s in range(n):
            proc.add_request(s, sp(xtc_probability=0.5 + s / 100, xtc_threshold=0.01 * (s + 1),
                                   xtc_eos_newline_guard=s % 2 == 0))
        return proc, _ops(proc.apply_staged_writes)

    (_, ops_few), (many, ops_many) = admit(3), admit(21)
    assert ops_many == ops_few, (ops_few, ops_many)
    for s in range(21):
        assert many.probability[s] == 0.5 + s / 100 and many.threshold[s] == 0.01 * (s + 1)
        assert many.seed[s] == 3 and bool(many.guard_on[s]) == (s % 2 == 0) and many.eos[s] == -1
    assert many.active[:21].all() and not many.active[21:].any()


@needs_v1
def test_v1_admitting_many_requests_is_a_fixed_number_of_ops(digits_tokenizer):
    BatchUpdate, _ = compat.batch_update_types()

    def admit(n):
        proc = XtcLogitsProcessor(Cfg, torch.device("cpu"), False)
        update = BatchUpdate(batch_size=n, removed=[], moved=[], added=[
            (s, sp(xtc_probability=1.0, xtc_threshold=0.01 * (s + 1)), [1, 2], []) for s in range(n)])
        return proc, _ops(lambda: proc.update_state(update))

    (_, ops_few), (many, ops_many) = admit(3), admit(21)
    assert ops_many == ops_few, (ops_few, ops_many)
    assert sorted(many.rows) == list(range(21)) and many.active[:21].all() and not many.failures
    assert [round(float(t), 4) for t in many.threshold[:21]] == [round(0.01 * (s + 1), 4) for s in range(21)]
