"""Real OTLP metrics receivers on loopback, for tests: OTLP/HTTP
(:class:`OtlpReceiver`) and OTLP/gRPC (:class:`OtlpGrpcReceiver`).

The HTTP one accepts ``POST /v1/metrics`` (protobuf, optionally gzip or deflate),
decodes each body with ``opentelemetry-proto`` into an
``ExportMetricsServiceRequest`` and keeps it. :meth:`OtlpReceiver.stop` and
:meth:`OtlpReceiver.start` kill and bring it back on the same port, to play a
collector that goes down. Totals are computed as a backend would: delta points
are summed, cumulative ones contribute their latest value per series.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

__all__ = ["OtlpGrpcReceiver", "OtlpReceiver", "Point"]

DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


@dataclass
class Point:
    """One decoded data point."""

    metric: str
    kind: str  # "sum", "histogram" or "gauge"
    temporality: int | None
    attributes: dict[str, Any]
    resource: dict[str, Any]
    start: int
    time: int
    value: float  # sum value, gauge value, or histogram sum
    count: int  # histogram count (1 for others)
    received: float  # time.time() when the request arrived


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class OtlpReceiver:
    """``with OtlpReceiver() as rx: ... rx.url`` (base URL), ``rx.metrics_url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, delay_s: float = 0.0) -> None:
        self.host = host
        self.port = port
        self.delay_s = delay_s
        self.requests: list[tuple[float, ExportMetricsServiceRequest]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                enc = (self.headers.get("Content-Encoding") or "").lower()
                try:
                    if enc == "gzip":
                        body = gzip.decompress(body)
                    elif enc == "deflate":
                        body = zlib.decompress(body)
                    if self.path != "/v1/metrics":
                        raise ValueError(f"unexpected path {self.path}")
                    req = ExportMetricsServiceRequest()
                    req.ParseFromString(body)
                except Exception as exc:
                    receiver.errors.append(repr(exc))
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.requests.append((time.time(), req))
                out = ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the socket: exports get "connection refused" until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return self.url + "/v1/metrics"

    # -- reading ---------------------------------------------------------------

    def points(self, metric: str | None = None, **attributes: Any) -> Iterator[Point]:
        """Every data point received (of ``metric``, whose attributes include ``attributes``)."""
        with self._lock:
            requests = list(self.requests)
        for received, req in requests:
            for rm in req.resource_metrics:
                resource = _attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if metric is not None and m.name != metric:
                            continue
                        yield from self._points(m, resource, received, attributes)

    @staticmethod
    def _points(m: Any, resource: dict[str, Any], received: float, want: dict[str, Any]) -> Iterator[Point]:
        kind = m.WhichOneof("data")
        data = getattr(m, kind)
        temporality = getattr(data, "aggregation_temporality", None)
        for p in data.data_points:
            attrs = _attrs(p.attributes)
            if any(attrs.get(k) != v for k, v in want.items()):
                continue
            if kind == "histogram":
                value, count = p.sum, p.count
            else:
                value, count = (p.as_int if p.WhichOneof("value") == "as_int" else p.as_double), 1
            yield Point(m.name, kind, temporality, attrs, resource, p.start_time_unix_nano, p.time_unix_nano,
                        value, count, received)

    def total(self, metric: str, **attributes: Any) -> tuple[float, int]:
        """(value, count) over all series of a sum or histogram: delta points
        summed, cumulative ones taken at their latest time per series."""
        value, count = 0.0, 0
        latest: dict[tuple, Point] = {}
        for p in self.points(metric, **attributes):
            if p.temporality == CUMULATIVE:
                key = (tuple(sorted(p.resource.items())), tuple(sorted(p.attributes.items())), p.start)
                if key not in latest or p.time >= latest[key].time:
                    latest[key] = p
            else:
                value += p.value
                count += p.count
        for p in latest.values():
            value += p.value
            count += p.count
        return value, count

    def temporalities(self, metric: str) -> set[int | None]:
        return {p.temporality for p in self.points(metric)}

    def wait_for(self, predicate: Any, timeout: float = 30.0, poll: float = 0.2) -> bool:
        """Poll ``predicate(self)`` until true or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(poll)
        return bool(predicate(self))


class OtlpGrpcReceiver(OtlpReceiver):
    """The same store, served as the OTLP/gRPC ``MetricsService`` (needs ``grpcio``).

    ``rx.url`` is the ``http://host:port`` endpoint the gRPC exporter takes
    (``http`` means no TLS).
    """

    def start(self) -> OtlpGrpcReceiver:
        from concurrent.futures import ThreadPoolExecutor

        import grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as pb_grpc

        receiver = self

        class Servicer(pb_grpc.MetricsServiceServicer):
            def Export(self, request: ExportMetricsServiceRequest, context: Any) -> ExportMetricsServiceResponse:
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                with receiver._lock:
                    receiver.requests.append((time.time(), request))
                return ExportMetricsServiceResponse()

        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_MetricsServiceServicer_to_server(Servicer(), server)
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        server.start()
        self._grpc = server
        return self

    def stop(self) -> None:
        server = getattr(self, "_grpc", None)
        if server is not None:
            server.stop(grace=None)
            self._grpc = None

    def __enter__(self) -> OtlpGrpcReceiver:
        return self.start()

    @property
    def metrics_url(self) -> str:
        return self.url  # gRPC has no path
