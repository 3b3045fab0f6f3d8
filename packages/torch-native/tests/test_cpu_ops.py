"""cpu_ops.py against brute-force transcriptions of vLLM's V2 Triton kernels.

Each ``_ref_*`` function below transcribes one Triton kernel of
``vllm/v1/worker/gpu/`` (input_batch.py, block_table.py, sample/gumbel.py,
sample/logit_bias.py, sample/prompt_logprob.py) as a plain Python loop: one
outer iteration per program id, element loops inside, reading and writing
Python lists. Hypothesis draws the batches: unequal query lengths (0-length
rows, 1-token decodes, long prefills), ``idx_mapping`` a random subset of the
``max_num_reqs`` slots in random order, buffers larger than the step holding
stale values (kept or overwritten exactly as the kernel does), dummy rows
(``idx_mapping < 0``) where the kernel filters them, chunked prefills, drafts.

Integer outputs are compared exactly. Float logits are compared exactly too
(``torch.equal``) except the Gumbel noise of the fp32 path, where the kernel
approximates ``log1p(-u)`` by a degree-8 series (absolute error < 6e-7 on
[0, 0.25]) and ``cpu_ops`` calls ``torch.log1p``: there the test only accepts
a different winner when the kernel's own top two values are within 1e-4.

No vLLM import, no engine: cpu_ops imports only torch.
"""

from __future__ import annotations

import math
from itertools import accumulate

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vllm_plugin_torch_native import cpu_ops

FAST = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PAD_SLOT_ID = -1
INF = float("inf")
M32 = 0xFFFFFFFF
F32 = np.float32


# --------------------------------------------------------------------------- helpers


def _rng(data: st.DataObject) -> np.random.Generator:
    return np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="rng seed"))


def _qlen(max_q: int, zero: bool = True) -> st.SearchStrategy[int]:
    """A query length: 0 (where allowed), a 1-token decode, a short or a long prefill."""
    options = [st.just(1), st.integers(2, 6), st.integers(7, max_q)]
    if zero:
        options.insert(0, st.just(0))
    return st.one_of(*options)


def _slots(data: st.DataObject, max_num_reqs: int, min_reqs: int = 1) -> list[int]:
    """idx_mapping: a random subset of the slots, in random (non-slot) order."""
    n = data.draw(st.integers(min_reqs, max_num_reqs), label="num_reqs")
    return data.draw(st.permutations(range(max_num_reqs)), label="slot order")[:n]


def _qsl(qlens: list[int]) -> list[int]:
    return [0, *accumulate(qlens)]


def _qsl_tensor(data: st.DataObject, rng: np.random.Generator, qlens: list[int], max_num_reqs: int) -> torch.Tensor:
    """query_start_loc as the runner passes it ([:num_reqs + 1]) or the whole
    [max_num_reqs + 1] buffer with stale entries past num_reqs + 1."""
    qsl = _qsl(qlens)
    if data.draw(st.booleans(), label="full qsl buffer"):
        stale = rng.integers(0, 10_000, max_num_reqs + 1 - len(qsl)).tolist()
        qsl = qsl + stale
    return torch.tensor(qsl, dtype=torch.int32)


def _ints(rng: np.random.Generator, lo: int, hi: int, shape, dtype=torch.int32) -> torch.Tensor:
    return torch.from_numpy(rng.integers(lo, hi, shape)).to(dtype)


# --------------------------------------------------------------------------- block tables


def _ref_gather_block_tables(block_table, output, idx_mapping, num_blocks, num_reqs, num_rows):
    """_gather_block_tables_kernel, one group, MASK_SLIDING_WINDOW=False (the
    CPU runner masks the sliding window itself, after the op)."""
    max_num_blocks = len(block_table[0])
    for batch_idx in range(num_rows):
        dst = output[batch_idx]
        if batch_idx >= num_reqs:
            for i in range(max_num_blocks):
                dst[i] = 0
            continue
        req_idx = idx_mapping[batch_idx]
        for i in range(num_blocks[req_idx]):
            dst[i] = block_table[req_idx][i]


@FAST
@given(data=st.data())
def test_gather_block_table(data):
    """Rows < num_reqs: the request's first num_blocks entries, later entries
    untouched (stale); rows num_reqs..num_reqs_padded: zeroed; rows past
    num_reqs_padded: untouched."""
    rng = _rng(data)
    max_num_reqs = data.draw(st.integers(1, 8), label="max_num_reqs")
    max_blocks = data.draw(st.integers(1, 12), label="max_num_blocks")
    slots = _slots(data, max_num_reqs, min_reqs=0)
    num_rows = data.draw(st.integers(len(slots), max_num_reqs), label="num_reqs_padded")
    block_table = _ints(rng, 0, 1000, (max_num_reqs, max_blocks))
    num_blocks = _ints(rng, 0, max_blocks + 1, max_num_reqs)
    output = _ints(rng, 1000, 2000, (max_num_reqs, max_blocks))  # stale, distinguishable
    ref = output.tolist()
    _ref_gather_block_tables(block_table.tolist(), ref, slots, num_blocks.tolist(), len(slots), num_rows)

    cpu_ops.gather_block_table_cpu(block_table, output, torch.tensor(slots, dtype=torch.int64), num_blocks,
                                   num_rows)
    assert output.tolist() == ref


def _ref_slot_mappings(slot_mapping, idx_mapping, qsl, positions, block_table, block_size, enabled):
    """_compute_slot_mappings_kernel, one group, CP_SIZE=1; grid num_reqs + 1."""
    num_reqs = len(idx_mapping)
    for batch_idx in range(num_reqs + 1):
        if batch_idx == num_reqs:  # last program: pad from the actual token count on
            for t in range(qsl[batch_idx], len(slot_mapping)):
                slot_mapping[t] = PAD_SLOT_ID
            continue
        req = idx_mapping[batch_idx]
        is_real = req >= 0
        for t in range(qsl[batch_idx], qsl[batch_idx + 1]):
            pos = positions[t]
            block_index = pos // block_size if enabled else 0
            block_number = block_table[req][block_index] if is_real else 0  # masked load
            slot = block_number * block_size + pos % block_size
            slot_mapping[t] = slot if (enabled and is_real) else PAD_SLOT_ID


@FAST
@given(data=st.data())
def test_compute_slot_mapping(data):
    """Slots of every scheduled token, PAD for dummy rows (idx < 0, whose block
    table is never read, whatever their positions), for a disabled group, and
    from the step's last token to the end of the buffer (stale slots of a longer
    earlier step overwritten)."""
    rng = _rng(data)
    max_num_reqs = data.draw(st.integers(1, 8), label="max_num_reqs")
    slots = _slots(data, max_num_reqs, min_reqs=0)
    idx = [s if data.draw(st.integers(0, 4), label="dummy?") else -1 for s in slots]
    qlens = [data.draw(_qlen(40), label="qlen") for _ in idx]
    block_size = data.draw(st.sampled_from([1, 2, 4, 16]), label="block_size")
    max_blocks = -(-max([*qlens, 1]) // block_size) + data.draw(st.integers(0, 4), label="spare blocks")
    enabled = data.draw(st.booleans(), label="mapping_enabled")
    qsl = _qsl(qlens)
    total = qsl[-1]
    pad_tokens = data.draw(st.integers(0, 8), label="padded tokens")
    positions = rng.integers(10**9, 2 * 10**9, total + pad_tokens)  # stale past the step
    for b, req in enumerate(idx):
        if req >= 0:
            start = int(rng.integers(0, max_blocks * block_size - qlens[b] + 1))
        else:  # a dummy row may sit anywhere: the kernel never reads its table
            start = int(rng.integers(0, 100 * max_blocks * block_size))
        positions[qsl[b]:qsl[b + 1]] = start + np.arange(qlens[b])
    positions_t = torch.from_numpy(positions).to(torch.int64)
    block_table = _ints(rng, 0, 5000, (max_num_reqs, max_blocks))
    slot_mapping = _ints(rng, 0, 10**6, total + pad_tokens + data.draw(st.integers(0, 8)), torch.int64)
    ref = slot_mapping.tolist()
    _ref_slot_mappings(ref, idx, qsl, positions.tolist(), block_table.tolist(), block_size, enabled)

    cpu_ops.compute_slot_mapping_cpu(block_table, slot_mapping, torch.tensor(idx, dtype=torch.int64),
                                     _qsl_tensor(data, rng, qlens, max_num_reqs), positions_t, block_size,
                                     enabled, PAD_SLOT_ID)
    assert slot_mapping.tolist() == ref


# --------------------------------------------------------------------------- input batch


def _ref_prepare_prefill_inputs(input_ids, next_prefill_tokens, idx_mapping, qsl, all_token_ids, prefill_len,
                                num_computed):
    """_prepare_prefill_inputs_kernel; grid num_reqs."""
    num_lookahead = len(next_prefill_tokens)
    for batch_idx, req in enumerate(idx_mapping):
        if num_computed[req] >= prefill_len[req]:
            continue  # not prefill
        start, end = qsl[batch_idx], qsl[batch_idx + 1]
        for i in range(end - start):
            input_ids[start + i] = all_token_ids[req][num_computed[req] + i]
        for j in range(num_lookahead):
            pos = num_computed[req] + (end - start) + j
            next_prefill_tokens[j][req] = all_token_ids[req][pos] if pos < prefill_len[req] else 0


@FAST
@given(data=st.data())
def test_prepare_prefill_inputs(data):
    """Prefilling rows (chunked: the query may stop before the prompt end, or be
    empty) copy their scheduled tokens and their next L prompt tokens (0 past the
    prompt); decoding rows and other slots keep their stale values."""
    rng = _rng(data)
    max_num_reqs = data.draw(st.integers(1, 8), label="max_num_reqs")
    max_model_len = data.draw(st.integers(4, 64), label="max_model_len")
    slots = _slots(data, max_num_reqs)
    lookahead = data.draw(st.sampled_from([0, 1, 2, 3]), label="num_lookahead")
    all_token_ids = _ints(rng, 1, 50_000, (max_num_reqs, max_model_len))
    prefill_len = _ints(rng, 0, max_model_len + 1, max_num_reqs)  # stale for slots not in the batch
    num_computed = _ints(rng, 0, max_model_len + 1, max_num_reqs)
    qlens = []
    for req in slots:
        plen = data.draw(st.integers(1, max_model_len), label="prefill_len")
        prefill_len[req] = plen
        if data.draw(st.integers(0, 3), label="kind"):  # prefilling, possibly a chunk
            done = data.draw(st.integers(0, plen - 1), label="num_computed")
            # Usually within the prompt (chunked prefill); sometimes past its end.
            cap = plen - done if data.draw(st.integers(0, 3)) else max_model_len - done
            q = data.draw(st.integers(0, cap), label="qlen")
            event("chunked prefill" if done + q < plen else "prefill to/past the prompt end")
        else:  # decoding
            done = data.draw(st.integers(plen, max_model_len), label="num_computed")
            q = data.draw(st.integers(0, min(4, max_model_len - done)), label="qlen")
        num_computed[req] = done
        qlens.append(q)
    total = sum(qlens)
    input_ids = _ints(rng, -100, 0, total + data.draw(st.integers(0, 8)))  # stale: negative ids
    next_prefill_tokens = _ints(rng, -100, 0, (lookahead, max_num_reqs))
    ref_ids, ref_next = input_ids.tolist(), next_prefill_tokens.tolist()
    _ref_prepare_prefill_inputs(ref_ids, ref_next, slots, _qsl(qlens), all_token_ids.tolist(),
                                prefill_len.tolist(), num_computed.tolist())

    cpu_ops.prepare_prefill_inputs_cpu(input_ids, next_prefill_tokens, torch.tensor(slots, dtype=torch.int64),
                                       _qsl_tensor(data, rng, qlens, max_num_reqs), all_token_ids, prefill_len,
                                       num_computed)
    assert input_ids.tolist() == ref_ids
    assert next_prefill_tokens.tolist() == ref_next


def _ref_prompt_logprobs_token_ids(out, qsl, idx_mapping, num_computed, all_token_ids):
    """_prompt_logprobs_token_ids_kernel; grid num_reqs."""
    for batch_idx, req in enumerate(idx_mapping):
        start, end = qsl[batch_idx], qsl[batch_idx + 1]
        for i in range(end - start):
            out[start + i] = all_token_ids[req][num_computed[req] + 1 + i]


@FAST
@given(data=st.data())
def test_get_prompt_logprobs_token_ids(data):
    """Each scheduled token's target is the request's next token; int64 of
    length num_tokens (the kernel leaves the padding tail unwritten: torch.empty,
    so only the step's tokens are compared)."""
    rng = _rng(data)
    max_num_reqs = data.draw(st.integers(1, 8), label="max_num_reqs")
    max_model_len = data.draw(st.integers(2, 64), label="max_model_len")
    slots = _slots(data, max_num_reqs)
    all_token_ids = _ints(rng, 0, 50_000, (max_num_reqs, max_model_len))
    num_computed = _ints(rng, 0, max_model_len, max_num_reqs)
    qlens = []
    for req in slots:
        done = data.draw(st.integers(0, max_model_len - 1), label="num_computed")
        num_computed[req] = done
        qlens.append(data.draw(st.integers(0, max_model_len - 1 - done), label="qlen"))
    total = sum(qlens)
    num_tokens = total + data.draw(st.integers(0, 8), label="padding")
    ref = [None] * num_tokens
    _ref_prompt_logprobs_token_ids(ref, _qsl(qlens), slots, num_computed.tolist(), all_token_ids.tolist())

    out = cpu_ops.get_prompt_logprobs_token_ids_cpu(num_tokens, _qsl_tensor(data, rng, qlens, max_num_reqs),
                                                    torch.tensor(slots, dtype=torch.int64), num_computed,
                                                    all_token_ids)
    assert out.dtype == torch.int64 and out.shape == (num_tokens,)
    assert out[:total].tolist() == ref[:total]


def _ref_prepare_pos_seq_lens(pos, seq_lens, idx_mapping, qsl, num_computed):
    """_prepare_pos_seq_lens_kernel; grid num_reqs + 1 (the last pads seq_lens)."""
    num_reqs = len(idx_mapping)
    for req_id in range(num_reqs + 1):
        if req_id == num_reqs:
            for i in range(num_reqs, len(seq_lens)):
                seq_lens[i] = 0
            continue
        req = idx_mapping[req_id]
        start, end = qsl[req_id], qsl[req_id + 1]
        seq_lens[req_id] = num_computed[req] + end - start
        for i in range(end - start):
            pos[start + i] = num_computed[req] + i


@FAST
@given(data=st.data())
def test_prepare_pos_seq_lens(data):
    """Positions num_computed + i of each row's tokens (buffer tail untouched) and
    seq_lens per batch row, zero from num_reqs to the end of the buffer."""
    rng = _rng(data)
    max_num_reqs = data.draw(st.integers(1, 8), label="max_num_reqs")
    slots = _slots(data, max_num_reqs, min_reqs=0)
    qlens = [data.draw(_qlen(50), label="qlen") for _ in slots]
    num_computed = _ints(rng, 0, 100_000, max_num_reqs)
    total = sum(qlens)
    pos = _ints(rng, -1000, 0, total + data.draw(st.integers(0, 8)), torch.int64)
    seq_lens = _ints(rng, -1000, 0, max_num_reqs)
    ref_pos, ref_seq = pos.tolist(), seq_lens.tolist()
    _ref_prepare_pos_seq_lens(ref_pos, ref_seq, slots, _qsl(qlens), num_computed.tolist())

    cpu_ops.prepare_pos_seq_lens_cpu(torch.tensor(slots, dtype=torch.int64),
                                     _qsl_tensor(data, rng, qlens, max_num_reqs), num_computed, pos, seq_lens)
    assert pos.tolist() == ref_pos
    assert seq_lens.tolist() == ref_seq


def _ref_combine(input_ids, idx_mapping, last_sampled, qsl, seq_lens, prefill_len, draft_tokens, cu_num_logits,
                 num_new):
    """_combine_sampled_and_draft_tokens_kernel; grid num_reqs. Returns logits_indices."""
    logits_indices = [None] * cu_num_logits[len(idx_mapping)]
    for batch_idx, req in enumerate(idx_mapping):
        num_logits = cu_num_logits[batch_idx + 1] - cu_num_logits[batch_idx]
        num_draft = num_logits - num_new
        query_end = qsl[batch_idx + 1]
        logits_start = query_end - num_logits
        for i in range(num_logits):
            logits_indices[cu_num_logits[batch_idx] + i] = logits_start + i
        seq_len = seq_lens[batch_idx]
        if seq_len <= prefill_len[req]:
            continue  # prefill: no sampled or draft tokens
        if num_new > 0 and seq_len - num_logits >= prefill_len[req]:
            input_ids[logits_start] = last_sampled[req]
        for i in range(max(num_draft, 0)):
            input_ids[query_end - num_draft + i] = draft_tokens[req][i]
    return logits_indices


@FAST
@given(data=st.data())
def test_combine_sampled_and_draft_tokens(data):
    """Logits indices (the last num_logits tokens of each row) and, for decoding
    rows only, the last sampled token (not over a prompt tail) and the drafts
    written into input_ids; num_new_sampled_tokens 0 and 1."""
    rng = _rng(data)
    max_num_reqs = data.draw(st.integers(1, 8), label="max_num_reqs")
    num_spec = data.draw(st.integers(0, 4), label="num_speculative_steps")
    num_new = data.draw(st.sampled_from([0, 1]), label="num_new_sampled_tokens")
    slots = _slots(data, max_num_reqs)
    prefill_len = _ints(rng, 1, 100, max_num_reqs)
    seq_lens = _ints(rng, -50, 0, max_num_reqs)  # [max_num_reqs] buffer, stale past num_reqs
    qlens, n_logits = [], []
    for b, req in enumerate(slots):
        kind = data.draw(st.sampled_from(["chunk", "prefill_end", "decode", "prompt_tail"]), label="kind")
        plen = data.draw(st.integers(1, 60), label="prefill_len")
        if kind == "chunk":  # chunked prefill, stops before the prompt end
            plen = max(plen, 2)
            seq = data.draw(st.integers(1, plen - 1), label="seq_len")
            nl = data.draw(st.integers(0, 1), label="num_logits")
            q = data.draw(st.integers(1, seq), label="qlen")
        elif kind == "prefill_end":  # last prompt chunk: seq_len == prefill_len
            nl = data.draw(st.integers(0, 1 + num_spec), label="num_logits")
            plen = seq = max(plen, nl, 1)
            q = data.draw(st.integers(max(nl, 1), seq), label="qlen")
        else:  # decoding: num_new + drafts logits
            nl = num_new + data.draw(st.integers(0, num_spec), label="num_drafts")
            q = max(nl, 1) + data.draw(st.integers(0, 3), label="extra query")
            if kind == "prompt_tail" and nl >= 2:  # seq_len - num_logits < prefill_len < seq_len
                plen = max(plen, q)
                seq = plen + data.draw(st.integers(1, nl - 1), label="past prompt")
            else:  # the whole query past the prompt
                seq = plen + q + data.draw(st.integers(0, 20), label="generated")
        prefill_len[req] = plen
        seq_lens[b] = seq
        event(f"{kind} row" if kind != "prompt_tail" or nl >= 2 else "decode row")
        qlens.append(q)
        n_logits.append(nl)
    cu = _qsl(n_logits)
    total = sum(qlens)
    input_ids = _ints(rng, -1000, 0, total + data.draw(st.integers(0, 8)))  # stale tokens, negative
    last_sampled = _ints(rng, 1, 50_000, (max_num_reqs, 1), torch.int64)
    draft_tokens = _ints(rng, 50_000, 100_000, (max_num_reqs, num_spec), torch.int64)
    ref_ids = input_ids.tolist()
    ref_idx = _ref_combine(ref_ids, slots, last_sampled.view(-1).tolist(), _qsl(qlens), seq_lens.tolist(),
                           prefill_len.tolist(), draft_tokens.tolist(), cu, num_new)

    got = cpu_ops.combine_sampled_and_draft_tokens_cpu(
        input_ids, torch.tensor(slots, dtype=torch.int64), last_sampled, _qsl_tensor(data, rng, qlens, max_num_reqs),
        seq_lens, prefill_len, draft_tokens, torch.tensor(cu, dtype=torch.int32), cu[-1], num_new)
    assert got.dtype == torch.int64
    assert got.tolist() == ref_idx
    assert input_ids.tolist() == ref_ids


def test_combine_runner_call_without_drafts():
    """The CPU runner's own call: draft_tokens = last_sampled_tokens[:, :0]
    (width 0), one logit per row, decoding rows get their last sampled token."""
    input_ids = torch.full((10,), -1, dtype=torch.int32)
    last_sampled = torch.tensor([[7], [8], [9]], dtype=torch.int64)
    qsl = torch.tensor([0, 5, 6, 9], dtype=torch.int32)
    seq_lens = torch.tensor([5, 12, 3], dtype=torch.int32)
    prefill_len = torch.tensor([9, 5, 11], dtype=torch.int32)  # of slots 0, 1, 2
    idx = torch.tensor([1, 2, 0], dtype=torch.int64)
    # row 0 (slot 1): seq 5 <= prefill 5, last prompt chunk; row 1 (slot 2): seq 12 > 11,
    # a decode; row 2 (slot 0): seq 3 <= 9, a chunk.
    got = cpu_ops.combine_sampled_and_draft_tokens_cpu(input_ids, idx, last_sampled, qsl, seq_lens, prefill_len,
                                                       last_sampled[:, :0], torch.arange(4, dtype=torch.int32), 3, 1)
    assert got.tolist() == [4, 5, 8]
    assert input_ids.tolist() == [-1, -1, -1, -1, -1, 9, -1, -1, -1, -1]


def _ref_post_update(idx_mapping, num_computed, last_sampled, bin_counts, sampled, num_sampled, num_rejected, qsl,
                     all_token_ids, total_len):
    """_post_update_kernel (no draft copy: the CPU op has none); grid num_reqs."""
    for req_id, req in enumerate(idx_mapping):
        if req < 0:
            continue  # filtered row
        total = total_len[req]
        ns = num_sampled[req_id]
        if ns > 0:
            last_sampled[req] = sampled[req_id][ns - 1]
            total_len[req] = total + ns
        for i in range(ns):
            token = sampled[req_id][i]
            all_token_ids[req][total + i] = token
            if bin_counts is not None:
                bin_counts[req][token] += 1
        query_len = 0 if qsl is None else qsl[req_id + 1] - qsl[req_id]
        delta = query_len - num_rejected[req_id]
        if delta != 0:
            num_computed[req] += delta


@FAST
@given(data=st.data())
def test_post_update(data):
    """Sampled tokens appended at total_len (bin counts counting repeats),
    last_sampled/total_len updated only when something was sampled, num_computed
    advanced by query_len - num_rejected (num_rejected > 0 with drafts; no
    query_start_loc: -num_rejected); rows with a negative index change nothing."""
    rng = _rng(data)
    max_num_reqs = data.draw(st.integers(1, 8), label="max_num_reqs")
    max_model_len = data.draw(st.integers(8, 48), label="max_model_len")
    vocab = data.draw(st.integers(1, 12), label="vocab")
    width = data.draw(st.integers(1, 5), label="num_speculative_steps + 1")
    slots = _slots(data, max_num_reqs, min_reqs=0)
    idx = [s if data.draw(st.integers(0, 4), label="dummy?") else -1 for s in slots]
    n = len(idx)
    total_len = _ints(rng, 0, max_model_len - width + 1, max_num_reqs)
    num_computed = _ints(rng, 0, 100, max_num_reqs)
    last_sampled = _ints(rng, -100, 0, (max_num_reqs, 1), torch.int64)
    all_token_ids = _ints(rng, -100, 0, (max_num_reqs, max_model_len))
    bin_counts = _ints(rng, 0, 5, (max_num_reqs, vocab)) if data.draw(st.booleans(), label="counts") else None
    sampled = _ints(rng, 0, vocab, (n, width), torch.int64)
    qlens, num_sampled, num_rejected = [], [], []
    for _ in idx:
        num_logits = data.draw(st.integers(0, width), label="num_logits")
        q = num_logits + data.draw(st.integers(0, 6), label="extra query")
        ns = data.draw(st.integers(0, num_logits), label="num_sampled")
        qlens.append(q)
        num_sampled.append(ns)
        num_rejected.append(num_logits - ns)
        event("row with num_rejected > 0" if num_logits > ns else "row with no rejection")
    use_qsl = data.draw(st.booleans(), label="query_start_loc given")
    qsl_t = _qsl_tensor(data, rng, qlens, max_num_reqs) if use_qsl else None
    ref = [x.tolist() if x is not None else None
           for x in (num_computed, last_sampled.view(-1), bin_counts, all_token_ids, total_len)]
    _ref_post_update(idx, ref[0], ref[1], ref[2], sampled.tolist(), num_sampled, num_rejected,
                     _qsl(qlens) if use_qsl else None, ref[3], ref[4])

    cpu_ops.post_update_cpu(torch.tensor(idx, dtype=torch.int64), num_computed, last_sampled, bin_counts, sampled,
                            torch.tensor(num_sampled, dtype=torch.int32), torch.tensor(num_rejected, dtype=torch.int32),
                            qsl_t, all_token_ids, total_len)
    assert num_computed.tolist() == ref[0]
    assert last_sampled.view(-1).tolist() == ref[1]
    assert (bin_counts.tolist() if bin_counts is not None else None) == ref[2]
    assert all_token_ids.tolist() == ref[3]
    assert total_len.tolist() == ref[4]


# --------------------------------------------------------------------------- murmur3 / Gumbel


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & M32


def _rotr(x: int, r: int) -> int:
    return ((x >> r) | (x << (32 - r))) & M32


def _py_mix(h: int, key: int) -> int:
    """_murmur3_mix on uint32."""
    key = (key * 0xCC9E2D51) & M32
    key = _rotl(key, 15)
    key = (key * 0x1B873593) & M32
    h ^= key
    h = _rotl(h, 13)
    return (h * 5 + 0xE6546B64) & M32


def _py_fmix(h: int) -> int:
    """_murmur3_fmix32 on uint32."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def _py_prefix(seed: int, pos: int, domain: int = 0) -> int:
    """murmur3_hash32's state before the token offset; seed/pos are int64 values
    (Python's >> on a negative int is the arithmetic shift of int64)."""
    h = 0 ^ domain
    h = _py_mix(h, seed & M32)
    h = _py_mix(h, (seed >> 32) & M32)
    return _py_mix(h, pos & M32)


def py_hash32(seed: int, pos: int, offset: int, domain: int = 0) -> int:
    """murmur3_hash32."""
    return _py_fmix(_py_mix(_py_prefix(seed, pos, domain), offset & M32) ^ 16)


def py_uniform32(seed: int, pos: int, offset: int) -> float:
    """murmur3_uniform32, fp32 arithmetic (every product exact, one rounding in the sum)."""
    r = py_hash32(seed, pos, offset)
    return float(F32(r >> 16) * F32(1.52587890625e-05) + (F32(r & 0xFFFF) + F32(0.5)) * F32(2.3283064365386963e-10))


def py_uniform64(seed: int, pos: int, offset: int) -> float:
    """murmur3_uniform64 and _uniform64_from_random53."""
    lo = py_hash32(seed, pos, offset)
    hi = py_hash32(seed, pos, offset, domain=0x9E3779B9)
    u = (float(((hi << 32) | lo) >> 11) + 0.5) * 1.1102230246251565e-16
    return u - 1.1102230246251565e-16 if u == 1.0 else u


def _inv(a: int) -> int:
    return pow(a, -1, 1 << 32)


def _mix_key_for(h: int, target: int) -> int:
    """The key k with _py_mix(h, k) == target (mix is a bijection in k)."""
    k2 = _rotr(((target - 0xE6546B64) * _inv(5)) & M32, 13) ^ h
    return (_rotr((k2 * _inv(0x1B873593)) & M32, 15) * _inv(0xCC9E2D51)) & M32


def _mix_state_for(key: int, target: int) -> int:
    """The state h with _py_mix(h, key) == target."""
    k2 = (_rotl((key * 0xCC9E2D51) & M32, 15) * 0x1B873593) & M32
    return _rotr(((target - 0xE6546B64) * _inv(5)) & M32, 13) ^ k2


def _fmix_inv(h: int) -> int:
    h ^= h >> 16
    h = (h * _inv(0xC2B2AE35)) & M32
    h ^= (h >> 13) ^ (h >> 26)
    h = (h * _inv(0x85EBCA6B)) & M32
    return h ^ (h >> 16)


def pos_for_hash(seed: int, token: int, target: int) -> int:
    """A position (< 2**32) whose domain-0 hash of (seed, pos, token) is target."""
    h4 = _fmix_inv(target) ^ 16
    h3 = _mix_state_for(token, h4)
    h2 = _py_mix(_py_mix(0, seed & M32), (seed >> 32) & M32)
    pos = _mix_key_for(h2, h3)
    assert py_hash32(seed, pos, token) == target
    return pos


INT64 = st.integers(-(2**63), 2**63 - 1)
SEEDS = st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32, 2**63 - 1), st.integers(-(2**63), -1), INT64)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(triples=st.lists(st.tuples(SEEDS, st.integers(0, 2**40), st.integers(0, 2**32 - 1)), min_size=1, max_size=24))
def test_murmur3_uniform_matches_python(triples):
    """cpu_ops.murmur3_uniform == a pure-Python murmur3_uniform32/64 on random
    (seed, pos, offset): seeds >= 2**32 and negative int64 seeds included."""
    seed = torch.tensor([[s] for s, _, _ in triples], dtype=torch.int64)
    pos = torch.tensor([[p] for _, p, _ in triples], dtype=torch.int64)
    off = torch.tensor([[o] for _, _, o in triples], dtype=torch.int64)
    u32 = cpu_ops.murmur3_uniform(seed, pos, off, fp64=False)
    u64 = cpu_ops.murmur3_uniform(seed, pos, off, fp64=True)
    assert u32.dtype == torch.float32 and u64.dtype == torch.float64
    assert u32.view(-1).tolist() == [py_uniform32(*t) for t in triples]
    assert u64.view(-1).tolist() == [py_uniform64(*t) for t in triples]


def test_murmur3_uniform_broadcast_and_range():
    """The sampler's shapes ([rows, 1] seed/pos against [1, vocab] tokens), and
    the range: 200k draws per path in (0, 1). At the edges: hash 0 gives
    2**-33 > 0; the top 128 hashes round to exactly 1.0 in the fp32 path (the
    kernel's murmur3_uniform32 too: its sum is the correctly rounded fp32 value
    of (r + 0.5) / 2**32), which the noise must survive (next test)."""
    gen = torch.Generator().manual_seed(0)
    rows, vocab = 2000, 100
    seed = torch.randint(-(2**63), 2**63 - 1, (rows, 1), generator=gen, dtype=torch.int64)
    pos = torch.randint(0, 2**31, (rows, 1), generator=gen, dtype=torch.int64)
    token = torch.arange(vocab, dtype=torch.int64).unsqueeze(0)
    for fp64 in (False, True):
        u = cpu_ops.murmur3_uniform(seed, pos, token, fp64)
        assert u.shape == (rows, vocab)
        assert bool((u > 0).all()) and bool((u < 1).all())
        assert abs(float(u.double().mean()) - 0.5) < 0.01
        r, c = 17, 42
        expect = (py_uniform64 if fp64 else py_uniform32)(int(seed[r, 0]), int(pos[r, 0]), c)
        assert float(u[r, c]) == expect
    s, t = -12345678901234, 3
    for target, u_expect in ((0, 2.0**-33), (M32, 1.0), (M32 - 127, 1.0), (M32 - 128, 1.0 - 2.0**-24)):
        p = pos_for_hash(s, t, target)
        u = cpu_ops.murmur3_uniform(torch.tensor([[s]]), torch.tensor([[p]]), torch.tensor([[t]]), False)
        assert float(u) == py_uniform32(s, p, t) == u_expect


def _ref_log1p_neg_stable(v: np.float32) -> np.float32:
    """_log1p_neg_stable in fp32."""
    poly = F32(1.0 / 8.0)
    for c in (1.0 / 7.0, 1.0 / 6.0, 1.0 / 5.0, 1.0 / 4.0, 1.0 / 3.0, 1.0 / 2.0, 1.0):
        poly = F32(c) + v * poly
    if v < F32(0.25):
        return -v * poly
    return np.log(np.maximum(F32(1.0) - v, F32(5.960464477539063e-08)))


def _ref_gumbel(logits, idx_mapping, temperature, seeds, positions, apply_temperature, is_drafting, use_fp64):
    """_gumbel_sample_kernel + gumbel_block_argmax + gumbel_noised_argmax for
    vocab <= BLOCK_SIZE (one block); grid num_tokens. Returns, per row, the
    noised values (the argmax is taken over them) and whether the row sampled."""
    out = []
    for token_idx, row in enumerate(logits):
        req = idx_mapping[token_idx]
        temp = F32(temperature[req]) if req >= 0 else F32(0.0)
        seed = seeds[req] if req >= 0 else 0
        pos = positions[token_idx]
        vals = [F32(x) for x in row]
        if temp != 0 and apply_temperature:
            vals = [x / temp for x in vals]  # fp32 division, before any fp64 cast
        if use_fp64:
            vals = [float(x) for x in vals]
        if temp != 0:
            if is_drafting:
                pos += 1 << 30
            for k in range(len(vals)):
                if use_fp64:
                    noise = -math.log(-math.log(py_uniform64(seed, pos, k)))
                else:
                    noise = -np.log(-_ref_log1p_neg_stable(F32(py_uniform32(seed, pos, k))))
                vals[k] = vals[k] + noise
        out.append((vals, temp != 0))
    return out


def _first_argmax(vals) -> int:
    best = max(vals)
    return next(i for i, v in enumerate(vals) if v == best)


@settings(max_examples=120, deadline=None, database=None, derandomize=True)
@given(data=st.data())
def test_gumbel_sample_matches_kernel(data):
    """Row by row against the kernel: temperature-0 and dummy (idx < 0) rows give
    exactly the argmax; sampled rows the kernel's Gumbel winner (a different
    winner only within 1e-4 of the kernel's best, fp32 series vs log1p)."""
    rng = _rng(data)
    max_num_reqs = data.draw(st.integers(1, 6), label="max_num_reqs")
    rows = data.draw(st.integers(1, 8), label="rows")
    vocab = data.draw(st.integers(1, 40), label="vocab")
    idx = [data.draw(st.integers(-1, max_num_reqs - 1), label="req") for _ in range(rows)]
    temperature = [data.draw(st.sampled_from([0.0, 0.0, 1.0, 0.5, 0.7, 1.3, 3.0]), label="temp")
                   for _ in range(max_num_reqs)]
    seeds = [data.draw(SEEDS, label="seed") for _ in range(max_num_reqs)]
    positions = [data.draw(st.integers(0, 2**31), label="pos") for _ in range(rows)]
    flags = data.draw(st.tuples(st.booleans(), st.booleans(), st.booleans()), label="flags")
    logits = torch.from_numpy(rng.normal(0, 3, (rows, vocab)).astype(np.float32))
    ref = _ref_gumbel(logits.tolist(), idx, temperature, seeds, positions, *flags)

    got = cpu_ops.gumbel_sample_cpu(logits, torch.tensor(idx, dtype=torch.int64),
                                    torch.tensor(temperature, dtype=torch.float32),
                                    torch.tensor(seeds, dtype=torch.int64), torch.tensor(positions, dtype=torch.int64),
                                    *flags)
    assert got.dtype == torch.int64 and got.shape == (rows,)
    tol = 1e-9 if flags[2] else 1e-4
    for b, (vals, sampled) in enumerate(ref):
        k = int(got[b])
        if not sampled:
            assert k == _first_argmax(logits[b].tolist()) == int(logits[b].argmax())
        else:
            assert k == _first_argmax(vals) or vals[k] >= max(vals) - tol, (b, k, vals)


def test_gumbel_noise_finite_when_fp32_uniform_is_one():
    """Hash 0xFFFFFFFF makes the fp32 uniform exactly 1.0; the kernel clamps
    1 - u at 2**-24 (noise -log(16.6) = -2.81), so a token with a large logit
    still wins. (cpu_ops used log1p(-1) = -inf: noise -inf, the token never won.)"""
    seed, token, vocab = 987654321987, 2, 5
    pos = pos_for_hash(seed, token, M32)
    logits = torch.zeros(1, vocab)
    logits[0, token] = 20.0
    args = (torch.tensor([0]), torch.tensor([1.0]), torch.tensor([seed]), torch.tensor([pos]))
    ref_vals, _ = _ref_gumbel(logits.tolist(), [0], [1.0], [seed], [pos], True, False, False)[0]
    assert _first_argmax(ref_vals) == token and math.isfinite(ref_vals[token])
    for apply_temperature in (True, False):
        assert int(cpu_ops.gumbel_sample_cpu(logits, *args, apply_temperature, False, False)) == token


def test_gumbel_fp64_divides_by_temperature_in_fp32():
    """use_fp64: the kernel divides the fp32 logits by the temperature in fp32
    (as _temperature_kernel does) and only then casts to fp64. A crafted near
    tie that the two division orders resolve differently: the kernel's wins."""
    seed, temp = 4242, 3.0
    n = 20_000
    pos = torch.arange(n, dtype=torch.int64).unsqueeze(1)
    u = cpu_ops.murmur3_uniform(torch.full((n, 1), seed), pos, torch.arange(2).unsqueeze(0), True)
    noise = (-torch.log(-torch.log(u))).tolist()
    a32 = float(F32(1.0) / F32(temp))  # token 0: logit 1.0
    a64 = 1.0 / temp
    for p, (n0, n1) in enumerate(noise):
        k = F32(a64 + n0 - n1 + (a32 - a64) / 2)  # token 1: logit 3k, 3k/3 == k exactly
        x1 = F32(3.0) * k
        if float(x1) != 3.0 * float(k) or not (a64 + n0 < float(k) + n1 < a32 + n0):
            continue
        logits = torch.tensor([[1.0, float(x1)]], dtype=torch.float32)
        ref_vals, _ = _ref_gumbel(logits.tolist(), [0], [temp], [seed], [p], True, False, True)[0]
        assert _first_argmax(ref_vals) == 0
        got = cpu_ops.gumbel_sample_cpu(logits, torch.tensor([0]), torch.tensor([temp]), torch.tensor([seed]),
                                        torch.tensor([p]), True, False, True)
        assert int(got) == 0
        return
    pytest.fail("no crafted near tie found")


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(data=st.data())
def test_gumbel_sample_batch_independent(data):
    """Same (seed, position, logits row) -> same token, whatever the slot it sits
    in, the row order and the other rows of the batch."""
    rng = _rng(data)
    k = data.draw(st.integers(1, 6), label="rows")
    vocab = data.draw(st.integers(2, 64), label="vocab")
    flags = data.draw(st.tuples(st.booleans(), st.booleans(), st.booleans()), label="flags")
    seeds = [data.draw(SEEDS, label="seed") for _ in range(k)]
    temps = [data.draw(st.sampled_from([0.0, 0.6, 1.0, 2.0]), label="temp") for _ in range(k)]
    pos = [data.draw(st.integers(0, 10**6), label="pos") for _ in range(k)]
    logits = rng.normal(0, 1, (k, vocab)).astype(np.float32)

    def run(max_num_reqs: int) -> list[int]:
        extra = int(rng.integers(0, 4))
        order = rng.permutation(k + extra)  # batch row of each (base + extra) row
        slots = rng.permutation(max_num_reqs)[:k + extra]
        temperature = torch.from_numpy(rng.uniform(0.1, 2, max_num_reqs).astype(np.float32))
        seed_t = torch.from_numpy(rng.integers(-(2**62), 2**62, max_num_reqs))
        lg = torch.from_numpy(rng.normal(0, 1, (k + extra, vocab)).astype(np.float32))
        idx = torch.empty(k + extra, dtype=torch.int64)
        pos_t = torch.from_numpy(rng.integers(0, 10**6, k + extra))
        for i in range(k + extra):
            row, slot = int(order[i]), int(slots[i])
            idx[row] = slot
            if i < k:
                temperature[slot], seed_t[slot], pos_t[row] = temps[i], seeds[i], pos[i]
                lg[row] = torch.from_numpy(logits[i])
        got = cpu_ops.gumbel_sample_cpu(lg, idx, temperature, seed_t, pos_t, *flags)
        return [int(got[int(order[i])]) for i in range(k)]

    assert run(k + 4) == run(k + 8)


def _draws(seed: int, positions: torch.Tensor, vocab: int, *, is_drafting=False, use_fp64=False,
           logits: torch.Tensor | None = None, temp: float = 1.0, apply_temperature=False) -> torch.Tensor:
    n = positions.shape[0]
    lg = torch.zeros(n, vocab) if logits is None else logits.expand(n, vocab).contiguous()
    return cpu_ops.gumbel_sample_cpu(lg, torch.zeros(n, dtype=torch.int64), torch.tensor([temp]),
                                     torch.tensor([seed]), positions, apply_temperature, is_drafting, use_fp64)


@pytest.mark.parametrize("use_fp64", [False, True])
def test_gumbel_seed_position_and_drafting_change_draws(use_fp64):
    """Over 512 positions of a flat 64-token vocabulary (1/64 chance to agree
    per draw): another seed (also one differing only in the high 32 bits, and a
    negative one), another position, and is_drafting each change almost every draw."""
    pos = torch.arange(1000, 1512)
    base = _draws(12345, pos, 64, use_fp64=use_fp64)
    assert torch.equal(base, _draws(12345, pos, 64, use_fp64=use_fp64))  # deterministic
    variants = [
        _draws(12346, pos, 64, use_fp64=use_fp64),
        _draws(12345 + 2**32, pos, 64, use_fp64=use_fp64),
        _draws(-12345, pos, 64, use_fp64=use_fp64),
        _draws(12345, pos + 1, 64, use_fp64=use_fp64),
        _draws(12345, pos, 64, use_fp64=use_fp64, is_drafting=True),
    ]
    for other in variants:
        assert float((other != base).double().mean()) > 0.9
    # Drafting is the same stream shifted by 2**30 positions.
    assert torch.equal(variants[-1], _draws(12345, pos + (1 << 30), 64, use_fp64=use_fp64))


@pytest.mark.parametrize("use_fp64", [False, True])
def test_gumbel_frequencies_match_softmax(use_fp64):
    """20000 draws (positions 0..19999, one seed) over a 5-token vocabulary at
    temperature 0.7: a chi-square statistic of the counts against
    softmax(logits / 0.7) below 18.47 (p = 0.001, 4 degrees of freedom)."""
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5, 2.0]])
    n = 20_000
    got = _draws(2024, torch.arange(n), 5, use_fp64=use_fp64, logits=logits, temp=0.7, apply_temperature=True)
    counts = torch.bincount(got, minlength=5).double()
    expected = torch.softmax(logits[0].double() / 0.7, dim=0) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.47, (counts.tolist(), expected.tolist(), chi2)


def test_gumbel_temperature_zero_and_dummy_rows_are_argmax():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 33, generator=gen)
    idx = torch.tensor([0, -1, 1, 2, -1, 0])
    temperature = torch.tensor([0.0, 0.0, 0.0])
    for flags in [(a, d, f) for a in (False, True) for d in (False, True) for f in (False, True)]:
        got = cpu_ops.gumbel_sample_cpu(logits, idx, temperature, torch.tensor([1, 2, 3]), torch.arange(6), *flags)
        assert torch.equal(got, logits.argmax(dim=1))
    temperature = torch.tensor([1.0, 1.0, 1.0])
    got = cpu_ops.gumbel_sample_cpu(logits, idx, temperature, torch.tensor([1, 2, 3]), torch.arange(6), True, False,
                                    False)
    assert int(got[1]) == int(logits[1].argmax()) and int(got[4]) == int(logits[4].argmax())


# --------------------------------------------------------------------------- logit bias


def _ref_bias(logits, idx_mapping, positions, num_allowed, allowed, num_bias, bias_ids, bias, min_lens, num_stop,
              restore, stop_ids, check_all_masked, dtype):
    """_bias_kernel; grid num_tokens. logits rows are lists of Python floats
    holding values of `dtype`; the bias is added in fp32 and stored as `dtype`.
    Returns the number of rows whose stop tokens were restored."""
    def to_dtype(v: float) -> float:
        return float(torch.tensor(v, dtype=torch.float32).to(dtype))

    restored = 0

    for token_idx, row in enumerate(logits):
        req = idx_mapping[token_idx]
        na = num_allowed[req]
        if na > 0:
            ids = allowed[req][:na]
            saved = [row[i] for i in ids]
            for i in range(len(row)):
                row[i] = -INF
            for i, v in zip(ids, saved, strict=True):
                row[i] = v
        nb = num_bias[req]
        if nb > 0:
            ids = bias_ids[req][:nb]
            new = [to_dtype(float(F32(row[i]) + F32(b))) for i, b in zip(ids, bias[req][:nb], strict=True)]
            for i, v in zip(ids, new, strict=True):
                row[i] = v
        ns = num_stop[req]
        if ns > 0 and positions[token_idx] + 1 < min_lens[req]:
            ids = stop_ids[req][:ns]
            if check_all_masked and restore[req]:
                saved = [row[i] for i in ids]
                for i in ids:
                    row[i] = -INF
                if max(row) == -INF:
                    restored += 1
                    for i, v in zip(ids, saved, strict=True):
                        if -INF < v < INF:
                            row[i] = v
            else:
                for i in ids:
                    row[i] = -INF
    return restored


@settings(max_examples=250, deadline=None, database=None, derandomize=True)
@given(data=st.data())
def test_apply_logit_bias(data):
    """allowed_token_ids (duplicates, token 0), logit_bias (unique ids per request,
    as the runner builds them from a dict), min_tokens stop masking and the
    restore of a fully masked row, check_all_masked_rows True/False; rows of the
    same request (spec decode) at different positions; stale list entries past
    each count ignored. Exact equality (same fp32 add, same rounding)."""
    rng = _rng(data)
    max_num_reqs = data.draw(st.integers(1, 6), label="max_num_reqs")
    rows = data.draw(st.integers(1, 8), label="rows")
    vocab = data.draw(st.integers(1, 12), label="vocab")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float32, torch.bfloat16]), label="dtype")
    check = data.draw(st.booleans(), label="check_all_masked_rows")
    ka, kb, ks = 6, 5, 4  # list widths (the runner's are 1024/1024/128)
    tok = st.one_of(st.just(0), st.integers(0, vocab - 1))
    idx = [data.draw(st.integers(0, max_num_reqs - 1), label="req") for _ in range(rows)]
    positions = [data.draw(st.integers(0, 30), label="pos") for _ in range(rows)]
    num_allowed, allowed, num_bias, bias_ids, num_stop, stop = [], [], [], [], [], []
    for _ in range(max_num_reqs):
        na = data.draw(st.sampled_from([0, 0, *range(1, ka + 1)]), label="num_allowed")
        num_allowed.append(na)
        allowed.append(data.draw(st.lists(tok, min_size=na, max_size=na)) + rng.integers(0, vocab, ka - na).tolist())
        nb = data.draw(st.integers(0, min(kb, vocab)), label="num_logit_bias")
        num_bias.append(nb)
        bias_ids.append(data.draw(st.permutations(range(vocab)))[:nb] + rng.integers(0, vocab, kb - nb).tolist())
        nst = data.draw(st.sampled_from([0, *range(1, ks + 1)]), label="num_stop")
        num_stop.append(nst)
        stop.append(data.draw(st.lists(tok, min_size=nst, max_size=nst)) + rng.integers(0, vocab, ks - nst).tolist())
    bias = rng.normal(0, 3, (max_num_reqs, kb)).astype(np.float32)
    min_lens = rng.integers(0, 35, max_num_reqs).tolist()
    restore = rng.integers(0, 2, max_num_reqs).tolist()
    lg = rng.normal(0, 2, (rows, vocab)).astype(np.float32)
    lg[rng.random((rows, vocab)) < 0.15] = -INF
    lg[rng.random((rows, vocab)) < 0.03] = INF
    logits = torch.from_numpy(lg).to(dtype)
    ref = logits.float().tolist()
    restored = _ref_bias(ref, idx, positions, num_allowed, allowed, num_bias, bias_ids, bias.tolist(), min_lens, num_stop,
              restore, stop, check, dtype)
    event("a fully masked row restored" if restored else "no restore")

    def i32(x):
        return torch.tensor(x, dtype=torch.int32)

    cpu_ops.apply_logit_bias_cpu(logits, torch.tensor(idx, dtype=torch.int64), torch.tensor(positions),
                                 i32(num_allowed), i32(allowed), i32(num_bias), i32(bias_ids), torch.from_numpy(bias),
                                 i32(min_lens), i32(num_stop), i32(restore), i32(stop), check)
    assert logits.dtype == dtype
    assert torch.equal(logits, torch.tensor(ref, dtype=torch.float32).to(dtype)), (logits, ref)


def test_apply_logit_bias_duplicate_bias_ids():
    """Duplicate ids in one request's logit_bias list: the kernel loads each
    lane's logit, adds that lane's bias and stores, so the surviving value is
    the original plus one of the duplicates' biases (which lane wins is not
    specified) - never their sum."""
    logits = torch.tensor([[0.5, 1.0, 2.0, -1.0]] * 2)
    original = logits.clone()
    ids = torch.tensor([[0, 2, 0, 3, 0]], dtype=torch.int32)
    bias = torch.tensor([[1.0, 10.0, 100.0, -2.0, 1000.0]])
    zeros = torch.zeros(1, dtype=torch.int32)
    cpu_ops.apply_logit_bias_cpu(logits, torch.tensor([0, 0]), torch.tensor([0, 1]), zeros,
                                 torch.zeros(1, 1, dtype=torch.int32), torch.tensor([5], dtype=torch.int32), ids, bias,
                                 zeros, zeros, zeros, torch.zeros(1, 1, dtype=torch.int32), True)
    for r in range(2):
        assert float(logits[r, 0]) in {0.5 + 1.0, 0.5 + 100.0, 0.5 + 1000.0}
        assert float(logits[r, 1]) == float(original[r, 1])
        assert float(logits[r, 2]) == 12.0 and float(logits[r, 3]) == -3.0


def test_apply_logit_bias_restores_fully_masked_row():
    """min_tokens masks the only allowed tokens: restored (finite originals only)
    when the request asks and the caller checks; -inf otherwise."""
    def run(restore: int, check: bool) -> torch.Tensor:
        logits = torch.tensor([[3.0, -INF, 1.0, 2.0]])
        one = torch.ones(1, dtype=torch.int32)
        cpu_ops.apply_logit_bias_cpu(
            logits, torch.tensor([0]), torch.tensor([0]), torch.tensor([3], dtype=torch.int32),
            torch.tensor([[1, 2, 2]], dtype=torch.int32), torch.zeros(1, dtype=torch.int32),
            torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, 1), torch.tensor([5], dtype=torch.int32),
            torch.tensor([3], dtype=torch.int32), one * restore, torch.tensor([[2, 1, 0]], dtype=torch.int32), check)
        return logits

    assert run(1, True).tolist() == [[-INF, -INF, 1.0, -INF]]
    assert run(0, True).tolist() == [[-INF] * 4]
    assert run(1, False).tolist() == [[-INF] * 4]


# --- bounded cost of sampling (review finding: noise for every row at once) ---

class _LargestTensor:
    """Largest tensor (elements) any op creates inside the block."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in (out if isinstance(out, (tuple, list)) else (out,)):
                    if isinstance(t, torch.Tensor):
                        outer.largest = max(outer.largest, t.numel())
                return out

        self.largest = 0
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


class _PeakLiveBytes:
    """Peak bytes of the tensors the ops inside the block allocate and that are
    alive at once (views and in-place results are not allocations; a tensor
    counts until Python frees it)."""

    def __enter__(self):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        def free(nbytes):
            outer.live -= nbytes

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                          if isinstance(a, torch.Tensor)}
                for t in (out if isinstance(out, (tuple, list)) else (out,)):
                    if not isinstance(t, torch.Tensor) or t._base is not None:
                        continue
                    storage = t.untyped_storage()
                    if storage.data_ptr() in inputs or storage.nbytes() == 0:
                        continue
                    outer.live += storage.nbytes()
                    outer.peak = max(outer.peak, outer.live)
                    weakref.finalize(t, free, storage.nbytes())
                return out

        self.live = self.peak = 0
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


@pytest.mark.parametrize("use_fp64", [False, True])
def test_gumbel_noise_is_drawn_in_bounded_slices_for_sampling_rows_only(monkeypatch, use_fp64):
    """64 rows x 4096 tokens, half of them greedy: with the slice set to 8192
    elements no tensor larger than one slice is made (the hash's int64
    temporaries included), the winners equal one unsliced draw, and unsliced
    the noise covers the sampling rows only."""
    rows, vocab = 64, 4096
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(rows, vocab, generator=g)
    idx = torch.randperm(rows, generator=g).to(torch.int32)
    temperature = torch.where(torch.arange(rows) % 2 == 0, 0.0, 0.8).float()
    seeds = torch.randint(0, 2**40, (rows,), generator=g)
    positions = torch.randint(0, 500, (rows,), generator=g)
    args = (logits, idx, temperature, seeds, positions, True, False, use_fp64)
    whole = cpu_ops.gumbel_sample_cpu(*args)
    monkeypatch.setattr(cpu_ops, "NOISE_CHUNK_ELEMENTS", 2 * vocab)
    with _LargestTensor() as probe:
        sliced = cpu_ops.gumbel_sample_cpu(*args)
    assert torch.equal(whole, sliced)
    greedy = temperature[idx.long()] == 0
    assert torch.equal(sliced[greedy], logits[greedy].argmax(dim=1))
    # every tensor made is at most one slice (2 rows) of noise
    assert probe.largest <= 2 * vocab, probe.largest
    monkeypatch.setattr(cpu_ops, "NOISE_CHUNK_ELEMENTS", 1 << 30)
    with _LargestTensor() as unbounded:
        cpu_ops.gumbel_sample_cpu(*args)
    # unsliced, noise is drawn for the 32 sampling rows only (half the batch)
    assert unbounded.largest <= rows // 2 * vocab, unbounded.largest


def test_dummy_rows_borrow_no_requests_logit_bias():
    """A row of a dummy request (index -1) is left as it is, even when slot 0
    holds allowed tokens, a bias and min_tokens."""
    vocab, slots = 8, 2
    logits = torch.zeros(2, vocab)
    mapping = torch.tensor([-1, 0], dtype=torch.int32)
    allowed = torch.zeros(slots, 4, dtype=torch.int32)
    allowed[0, 0] = 3
    bias_ids = torch.zeros(slots, 4, dtype=torch.int32)
    bias_ids[0, 0] = 5
    bias = torch.zeros(slots, 4)
    bias[0, 0] = 2.0
    stop = torch.zeros(slots, 4, dtype=torch.int32)
    stop[0, 0] = 3
    cpu_ops.apply_logit_bias_cpu(
        logits, mapping, torch.tensor([0, 0]),
        torch.tensor([1, 0], dtype=torch.int32), allowed,
        torch.tensor([1, 0], dtype=torch.int32), bias_ids, bias,
        torch.tensor([5, 0], dtype=torch.int32), torch.tensor([1, 0], dtype=torch.int32),
        torch.tensor([0, 0], dtype=torch.int32), stop, True)
    assert torch.equal(logits[0], torch.zeros(vocab))
    assert torch.isinf(logits[1]).sum() == vocab  # slot 0: only 3 allowed, then 3 masked as a stop token
