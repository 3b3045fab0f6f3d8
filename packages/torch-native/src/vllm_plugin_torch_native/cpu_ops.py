"""The step ops of vLLM's standalone CPU model runner, in plain PyTorch.

vLLM 0.34's ``StandaloneCPUModelRunner`` (``vllm/v1/worker/cpu/``) builds each
step's inputs and samples through ``vllm._cpu_ops``, thin wrappers of C++ ops
(``torch.ops._C.*_cpu``) that only vLLM's CPU build has. This module offers
the same functions, same signatures and same in-place contracts, written as
batched tensor ops (no Python loop over requests or tokens; Gumbel noise loops only over bounded slices of rows); :mod:`.runner`
points the runner's modules at it. Semantics follow the V2 GPU runner's Triton
kernels of the same names (``vllm/v1/worker/gpu/input_batch.py``,
``block_table.py``, ``sample/gumbel.py``, ``sample/logit_bias.py``,
``sample/prompt_logprob.py``).

Every op runs on the runner's device, the CPU: reading a step's token count
(``int(query_start_loc[n])``) is a read of host memory, not a device sync.
"""

from __future__ import annotations

import torch

__all__ = [
    "apply_logit_bias_cpu", "combine_sampled_and_draft_tokens_cpu", "compute_slot_mapping_cpu",
    "gather_block_table_cpu", "get_prompt_logprobs_token_ids_cpu", "gumbel_sample_cpu",
    "post_update_cpu", "prepare_mrope_positions_cpu", "prepare_pos_seq_lens_cpu",
    "prepare_prefill_inputs_cpu",
]

#: Offset added to a drafting step's position before drawing noise (vLLM's
#: ``_DRAFT_NOISE_SALT``), so a draft and its verification draw differently.
DRAFT_NOISE_SALT = 1 << 30
_M32 = 0xFFFFFFFF


def _token_rows(query_start_loc: torch.Tensor, num_reqs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch row, offset in that row's query) of each of the step's tokens."""
    qsl = query_start_loc[:num_reqs + 1].long()
    lens = qsl[1:] - qsl[:-1]
    total = int(qsl[-1]) if num_reqs else 0
    rows = torch.repeat_interleave(torch.arange(num_reqs, device=qsl.device), lens, output_size=total)
    offsets = torch.arange(total, device=qsl.device) - qsl[rows]
    return rows, offsets


def gather_block_table_cpu(block_table: torch.Tensor, output: torch.Tensor, idx_mapping: torch.Tensor,
                           num_blocks: torch.Tensor, num_reqs_padded: int) -> None:
    """``output[b, :num_blocks[r]] = block_table[r, :num_blocks[r]]`` for ``r =
    idx_mapping[b]`` (the row's later entries are left as they are, as in the
    kernel; the runner zeroes them first); rows ``num_reqs..num_reqs_padded``
    (and rows of a negative index) become 0."""
    n = idx_mapping.shape[0]
    width = min(output.shape[1], block_table.shape[1])
    req = idx_mapping.long()
    real = req >= 0
    req = req.clamp(min=0)
    src = block_table[req, :width]
    keep = (torch.arange(width, device=src.device).unsqueeze(0) < num_blocks[req].unsqueeze(1)) & real.unsqueeze(1)
    output[:n, :width] = torch.where(keep, src, torch.where(real.unsqueeze(1), output[:n, :width], 0))
    output[:n, width:].masked_fill_(~real.unsqueeze(1), 0)
    output[n:num_reqs_padded] = 0


def compute_slot_mapping_cpu(block_table: torch.Tensor, slot_mapping: torch.Tensor, idx_mapping: torch.Tensor,
                             query_start_loc: torch.Tensor, positions: torch.Tensor, block_size: int,
                             mapping_enabled: bool, pad_slot_id: int) -> None:
    """KV-cache slot of each scheduled token; ``pad_slot_id`` for tokens of a
    dummy request (negative index), past the step's last token, or when the
    group has no slot mapping."""
    num_reqs = idx_mapping.shape[0]
    rows, _ = _token_rows(query_start_loc, num_reqs)
    total = rows.shape[0]
    if mapping_enabled and total:
        req = idx_mapping.long()[rows]
        real = req >= 0
        pos = positions[:total].long()
        block_idx = torch.where(real, torch.div(pos, block_size, rounding_mode="floor"), 0)
        blocks = block_table[req.clamp(min=0), block_idx].long()
        slots = blocks * block_size + pos % block_size
        slot_mapping[:total] = torch.where(real, slots, torch.full_like(slots, pad_slot_id))
    else:
        slot_mapping[:total] = pad_slot_id
    slot_mapping[total:] = pad_slot_id


def prepare_prefill_inputs_cpu(input_ids: torch.Tensor, next_prefill_tokens: torch.Tensor,
                               idx_mapping: torch.Tensor, query_start_loc: torch.Tensor,
                               all_token_ids: torch.Tensor, prefill_len: torch.Tensor,
                               num_computed_tokens: torch.Tensor) -> None:
    """Copy each prefilling request's scheduled prompt tokens into ``input_ids``
    and its next ``L`` prompt tokens (0 past the prompt) into
    ``next_prefill_tokens[:, req]`` (``L = next_prefill_tokens.shape[0]``)."""
    num_reqs = idx_mapping.shape[0]
    req_b = idx_mapping.long()
    done_b = num_computed_tokens[req_b].long()
    prefilling_b = done_b < prefill_len[req_b].long()
    rows, offsets = _token_rows(query_start_loc, num_reqs)
    if rows.numel():
        req = req_b[rows]
        col = (done_b[rows] + offsets).clamp(max=all_token_ids.shape[1] - 1)
        tokens = all_token_ids[req, col].to(input_ids.dtype)
        total = rows.shape[0]
        input_ids[:total] = torch.where(prefilling_b[rows], tokens, input_ids[:total])
    lookahead = next_prefill_tokens.shape[0]
    if lookahead and num_reqs:
        qsl = query_start_loc[:num_reqs + 1].long()
        ahead = done_b.unsqueeze(0) + (qsl[1:] - qsl[:-1]).unsqueeze(0) + torch.arange(
            lookahead, device=qsl.device).unsqueeze(1)  # [L, num_reqs]
        in_prompt = ahead < prefill_len[req_b].long().unsqueeze(0)
        tokens = all_token_ids[req_b.unsqueeze(0).expand_as(ahead), ahead.clamp(max=all_token_ids.shape[1] - 1)]
        tokens = torch.where(in_prompt, tokens, torch.zeros_like(tokens)).to(next_prefill_tokens.dtype)
        current = next_prefill_tokens[:, req_b]
        next_prefill_tokens[:, req_b] = torch.where(prefilling_b.unsqueeze(0), tokens, current)


def get_prompt_logprobs_token_ids_cpu(num_tokens: int, query_start_loc: torch.Tensor, idx_mapping: torch.Tensor,
                                      num_computed_tokens: torch.Tensor, all_token_ids: torch.Tensor) -> torch.Tensor:
    """The token each scheduled position predicts (the next one in its request), int64."""
    out = torch.zeros(num_tokens, dtype=torch.int64, device=idx_mapping.device)
    rows, offsets = _token_rows(query_start_loc, idx_mapping.shape[0])
    if rows.numel():
        req = idx_mapping.long()[rows]
        col = (num_computed_tokens[req].long() + 1 + offsets).clamp(max=all_token_ids.shape[1] - 1)
        out[:rows.shape[0]] = all_token_ids[req, col].long()
    return out


def prepare_pos_seq_lens_cpu(idx_mapping: torch.Tensor, query_start_loc: torch.Tensor,
                             num_computed_tokens: torch.Tensor, pos: torch.Tensor, seq_lens: torch.Tensor) -> None:
    """Positions of the scheduled tokens and each row's sequence length (0 for padding rows)."""
    num_reqs = idx_mapping.shape[0]
    done_b = num_computed_tokens[idx_mapping.long()].long()
    qsl = query_start_loc[:num_reqs + 1].long()
    seq_lens[:num_reqs] = (done_b + qsl[1:] - qsl[:-1]).to(seq_lens.dtype)
    seq_lens[num_reqs:] = 0
    rows, offsets = _token_rows(query_start_loc, num_reqs)
    pos[:rows.shape[0]] = (done_b[rows] + offsets).to(pos.dtype)


def prepare_mrope_positions_cpu(*args: object, **kwargs: object) -> None:
    """M-RoPE (multimodal) positions: not provided; the platform refuses M-RoPE models at start."""
    raise NotImplementedError("torch_native platform: M-RoPE models are refused at start")


def combine_sampled_and_draft_tokens_cpu(input_ids: torch.Tensor, idx_mapping: torch.Tensor,
                                         last_sampled_tokens: torch.Tensor, query_start_loc: torch.Tensor,
                                         seq_lens: torch.Tensor, prefill_len: torch.Tensor,
                                         draft_tokens: torch.Tensor, cu_num_logits: torch.Tensor, num_logits: int,
                                         num_new_sampled_tokens: int) -> torch.Tensor:
    """Write each decoding row's last sampled token and its draft tokens into
    ``input_ids``; return the positions of the logits to compute (int64)."""
    num_reqs = idx_mapping.shape[0]
    dev = input_ids.device
    req_b = idx_mapping.long()
    cu = cu_num_logits[:num_reqs + 1].long()
    n_logits_b = cu[1:] - cu[:-1]
    q_end_b = query_start_loc[1:num_reqs + 1].long()
    first_b = q_end_b - n_logits_b
    row_of = torch.repeat_interleave(torch.arange(num_reqs, device=dev), n_logits_b, output_size=num_logits)
    logits_indices = first_b[row_of] + torch.arange(num_logits, device=dev) - cu[row_of]
    seq_b = seq_lens[:num_reqs].long()
    prompt_b = prefill_len[req_b].long()
    decoding_b = seq_b > prompt_b
    if num_new_sampled_tokens > 0:
        write = decoding_b & (seq_b - n_logits_b >= prompt_b)
        target = first_b[write]
        input_ids[target] = last_sampled_tokens.view(-1)[req_b[write]].to(input_ids.dtype)
    if draft_tokens.numel() and num_logits:
        n_draft_b = torch.where(decoding_b, n_logits_b - num_new_sampled_tokens, torch.zeros_like(n_logits_b))
        width = draft_tokens.shape[-1]
        j = torch.arange(width, device=dev).unsqueeze(0)
        mask = j < n_draft_b.unsqueeze(1)
        target = (q_end_b - n_draft_b).unsqueeze(1) + j
        values = draft_tokens[req_b].to(input_ids.dtype)
        input_ids[target[mask]] = values[mask]
    return logits_indices


def post_update_cpu(idx_mapping: torch.Tensor, num_computed_tokens: torch.Tensor,
                    last_sampled_tokens: torch.Tensor, output_bin_counts: torch.Tensor | None,
                    sampled_tokens: torch.Tensor, num_sampled: torch.Tensor, num_rejected: torch.Tensor,
                    query_start_loc: torch.Tensor | None, all_token_ids: torch.Tensor,
                    total_len: torch.Tensor) -> None:
    """After sampling: append each row's sampled tokens to its request
    (``all_token_ids``, ``total_len``, ``last_sampled_tokens``, output counts)
    and advance ``num_computed_tokens`` by the query length minus rejections.
    Rows with a negative index are skipped."""
    req_all = idx_mapping.long()
    real = req_all >= 0
    req = req_all[real]
    if req.numel() == 0:
        return
    ns = num_sampled[real].long()
    tokens = sampled_tokens[real]
    start = total_len[req].long()
    j = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
    mask = j < ns.unsqueeze(1)
    req_2d = req.unsqueeze(1).expand_as(tokens)
    cols = (start.unsqueeze(1) + j)
    all_token_ids[req_2d[mask], cols[mask]] = tokens[mask].to(all_token_ids.dtype)
    if output_bin_counts is not None:
        ones = torch.ones(int(mask.sum()), dtype=output_bin_counts.dtype, device=output_bin_counts.device)
        output_bin_counts.index_put_((req_2d[mask], tokens[mask].long()), ones, accumulate=True)
    has = ns > 0
    last = tokens.gather(1, (ns - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    last_sampled_tokens.view(-1)[req[has]] = last[has].to(last_sampled_tokens.dtype)
    total_len[req] = (start + ns).to(total_len.dtype)
    if query_start_loc is None:
        qlen = torch.zeros_like(ns)
    else:
        qsl = query_start_loc[:idx_mapping.shape[0] + 1].long()
        qlen = (qsl[1:] - qsl[:-1])[real]
    delta = qlen - num_rejected[real].long()
    num_computed_tokens[req] = (num_computed_tokens[req].long() + delta).to(num_computed_tokens.dtype)


def _mix(h: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    key = (key * 0xCC9E2D51) & _M32
    key = ((key << 15) | (key >> 17)) & _M32
    key = (key * 0x1B873593) & _M32
    h = h ^ key
    h = ((h << 13) | (h >> 19)) & _M32
    return (h * 5 + 0xE6546B64) & _M32


def _fmix(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def murmur3_uniform(seed: torch.Tensor, pos: torch.Tensor, token: torch.Tensor, fp64: bool) -> torch.Tensor:
    """Uniform in (0, 1) per (seed, position, token id), murmur3-hashed as vLLM's
    V2 sampler does, so a seeded request draws the same noise in any batch."""
    def hash32(domain: int) -> torch.Tensor:
        h = torch.full_like(seed, domain)
        h = _mix(h, seed & _M32)
        h = _mix(h, (seed >> 32) & _M32)
        h = _mix(h, pos & _M32)
        h = _mix(h.expand_as(token) if h.dim() < token.dim() else h, token & _M32)
        return _fmix(h ^ 16)

    lo = hash32(0)
    if not fp64:
        return (lo >> 16).float() * 1.52587890625e-05 + ((lo & 0xFFFF).float() + 0.5) * 2.3283064365386963e-10
    hi = hash32(0x9E3779B9)
    r53 = (hi << 21) | (lo >> 11)  # ((hi << 32) | lo) >> 11 in uint64, without int64 overflow
    u = (r53.double() + 0.5) * 1.1102230246251565e-16
    return torch.where(u == 1.0, u - 1.1102230246251565e-16, u)


#: Most elements (rows x vocabulary) of noise drawn at once: the hash keeps a
#: few int64 temporaries of that size, so a step of 256 rows x 152k tokens
#: works in bounded slices instead of gigabytes at once.
NOISE_CHUNK_ELEMENTS = 1 << 22


def _gumbel_rows(logits: torch.Tensor, temp: torch.Tensor, seed: torch.Tensor, pos: torch.Tensor,
                 apply_temperature: bool, use_fp64: bool) -> torch.Tensor:
    """Gumbel-max winners of some rows (all with temperature != 0)."""
    x = logits.float()
    if apply_temperature:  # in fp32, before any fp64 cast, as the kernel
        x = x / temp.unsqueeze(1)
    if use_fp64:
        x = x.double()
    token = torch.arange(x.shape[1], device=x.device, dtype=torch.long).unsqueeze(0)
    u = murmur3_uniform(seed.unsqueeze(1), pos.unsqueeze(1), token, use_fp64).to(x.dtype)
    if use_fp64:
        noise = -torch.log(-torch.log(u))
    else:  # the kernel's _log1p_neg_stable: 1 - u clamped at 2**-24 (u can round to 1.0 in fp32)
        direct = torch.log(torch.clamp(1.0 - u, min=5.960464477539063e-08))
        noise = -torch.log(-torch.where(u < 0.25, torch.log1p(-u), direct))
    return (x + noise).argmax(dim=1)


def gumbel_sample_cpu(logits: torch.Tensor, expanded_idx_mapping: torch.Tensor, temperature: torch.Tensor,
                      seeds: torch.Tensor, positions: torch.Tensor, apply_temperature: bool,
                      is_drafting: bool, use_fp64: bool) -> torch.Tensor:
    """Token per row: argmax at temperature 0, else Gumbel-max sampling with
    noise seeded by (request seed, position, token id). Returns int64.

    Noise is drawn only for the rows that sample, at most
    :data:`NOISE_CHUNK_ELEMENTS` at a time: memory stays a bounded slice
    whatever the batch, and greedy rows cost one argmax."""
    req = expanded_idx_mapping.long()
    real = req >= 0
    req = req.clamp(min=0)
    temp = torch.where(real, temperature[req].float(), torch.zeros((), device=logits.device))
    out = logits.argmax(dim=1)
    rows = (temp != 0).nonzero().squeeze(1)  # the runner's device is the CPU: no device sync
    if rows.numel() == 0:
        return out
    seed = seeds[req].long()
    pos = positions.long() + (DRAFT_NOISE_SALT if is_drafting else 0)
    step = max(1, NOISE_CHUNK_ELEMENTS // max(1, logits.shape[1]))
    for start in range(0, rows.numel(), step):  # slices of rows, not one iteration per row
        part = rows[start:start + step]
        out[part] = _gumbel_rows(logits[part], temp[part], seed[part], pos[part], apply_temperature, use_fp64)
    return out


def apply_logit_bias_cpu(logits: torch.Tensor, expanded_idx_mapping: torch.Tensor, positions: torch.Tensor,
                         num_allowed_token_ids: torch.Tensor, allowed_token_ids: torch.Tensor,
                         num_logit_bias: torch.Tensor, logit_bias_token_ids: torch.Tensor,
                         logit_bias: torch.Tensor, min_lens: torch.Tensor, num_stop_token_ids: torch.Tensor,
                         restore_when_all_masked: torch.Tensor, stop_token_ids: torch.Tensor,
                         check_all_masked_rows: bool) -> None:
    """In place, per row: keep only ``allowed_token_ids`` (others -inf), add
    ``logit_bias``, and mask stop tokens before ``min_tokens`` (restoring them
    where that would mask the whole row and the request asks so)."""
    real = expanded_idx_mapping.long() >= 0  # dummy rows (-1) borrow no request's lists
    req = expanded_idx_mapping.long().clamp(min=0)
    dev = logits.device
    row = torch.arange(logits.shape[0], device=dev).unsqueeze(1)

    def listed(count: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, token id) of each listed entry of the rows selected."""
        keep = (torch.arange(ids.shape[1], device=dev).unsqueeze(0) < count.unsqueeze(1)) & rows.unsqueeze(1)
        return row.expand_as(ids)[keep], ids[keep].long()

    # Allowed token ids: every other token of the row to -inf.
    n_allowed = num_allowed_token_ids[req].long()
    rows = (n_allowed > 0) & real
    if bool(rows.any()):
        r, t = listed(n_allowed, allowed_token_ids[req], rows)
        saved = logits[r, t]
        logits.masked_fill_(rows.unsqueeze(1), float("-inf"))
        logits[r, t] = saved
    # Logit bias.
    n_bias = num_logit_bias[req].long()
    rows = (n_bias > 0) & real
    if bool(rows.any()):
        keep = (torch.arange(logit_bias.shape[1], device=dev).unsqueeze(0) < n_bias.unsqueeze(1)) & rows.unsqueeze(1)
        r, t = listed(n_bias, logit_bias_token_ids[req], rows)
        acc = torch.promote_types(logits.dtype, logit_bias.dtype)
        logits[r, t] = (logits[r, t].to(acc) + logit_bias[req][keep].to(acc)).to(logits.dtype)
    # Min tokens: stop tokens masked while pos + 1 < min_len.
    n_stop = num_stop_token_ids[req].long()
    rows = (n_stop > 0) & (positions.long() + 1 < min_lens[req].long()) & real
    if bool(rows.any()):
        r, t = listed(n_stop, stop_token_ids[req], rows)
        original = logits[r, t]
        logits[r, t] = float("-inf")
        if check_all_masked_rows:
            restore = (restore_when_all_masked[req] != 0) & rows & (logits.amax(dim=1) == float("-inf"))
            put = restore[r] & torch.isfinite(original)
            logits[r[put], t[put]] = original[put]
