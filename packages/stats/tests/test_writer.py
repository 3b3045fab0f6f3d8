"""The writer and logger under a hung disk, a torn file, transient errors,
renames, several processes on one path and non-finite numbers (issue 19).

Real files, a real FIFO as the hung disk, real processes; no engine.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from helpers import finish, iteration, read, sched

from vllm_plugin_stats import _writer
from vllm_plugin_stats.logger import JsonlStatLogger

HERE = Path(__file__).parent


def _feed(lg: JsonlStatLogger, n: int, per_step: int = 10, log_every: int | None = 500) -> None:
    """``n`` finished requests through ``record()``, ``log()`` every ``log_every``."""
    done = 0
    while done < n:
        it = iteration(gen=per_step, prompt=per_step)
        for i in range(per_step):
            finish(it, f"r{done + i}", arrival_ago=0.5, queued=0.01, prefill=0.02, decode=0.3, gen_tokens=8)
        lg.record(sched(running=1, waiting=0), it)
        done += per_step
        if log_every and done % log_every == 0:
            lg.log()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
def test_disk_blocked_10s_while_10000_request_records_arrive(vllm_config, tmp_path, monkeypatch):
    """The target of issue 19: memory stays bounded while the disk blocks.

    The file is a FIFO nobody reads for 10 s: the writer thread blocks in
    ``open()`` exactly as on a hung disk.
    """
    fifo = tmp_path / "hung.jsonl"
    os.mkfifo(fifo)
    monkeypatch.setenv("VLLM_PLUGIN_STATS_REQUESTS", "1")
    monkeypatch.setenv("VLLM_PLUGIN_STATS_QUEUE_MAX", "1000")
    t0 = time.monotonic()
    tracemalloc.start()
    try:
        lg = JsonlStatLogger(vllm_config, path=str(fifo))
        lg.log_engine_initialized()
        base = tracemalloc.get_traced_memory()[0]
        _feed(lg, 10_000)
        lg.log()
        grown = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    writer = lg._writer
    assert writer.queue_high_water <= 1000 + writer.reserve
    # Measured: 1.5 MiB here; an unbounded queue holding all 10,000 request
    # records grows 6.8 MiB (README, "Figures").
    assert grown < 3 * 2**20, f"grew {grown / 2**20:.1f} MiB while the disk was blocked"

    time.sleep(max(0.0, 10.0 - (time.monotonic() - t0)))
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()  # the disk comes back
    lg.close()
    reader.join(30)
    recs = [json.loads(line) for line in got[0].decode().splitlines()]
    kinds = [r["type"] for r in recs]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    stop = recs[-1]
    requests = sum(1 for k in kinds if k == "request")
    assert stop["requests"] == 10_000
    assert stop["dropped_records"] == 10_000 - requests > 0
    assert sum(r["dropped_records"] for r in recs if r["type"] == "interval") == stop["dropped_records"]
    assert sum(r["finished_requests"] for r in recs if r["type"] == "interval") == 10_000


def test_bounded_without_log_calls(vllm_config, tmp_path, monkeypatch):
    """--disable-log-stats: vLLM never calls log(); held samples stay bounded."""
    out = tmp_path / "s.jsonl"
    monkeypatch.setenv("VLLM_PLUGIN_STATS_QUEUE_MAX", "1000")
    lg = JsonlStatLogger(vllm_config, path=str(out))
    most = 0
    for _ in range(300):
        _feed(lg, 10, log_every=None)
        most = max(most, lg._cur.samples)
    lg.close()
    assert most < 1000
    intervals = [r for r in read(out) if r["type"] == "interval"]
    assert sum(r["finished_requests"] for r in intervals) == 3000
    assert len(intervals) >= 3


def test_queue_overflow_drops_requests_first(tmp_path):
    w = _writer.JsonlWriter(str(tmp_path / "q.jsonl"), queue_max=10, start=False)
    assert all(w.put({"type": "request", "i": i}, droppable=True) for i in range(10))
    assert not w.put({"type": "request", "i": 10}, droppable=True)
    assert all(w.put({"type": "interval", "i": i}) for i in range(w.reserve))
    assert not w.put({"type": "interval"})
    assert w.take_dropped() == 2 and w.take_dropped() == 0 and w.dropped_total == 2
    w._thread.start()
    assert w.flush(5) is False  # records were lost since the last flush
    w.put({"type": "interval"})
    assert w.flush(5) is True
    w.close()
    assert len(read(tmp_path / "q.jsonl")) == 10 + w.reserve + 1


def test_partial_last_line_starts_fresh(tmp_path, plugin_log):
    from vllm_plugin_stats._reader import read_records

    out = tmp_path / "t.jsonl"
    out.write_text('{"type":"start","schema":1,"ts":1.0,"engine":0}\n{"type":"interval","x":1')
    w = _writer.JsonlWriter(str(out))
    w.put({"type": "start", "schema": 1, "ts": 2.0, "engine": 0})
    w.close()
    lines = out.read_text().splitlines()
    assert lines[1] == '{"type":"interval","x":1'
    assert json.loads(lines[2])["ts"] == 2.0
    assert any("partial line" in m for m in plugin_log.messages(logging.INFO))
    problems: list[str] = []
    recs = list(read_records([out], problems.append))
    assert [r["ts"] for r in recs] == [1.0, 2.0]  # only the torn record is lost
    assert len(problems) == 1 and f"{out}:2" in problems[0]


def test_renamed_or_removed_file_is_reopened(tmp_path):
    out = tmp_path / "r.jsonl"
    w = _writer.JsonlWriter(str(out))
    w.put({"n": 1})
    assert w.flush(5)
    os.rename(out, tmp_path / "r.jsonl.rotated")  # logrotate's rename
    w.put({"n": 2})
    assert w.flush(5)
    os.remove(out)
    w.put({"n": 3})
    w.close()
    assert read(tmp_path / "r.jsonl.rotated") == [{"n": 1}]
    assert read(out) == [{"n": 3}]


def test_transient_error_is_retried(tmp_path, plugin_log):
    """The directory is replaced by a file for a moment: opening fails with a
    real OSError until it is gone, then the writer carries on."""
    d = tmp_path / "d"
    w = _writer.JsonlWriter(str(d / "s.jsonl"))
    w.put({"n": 1})
    assert w.flush(5)
    os.rename(d, tmp_path / "d.old")
    d.write_text("in the way")
    w.put({"n": 2})
    time.sleep(0.2)  # the writer is failing and retrying now
    d.unlink()
    assert w.flush(10) is True
    w.close()
    assert read(d / "s.jsonl") == [{"n": 2}] and not w.failed
    assert plugin_log.messages(logging.WARNING) == []


def test_persistent_error_gives_up_with_one_warning(tmp_path, plugin_log):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    w = _writer.JsonlWriter(str(blocker / "s.jsonl"))
    w.retry_delays = (0.01, 0.02, 0.04)
    t0 = time.monotonic()
    for i in range(50):
        w.put({"n": i})
    assert w.flush(10) is False
    assert time.monotonic() - t0 < 5
    assert w.failed and not w.put({"n": 99})
    w.close()
    warnings = plugin_log.messages(logging.WARNING)
    assert len(warnings) == 1 and "4 attempts" in warnings[0] and "Not a directory" in warnings[0]


def test_non_finite_numbers_are_null(vllm_config, tmp_path):
    w = _writer.JsonlWriter(str(tmp_path / "n.jsonl"))
    w.put({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    w.close()
    assert (tmp_path / "n.jsonl").read_text() == '{"a":null,"b":[null,1.5],"c":{"d":null}}\n'

    lg = JsonlStatLogger(vllm_config, path=str(tmp_path / "l.jsonl"))
    lg.record(sched(usage=float("nan")), iteration(gen=1))
    lg.close()
    text = (tmp_path / "l.jsonl").read_text()
    assert "NaN" not in text and json.loads(text.splitlines()[1])["kv_cache_usage"] is None


_WORKER = """
import json, os, sys, time
from pathlib import Path
from vllm_plugin_stats import _writer
path, ready_dir, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
w = _writer.JsonlWriter(path, max_bytes=4000, keep=100)
(ready_dir / str(os.getpid())).write_text(w.path)
while len(list(ready_dir.iterdir())) < 3:
    time.sleep(0.01)
for i in range(n):
    w.put({"pid": os.getpid(), "i": i, "pad": "x" * 40})
    if i % 50 == 0:
        w.flush()
w.close()
"""


def test_several_processes_on_one_path(tmp_path):
    """Three processes given one path: one keeps it, the others write
    ``<stem>.pid<pid>.jsonl``; each file rotates alone and stays whole."""
    out = tmp_path / "logs" / "s.jsonl"
    ready = tmp_path / "ready"
    ready.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(out), str(ready), "400"], env=env)
             for _ in range(3)]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    claimed = {int(f.name): f.read_text() for f in ready.iterdir()}
    assert sorted(claimed.values()).count(str(out)) == 1
    for pid, path in claimed.items():
        assert path == str(out) or path == _writer.pid_path(str(out), pid)
        files = [Path(path), *sorted(Path(path).parent.glob(Path(path).name + ".*"))]
        recs = [r for f in files for r in read(f)]
        assert {r["pid"] for r in recs} == {pid}
        assert sorted(r["i"] for r in recs) == list(range(400))
        assert all(f.stat().st_size <= 4000 for f in files) and len(files) > 1


def test_offline_sigterm_writes_stop(tmp_path):
    """Python's default SIGTERM skips atexit; the offline handle closes first."""
    out = tmp_path / "o.jsonl"
    code = f"""
import sys, time
sys.path.insert(0, {str(HERE)!r})
import conftest  # hides broken torchvision/torchaudio
from vllm.config import VllmConfig
from vllm_plugin_stats.offline import StatsHandle
from helpers import iteration, sched
handle = StatsHandle({str(out)!r})
lg = handle(VllmConfig(), 0)
lg.record(sched(), iteration(gen=5, prompt=2))
print("ready", flush=True)
time.sleep(120)
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # vLLM may log to stdout first
        if line.strip() == "ready":
            break
    else:
        pytest.fail(f"the child exited with {proc.wait()} before it was ready")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == -signal.SIGTERM  # still ends the way SIGTERM does
    recs = read(out)
    assert [r["type"] for r in recs] == ["start", "interval", "stop"]
    assert recs[-1]["generation_tokens"] == 5
