"""``OtelStatLogger``: vLLM stat logger plugin exporting OpenTelemetry metrics.

vLLM (0.31 to 0.34) loads it from the ``vllm.stat_logger_plugins`` entry point
``otel`` and builds one per engine in its front-end process. It is on when an
OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``) or ``VLLM_PLUGIN_STATS_OTEL_ENABLED=1``.

* ``record()`` (after every engine step) only adds to plain counters and
  appends finished-request samples under a lock: no SDK call, no I/O.
* One process-wide pipeline (:class:`_Pipeline`) owns a private
  ``MeterProvider`` (the global one is left alone), a periodic reader whose
  thread first pulls each logger's aggregate into the SDK instruments, then
  exports through OTLP/HTTP (protobuf) or gRPC.
* ``close()`` (at exit, after SIGTERM, on garbage collection) hands the last
  aggregate over; the last logger's close exports it, waiting at most
  ``VLLM_PLUGIN_STATS_OTEL_SHUTDOWN_TIMEOUT_S``.

Metric names are listed in :data:`METRICS` and in the package README.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase

from vllm_plugin_core.guard import is_strict
from vllm_plugin_core.settings import SettingError
from vllm_plugin_stats import __version__
from vllm_plugin_stats._otel_config import OtelConfig, OtelConfigError, endpoint_is_set, read_config
from vllm_plugin_stats._otel_settings import SETTINGS
from vllm_plugin_stats._writer import logger

__all__ = ["METRICS", "OtelStatLogger", "shutdown_pipeline"]

# Bucket boundaries recommended by the GenAI semantic conventions.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)

#: name -> (kind, unit, description, histogram buckets or None)
METRICS: dict[str, tuple[str, str, str, tuple[float, ...] | None]] = {
    "gen_ai.server.time_to_first_token": ("histogram", "s", "Time to first token of requests.", _TTFT_BUCKETS),
    "gen_ai.server.time_per_output_token": (
        "histogram", "s", "Mean time per output token after the first, per finished request.", _TPOT_BUCKETS),
    "gen_ai.server.request.duration": (
        "histogram", "s", "End-to-end latency of finished requests.", _DURATION_BUCKETS),
    "gen_ai.client.token.usage": (
        "histogram", "{token}", "Tokens per finished request, by gen_ai.token.type (input, output).",
        _TOKEN_BUCKETS),
    "vllm.request.queue_time": ("histogram", "s", "Time finished requests waited in the queue.", _DURATION_BUCKETS),
    "vllm.requests": ("counter", "{request}", "Finished requests, by vllm.finish_reason.", None),
    "vllm.prompt_tokens": ("counter", "{token}", "Prompt tokens prefilled (computed and cached).", None),
    "vllm.generation_tokens": ("counter", "{token}", "Tokens generated.", None),
    "vllm.preemptions": ("counter", "{preemption}", "Request preemptions.", None),
    "vllm.prefix_cache.queries": ("counter", "{token}", "Prompt tokens looked up in the prefix cache.", None),
    "vllm.prefix_cache.hits": ("counter", "{token}", "Prompt tokens found in the prefix cache.", None),
    "vllm.requests.running": ("gauge", "{request}", "Requests running at the last step.", None),
    "vllm.requests.waiting": ("gauge", "{request}", "Requests waiting (deferred included) at the last step.", None),
    "vllm.kv_cache.usage": ("gauge", "1", "Fraction of KV-cache blocks in use at the last step.", None),
}

#: record() hands its aggregate to the SDK itself (no I/O) once this many
#: finished-request batches or TTFT samples wait, so memory stays bounded
#: whatever the export interval.
MAX_WAITING_SAMPLES = 50_000

_NOTICES: set[str] = set()
_LOCK = threading.Lock()
_NOTICE_LOCK = threading.Lock()
_PIPELINE: _Pipeline | None = None


def _once(key: str, level: int, msg: str, *args: Any) -> None:
    with _NOTICE_LOCK:
        if key in _NOTICES:
            return
        _NOTICES.add(key)
    logger.log(level, msg, *args)


class _Acc:
    """What ``record()`` gathers between two hand-overs to the SDK."""

    __slots__ = ("finished", "generation", "pc_hits", "pc_queries", "preemptions", "prompt", "samples", "sched",
                 "ttft")

    def __init__(self) -> None:
        self.prompt = 0
        self.generation = 0
        self.preemptions = 0
        self.pc_queries = 0
        self.pc_hits = 0
        self.sched: Any = None
        self.ttft: list[float] = []
        self.finished: list[list[Any]] = []
        self.samples = 0


class OtelStatLogger(StatLoggerBase):
    """vLLM stat logger exporting OpenTelemetry metrics (entry point ``otel``)."""

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        self.vllm_config = vllm_config
        self.engine_index = engine_index
        self.active = False
        self.closed = False
        self._lock = threading.Lock()
        self._acc = _Acc()
        self._pipeline: _Pipeline | None = None
        try:
            enabled = SETTINGS.get("ENABLED")
            max_pending = SETTINGS.get("MAX_PENDING")
            shutdown_s = SETTINGS.get("SHUTDOWN_TIMEOUT_S")
            if enabled is False or (enabled is None and not endpoint_is_set()):
                return
            config = read_config()
        except (SettingError, OtelConfigError) as exc:
            if is_strict():
                raise
            _once(str(exc), 30, "vllm-plugin-stats: OpenTelemetry metrics export is off: %s "
                  "(VLLM_PLUGIN_STRICT=1 makes this fatal)", exc)
            return
        if config.disabled_by:
            _once(config.disabled_by, 20, "vllm-plugin-stats: OpenTelemetry metrics export is off (%s).",
                  config.disabled_by)
            return
        model = getattr(getattr(vllm_config, "model_config", None), "served_model_name", None)
        if isinstance(model, (list, tuple)):
            model = model[0] if model else None
        if model is None:
            model = getattr(getattr(vllm_config, "model_config", None), "model", None)
        self.attributes: dict[str, Any] = {"vllm.engine.index": engine_index}
        if model is not None:
            self.attributes["gen_ai.request.model"] = str(model)
        try:
            self._pipeline = _acquire(config, max_pending, shutdown_s)
        except Exception as exc:
            _once("pipeline", 30, "vllm-plugin-stats: OpenTelemetry metrics export is off: %s", exc)
            return
        self._pipeline.add(self)
        self.active = True

    # -- vLLM interface ------------------------------------------------------

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if not self.active:
            return
        try:
            with self._lock:
                acc = self._acc
                if scheduler_stats is not None:
                    acc.sched = scheduler_stats
                    pcs = scheduler_stats.prefix_cache_stats
                    if pcs is not None:
                        acc.pc_queries += pcs.queries
                        acc.pc_hits += pcs.hits
                if iteration_stats is not None:
                    acc.prompt += iteration_stats.prompt_token_stats.total
                    acc.generation += iteration_stats.num_generation_tokens
                    acc.preemptions += iteration_stats.num_preempted_reqs
                    ttft = iteration_stats.time_to_first_tokens_iter
                    if ttft:
                        acc.ttft.extend(ttft)
                        acc.samples += len(ttft)
                    finished = iteration_stats.finished_requests
                    if finished:
                        acc.finished.append(finished)
                        acc.samples += len(finished)
                full = acc.samples >= MAX_WAITING_SAMPLES
            if full and self._pipeline is not None:
                self._pipeline.hand_over(self)
        except Exception:  # never break vLLM's output loop
            self.active = False
            logger.warning("vllm-plugin-stats: otel record() failed for engine %s; its OpenTelemetry export is "
                           "off.", self.engine_index, exc_info=True)

    def log_engine_initialized(self) -> None:
        pass

    # -- lifecycle -----------------------------------------------------------

    def take(self) -> _Acc:
        """Swap the aggregate for a fresh one (called by the pipeline)."""
        with self._lock:
            acc, self._acc = self._acc, _Acc()
        return acc

    def close(self) -> None:
        """Hand the last aggregate over; the last logger of the process exports it."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self.active = False
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            _release(pipeline, self)

    shutdown = close

    def __del__(self) -> None:
        try:
            if not getattr(self, "closed", True):
                self.close()
        except Exception:  # pragma: no cover - interpreter teardown
            pass


def _make_exporter(config: OtelConfig) -> Any:
    if config.protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        except ImportError:
            _once("nogrpc", 30, "vllm-plugin-stats: the OTLP gRPC exporter (opentelemetry-exporter-otlp-proto-grpc) "
                  "is not installed; exporting OpenTelemetry metrics over OTLP/HTTP to %s instead.",
                  "http://localhost:4318/v1/metrics")
        else:
            return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    if config.protocol == "grpc":  # the fallback: the gRPC endpoint does not speak HTTP
        return HttpExporter(endpoint="http://localhost:4318/v1/metrics")
    return HttpExporter()


class _Pipeline:
    """Process-wide: a private MeterProvider, its instruments, the reader and exporter."""

    def __init__(self, config: OtelConfig, max_pending: int, shutdown_s: float) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource

        from vllm_plugin_stats._otel_export import DrainingReader, RetryingExporter

        self.config = config
        self.shutdown_s = shutdown_s
        self.loggers: set[OtelStatLogger] = set()
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self.exporter = RetryingExporter(_make_exporter(config), config.endpoint,
                                         keep=config.temporality != "cumulative", max_pending=max_pending)
        self.reader = DrainingReader(self.exporter, self.drain)
        own = {} if os.environ.get("OTEL_SERVICE_NAME") or "service.name" in os.environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", "") else {"service.name": "vllm"}
        self.provider = MeterProvider(metric_readers=[self.reader], resource=Resource.create(own),
                                      shutdown_on_exit=False)
        meter = self.provider.get_meter("vllm_plugin_stats", __version__)
        self.instruments: dict[str, Any] = {}
        for name, (kind, unit, desc, buckets) in METRICS.items():
            if kind == "histogram":
                inst = meter.create_histogram(name, unit=unit, description=desc,
                                              explicit_bucket_boundaries_advisory=list(buckets or ()))
            elif kind == "counter":
                inst = meter.create_counter(name, unit=unit, description=desc)
            else:
                inst = meter.create_gauge(name, unit=unit, description=desc)
            self.instruments[name] = inst
        self._attr_cache: dict[tuple[int, str, str], dict[str, Any]] = {}
        logger.info("vllm-plugin-stats: exporting OpenTelemetry metrics over %s to %s every %.0f s (%s temporality)",
                    "gRPC" if config.protocol == "grpc" else "OTLP/HTTP", config.endpoint,
                    config.export_interval_s, config.temporality)

    def add(self, stat_logger: OtelStatLogger) -> None:
        with self._lock:
            self.loggers.add(stat_logger)

    def drain(self) -> None:
        """Hand every logger's aggregate to the SDK (reader thread, before each collection)."""
        with self._lock:
            loggers = list(self.loggers)
        for stat_logger in loggers:
            self.hand_over(stat_logger)

    def _attrs(self, base: dict[str, Any], key: str, value: str) -> dict[str, Any]:
        k = (id(base), key, value)
        got = self._attr_cache.get(k)
        if got is None:
            got = self._attr_cache[k] = {**base, key: value}
        return got

    def hand_over(self, stat_logger: OtelStatLogger) -> None:
        acc = stat_logger.take()
        attrs = stat_logger.attributes
        i = self.instruments
        with self._drain_lock:
            for name, value in (("vllm.prompt_tokens", acc.prompt), ("vllm.generation_tokens", acc.generation),
                                ("vllm.preemptions", acc.preemptions), ("vllm.prefix_cache.queries", acc.pc_queries),
                                ("vllm.prefix_cache.hits", acc.pc_hits)):
                if value:
                    i[name].add(value, attrs)
            sched = acc.sched
            if sched is not None:
                i["vllm.requests.running"].set(sched.num_running_reqs, attrs)
                waiting = sched.num_waiting_reqs + (getattr(sched, "num_skipped_waiting_reqs", 0) or 0)
                i["vllm.requests.waiting"].set(waiting, attrs)
                i["vllm.kv_cache.usage"].set(sched.kv_cache_usage, attrs)
            ttft = i["gen_ai.server.time_to_first_token"]
            for v in acc.ttft:
                ttft.record(v, attrs)
            if not acc.finished:
                return
            e2e, queue = i["gen_ai.server.request.duration"], i["vllm.request.queue_time"]
            tpot, usage, count = (i["gen_ai.server.time_per_output_token"], i["gen_ai.client.token.usage"],
                                  i["vllm.requests"])
            a_in = self._attrs(attrs, "gen_ai.token.type", "input")
            a_out = self._attrs(attrs, "gen_ai.token.type", "output")
            for batch in acc.finished:
                for req in batch:
                    e2e.record(req.e2e_latency, attrs)
                    queue.record(req.queued_time, attrs)
                    if req.num_generation_tokens > 1:
                        tpot.record(req.mean_time_per_output_token, attrs)
                    usage.record(req.num_prompt_tokens, a_in)
                    usage.record(req.num_generation_tokens, a_out)
                    count.add(1, self._attrs(attrs, "vllm.finish_reason", str(req.finish_reason)))

    def remove(self, stat_logger: OtelStatLogger) -> bool:
        """Hand the logger's last aggregate over; True when it was the last one."""
        self.hand_over(stat_logger)
        with self._lock:
            self.loggers.discard(stat_logger)
            return not self.loggers

    def shutdown(self) -> None:
        """Last collection and export, bounded by ``shutdown_s``."""
        try:
            self.provider.shutdown(timeout_millis=self.shutdown_s * 1000)
        except Exception as exc:
            logger.warning("vllm-plugin-stats: OpenTelemetry shutdown: %s", exc)


def _acquire(config: OtelConfig, max_pending: int, shutdown_s: float) -> _Pipeline:
    global _PIPELINE
    with _LOCK:
        if _PIPELINE is None:
            _PIPELINE = _Pipeline(config, max_pending, shutdown_s)
        return _PIPELINE


def _release(pipeline: _Pipeline, stat_logger: OtelStatLogger) -> None:
    global _PIPELINE
    if not pipeline.remove(stat_logger):
        return
    with _LOCK:
        if _PIPELINE is pipeline:
            _PIPELINE = None
    pipeline.shutdown()


def shutdown_pipeline() -> None:
    """Close every live ``otel`` logger, exporting the last points (registered with atexit)."""
    pipeline = _PIPELINE
    if pipeline is None:
        return
    with pipeline._lock:
        loggers = list(pipeline.loggers)
    for stat_logger in loggers:
        stat_logger.close()


atexit.register(shutdown_pipeline)
