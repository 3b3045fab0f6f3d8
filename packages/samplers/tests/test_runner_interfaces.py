"""The processors' batch bookkeeping with vLLM's own interface types, no engine:
V1 ``update_state`` (removed, then added, then moved, in vLLM's order) and, where
this vLLM has it (0.31+), the V2 runner's ``add_request``/``apply(logits, ctx)``.
The V2 runner itself only runs on CUDA builds; GitHub CI runs it for real."""

from __future__ import annotations

import pytest
import torch

from vllm_plugin_core import compat
from vllm_plugin_samplers.processors import (
    DryLogitsProcessor,
    NoRepeatNgramLogitsProcessor,
    XtcLogitsProcessor,
)

VOCAB = 16


def sp(**extra):
    from vllm import SamplingParams

    return SamplingParams(extra_args=extra or None, seed=3)


def v1(cls):
    return cls(None, torch.device("cpu"), False)


def banned_rows(logits):
    return [sorted(torch.nonzero(torch.isinf(row)).flatten().tolist()) for row in logits]


def test_v1_untouched_without_active_requests():
    BatchUpdate, _ = compat.batch_update_types()
    proc = v1(NoRepeatNgramLogitsProcessor)
    proc.update_state(BatchUpdate(batch_size=2, removed=[], added=[(0, sp(), [1, 2], []), (1, sp(), [3], [])],
                                  moved=[]))
    logits = torch.randn(2, VOCAB)
    out = proc.apply(logits)
    assert out is logits and not torch.isinf(out).any()


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


def test_v1_request_replaced_by_one_without_arguments():
    BatchUpdate, _ = compat.batch_update_types()
    proc = v1(NoRepeatNgramLogitsProcessor)
    proc.update_state(BatchUpdate(batch_size=1, removed=[], moved=[],
                                  added=[(0, sp(no_repeat_ngram_size=1), [1], [])]))
    proc.update_state(BatchUpdate(batch_size=1, removed=[], moved=[], added=[(0, sp(), [1], [])]))
    logits = torch.zeros(1, VOCAB)
    assert proc.apply(logits) is logits and not torch.isinf(logits).any()


needs_v2 = pytest.mark.skipif(
    compat.v2_logits_interface() is None,
    reason="this vLLM (< 0.31) has no V2 model runner; the test runs in the 0.31+ sessions",
)


class _Staged:
    def __init__(self, t):
        self.gpu = t


@needs_v2
@pytest.mark.parametrize("cls", [NoRepeatNgramLogitsProcessor, DryLogitsProcessor, XtcLogitsProcessor])
def test_v2_interface(cls, monkeypatch):
    import numpy as np

    v2 = compat.v2_logits_interface()
    assert issubclass(cls, v2.LogitsProcessor)
    tokens = torch.zeros(4, 32, dtype=torch.long)
    tokens[2, :5] = torch.tensor([1, 2, 3, 1, 2])
    req_states = v2.LogitsProcRequestState(
        device=torch.device("cpu"), max_num_reqs=4, vocab_size=VOCAB,
        all_token_ids=_Staged(tokens), prompt_len=_Staged(torch.tensor([0, 0, 3, 0])),
        prefill_len=_Staged(torch.tensor([0, 0, 3, 0])), total_len=_Staged(torch.tensor([0, 0, 5, 0])))
    monkeypatch.setattr("vllm_plugin_samplers.processors._breakers", lambda *a: frozenset())

    class Cfg:
        class model_config:
            tokenizer = "unused"
            trust_remote_code = False

    proc = cls(Cfg, req_states)
    assert proc.v2
    args = {NoRepeatNgramLogitsProcessor: {"no_repeat_ngram_size": 2},
            DryLogitsProcessor: {"dry_multiplier": 1.0, "dry_allowed_length": 1},
            XtcLogitsProcessor: {"xtc_threshold": 0.01, "xtc_probability": 1.0}}[cls]
    assert proc.add_request(2, sp(**args)) is True
    assert proc.add_request(1, sp()) is False
    proc.apply_staged_writes()
    # Row 0 is slot 1 (no arguments), row 1 is slot 2 at position 4 (5 tokens seen).
    ctx = v2.LogitsContext(
        expanded_idx_mapping=torch.tensor([1, 2]), idx_mapping=torch.tensor([1, 2]),
        idx_mapping_np=np.array([1, 2]), expanded_local_pos=torch.tensor([0, 0]),
        input_ids=torch.tensor([0, 2]), pos=torch.tensor([7, 4]),
        seq_lens_upper_bound_np=np.array([8, 5]))
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
