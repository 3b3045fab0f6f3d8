"""Idle intervals are merged: at most one record per VLLM_PLUGIN_STATS_IDLE_S (issue 17)."""

from __future__ import annotations

import time

import pytest
from helpers import finish, iteration, read, sched

from vllm_plugin_stats.logger import JsonlStatLogger


def _busy(lg: JsonlStatLogger) -> None:
    it = iteration(gen=4, prompt=6)
    finish(it, "r", arrival_ago=0.2, queued=0.01, prefill=0.02, decode=0.1, gen_tokens=4)
    lg.record(sched(running=1, waiting=0), it)


def _idle_logs(lg: JsonlStatLogger, n: int, every: float = 0.05) -> None:
    for _ in range(n):
        time.sleep(every)
        lg.record(sched(running=0, waiting=0, skipped=0, usage=0.0), iteration())
        lg.log()


def test_idle_intervals_coalesce_and_keep_the_span(vllm_config, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_PLUGIN_STATS_IDLE_S", "0.3")
    out = tmp_path / "s.jsonl"
    lg = JsonlStatLogger(vllm_config, path=str(out))
    lg.log_engine_initialized()
    _busy(lg)
    lg.log()
    _idle_logs(lg, 20)  # 1 s idle: about 3 merged records, not 20
    _busy(lg)
    lg.log()
    lg.close()
    recs = read(out)
    intervals = [r for r in recs if r["type"] == "interval"]
    idle = [r for r in intervals if r["idle"]]
    assert not intervals[0]["idle"] and not intervals[-1]["idle"]
    assert 2 <= len(idle) <= 4
    assert sum(r["coalesced"] for r in idle) == 20
    assert all(r["interval_s"] >= 0.3 for r in idle[:-1])  # the last one ends when work resumes
    assert all(r["running"] == 0 and r["generation_tokens"] == 0 for r in idle)
    stop = recs[-1]
    assert stop["intervals"] == len(intervals)
    assert sum(r["interval_s"] for r in intervals) == pytest.approx(stop["uptime_s"], abs=0.05)
    assert stop["idle_s"] == pytest.approx(sum(r["interval_s"] for r in idle), abs=0.01)


def test_idle_s_zero_writes_every_interval(vllm_config, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_PLUGIN_STATS_IDLE_S", "0")
    out = tmp_path / "s.jsonl"
    lg = JsonlStatLogger(vllm_config, path=str(out))
    _idle_logs(lg, 5, every=0.0)
    lg.close()
    intervals = [r for r in read(out) if r["type"] == "interval"]
    assert len(intervals) == 5 and all(r["idle"] and r["coalesced"] == 1 for r in intervals)


def test_idle_default_one_record_per_minute(vllm_config, tmp_path):
    """Default 60 s: a quiet server logging every second writes nothing new
    until work arrives, then one record carrying the whole idle span."""
    out = tmp_path / "s.jsonl"
    lg = JsonlStatLogger(vllm_config, path=str(out))
    _idle_logs(lg, 30, every=0.0)
    assert lg._writer.flush(5)
    assert [r["type"] for r in read(out)] == ["start"]
    _busy(lg)
    lg.log()
    lg.close()
    intervals = [r for r in read(out) if r["type"] == "interval"]
    assert [r["idle"] for r in intervals] == [True, False] and intervals[0]["coalesced"] == 30


def test_close_while_idle_writes_the_held_span(vllm_config, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_PLUGIN_STATS_IDLE_S", "100")
    out = tmp_path / "s.jsonl"
    lg = JsonlStatLogger(vllm_config, path=str(out))
    _busy(lg)
    lg.log()
    _idle_logs(lg, 4)
    lg.close()
    recs = read(out)
    assert [(r["type"], r.get("idle")) for r in recs] == [
        ("start", None), ("interval", False), ("interval", True), ("stop", None)]
    assert recs[2]["coalesced"] == 5  # four log() calls and the tail at close
