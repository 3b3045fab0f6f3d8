"""Unit tests of JsonlStatLogger with real vLLM stats objects (no engine)."""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from helpers import finish, iteration, read, sched, spec_stats
from vllm.v1.engine import FinishReason
from vllm.v1.metrics.loggers import StatLoggerBase

from vllm_plugin_stats import _writer
from vllm_plugin_stats.logger import JsonlStatLogger, summarize

HEAD = {"schema", "type", "ts", "engine"}
START_FIELDS = {
    "vllm_version", "plugin_version", "pid", "model", "served_model_name", "dtype",
    "max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size", "num_gpu_blocks",
    "kv_cache_dtype", "enable_prefix_caching", "tensor_parallel_size", "pipeline_parallel_size",
    "data_parallel_size", "device", "speculative_method", "num_speculative_tokens",
}
INTERVAL_FIELDS = {
    "interval_s", "running", "waiting", "waiting_deferred", "kv_cache_usage", "prefix_cache",
    "prompt_tokens", "prompt_tokens_cached", "generation_tokens", "prompt_throughput",
    "generation_throughput", "preemptions", "finished_requests", "finish_reasons", "ttft_s",
    "tpot_s", "e2e_latency_s", "queue_time_s", "spec_decode", "dropped_records", "idle", "coalesced",
}
REQUEST_FIELDS = {
    "request_id", "finish_reason", "prompt_tokens", "generation_tokens", "cached_tokens",
    "max_tokens", "preemptions", "e2e_latency_s", "ttft_s", "queue_time_s", "prefill_time_s",
    "decode_time_s", "inference_time_s", "tpot_s",
}
STOP_FIELDS = {"uptime_s", "intervals", "requests", "prompt_tokens", "generation_tokens", "preemptions",
               "idle_s", "dropped_records"}


def _feed_two_requests(lg: JsonlStatLogger) -> None:
    it = iteration(gen=7, prompt=30, cached=8, preempted=1, ttfts=[0.2, 0.4])
    finish(it, "a", arrival_ago=2.0, queued=0.1, prefill=0.3, decode=1.0, gen_tokens=11)
    finish(it, "b", arrival_ago=1.0, queued=0.2, prefill=0.1, decode=0.5, gen_tokens=1,
           reason=FinishReason.LENGTH, cached=8)
    lg.record(sched(queries=100, hits=40, spec=spec_stats(3, 12, 9)), it)
    lg.record(sched(running=5, waiting=4, skipped=0, usage=0.5, queries=50, hits=10,
                    spec=spec_stats(1, 4, 1)), iteration(gen=5))


def test_is_stat_logger_and_entry_point_shape():
    assert issubclass(JsonlStatLogger, StatLoggerBase)
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'jsonl = "vllm_plugin_stats.logger:JsonlStatLogger"' in text
    assert 'stats = "vllm_plugin_stats._settings:SETTINGS"' in text


def test_all_record_types(vllm_config, tmp_path, monkeypatch):
    out = tmp_path / "s.jsonl"
    monkeypatch.setenv("VLLM_PLUGIN_STATS_PATH", str(out))
    monkeypatch.setenv("VLLM_PLUGIN_STATS_REQUESTS", "1")
    lg = JsonlStatLogger(vllm_config, 2)
    lg.log_engine_initialized()
    _feed_two_requests(lg)
    lg.log()
    lg.close()
    recs = read(out)
    assert [r["type"] for r in recs] == ["start", "interval", "request", "request", "stop"]
    for r in recs:
        assert r["schema"] == 1 and r["engine"] == 2 and isinstance(r["ts"], float)

    start, interval, req_a, req_b, stop = recs
    assert set(start) == HEAD | START_FIELDS
    import vllm

    assert start["vllm_version"] == vllm.__version__
    assert start["block_size"] == vllm_config.cache_config.block_size
    assert start["max_num_seqs"] == vllm_config.scheduler_config.max_num_seqs
    assert start["max_num_batched_tokens"] == vllm_config.scheduler_config.max_num_batched_tokens
    assert start["tensor_parallel_size"] == 1
    assert start["enable_prefix_caching"] == vllm_config.cache_config.enable_prefix_caching
    assert start["kv_cache_dtype"] == str(vllm_config.cache_config.cache_dtype)
    assert start["pid"] == os.getpid()

    assert set(interval) == HEAD | INTERVAL_FIELDS
    assert interval["running"] == 5 and interval["waiting"] == 4 and interval["waiting_deferred"] == 0
    assert interval["kv_cache_usage"] == 0.5
    assert interval["prefix_cache"] == {"queries": 150, "hits": 50, "hit_rate": 50 / 150}
    assert interval["prompt_tokens"] == 30 and interval["prompt_tokens_cached"] == 8
    assert interval["generation_tokens"] == 12 and interval["preemptions"] == 1
    assert interval["prompt_throughput"] == pytest.approx(30 / interval["interval_s"])
    assert interval["generation_throughput"] == pytest.approx(12 / interval["interval_s"])
    assert interval["finished_requests"] == 2
    assert interval["finish_reasons"] == {"stop": 1, "length": 1}
    assert interval["ttft_s"]["count"] == 2
    assert interval["ttft_s"]["p50"] == pytest.approx(0.3)
    assert interval["tpot_s"]["count"] == 1  # the 1-token request has no TPOT
    assert interval["tpot_s"]["p50"] == pytest.approx(1.0 / 10)
    assert interval["e2e_latency_s"]["count"] == 2
    assert interval["e2e_latency_s"]["max"] == pytest.approx(2.0)
    assert interval["queue_time_s"]["p50"] == pytest.approx(0.15)
    assert interval["spec_decode"] == {"drafts": 4, "draft_tokens": 16, "accepted_tokens": 10,
                                       "acceptance_rate": 10 / 16}

    assert set(req_a) == HEAD | REQUEST_FIELDS
    assert req_a["request_id"] == "a" and req_a["finish_reason"] == "stop"
    assert req_a["prompt_tokens"] == 10 and req_a["generation_tokens"] == 11
    assert req_a["max_tokens"] == 64
    assert req_a["e2e_latency_s"] == pytest.approx(2.0)
    assert req_a["queue_time_s"] == pytest.approx(0.1)
    assert req_a["prefill_time_s"] == pytest.approx(0.3)
    assert req_a["decode_time_s"] == pytest.approx(1.0)
    assert req_a["inference_time_s"] == pytest.approx(1.3)
    assert req_a["ttft_s"] == pytest.approx(1.0)
    assert req_a["tpot_s"] == pytest.approx(0.1)
    assert req_b["finish_reason"] == "length" and req_b["cached_tokens"] == 8
    assert req_b["preemptions"] == 0

    assert set(stop) == HEAD | STOP_FIELDS
    assert stop["requests"] == 2 and stop["prompt_tokens"] == 30 and stop["generation_tokens"] == 12
    assert stop["intervals"] == 1 and stop["preemptions"] == 1 and stop["uptime_s"] >= 0


def test_empty_interval_and_no_spec(vllm_config, tmp_path):
    out = tmp_path / "s.jsonl"
    lg = JsonlStatLogger(vllm_config, path=str(out))
    lg.log()
    lg.close()
    recs = read(out)
    assert [r["type"] for r in recs] == ["start", "interval", "stop"]
    iv = recs[1]
    assert iv["ttft_s"] is None and iv["e2e_latency_s"] is None and iv["spec_decode"] is None
    assert iv["prefix_cache"]["hit_rate"] is None and iv["kv_cache_usage"] is None
    assert recs[2]["requests"] == 0


def test_close_writes_pending_interval(vllm_config, tmp_path):
    out = tmp_path / "s.jsonl"
    lg = JsonlStatLogger(vllm_config, path=str(out))
    _feed_two_requests(lg)  # log() never called (short offline run)
    lg.close()
    lg.close()  # idempotent
    recs = read(out)
    assert [r["type"] for r in recs] == ["start", "interval", "stop"]
    assert recs[1]["finished_requests"] == 2 and recs[2]["requests"] == 2
    lg.record(sched(), iteration(gen=1))  # after close: ignored, no error
    lg.log()


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentiles_match_numpy(n):
    rng = np.random.default_rng(n)
    values = list(rng.exponential(0.5, n))
    s = summarize(values)
    assert s["count"] == n
    for q in (50, 90, 99):
        assert s[f"p{q}"] == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-15)
    assert s["mean"] == pytest.approx(float(np.mean(values)), rel=1e-12)
    assert s["max"] == max(values)
    assert summarize([]) is None


def test_inactive_without_path_one_notice(vllm_config, plugin_log):
    a = JsonlStatLogger(vllm_config, 0)
    b = JsonlStatLogger(vllm_config, 1)
    assert not a.active and not b.active
    a.record(sched(), iteration(gen=1))
    a.log()
    a.close()
    infos = plugin_log.messages(logging.INFO)
    assert len(infos) == 1 and "VLLM_PLUGIN_STATS_PATH" in infos[0]


def test_bad_setting_warns_once_and_stays_off(vllm_config, tmp_path, monkeypatch, plugin_log):
    monkeypatch.delenv("VLLM_PLUGIN_STRICT", raising=False)
    monkeypatch.setenv("VLLM_PLUGIN_STATS_PATH", str(tmp_path / "s.jsonl"))
    monkeypatch.setenv("VLLM_PLUGIN_STATS_MAX_BYTES", "lots")
    a, b = JsonlStatLogger(vllm_config, 0), JsonlStatLogger(vllm_config, 1)
    assert not a.active and not b.active
    a.record(sched(), iteration(gen=1))
    a.log()
    warnings = plugin_log.messages(logging.WARNING)
    assert len(warnings) == 1
    assert "VLLM_PLUGIN_STATS_MAX_BYTES='lots'" in warnings[0] and "an integer" in warnings[0]
    assert not (tmp_path / "s.jsonl").exists()


def test_bad_setting_strict_raises_naming_variable(vllm_config, tmp_path, monkeypatch):
    from vllm_plugin_core.settings import SettingError

    monkeypatch.setenv("VLLM_PLUGIN_STRICT", "1")
    monkeypatch.setenv("VLLM_PLUGIN_STATS_PATH", str(tmp_path / "s.jsonl"))
    monkeypatch.setenv("VLLM_PLUGIN_STATS_MAX_BYTES", "lots")
    with pytest.raises(SettingError, match="VLLM_PLUGIN_STATS_MAX_BYTES"):
        JsonlStatLogger(vllm_config)


def test_directory_mode_one_file_per_process(vllm_config, tmp_path, monkeypatch):
    target = tmp_path / "new" / "dir"
    monkeypatch.setenv("VLLM_PLUGIN_STATS_PATH", str(target) + "/")
    a = JsonlStatLogger(vllm_config, 0)
    b = JsonlStatLogger(vllm_config, 1)  # second engine: same file
    assert a.path == b.path
    assert re.fullmatch(rf"vllm-stats-\d{{8}}T\d{{6}}Z-{os.getpid()}\.jsonl", Path(a.path).name)
    a.log_engine_initialized()
    b.log_engine_initialized()
    a.close()
    b.close()
    files = list(target.iterdir())
    assert len(files) == 1  # and no lock file: the name is this process's own
    recs = read(files[0])
    assert sorted((r["type"], r["engine"]) for r in recs) == [
        ("start", 0), ("start", 1), ("stop", 0), ("stop", 1)]
    # an existing directory without the trailing slash works the same way
    assert _writer.resolve_path(str(target), now=0, pid=7) == str(target / "vllm-stats-19700101T000000Z-7.jsonl")


def test_rotation(vllm_config, tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    monkeypatch.setenv("VLLM_PLUGIN_STATS_PATH", str(out))
    monkeypatch.setenv("VLLM_PLUGIN_STATS_MAX_BYTES", "3000")
    monkeypatch.setenv("VLLM_PLUGIN_STATS_KEEP", "2")
    lg = JsonlStatLogger(vllm_config)
    for _ in range(40):
        _feed_two_requests(lg)
        lg.log()
    lg.close()
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["r.jsonl", "r.jsonl.1", "r.jsonl.2"]
    for name in names:
        assert 0 < (tmp_path / name).stat().st_size <= 3000
        read(tmp_path / name)  # every line is whole JSON
    assert read(out)[-1]["type"] == "stop"


def test_rotation_keep_zero_truncates(tmp_path):
    w = _writer.JsonlWriter(str(tmp_path / "k.jsonl"), max_bytes=200, keep=0)
    for i in range(50):
        w.put({"i": i, "pad": "x" * 50})
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k.jsonl.lock", "k.jsonl"]
    assert read(tmp_path / "k.jsonl")[-1]["i"] == 49


def test_unwritable_path_one_warning(vllm_config, tmp_path, plugin_log):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    bad = blocker / "sub" / "s.jsonl"
    lg = JsonlStatLogger(vllm_config, path=str(bad))
    lg._writer.retry_delays = (0.01, 0.01)
    lg.log_engine_initialized()
    assert lg._writer.flush(5) is False  # the start record was not written
    for _ in range(5):
        _feed_two_requests(lg)
        lg.log()
    lg.close()
    warnings = plugin_log.messages(logging.WARNING)
    assert len(warnings) == 1, warnings
    assert str(bad) in warnings[0] and "Not a directory" in warnings[0]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_one_warning(vllm_config, plugin_log):
    lg = JsonlStatLogger(vllm_config, path="/dev/full")
    lg.log_engine_initialized()
    _feed_two_requests(lg)
    lg.log()
    lg._writer.flush(5)
    lg.log()  # the logger notices the failure and turns itself off
    assert not lg.active
    lg.close()
    warnings = plugin_log.messages(logging.WARNING)
    assert len(warnings) == 1 and "/dev/full" in warnings[0] and "No space left" in warnings[0]


def test_writer_drains_on_close(tmp_path):
    w = _writer.JsonlWriter(str(tmp_path / "d.jsonl"), start=False, queue_max=None)
    for i in range(20000):
        w.put({"i": i})
    w._thread.start()
    w.close()
    recs = read(tmp_path / "d.jsonl")
    assert [r["i"] for r in recs] == list(range(20000))


def test_record_from_many_threads(vllm_config, tmp_path):
    out = tmp_path / "t.jsonl"
    lg = JsonlStatLogger(vllm_config, path=str(out))
    n_threads, n_calls = 8, 500

    def worker(k: int) -> None:
        for i in range(n_calls):
            it = iteration(gen=3, prompt=2, ttfts=[0.01])
            finish(it, f"{k}-{i}", arrival_ago=1, queued=0, prefill=0, decode=1, gen_tokens=3)
            lg.record(sched(queries=4, hits=1), it)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    logger_thread_stop = threading.Event()

    def periodic_log() -> None:
        while not logger_thread_stop.is_set():
            lg.log()
            logger_thread_stop.wait(0.001)

    lt = threading.Thread(target=periodic_log)
    lt.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger_thread_stop.set()
    lt.join()
    lg.close()
    recs = read(out)
    intervals = [r for r in recs if r["type"] == "interval"]
    total = n_threads * n_calls
    assert sum(r["finished_requests"] for r in intervals) == total
    assert sum(r["generation_tokens"] for r in intervals) == 3 * total
    assert sum(r["prefix_cache"]["queries"] for r in intervals) == 4 * total
    assert sum((r["ttft_s"] or {"count": 0})["count"] for r in intervals) == total
    assert recs[-1]["type"] == "stop" and recs[-1]["requests"] == total


def test_record_does_no_io(vllm_config, tmp_path):
    lg = JsonlStatLogger(vllm_config, path=str(tmp_path / "n.jsonl"))
    lg._writer.flush(5)
    real_writer = lg._writer
    spy = mock.Mock(wraps=real_writer)
    lg._writer = spy
    its = []
    for i in range(50):
        it = iteration(gen=2, prompt=5, ttfts=[0.1])
        finish(it, str(i), arrival_ago=1, queued=0.1, prefill=0.1, decode=0.5, gen_tokens=2)
        its.append(it)
    forbidden = mock.Mock(side_effect=AssertionError("I/O or JSON in record()"))
    with mock.patch("builtins.open", forbidden), mock.patch("json.dumps", forbidden), \
            mock.patch("os.write", forbidden):
        for it in its:
            lg.record(sched(queries=3, hits=1), it)
    assert spy.method_calls == []  # nothing queued, flushed or written by record()
    assert lg.active
    lg._writer = real_writer
    lg.log()
    lg.close()
    recs = read(tmp_path / "n.jsonl")
    assert recs[1]["finished_requests"] == 50


def test_record_exception_disables_not_raises(vllm_config, tmp_path, plugin_log):
    lg = JsonlStatLogger(vllm_config, path=str(tmp_path / "x.jsonl"))
    lg.record(object(), None)  # not a SchedulerStats
    assert not lg.active
    assert any("record() failed" in m for m in plugin_log.messages(logging.WARNING))
    lg.close()


def test_gc_closes_and_writes_stop(vllm_config, tmp_path):
    out = tmp_path / "g.jsonl"
    lg = JsonlStatLogger(vllm_config, path=str(out))
    _feed_two_requests(lg)
    del lg
    gc.collect()
    recs = read(out)
    assert [r["type"] for r in recs] == ["start", "interval", "stop"]


def test_atexit_writes_stop_record(tmp_path):
    out = tmp_path / "e.jsonl"
    here = Path(__file__).parent
    code = f"""
import sys
sys.path.insert(0, {str(here)!r})
import conftest  # hides broken torchvision/torchaudio
from vllm.config import VllmConfig
from vllm_plugin_stats.logger import JsonlStatLogger
from helpers import iteration, sched
lg = JsonlStatLogger(VllmConfig(), 0)
lg.log_engine_initialized()
lg.record(sched(), iteration(gen=4, prompt=3))
KEEP_ALIVE = lg  # still referenced at exit: atexit must close it
"""
    env = dict(os.environ, VLLM_PLUGIN_STATS_PATH=str(out))
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recs = read(out)
    assert [r["type"] for r in recs] == ["start", "interval", "stop"]
    assert recs[-1]["generation_tokens"] == 4


def test_offline_handle_and_engine_builder(vllm_config, tmp_path, monkeypatch):
    from vllm_plugin_stats import offline

    out = tmp_path / "o.jsonl"
    captured = {}

    class FakeEngine:
        @classmethod
        def from_engine_args(cls, engine_args, stat_loggers=None, **kw):
            captured["args"] = engine_args
            captured["loggers"] = stat_loggers
            eng = cls()
            # what vLLM's StatLoggerManager does with a per-engine factory
            eng.loggers = [f(vllm_config, 0) for f in stat_loggers]
            for lg_ in eng.loggers:
                lg_.log_engine_initialized()
            return eng

    import vllm.v1.engine.llm_engine as llm_engine_mod
    from vllm.engine.arg_utils import EngineArgs

    monkeypatch.setattr(llm_engine_mod, "LLMEngine", FakeEngine)
    args = EngineArgs(model="dummy", disable_log_stats=True)
    with offline.stats_engine(args, path=str(out)) as eng:
        assert captured["args"].disable_log_stats is False
        eng.loggers[0].record(sched(), iteration(gen=2))
    recs = read(out)
    assert [r["type"] for r in recs] == ["start", "interval", "stop"]


def test_writer_records_are_compact_json(tmp_path):
    w = _writer.JsonlWriter(str(tmp_path / "c.jsonl"))
    w.put({"a": 1, "b": [1, 2], "reason": FinishReason.STOP})
    w.close()
    line = (tmp_path / "c.jsonl").read_text()
    assert line == json.dumps({"a": 1, "b": [1, 2], "reason": 0}, separators=(",", ":")) + "\n"
