"""Settings of vllm-plugin-stats (``VLLM_PLUGIN_STATS_*``).

Imports only core's settings module, so ``vllm-plugins doctor`` and core's
general plugin can read it without importing vLLM.
"""

from vllm_plugin_core.settings import Setting, Settings


def _non_negative(value: float) -> None:
    if value < 0 or value != value or value == float("inf"):
        raise ValueError("must be a finite number >= 0")


def _positive(value: int) -> None:
    if value < 1:
        raise ValueError("must be >= 1")


SETTINGS = Settings(
    "stats",
    [
        Setting(
            "PATH",
            str,
            None,
            "File, or directory (existing, or ending in /) for one "
            "vllm-stats-<UTC time>-<pid>.jsonl per server start. Unset: the stats logger is off.",
        ),
        Setting(
            "REQUESTS",
            bool,
            False,
            "Also write one `request` record per finished request.",
        ),
        Setting(
            "MAX_BYTES",
            int,
            0,
            "Rotate the file when a write would take it past this many bytes (0: never rotate).",
            check=_non_negative,
            form="an integer >= 0 such as 104857600",
        ),
        Setting(
            "KEEP",
            int,
            5,
            "Rotated files kept (file.jsonl.1 ... file.jsonl.N); 0 truncates the file instead.",
            check=_non_negative,
            form="an integer >= 0 such as 5",
        ),
        Setting(
            "IDLE_S",
            float,
            60.0,
            "Idle intervals (nothing running, waiting or finished) are merged into at most one `interval` "
            "record per this many seconds, carrying the idle span (0: write every interval).",
            check=_non_negative,
            form="a number of seconds >= 0 such as 60",
        ),
        Setting(
            "QUEUE_MAX",
            int,
            8192,
            "Records waiting for the writer thread before `request` records are dropped (counted in "
            "`dropped_records`); also the most finished requests held between two `interval` records.",
            check=_positive,
            form="an integer >= 1 such as 8192",
        ),
    ],
)
