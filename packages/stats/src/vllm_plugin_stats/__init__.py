"""vllm-plugin-stats: a JSON Lines stat logger for vLLM.

vLLM loads :class:`vllm_plugin_stats.logger.JsonlStatLogger` from the
``vllm.stat_logger_plugins`` entry point ``jsonl``. Set
``VLLM_PLUGIN_STATS_PATH`` to a file or directory to turn it on. For offline
use see :mod:`vllm_plugin_stats.offline`.

Importing this package imports nothing but the standard library.
"""

__version__ = "0.1.0"

SCHEMA_VERSION = 1
