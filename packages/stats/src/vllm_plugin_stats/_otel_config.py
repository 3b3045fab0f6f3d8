"""Reads and checks the standard ``OTEL_*`` variables the ``otel`` logger uses.

Pure standard library. :func:`read_config` returns an :class:`OtelConfig`, or
raises :class:`OtelConfigError` naming the first malformed variable; the SDK
exporters read the same variables themselves, this only makes sure they will
not silently fall back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["OtelConfig", "OtelConfigError", "endpoint_is_set", "read_config"]

PROTOCOLS = ("http/protobuf", "grpc")
TEMPORALITIES = ("cumulative", "delta", "lowmemory")
COMPRESSIONS = ("none", "gzip", "deflate")
METRIC_EXPORTERS = ("otlp", "none")


class OtelConfigError(ValueError):
    """A malformed ``OTEL_*`` value; the message names the variable."""

    def __init__(self, var: str, value: str, expected: str) -> None:
        super().__init__(f"{var}={value!r} is not valid: expected {expected}")
        self.var = var


@dataclass(frozen=True)
class OtelConfig:
    """What the ``otel`` logger needs to know before building the exporter."""

    disabled_by: str | None
    """``OTEL_SDK_DISABLED=true`` or ``OTEL_METRICS_EXPORTER=none``, if one turns export off."""
    protocol: str
    endpoint: str
    """The metrics endpoint the exporter will send to, for messages."""
    temporality: str
    export_interval_s: float


def _pick(env: Mapping[str, str], name: str) -> tuple[str, str | None]:
    """The signal-specific variable if set, else the general one: (variable, value)."""
    specific = f"OTEL_EXPORTER_OTLP_METRICS_{name}"
    if env.get(specific):
        return specific, env[specific]
    general = f"OTEL_EXPORTER_OTLP_{name}"
    return general, env.get(general) or None


def endpoint_is_set(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def _choice(var: str, value: str | None, choices: tuple[str, ...], default: str) -> str:
    if value is None or not value.strip():
        return default
    v = value.strip().lower()
    if v not in choices:
        raise OtelConfigError(var, value, "one of " + ", ".join(choices))
    return v


def _number(var: str, value: str | None, *, positive: bool) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not (x > 0 if positive else x >= 0) or x == float("inf"):
        raise OtelConfigError(var, value, "a number > 0" if positive else "a number >= 0")
    return x


def _url(var: str, value: str) -> str:
    parts = urlsplit(value.strip())
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise OtelConfigError(var, value, "a URL such as http://collector:4318") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OtelConfigError(var, value, "a URL such as http://collector:4318")
    return value.strip()


def _headers(var: str, value: str | None) -> None:
    if not value:
        return
    for item in value.split(","):
        key, sep, _ = item.partition("=")
        if not item.strip():
            continue
        if not sep or not key.strip():
            raise OtelConfigError(var, value, "comma-separated key=value pairs")


def read_config(env: Mapping[str, str] | None = None) -> OtelConfig:
    """Check the ``OTEL_*`` variables; raise :class:`OtelConfigError` on the first bad one."""
    env = os.environ if env is None else env
    disabled_by = None
    sdk_disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower()
    if sdk_disabled not in ("", "true", "false"):
        raise OtelConfigError("OTEL_SDK_DISABLED", env["OTEL_SDK_DISABLED"], "true or false")
    if sdk_disabled == "true":
        disabled_by = "OTEL_SDK_DISABLED=true"
    exporters = env.get("OTEL_METRICS_EXPORTER", "")
    names = [n.strip().lower() for n in exporters.split(",") if n.strip()] or ["otlp"]
    for n in names:
        if n not in METRIC_EXPORTERS:
            raise OtelConfigError("OTEL_METRICS_EXPORTER", exporters, "otlp or none (other exporters are not built in)")
    if names == ["none"] and disabled_by is None:
        disabled_by = "OTEL_METRICS_EXPORTER=none"

    var, raw = _pick(env, "PROTOCOL")
    if raw is not None and raw.strip().lower() == "http/json":
        raise OtelConfigError(var, raw, "http/protobuf or grpc (the Python SDK has no http/json exporter)")
    protocol = _choice(var, raw, PROTOCOLS, "http/protobuf")

    specific = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    general = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if specific:
        endpoint = _url("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", specific)
    elif general:
        endpoint = _url("OTEL_EXPORTER_OTLP_ENDPOINT", general)
        if protocol != "grpc":
            endpoint = endpoint.rstrip("/") + "/v1/metrics"
    else:
        endpoint = "http://localhost:4317" if protocol == "grpc" else "http://localhost:4318/v1/metrics"

    var = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
    temporality = _choice(var, env.get(var), TEMPORALITIES, "cumulative")
    _choice(*_pick(env, "COMPRESSION"), COMPRESSIONS, "none")
    _number(*_pick(env, "TIMEOUT"), positive=True)
    _headers(*_pick(env, "HEADERS"))
    interval = _number("OTEL_METRIC_EXPORT_INTERVAL", env.get("OTEL_METRIC_EXPORT_INTERVAL"), positive=True)
    _number("OTEL_METRIC_EXPORT_TIMEOUT", env.get("OTEL_METRIC_EXPORT_TIMEOUT"), positive=True)
    return OtelConfig(
        disabled_by=disabled_by,
        protocol=protocol,
        endpoint=endpoint,
        temporality=temporality,
        export_interval_s=(interval if interval is not None else 60000.0) / 1000.0,
    )
