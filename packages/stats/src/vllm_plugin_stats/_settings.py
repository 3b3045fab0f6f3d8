"""Settings of vllm-plugin-stats (``VLLM_PLUGIN_STATS_*``).

Imports only core's settings module, so ``vllm-plugins doctor`` and core's
general plugin can read it without importing vLLM.
"""

from vllm_plugin_core.settings import Setting, Settings


def _non_negative(value: int) -> None:
    if value < 0:
        raise ValueError("must be >= 0")


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
    ],
)
