"""Settings of the ``otel`` stat logger (``VLLM_PLUGIN_STATS_OTEL_*``).

The exporter itself is configured by the standard ``OTEL_*`` variables (see
:mod:`vllm_plugin_stats._otel_config`); these only turn it on or off and bound
what is kept while the collector is unreachable. Imports only core's settings.
"""

from vllm_plugin_core.settings import Setting, Settings


def _non_negative(value: int) -> None:
    if value < 0:
        raise ValueError("must be >= 0")


def _positive(value: float) -> None:
    if not value > 0:
        raise ValueError("must be > 0")


SETTINGS = Settings(
    "stats-otel",
    [
        Setting(
            "ENABLED",
            bool,
            None,
            "OpenTelemetry metrics export: 1 on, 0 off. Unset: on when OTEL_EXPORTER_OTLP_ENDPOINT "
            "or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is set.",
        ),
        Setting(
            "MAX_PENDING",
            int,
            30,
            "Delta-temporality exports kept and re-sent while the collector is unreachable "
            "(oldest dropped beyond this; 0: none kept). Cumulative exports need none.",
            check=_non_negative,
            form="an integer >= 0 such as 30",
        ),
        Setting(
            "SHUTDOWN_TIMEOUT_S",
            float,
            5.0,
            "Longest wait for the last export at shutdown (SIGTERM, exit).",
            check=_positive,
            form="a number of seconds > 0 such as 5",
        ),
    ],
)
