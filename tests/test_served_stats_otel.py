"""The ``otel`` stat logger in the shared ``vllm serve``: it exports to a real
OTLP/HTTP receiver on loopback (``otlp_receiver`` in conftest, delta
temporality). Exported counters equal what the ``openai`` client was billed,
a receiver killed mid-run leaves the server serving (and the kept delta
batches arrive once it is back), and after SIGTERM the totals equal the JSON
Lines stop record. Cumulative temporality is checked without an engine in
``packages/stats/tests/test_otel.py``."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from vllm_plugin_stats.testing.otlp_receiver import DELTA

pytestmark = pytest.mark.engine

OUT = {"gen_ai.token.type": "output"}
IN = {"gen_ai.token.type": "input"}


def totals(rx) -> dict[str, float]:
    return {
        "requests": rx.total("vllm.requests")[0],
        "generation_tokens": rx.total("vllm.generation_tokens")[0],
        "usage_in": rx.total("gen_ai.client.token.usage", **IN)[0],
        "usage_out": rx.total("gen_ai.client.token.usage", **OUT)[0],
    }


def settled(rx, quiet_s: float = 5.0, timeout: float = 60.0) -> dict[str, float]:
    """Totals once no change was seen for ``quiet_s`` (over two export intervals)."""
    deadline = time.monotonic() + timeout
    last = totals(rx)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = totals(rx)
        if now == last:
            return now
        last = now
    raise AssertionError(f"exports still changing after {timeout} s: {last}")


def bill(openai_client, n: int) -> dict[str, int]:
    billed = {"requests": 0, "generation_tokens": 0, "usage_in": 0, "usage_out": 0}
    for i in range(n):
        out = openai_client.completions.create(model="tiny", prompt=f"Count to {i}:", max_tokens=7)
        billed["requests"] += 1
        billed["usage_in"] += out.usage.prompt_tokens
        billed["usage_out"] += out.usage.completion_tokens
        billed["generation_tokens"] += out.usage.completion_tokens
    return billed


def expect(base: dict[str, float], billed: dict[str, int]) -> dict[str, float]:
    return {k: base[k] + billed[k] for k in base}


def test_otel_export_equals_client_billing(shared_server, openai_client, otlp_receiver):
    base = settled(otlp_receiver)
    billed = bill(openai_client, 4)
    want = expect(base, billed)
    otlp_receiver.wait_for(lambda rx: totals(rx) == want, timeout=30)
    assert totals(otlp_receiver) == want
    points = list(otlp_receiver.points("vllm.generation_tokens"))
    assert points and all(p.attributes == {"gen_ai.request.model": "tiny", "vllm.engine.index": 0}
                          for p in points)
    assert otlp_receiver.temporalities("vllm.generation_tokens") == {DELTA}
    assert otlp_receiver.total("gen_ai.server.time_to_first_token")[1] >= billed["requests"]
    assert otlp_receiver.total("gen_ai.server.request.duration")[1] >= billed["requests"]
    assert not otlp_receiver.errors


def test_receiver_killed_mid_run_server_keeps_serving(shared_server, openai_client, otlp_receiver):
    base = settled(otlp_receiver)
    # Only this outage's warnings: an export that timed out (2 s) under an
    # earlier test's load is its own outage, with its own warning.
    log_before = len(shared_server.log_text())
    otlp_receiver.stop()
    try:
        billed = bill(openai_client, 3)
        time.sleep(5)  # two export intervals fail meanwhile
        billed2 = bill(openai_client, 2)
        status, _ = shared_server.get("/health")
        assert status == 200
    finally:
        otlp_receiver.start()  # same port
    want = expect(expect(base, billed), billed2)
    otlp_receiver.wait_for(lambda rx: totals(rx) == want, timeout=40)
    assert totals(otlp_receiver) == want, "the delta batches kept while it was down arrive"
    log = shared_server.log_text()[log_before:]
    assert len(re.findall(r"OpenTelemetry metrics export to \S+ failed", log)) == 1, "one warning"
    assert "works again" in log


@pytest.mark.shutdown
def test_otel_totals_after_sigterm_equal_the_stop_record(shared_server, otlp_receiver, stats_dir):
    """Runs after the SIGTERM test of test_served_stats.py: the last points were flushed at exit."""
    shared_server.stop(signal.SIGTERM)  # done already where that test ran
    recs = [json.loads(line) for line in (stats_dir / "stats.jsonl").read_text().splitlines() if line.strip()]
    (stop,) = [r for r in recs if r["type"] == "stop"]
    reqs = [r for r in recs if r["type"] == "request"]
    got = totals(otlp_receiver)
    assert got["requests"] == stop["requests"] == len(reqs)
    assert got["generation_tokens"] == stop["generation_tokens"]
    assert otlp_receiver.total("vllm.prompt_tokens")[0] == stop["prompt_tokens"]
    assert got["usage_out"] == sum(r["generation_tokens"] for r in reqs)
    assert got["usage_in"] == sum(r["prompt_tokens"] for r in reqs)
