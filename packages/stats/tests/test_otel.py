"""Unit tests of OtelStatLogger: real vLLM stats objects, the real OpenTelemetry
SDK and OTLP/HTTP exporter, a real OTLP receiver on loopback (no engine)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import finish, iteration, sched
from vllm.v1.engine import FinishReason
from vllm.v1.metrics.loggers import StatLoggerBase

from vllm_plugin_core.settings import SettingError
from vllm_plugin_stats import otel
from vllm_plugin_stats._otel_config import OtelConfigError, read_config
from vllm_plugin_stats.otel import METRICS, OtelStatLogger
from vllm_plugin_stats.testing.otlp_receiver import CUMULATIVE, DELTA, OtlpGrpcReceiver, OtlpReceiver

OUT = {"gen_ai.token.type": "output"}
IN = {"gen_ai.token.type": "input"}


@pytest.fixture(autouse=True)
def _clean_otel(monkeypatch):
    for var in [v for v in os.environ if v.startswith(("OTEL_", "VLLM_PLUGIN_STATS_OTEL_"))]:
        monkeypatch.delenv(var)
    monkeypatch.delenv("VLLM_PLUGIN_STRICT", raising=False)
    yield
    otel.shutdown_pipeline()
    otel._NOTICES.clear()


@pytest.fixture()
def receiver():
    with OtlpReceiver() as rx:
        yield rx


def _point_at(monkeypatch, rx: OtlpReceiver, temporality: str = "delta", interval_ms: int = 200) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", rx.metrics_url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", temporality)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", str(interval_ms))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "2")


def _feed(lg: OtelStatLogger) -> None:
    """Two steps: 37 prompt, 12 generated tokens; requests a (11 tokens) and b (1 token)."""
    it = iteration(gen=7, prompt=30, cached=8, preempted=1, ttfts=[0.2, 0.4])
    finish(it, "a", arrival_ago=2.0, queued=0.1, prefill=0.3, decode=1.0, gen_tokens=11, prompt_tokens=20)
    finish(it, "b", arrival_ago=1.0, queued=0.2, prefill=0.1, decode=0.5, gen_tokens=1, prompt_tokens=17,
           reason=FinishReason.LENGTH)
    lg.record(sched(queries=100, hits=40), it)
    lg.record(sched(running=5, waiting=4, skipped=1, usage=0.5), iteration(gen=5, prompt=7))


def test_entry_point_loads_through_vllm():
    from vllm.v1.metrics.loggers import load_stat_logger_plugin_factories

    assert issubclass(OtelStatLogger, StatLoggerBase)
    assert OtelStatLogger in load_stat_logger_plugin_factories()


def test_off_without_an_endpoint(vllm_config, plugin_log):
    lg = OtelStatLogger(vllm_config, 0)
    assert not lg.active and otel._PIPELINE is None
    lg.record(sched(), iteration(gen=3))  # a no-op
    assert not plugin_log.messages(logging.WARNING)


def test_enabled_0_wins_over_an_endpoint(vllm_config, monkeypatch, receiver):
    _point_at(monkeypatch, receiver)
    monkeypatch.setenv("VLLM_PLUGIN_STATS_OTEL_ENABLED", "0")
    assert not OtelStatLogger(vllm_config, 0).active


def test_sdk_disabled_turns_it_off(vllm_config, monkeypatch, receiver, plugin_log):
    _point_at(monkeypatch, receiver)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not OtelStatLogger(vllm_config, 0).active
    assert any("OTEL_SDK_DISABLED=true" in m for m in plugin_log.messages(logging.INFO))


def test_delta_totals_attributes_and_last_points_at_close(vllm_config, monkeypatch, receiver):
    # No periodic export during the test: everything arrives through close().
    _point_at(monkeypatch, receiver, "delta", interval_ms=3_600_000)
    lg = OtelStatLogger(vllm_config, 3)
    assert lg.active
    _feed(lg)
    assert not receiver.requests
    lg.close()
    assert receiver.requests, "close() exported the last points"
    assert receiver.total("vllm.prompt_tokens")[0] == 37
    assert receiver.total("vllm.generation_tokens")[0] == 12
    assert receiver.total("vllm.preemptions")[0] == 1
    assert receiver.total("vllm.prefix_cache.queries")[0] == 100
    assert receiver.total("vllm.prefix_cache.hits")[0] == 40
    assert receiver.total("vllm.requests", **{"vllm.finish_reason": "stop"})[0] == 1
    assert receiver.total("vllm.requests", **{"vllm.finish_reason": "length"})[0] == 1
    assert receiver.total("gen_ai.client.token.usage", **OUT) == (12, 2)
    assert receiver.total("gen_ai.client.token.usage", **IN) == (37, 2)
    assert receiver.total("gen_ai.server.request.duration") == (pytest.approx(3.0), 2)
    assert receiver.total("vllm.request.queue_time") == (pytest.approx(0.3), 2)
    assert receiver.total("gen_ai.server.time_to_first_token") == (pytest.approx(0.6), 2)
    # TPOT only for requests with 2+ tokens: a has 1.0 s / 10 tokens.
    assert receiver.total("gen_ai.server.time_per_output_token") == (pytest.approx(0.1), 1)
    gauges = {p.metric: p.value for p in receiver.points() if p.kind == "gauge"}
    assert gauges == {"vllm.requests.running": 5, "vllm.requests.waiting": 5, "vllm.kv_cache.usage": 0.5}
    points = list(receiver.points())
    assert {p.metric for p in points} == set(METRICS)
    assert all(p.attributes["vllm.engine.index"] == 3 for p in points)
    assert all(p.resource["service.name"] == "vllm" for p in points)
    assert {p.temporality for p in points if p.kind != "gauge"} == {DELTA}


def test_model_name_attribute(monkeypatch, receiver):
    from types import SimpleNamespace

    _point_at(monkeypatch, receiver, interval_ms=3_600_000)
    cfg = SimpleNamespace(model_config=SimpleNamespace(served_model_name=["tiny", "alias"], model="/m"))
    lg = OtelStatLogger(cfg, 0)
    lg.record(sched(), iteration(gen=2))
    lg.close()
    (p,) = receiver.points("vllm.generation_tokens")
    assert p.attributes == {"gen_ai.request.model": "tiny", "vllm.engine.index": 0}


def test_cumulative_temporality(vllm_config, monkeypatch, receiver):
    _point_at(monkeypatch, receiver, "cumulative", interval_ms=150)
    lg = OtelStatLogger(vllm_config, 0)
    _feed(lg)
    assert receiver.wait_for(lambda rx: rx.total("vllm.generation_tokens")[0] == 12, timeout=10)
    before = len(receiver.requests)
    _feed(lg)
    lg.close()
    assert len(receiver.requests) > before
    assert receiver.temporalities("vllm.generation_tokens") == {CUMULATIVE}
    assert receiver.temporalities("gen_ai.client.token.usage") == {CUMULATIVE}
    values = [p.value for p in receiver.points("vllm.generation_tokens")]
    assert values == sorted(values) and values[-1] == 24, "cumulative points only grow"
    assert receiver.total("vllm.generation_tokens")[0] == 24
    assert receiver.total("gen_ai.client.token.usage", **OUT) == (24, 4)
    assert receiver.total("vllm.requests")[0] == 4


@pytest.mark.parametrize(("var", "value"), [
    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "collector:4318"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://host:notaport"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "carrier-pigeon"),
    ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "sideways"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1"),
    ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "api-key"),
    ("OTEL_EXPORTER_OTLP_COMPRESSION", "zip"),
    ("OTEL_METRICS_EXPORTER", "prometheus"),
    ("OTEL_SDK_DISABLED", "maybe"),
    ("VLLM_PLUGIN_STATS_OTEL_MAX_PENDING", "-3"),
    ("VLLM_PLUGIN_STATS_OTEL_ENABLED", "sure"),
])
def test_malformed_value_one_warning_naming_it(vllm_config, monkeypatch, plugin_log, var, value):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv(var, value)
    loggers = [OtelStatLogger(vllm_config, i) for i in range(3)]
    assert not any(lg.active for lg in loggers)
    warnings = plugin_log.messages(logging.WARNING)
    assert len(warnings) == 1, warnings
    assert f"{var}={value!r}" in warnings[0] and "off" in warnings[0]
    monkeypatch.setenv("VLLM_PLUGIN_STRICT", "1")
    with pytest.raises((OtelConfigError, SettingError), match=var):
        OtelStatLogger(vllm_config, 0)


def test_config_defaults_and_precedence():
    cfg = read_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})
    assert (cfg.protocol, cfg.endpoint, cfg.temporality, cfg.export_interval_s) == (
        "http/protobuf", "http://c:4318/v1/metrics", "cumulative", 60.0)
    cfg = read_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT":
                       "https://m:1/x", "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "DELTA",
                       "OTEL_METRIC_EXPORT_INTERVAL": "1500"})
    assert (cfg.endpoint, cfg.temporality, cfg.export_interval_s) == ("https://m:1/x", "delta", 1.5)
    assert read_config({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).endpoint == "http://localhost:4317"
    assert read_config({"OTEL_METRICS_EXPORTER": "none"}).disabled_by == "OTEL_METRICS_EXPORTER=none"


def test_grpc_exporter_where_installed(vllm_config, monkeypatch):
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("VLLM_PLUGIN_STATS_OTEL_SHUTDOWN_TIMEOUT_S", "0.5")
    lg = OtelStatLogger(vllm_config, 0)
    assert isinstance(otel._PIPELINE.exporter.inner, OTLPMetricExporter)
    lg.close()


def test_grpc_export_reaches_a_real_grpc_receiver(vllm_config, monkeypatch):
    """OTEL_EXPORTER_OTLP_METRICS_PROTOCOL=grpc against an OTLP/gRPC MetricsService on loopback."""
    with OtlpGrpcReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", rx.metrics_url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "cumulative")
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000")
        lg = OtelStatLogger(vllm_config, 1)
        assert lg.active
        _feed(lg)
        lg.close()
        assert rx.requests, "close() exported over gRPC"
        assert rx.total("vllm.generation_tokens")[0] == 12
        assert rx.total("gen_ai.client.token.usage", **OUT) == (12, 2)
        assert rx.total("gen_ai.server.time_to_first_token") == (pytest.approx(0.6), 2)
        points = list(rx.points())
        assert {p.metric for p in points} == set(METRICS)
        assert {p.temporality for p in points if p.kind != "gauge"} == {CUMULATIVE}
        assert all(p.attributes["vllm.engine.index"] == 1 for p in points)


def test_grpc_missing_falls_back_to_http_with_one_line(vllm_config, monkeypatch, plugin_log, receiver):
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("VLLM_PLUGIN_STATS_OTEL_SHUTDOWN_TIMEOUT_S", "0.5")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.metric_exporter", None)
    lg = OtelStatLogger(vllm_config, 0)
    assert isinstance(otel._PIPELINE.exporter.inner, OTLPMetricExporter)
    assert [m for m in plugin_log.messages(logging.WARNING) if "gRPC exporter" in m and "OTLP/HTTP" in m]
    lg.close()


@pytest.fixture()
def sdk_log():
    """Records of the OpenTelemetry SDK's own loggers."""
    from vllm_plugin_core.testing.logs import capture_plugin_log

    with capture_plugin_log("opentelemetry") as handler:
        yield handler


def test_collector_down_one_warning_then_retry_delivers_everything(vllm_config, monkeypatch, receiver,
                                                                  plugin_log, sdk_log):
    _point_at(monkeypatch, receiver, "delta", interval_ms=100)
    lg = OtelStatLogger(vllm_config, 0)
    exporter = otel._PIPELINE.exporter
    receiver.stop()
    for _ in range(3):
        _feed(lg)
        time.sleep(0.3)
    deadline = time.monotonic() + 20
    while exporter.failures < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert exporter.failures >= 3 and exporter.pending
    warnings = plugin_log.messages(logging.WARNING)
    assert len(warnings) == 1 and "failed" in warnings[0] and receiver.metrics_url in warnings[0]
    assert not sdk_log.records, "the SDK's per-attempt lines are replaced by our one warning"
    receiver.start()  # same port
    assert receiver.wait_for(lambda rx: rx.total("vllm.generation_tokens")[0] == 36, timeout=20)
    assert any("works again" in m for m in plugin_log.messages(logging.WARNING))
    lg.close()
    assert receiver.total("vllm.generation_tokens")[0] == 36
    assert receiver.total("gen_ai.client.token.usage", **OUT) == (36, 6)
    assert receiver.total("vllm.requests")[0] == 6


def test_pending_batches_are_bounded(vllm_config, monkeypatch, plugin_log):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://127.0.0.1:9/v1/metrics")  # refused
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "50")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "0.5")
    monkeypatch.setenv("VLLM_PLUGIN_STATS_OTEL_MAX_PENDING", "2")
    lg = OtelStatLogger(vllm_config, 0)
    exporter = otel._PIPELINE.exporter
    deadline = time.monotonic() + 30
    while exporter.failures < 6 and time.monotonic() < deadline:
        lg.record(sched(), iteration(gen=1))
        time.sleep(0.05)
    assert exporter.failures >= 6
    assert len(exporter.pending) <= 2 and exporter.dropped >= 3
    lg.close()
    assert len([m for m in plugin_log.messages(logging.WARNING) if "failed" in m]) == 1


def test_slow_collector_bounded_shutdown(vllm_config, monkeypatch):
    with OtlpReceiver(delay_s=30) as rx:
        _point_at(monkeypatch, rx, interval_ms=3_600_000)
        monkeypatch.setenv("VLLM_PLUGIN_STATS_OTEL_SHUTDOWN_TIMEOUT_S", "1")
        lg = OtelStatLogger(vllm_config, 0)
        _feed(lg)
        t0 = time.monotonic()
        lg.close()
        assert time.monotonic() - t0 < 10, "close() waits at most about SHUTDOWN_TIMEOUT_S"


def test_record_hands_over_when_too_much_waits(vllm_config, monkeypatch, receiver):
    _point_at(monkeypatch, receiver, interval_ms=3_600_000)
    monkeypatch.setattr(otel, "MAX_WAITING_SAMPLES", 10)
    lg = OtelStatLogger(vllm_config, 0)
    for i in range(25):
        it = iteration(gen=1, ttfts=[0.1])
        finish(it, str(i), arrival_ago=1.0, queued=0.1, prefill=0.1, decode=0.5, gen_tokens=1)
        lg.record(None, it)
        assert lg._acc.samples < 10
    lg.close()
    assert receiver.total("vllm.requests")[0] == 25


CHILD = """
import os, sys
sys.path.insert(0, {helpers!r})
from helpers import finish, iteration, sched
from vllm.config import VllmConfig
from vllm_plugin_stats.otel import OtelStatLogger
lg = OtelStatLogger(VllmConfig(), 0)
assert lg.active
it = iteration(gen=9, prompt=4)
finish(it, "x", arrival_ago=1.0, queued=0.1, prefill=0.1, decode=0.5, gen_tokens=9, prompt_tokens=4)
lg.record(sched(), it)
print("recorded", flush=True)
"""


def test_points_flushed_at_interpreter_exit(receiver, tmp_path):
    """A process that just exits (atexit, as after vLLM's SIGTERM handling) exports its last points."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
           "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": receiver.metrics_url,
           "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
           "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(helpers=str(Path(__file__).parent)))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "recorded" in out.stdout
    assert receiver.total("vllm.generation_tokens")[0] == 9
    assert receiver.total("gen_ai.client.token.usage", **IN) == (4, 1)
