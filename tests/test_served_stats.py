"""vllm-plugin-stats in the shared ``vllm serve``: records while serving,
every record flushed when the server is stopped with SIGTERM, and the
``summary``/``plot`` commands on the file that run wrote (no extra start)."""

from __future__ import annotations

import json
import signal
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.engine


def records(stats_dir):
    path = stats_dir / "stats.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_start_and_interval_records_while_serving(shared_server, openai_client, stats_dir):
    # A burst of concurrent requests (more than --max-num-seqs 8) lasting a
    # few logging intervals, so the served run's chart has a shape.
    def one(i: int) -> int:
        r = openai_client.completions.create(model="tiny", prompt=f"Hello world {i}", max_tokens=160,
                                             extra_body={"ignore_eos": True})
        return r.usage.completion_tokens

    with ThreadPoolExecutor(12) as pool:
        billed = list(pool.map(one, range(24)))
    assert billed == [160] * 24
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        recs = records(stats_dir)
        if sum(r["generation_tokens"] for r in recs if r["type"] == "interval") >= sum(billed):
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
    time.sleep(3.5)  # an idle pause of several logging intervals (VLLM_LOG_STATS_INTERVAL=1)
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
    assert stop[0]["dropped_records"] == 0

    # Idle intervals were merged: the server logged every second
    # (VLLM_LOG_STATS_INTERVAL=1), but an idle record is written at most once
    # per VLLM_PLUGIN_STATS_IDLE_S (60 s), or when work resumes, or at close.
    intervals = [r for r in recs if r["type"] == "interval"]
    idle = [r for r in intervals if r["idle"]]
    busy = len(intervals) - len(idle)
    assert len(idle) <= busy + 1 + stop[0]["uptime_s"] / 60
    assert sum(r["coalesced"] for r in idle) > len(idle)
    assert sum(r["interval_s"] for r in intervals) == pytest.approx(stop[0]["uptime_s"], abs=2.0)


@pytest.mark.shutdown
def test_summary_and_plot_of_the_served_run(shared_server, stats_dir, tmp_path, capsys):
    """Runs after the SIGTERM test: the file is complete."""
    from vllm_plugin_stats import cli

    path = stats_dir / "stats.jsonl"
    shared_server.stop(signal.SIGTERM)  # done already where the SIGTERM test ran
    recs = records(stats_dir)
    (stop,) = [r for r in recs if r["type"] == "stop"]

    assert cli.main(["summary", "--json", str(path)]) == 0
    out = capsys.readouterr()
    assert out.err == ""  # no line skipped
    (run,) = json.loads(out.out)
    assert run["complete"] and run["engines"] == [0] and run["model"] == "tiny"
    assert run["requests"] == stop["requests"] and run["generation_tokens"] == stop["generation_tokens"]
    assert run["prompt_tokens"] == stop["prompt_tokens"]
    assert run["idle_s"] == pytest.approx(stop["idle_s"]) and 0 < run["idle_s"] < run["uptime_s"]
    e2e = run["latency_s"]["e2e_latency_s"]
    assert e2e["source"] == "requests" and e2e["count"] == stop["requests"] and 0 < e2e["p50"] <= e2e["p99"]

    pytest.importorskip("matplotlib", reason="the plot extra: pip install 'vllm-plugin-stats[plot]'")
    from vllm_plugin_stats import plot

    png = tmp_path / "served.png"
    fig = plot.plot_files([path], png, print)
    assert [ax.get_title(loc="left") for ax in fig.axes] == list(plot.PANELS)
    assert all(ax.lines for ax in fig.axes)
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1000, 1000)
    assert png.stat().st_size > 20_000
    (stats_dir / "served.png").write_bytes(png.read_bytes())  # kept with the file (--basetemp)
