"""Builders of real vLLM stats objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vllm.v1.engine import FinishReason
from vllm.v1.metrics.stats import (
    IterationStats,
    PrefixCacheStats,
    RequestStateStats,
    SchedulerStats,
)
from vllm.v1.spec_decode.metrics import SpecDecodingStats


def sched(running=3, waiting=2, skipped=1, usage=0.25, queries=0, hits=0, spec=None) -> SchedulerStats:
    pcs = PrefixCacheStats()
    if queries:
        pcs.record(num_tokens=queries, num_hits=hits, preempted=False)
    return SchedulerStats(
        num_running_reqs=running,
        num_waiting_reqs=waiting,
        num_skipped_waiting_reqs=skipped,
        kv_cache_usage=usage,
        prefix_cache_stats=pcs,
        spec_decoding_stats=spec,
    )


def spec_stats(drafts: int, draft_tokens: int, accepted: int) -> SpecDecodingStats:
    sd = SpecDecodingStats.new(num_spec_tokens=4)
    sd.num_drafts = drafts
    sd.num_draft_tokens = draft_tokens
    sd.num_accepted_tokens = accepted
    return sd


def finish(it: IterationStats, rid: str, *, arrival_ago: float, queued: float, prefill: float,
           decode: float, gen_tokens: int, prompt_tokens: int = 10,
           reason: FinishReason = FinishReason.STOP, cached: int = 0) -> None:
    """Finish one request through vLLM's own IterationStats method."""
    t = it.iteration_timestamp
    rs = RequestStateStats()
    rs.arrival_time = t - arrival_ago
    rs.queued_ts = 100.0
    rs.scheduled_ts = 100.0 + queued
    rs.first_token_ts = rs.scheduled_ts + prefill
    rs.last_token_ts = rs.first_token_ts + decode
    rs.num_generation_tokens = gen_tokens
    it.update_from_finished_request(
        finish_reason=reason,
        request_id=rid,
        num_prompt_tokens=prompt_tokens,
        max_tokens_param=64,
        req_stats=rs,
        num_cached_tokens=cached,
    )


def iteration(gen=0, prompt=0, cached=0, preempted=0, ttfts=()) -> IterationStats:
    it = IterationStats()
    it.num_generation_tokens = gen
    it.prompt_token_stats.total = prompt
    it.prompt_token_stats.cached_tokens = cached
    it.prompt_token_stats.computed = prompt - cached
    it.num_preempted_reqs = preempted
    it.time_to_first_tokens_iter.extend(ttfts)
    return it


def read(path: Path | str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]
