"""vllm-plugin-stats in the shared ``vllm serve``: records while serving, and
every record flushed when the server is stopped with SIGTERM."""

from __future__ import annotations

import json
import signal
import time

import pytest

pytestmark = pytest.mark.engine


def records(stats_dir):
    path = stats_dir / "stats.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_start_and_interval_records_while_serving(shared_server, openai_client, stats_dir):
    for _ in range(3):
        openai_client.completions.create(model="tiny", prompt="Hello world", max_tokens=8)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        recs = records(stats_dir)
        if any(r["type"] == "interval" and r["generation_tokens"] > 0 for r in recs):
            break
        time.sleep(0.5)
    recs = records(stats_dir)
    assert recs[0]["type"] == "start" and recs[0]["schema"] == 1
    assert recs[0]["vllm_version"]
    interval = next(r for r in recs if r["type"] == "interval" and r["generation_tokens"] > 0)
    assert interval["prompt_tokens"] > 0 and interval["engine"] == 0
    assert all(r["schema"] == 1 for r in recs)


@pytest.mark.shutdown
def test_sigterm_flushes_everything(shared_server, openai_client, stats_dir):
    done = 0
    for _ in range(5):
        openai_client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6)
        done += 1
    code = shared_server.stop(signal.SIGTERM)
    assert code is not None
    recs = records(stats_dir)
    stop = [r for r in recs if r["type"] == "stop"]
    assert len(stop) == 1, "exactly one stop record, written at shutdown"
    reqs = [r for r in recs if r["type"] == "request"]
    assert stop[0]["requests"] == len(reqs) >= done
    assert stop[0]["generation_tokens"] == sum(r["generation_tokens"] for r in reqs)
