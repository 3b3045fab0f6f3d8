"""XTC as text-generation-webui: a step whose removals would include an
end-of-sequence or newline token removes nothing (``xtc_eos_newline_guard``,
on by default), and no XTC under greedy decoding unless ``xtc_under_greedy``;
through the processor's V1 and V2 paths, with no host sync on V2."""

from __future__ import annotations

import pytest
import torch
from test_runner_interfaces import VOCAB, Cfg, _no_sync_mode, _to_meta, needs_v1, v2_ctx, v2_state

from vllm_plugin_core import compat
from vllm_plugin_samplers.breakers import Resolver
from vllm_plugin_samplers.processors import XtcLogitsProcessor

NEWLINE, EOS, REQUEST_EOS = 9, 15, 4  # token 9 reads "\n", 7 reads "a\nb"; 15 is the tokenizer's EOS


@pytest.fixture
def vocab_with_newlines(monkeypatch):
    texts = [str(i) for i in range(VOCAB)]
    texts[7], texts[NEWLINE] = "a\nb", "\n"
    resolver = Resolver(texts, eos_token_ids=(EOS,))
    monkeypatch.setattr("vllm_plugin_samplers.processors.make_resolver", lambda cfg: resolver)
    return resolver


def params(temperature=1.0, eos=None, **extra):
    from vllm import SamplingParams

    p = SamplingParams(extra_args={"xtc_probability": 1.0, "xtc_threshold": 0.15, **extra},
                       seed=3, temperature=temperature)
    if eos is not None:
        p.update_from_generation_config({}, eos)  # what vLLM's input processor does
    return p


def row(top: dict[int, float]) -> torch.Tensor:
    """Logits whose softmax gives ``top`` and spreads the rest evenly."""
    rest = (1 - sum(top.values())) / (VOCAB - len(top))
    probs = torch.full((VOCAB,), rest)
    for t, p in top.items():
        probs[t] = p
    return probs.log()


# (sampling params, logits row, removed ids)
CASES = [
    (params(), row({3: 0.4, NEWLINE: 0.3, 5: 0.2}), []),  # the newline would go: nothing goes
    (params(), row({3: 0.4, 7: 0.3, 5: 0.2}), []),  # a token whose text holds a newline
    (params(), row({EOS: 0.4, 3: 0.3, 5: 0.2}), []),  # the tokenizer's EOS
    (params(eos=REQUEST_EOS), row({REQUEST_EOS: 0.4, 3: 0.3, 5: 0.2}), []),  # the request's eos_token_id
    (params(), row({3: 0.4, 5: 0.3, NEWLINE: 0.2}), [3, 5]),  # the newline is the one kept
    (params(xtc_eos_newline_guard=False), row({3: 0.4, NEWLINE: 0.3, 5: 0.2}), [3, NEWLINE]),
    (params(temperature=0.0), row({3: 0.4, 5: 0.3, 6: 0.2}), []),  # greedy: off
    (params(temperature=0.0, xtc_under_greedy=True), row({3: 0.4, 5: 0.3, 6: 0.2}), [3, 5]),
    (params(), row({3: 0.4, 5: 0.3, 6: 0.2}), [3, 5]),
]


def _removed(out: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(torch.isinf(r)).flatten().tolist() for r in out]


@needs_v1
def test_v1_guard_and_greedy(vocab_with_newlines):
    BatchUpdate, _ = compat.batch_update_types()
    proc = XtcLogitsProcessor(Cfg, torch.device("cpu"), False)
    proc.update_state(BatchUpdate(batch_size=len(CASES), removed=[], moved=[], added=[
        (i, sp, [1, 2], []) for i, (sp, _, _) in enumerate(CASES)]))
    out = proc.apply(torch.stack([r for _, r, _ in CASES]))
    assert _removed(out) == [want for _, _, want in CASES]
    assert not proc.failures


def test_v2_guard_and_greedy(vocab_with_newlines):
    v2 = compat.v2_logits_interface()
    n = len(CASES)
    req_states = v2_state(v2, torch.zeros(n, 8, dtype=torch.long), [2] * n, [2] * n)
    proc = XtcLogitsProcessor(Cfg, req_states)
    for i, (sp, _, _) in enumerate(CASES):
        proc.add_request(i, sp)
    proc.apply_staged_writes()
    order = list(range(n))[::-1]
    ctx = v2_ctx(v2, order, [0] * n, [1] * n, [2] * n, [3] * n)
    out = proc.apply(torch.stack([CASES[i][1] for i in order]), ctx)
    assert _removed(out) == [CASES[i][2] for i in order]
    assert not proc.failures


def test_v2_subset_of_rows_guard(vocab_with_newlines):
    """Rows of requests without XTC (or greedy ones) between: only XTC rows change."""
    v2 = compat.v2_logits_interface()
    from vllm import SamplingParams

    req_states = v2_state(v2, torch.zeros(4, 8, dtype=torch.long), [2] * 4, [2] * 4)
    proc = XtcLogitsProcessor(Cfg, req_states)
    proc.add_request(0, SamplingParams(seed=1))
    proc.add_request(1, params())
    proc.add_request(2, params(temperature=0.0))
    proc.add_request(3, params())
    proc.apply_staged_writes()
    logits = torch.stack([row({3: 0.4, 5: 0.3, 6: 0.2}), row({3: 0.4, 5: 0.3, 6: 0.2}),
                          row({3: 0.4, 5: 0.3, 6: 0.2}), row({3: 0.4, NEWLINE: 0.3, 6: 0.2})])
    out = proc.apply(logits.clone(), v2_ctx(v2, [0, 1, 2, 3], [0] * 4, [1] * 4, [2] * 4, [3] * 4))
    assert _removed(out) == [[], [3, 5], [], []]


@pytest.mark.parametrize("spec", [0, 2])
def test_v2_guard_has_no_host_sync(spec, vocab_with_newlines):
    """The guard is device-resident: apply with guarded requests on the meta
    device under the dispatch mode that fails on any host sync."""
    import dataclasses

    v2 = compat.v2_logits_interface()

    class C(Cfg):
        class speculative_config:
            num_speculative_tokens = spec

    req_states = v2_state(v2, torch.randint(0, VOCAB, (4, 16)), [3, 5, 8, 2], [3, 5, 8, 2])
    req_states = dataclasses.replace(req_states, device=torch.device("meta"))
    _to_meta(req_states)
    proc = XtcLogitsProcessor(C, req_states)
    assert proc.guard.device.type == "meta"
    proc.add_request(0, params(eos=REQUEST_EOS))
    proc.add_request(2, params(xtc_eos_newline_guard=False))
    proc.add_request(3, params())
    proc.add_request(1, params(temperature=0.0))
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
    assert not proc.failures


def test_guard_holds_newline_tokens_and_eos_found_once(vocab_with_newlines):
    proc = XtcLogitsProcessor(Cfg, torch.device("cpu"), False)
    assert torch.nonzero(proc.guard).flatten().tolist() == [7, NEWLINE, EOS]
    assert vocab_with_newlines.newline_ids() is vocab_with_newlines.newline_ids()  # resolved once


def test_generation_config_eos_ids_are_guarded(vocab_with_newlines):
    class G(Cfg):
        class model_config(Cfg.model_config):
            @staticmethod
            def try_get_generation_config():
                return {"eos_token_id": [2, 11]}

    proc = XtcLogitsProcessor(G, torch.device("cpu"), False)
    assert torch.nonzero(proc.guard).flatten().tolist() == [2, 7, NEWLINE, 11, EOS]
