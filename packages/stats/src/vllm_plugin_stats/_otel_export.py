"""The export side of the ``otel`` logger: a reader that pulls the loggers'
aggregates into the SDK just before each collection, and an exporter wrapper
that keeps a down collector from being noisy or costly.

Imports the OpenTelemetry SDK; only :mod:`vllm_plugin_stats.otel` imports this,
and only once a logger is active.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

from vllm_plugin_stats._writer import logger

#: Loggers the SDK exporters and reader report failures on; their records are
#: dropped while our wrapper exports (one warning of ours replaces them).
SDK_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
    "opentelemetry.sdk.metrics._internal.export",
)

_QUIET = threading.local()


class _QuietFilter(logging.Filter):
    """Drops SDK records logged by a thread inside :meth:`RetryingExporter.export`,
    keeping the first message as the failure reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        sink = getattr(_QUIET, "sink", None)
        if sink is None:
            return True
        if not sink:
            sink.append(record.getMessage())
        return False


_FILTER = _QuietFilter()
for _name in SDK_LOGGERS:
    logging.getLogger(_name).addFilter(_FILTER)


class RetryingExporter(MetricExporter):
    """Wraps an OTLP exporter.

    * A failed export logs one warning (and one line when export works again),
      not the SDK's lines on every attempt.
    * With delta temporality a failed batch holds points no later export
      repeats, so up to ``max_pending`` failed batches are kept and sent again,
      oldest first, before the next one (memory stays bounded; beyond that the
      oldest are dropped and counted). Cumulative batches are not kept: the
      next one carries the totals.
    """

    def __init__(self, inner: MetricExporter, endpoint: str, *, keep: bool, max_pending: int) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.endpoint = endpoint
        self.max_pending = max_pending if keep else 0
        self.pending: collections.deque[MetricsData] = collections.deque()
        self.failing = False
        self.failures = 0
        self.dropped = 0
        self.exported = 0

    def _send(self, data: MetricsData, timeout_millis: float) -> tuple[bool, str]:
        sink: list[str] = []
        _QUIET.sink = sink
        try:
            ok = self.inner.export(data, timeout_millis=timeout_millis) == MetricExportResult.SUCCESS
        except Exception as exc:  # an exporter bug must not stop the reader thread
            ok, sink = False, [repr(exc)]
        finally:
            _QUIET.sink = None
        return ok, (sink[0] if sink else "no reason given")

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        batches = [*self.pending, metrics_data]
        self.pending.clear()
        for i, data in enumerate(batches):
            ok, reason = self._send(data, timeout_millis)
            if not ok:
                self._failed(batches[i:], reason)
                return MetricExportResult.FAILURE
            self.exported += 1
        if self.failing:
            self.failing = False
            logger.warning(
                "vllm-plugin-stats: OpenTelemetry metrics export to %s works again (%d failed attempts, "
                "%d batches dropped).", self.endpoint, self.failures, self.dropped)
        return MetricExportResult.SUCCESS

    def _failed(self, unsent: list[MetricsData], reason: str) -> None:
        self.failures += 1
        keep = unsent[-self.max_pending:] if self.max_pending else []
        self.dropped += len(unsent) - len(keep)
        self.pending.extend(keep)
        if not self.failing:
            self.failing = True
            logger.warning(
                "vllm-plugin-stats: OpenTelemetry metrics export to %s failed (%s). Serving is not affected; "
                "the export is retried every interval%s. No further warning until it works again.",
                self.endpoint, reason,
                f", keeping up to {self.max_pending} unsent delta batches" if self.max_pending else "")

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if self.pending:
            logger.warning("vllm-plugin-stats: %d OpenTelemetry metrics batches were not delivered to %s.",
                           len(self.pending), self.endpoint)
        _QUIET.sink = []
        try:
            self.inner.shutdown(timeout_millis=timeout_millis)
        finally:
            _QUIET.sink = None


class DrainingReader(PeriodicExportingMetricReader):
    """Calls ``drain()`` (which records the loggers' aggregates into the SDK
    instruments) at the start of every collection: periodic, flush and the
    last one at shutdown. So ``record()`` never calls the SDK."""

    def __init__(self, exporter: MetricExporter, drain: Callable[[], None], **kwargs: Any) -> None:
        self._drain = drain
        super().__init__(exporter, **kwargs)

    def collect(self, timeout_millis: float = 10_000) -> None:
        try:
            self._drain()
        except Exception:  # pragma: no cover - defensive: never kill the reader thread
            logger.warning("vllm-plugin-stats: could not hand stats to OpenTelemetry", exc_info=True)
        super().collect(timeout_millis=timeout_millis)
