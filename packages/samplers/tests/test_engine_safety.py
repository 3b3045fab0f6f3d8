"""Nothing a request sends, and no layout of the logits vLLM hands over, can
take the engine down: logits of any strides (a padded vocabulary is a column
slice), failures contained per request outside strict mode, and on V2 no
tensor built from Python data inside ``apply`` on a real (CPU) device."""

from __future__ import annotations

import logging
import random

import pytest
import torch
from test_runner_interfaces import (
    ARGS,
    MIXED,
    VOCAB,
    Cfg,
    _dry_rows,
    _elements,
    _no_sync_mode,
    needs_v1,
    sp,
    v2_ctx,
    v2_state,
    v2_step,
)

from vllm_plugin_core import compat
from vllm_plugin_samplers.penalties import flat_view
from vllm_plugin_samplers.processors import (
    DryLogitsProcessor,
    NoRepeatNgramLogitsProcessor,
    XtcLogitsProcessor,
)

CLASSES = [NoRepeatNgramLogitsProcessor, DryLogitsProcessor, XtcLogitsProcessor]


def _layout(values: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` laid out as ``how``; returns (logits view, the storage around it)."""
    n, v = values.shape
    if how == "contiguous":
        return values.clone(), values.clone()
    if how == "padded":  # vLLM's padded LM head: a column slice of [n, v + pad]
        base = torch.full((n, v + 7), 123.0)
        base[:, :v] = values
        return base[:, :v], base
    if how == "column_major":
        base = values.t().contiguous()
        return base.t(), base
    if how == "every_other_row":
        base = torch.full((2 * n, v + 3), 123.0)
        base[::2, :v] = values
        return base[::2, :v], base
    raise AssertionError(how)


LAYOUTS = ["padded", "column_major", "every_other_row"]


def _v1_step(cls, how: str):
    BatchUpdate, _ = compat.batch_update_types()
    proc = cls(Cfg, torch.device("cpu"), False)
    rng = random.Random(5)
    # Rows 1 and 3 use the sampler, rows 0 and 2 do not: not a prefix, so the
    # processors index rows (the path that broke on a padded vocabulary).
    added = [(r, sp(**ARGS[cls]) if r % 2 else sp(), [rng.randrange(4) for _ in range(9 + 5 * r)], [])
             for r in range(4)]
    proc.update_state(BatchUpdate(batch_size=4, removed=[], moved=[], added=added))
    values = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(1))
    logits, base = _layout(values, how)
    return proc, values, logits, base


@needs_v1
@pytest.mark.parametrize("how", LAYOUTS)
@pytest.mark.parametrize("cls", CLASSES)
def test_v1_logits_of_any_strides(cls, how, digits_tokenizer):
    want_proc, values, want, _ = _v1_step(cls, "contiguous")
    want_proc.apply(want)
    proc, _, logits, base = _v1_step(cls, how)
    before = base.clone()
    out = proc.apply(logits)
    assert out.data_ptr() == logits.data_ptr()
    assert torch.equal(out, want), how
    assert not proc.failures
    # Nothing outside the view was written (the padding columns, the skipped rows).
    outside = torch.ones_like(base, dtype=torch.bool)
    if how == "padded":
        outside[:, :VOCAB] = False
    elif how == "every_other_row":
        outside[::2, :VOCAB] = False
    else:
        outside[:] = False
    assert torch.equal(base[outside], before[outside])
    assert not torch.equal(out, values), "the sampler did something on rows 1 and 3"


@pytest.mark.parametrize("how", LAYOUTS)
def test_v2_split_passes_on_logits_of_any_strides(how, digits_tokenizer):
    """The V2 two-pass DRY split indexes rows: on a padded or strided logits
    tensor each row still gets the reference penalties, in place."""
    v2 = compat.v2_logits_interface()
    rng = random.Random(3)
    contexts = [[rng.randrange(4) for _ in range(rng.randrange(20, 60))] for _ in MIXED]
    tokens = torch.zeros(len(MIXED), 128, dtype=torch.long)
    for s, c in enumerate(contexts):
        tokens[s, :len(c)] = torch.tensor(c)
    lens = [len(c) for c in contexts]
    proc = DryLogitsProcessor(Cfg, v2_state(v2, tokens, lens, lens))
    for s, e in enumerate(MIXED):
        proc.add_request(s, sp(**e))
    proc.apply_staged_writes()
    order = [2, 1, 3, 0]
    ctx = v2_ctx(v2, order, [0] * 4, [contexts[s][-1] for s in order], [lens[s] - 1 for s in order],
                 [lens[s] for s in order])
    assert len(proc.batch.column_groups(ctx.idx_mapping_np, proc.len_ub)) == 2
    logits, _ = _layout(torch.zeros(4, VOCAB), how)
    out = proc.apply(logits, ctx)
    assert out.data_ptr() == logits.data_ptr() and not proc.failures
    want = _dry_rows([MIXED[s] for s in order], [contexts[s] for s in order])
    assert torch.allclose(out, want)


def test_flat_view_refuses_overlapping_strides():
    t = torch.zeros(3, 4)
    assert flat_view(t.expand(3, 4)) is not None
    assert flat_view(torch.zeros(4).expand(3, 4)) is None  # stride 0: rows share memory
    view, (s0, s1) = flat_view(torch.zeros(5, 9)[1:4, 2:6])
    assert (s0, s1) == (9, 1) and view.numel() == 2 * 9 + 3 + 1


@needs_v1
@pytest.mark.parametrize("cls", CLASSES)
def test_v1_a_failure_inside_the_engine_is_contained(cls, digits_tokenizer, monkeypatch, caplog):
    """Outside strict mode a processor that raises returns the logits, logs
    once, counts, and turns itself off for those requests only; later
    requests work. Under VLLM_PLUGIN_STRICT=1 the failure propagates."""
    monkeypatch.delenv("VLLM_PLUGIN_STRICT", raising=False)
    proc, values, logits, _ = _v1_step(cls, "contiguous")

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(proc, "_apply_v1", boom)
    with caplog.at_level(logging.ERROR, logger="vllm.plugins.samplers"):
        for _ in range(3):
            assert torch.equal(proc.apply(logits), values)
    logged = [r.getMessage() for r in caplog.records if "injected" in r.getMessage()]
    assert len(logged) == 1 and "slot(s) [1, 3]" in logged[0] and "VLLM_PLUGIN_STRICT" in logged[0], logged
    assert proc.failures == {"apply": 1} and not proc.rows  # off for rows 1 and 3; later steps cost nothing
    monkeypatch.undo()
    # An admission that fails leaves that request without the sampler, and the others with it.
    BatchUpdate, _ = compat.batch_update_types()
    # DRY and n-gram admit a step's requests in one batch; each one's host side (_entry) fails alone.
    hook = "_entry" if hasattr(proc, "_entry") else "_admit"
    real = getattr(proc, hook)
    monkeypatch.setattr(proc, hook, lambda slot, *a: boom() if slot == 0 else real(slot, *a))
    proc.update_state(BatchUpdate(batch_size=2, removed=[], moved=[],
                                  added=[(0, sp(**ARGS[cls]), [1, 2, 1, 2], []), (1, sp(**ARGS[cls]), [1, 2, 1, 2], [])]))
    assert sorted(proc.rows) == [1] and proc.failures["admission"] == 1
    out = proc.apply(torch.zeros(2, VOCAB))
    assert torch.equal(out[0], torch.zeros(VOCAB)) and not torch.equal(out[1], torch.zeros(VOCAB))
    monkeypatch.setenv("VLLM_PLUGIN_STRICT", "1")
    monkeypatch.setattr(proc, "_apply_v1", boom)
    with pytest.raises(RuntimeError, match="injected"):
        proc.apply(torch.zeros(2, VOCAB))


@pytest.mark.parametrize("cls", CLASSES)
def test_v2_a_failure_inside_the_engine_is_contained(cls, digits_tokenizer, monkeypatch):
    monkeypatch.delenv("VLLM_PLUGIN_STRICT", raising=False)
    v2 = compat.v2_logits_interface()
    tokens = torch.randint(0, VOCAB, (4, 32))
    proc = cls(Cfg, v2_state(v2, tokens, [5, 5, 5, 5], [9, 9, 9, 9]))

    def boom(*a, **k):
        raise RuntimeError("injected")

    hook = "_entry" if hasattr(proc, "_entry") else "_admit"
    real = getattr(proc, hook)
    monkeypatch.setattr(proc, hook, lambda slot, *a: boom() if slot == 1 else real(slot, *a))
    for slot in range(3):
        assert proc.add_request(slot, sp(**ARGS[cls]))
    proc.apply_staged_writes()
    assert proc.failures == {"admission": 1} and list(proc.active_np[:4]) == [True, False, True, False]
    ctx = v2_ctx(v2, [0, 1, 2, 3], [0] * 4, [1] * 4, [8] * 4, [9] * 4)
    monkeypatch.setattr(proc, "_apply_rows_v2", boom)
    logits = torch.zeros(4, VOCAB)
    assert torch.equal(proc.apply(logits, ctx), torch.zeros(4, VOCAB))
    assert proc.failures["apply"] == 1 and not proc.active_np.any() and not proc.active.any()


def _no_python_data_mode():
    """Fails on what syncs the host on a GPU, and on any tensor built from
    Python or numpy data (``torch.tensor``/``as_tensor``/``from_numpy``: a
    host-to-device copy on CUDA), on a real device where the meta-device
    test cannot see such copies."""
    from torch.utils._python_dispatch import TorchDispatchMode

    outer = _no_sync_mode()

    class NoPythonData(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in {"lift_fresh", "lift_fresh_copy", "lift"}:
                raise AssertionError(f"a tensor built from host data in the per-step path: {func}")
            return outer.__torch_dispatch__(func, types, args, kwargs)

    return NoPythonData()


@pytest.mark.parametrize("spec", [0, 2])
@pytest.mark.parametrize("extras", ["one_each", "mixed_windows"])
@pytest.mark.parametrize("cls", CLASSES)
def test_v2_apply_builds_no_tensor_from_host_data(cls, extras, spec, digits_tokenizer):
    """On the CPU device, for real: apply reads only what the runner hands
    over. Fails on the ``torch.tensor(float('inf'))`` every pass used to build."""
    if extras == "mixed_windows" and cls is not DryLogitsProcessor:
        pytest.skip("dry_penalty_last_n is DRY's")
    v2 = compat.v2_logits_interface()

    class C(Cfg):
        class speculative_config:
            num_speculative_tokens = spec

    req_states = v2_state(v2, torch.randint(0, VOCAB, (4, 64)), [30, 50, 40, 20], [30, 50, 40, 20])
    proc = cls(C, req_states)
    for slot in range(4):
        proc.add_request(slot, sp(**(MIXED[slot] if extras == "mixed_windows" else
                                     ARGS[cls] if slot != 1 else {})))
    proc.apply_staged_writes()
    order = (2, 0, 1, 3)
    rows = [s for s in order for _ in range(spec + 1)]
    local = [j for _ in order for j in range(spec + 1)]
    ctx = v2_ctx(v2, rows, local, [1] * len(rows), [10 + j for j in local], [12, 12, 12, 12])
    logits, _ = _layout(torch.randn(len(rows), VOCAB), "padded")
    with _no_python_data_mode():
        for _ in range(3):
            proc.apply(logits, ctx)
    assert not proc.failures


@pytest.mark.parametrize("cls", CLASSES)
def test_v2_a_request_without_the_sampler_costs_nothing(cls, digits_tokenizer):
    """Counted ops: a 300-token request with the sampler beside a 60k-token
    request without it costs at most 1.2x what it costs alone (the old code
    sized the bank by the longest request in the batch and ran every row:
    about 200x here), and exactly what it costs beside a short one."""
    _, alone = v2_step(cls, [ARGS[cls]], 300, [301])
    alone()
    _, beside_long = v2_step(cls, [ARGS[cls], None], 300, [301, 60_000])
    beside_long()
    _, beside_short = v2_step(cls, [ARGS[cls], None], 300, [301, 301])
    beside_short()
    a, b = _elements(alone), _elements(beside_long)
    assert b <= 1.2 * a, (a, b)
    assert b == _elements(beside_short)


@pytest.mark.parametrize("cls", [NoRepeatNgramLogitsProcessor, DryLogitsProcessor])
def test_v2_memory_comes_back_when_a_long_request_leaves(cls, digits_tokenizer):
    """A long request with the sampler widens the bank; once it leaves, the
    bank shrinks and a short request's step costs what it cost alone."""
    _, alone = v2_step(cls, [ARGS[cls]], 300, [301])
    alone()
    proc, both = v2_step(cls, [ARGS[cls], ARGS[cls]], 300, [301, 20_000])
    both()
    assert proc.batch.bank.width >= 20_000
    proc.add_request(1, sp())  # slot 1 is reused by a request without the sampler
    proc.apply_staged_writes()
    both()
    assert proc.batch.bank.width == 512  # as growing to 301 tokens from scratch gives
    a, b = _elements(alone), _elements(both)
    assert b <= 1.2 * a, (a, b)


@pytest.mark.parametrize("cls", [NoRepeatNgramLogitsProcessor, DryLogitsProcessor])
def test_v2_chunked_prefill_keeps_the_whole_prompt(cls, digits_tokenizer):
    """A long prompt prefilled in chunks: each partial step bounds only its
    chunk, yet the row keeps the whole admitted prompt (the bank once shrank
    to the chunk and lost the prompt's start)."""
    from reference import dry_penalty, ngram_banned

    v2 = compat.v2_logits_interface()
    rng = random.Random(0)
    prompt = [7, 8, 9] + [rng.randrange(0, 5) for _ in range(3000)] + [7, 8]
    n = len(prompt)
    tokens = torch.zeros(1, 4096, dtype=torch.long)
    tokens[0, :n] = torch.tensor(prompt)
    proc = cls(Cfg, v2_state(v2, tokens, [n], [n]))
    extra = {"no_repeat_ngram_size": 3} if cls is NoRepeatNgramLogitsProcessor else {"dry_multiplier": 1.0}
    proc.add_request(0, sp(**extra))
    proc.apply_staged_writes()
    for done in range(512, n, 512):  # partial chunks: logits computed, then discarded by the runner
        proc.apply(torch.zeros(1, VOCAB), v2_ctx(v2, [0], [0], [prompt[done - 1]], [done - 1], [done]))
    got = proc.apply(torch.zeros(1, VOCAB), v2_ctx(v2, [0], [0], [prompt[-1]], [n - 1], [n]))[0]
    want = torch.zeros(VOCAB)
    if cls is NoRepeatNgramLogitsProcessor:
        want[sorted(ngram_banned(prompt, 3))] = float("-inf")
    else:
        for t, p in dry_penalty(prompt, 1.0, 1.75, 2, set()).items():
            want[t] -= p
    assert want[9] != 0 and torch.equal(got, want)


def test_v2_a_window_longer_than_the_context_is_the_whole_context(digits_tokenizer):
    """dry_penalty_last_n = 2**24 (legal, longer than any context) runs with
    the whole-context rows: the windowed rows beside it keep their narrow pass."""

    def cost(extras):
        _, step = v2_step(DryLogitsProcessor, extras, 2000, [2000] * len(extras))
        step()
        return _elements(step)

    windowed = [{"dry_multiplier": 1.0, "dry_penalty_last_n": 8}] * 15
    whole = cost([{"dry_multiplier": 1.0}, *windowed])
    huge = cost([{"dry_multiplier": 1.0, "dry_penalty_last_n": 2**24}, *windowed])
    assert huge <= 1.05 * whole, (huge, whole)


def test_dry_never_writes_nan(digits_tokenizer):
    """A multiplier that rounds to 0 in float32 times a factor that rounded up
    to inf gave NaN (hostile review); a tiny one gave -inf for a finite penalty."""
    BatchUpdate, _ = compat.batch_update_types() if compat.v1_logits_interface() else (None, None)
    if BatchUpdate is None:
        pytest.skip("V1 interface: vLLM 0.34+ has none; the V2 path shares DryBatch.penalize")
    for mult in (1e-50, 1e-30):
        proc = DryLogitsProcessor(Cfg, torch.device("cpu"), False)
        extra = {"dry_multiplier": mult, "dry_base": 1.844674396604515e19, "dry_allowed_length": 1}
        proc.update_state(BatchUpdate(batch_size=1, removed=[], moved=[],
                                      added=[(0, sp(**extra), [1, 2, 3] * 20 + [1, 2], [])]))
        out = proc.apply(torch.zeros(1, VOCAB))
        assert torch.isfinite(out).all(), (mult, out)
        assert (out[0, 3] < 0) == (mult > 1e-45), (mult, out)


@pytest.mark.parametrize("seed", [2**63, 2**64 - 1, -(2**63)])
def test_xtc_takes_any_integer_seed(seed, digits_tokenizer):
    if not compat.v1_logits_interface():
        pytest.skip("V1 interface: vLLM 0.34+ has none; admission is shared with V2")
    from vllm import SamplingParams

    BatchUpdate, _ = compat.batch_update_types()
    proc = XtcLogitsProcessor(Cfg, torch.device("cpu"), False)
    params = SamplingParams(extra_args={"xtc_probability": 1.0}, seed=seed)
    proc.update_state(BatchUpdate(batch_size=1, removed=[], moved=[], added=[(0, params, [1], [])]))
    assert not proc.failures and proc.rows
