"""Offline use: JSON Lines stats for an ``LLMEngine`` you drive yourself.

``vllm.LLM(...)`` loads no stat-logger plugins and turns stats off
(``disable_log_stats=True``), and it has no parameter to pass a stat logger.
The supported offline way is ``LLMEngine.from_engine_args(engine_args,
stat_loggers=[...])`` (same signature in vLLM 0.31 to 0.34), which these
helpers wrap::

    from vllm import EngineArgs, SamplingParams
    from vllm_plugin_stats.offline import stats_engine

    args = EngineArgs(model="facebook/opt-125m")
    with stats_engine(args, path="stats.jsonl") as engine:
        engine.add_request("r0", "Hello", SamplingParams(max_tokens=16))
        while engine.has_unfinished_requests():
            engine.step()
    # stats.jsonl now holds start, interval(s) and stop records

Notes:

* Stats need ``engine_args.disable_log_stats=False`` (the ``EngineArgs``
  default); these helpers force it, which also turns on vLLM's own periodic
  log line.
* ``LLMEngine.step()`` calls ``log()`` at most every
  ``VLLM_LOG_STATS_INTERVAL`` seconds (default 10) and only on steps with
  outputs; closing (the ``with`` block, :func:`close_stats`, garbage
  collection of the engine, or process exit) writes a last ``interval`` record
  with everything recorded since the previous one, then the ``stop`` record.
* ``path`` overrides ``VLLM_PLUGIN_STATS_PATH``; with neither set the loggers
  stay inactive.
* SIGTERM: Python's default action ends the process without running
  ``atexit``, which would lose the ``stop`` record. The first logger a
  :class:`StatsHandle` builds in the main thread installs a SIGTERM handler
  (only where none is installed) that closes every logger, then lets the
  default action end the process as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from vllm_plugin_stats.logger import JsonlStatLogger, close_all_loggers

__all__ = ["StatsHandle", "close_stats", "engine_with_stats", "install_sigterm_close", "stats_engine"]

_ATTR = "_vllm_plugin_stats"
_SIGTERM_INSTALLED = False


def _close_then_terminate(signum: int, frame: Any) -> None:
    try:
        close_all_loggers()
    finally:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def install_sigterm_close() -> bool:
    """Close the stats on SIGTERM where the process has no handler of its own.

    Returns True if the handler is installed (now or before).
    """
    global _SIGTERM_INSTALLED
    if _SIGTERM_INSTALLED:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _close_then_terminate)
    _SIGTERM_INSTALLED = True
    return True


class StatsHandle:
    """A per-engine stat-logger factory that remembers what it built.

    Pass it in ``stat_loggers=[handle]`` of ``LLMEngine`` or ``AsyncLLM``;
    vLLM calls ``handle(vllm_config, engine_index)`` once per engine.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.loggers: list[JsonlStatLogger] = []

    def __call__(self, vllm_config: Any, engine_index: int = 0) -> JsonlStatLogger:
        stat_logger = JsonlStatLogger(vllm_config, engine_index, path=self.path)
        self.loggers.append(stat_logger)
        if stat_logger.active:
            install_sigterm_close()
        return stat_logger

    def flush(self) -> None:
        """Write an ``interval`` record now for each engine (like vLLM's ``log()``)."""
        for stat_logger in self.loggers:
            stat_logger.log()

    def close(self) -> None:
        """Write the last interval and ``stop`` records and drain the file."""
        for stat_logger in self.loggers:
            stat_logger.close()


def engine_with_stats(engine_args: Any, path: str | None = None, **kwargs: Any) -> Any:
    """Build an ``LLMEngine`` that writes JSON Lines stats.

    ``kwargs`` go to ``LLMEngine.from_engine_args`` (e.g. ``usage_context``).
    The handle is kept on the engine; call :func:`close_stats` when done (or
    rely on garbage collection / process exit).
    """
    from vllm.v1.engine.llm_engine import LLMEngine

    if getattr(engine_args, "disable_log_stats", False):
        engine_args = dataclasses.replace(engine_args, disable_log_stats=False)
    handle = StatsHandle(path)
    stat_loggers = list(kwargs.pop("stat_loggers", None) or [])
    stat_loggers.append(handle)
    engine = LLMEngine.from_engine_args(engine_args, stat_loggers=stat_loggers, **kwargs)
    setattr(engine, _ATTR, handle)
    return engine


def close_stats(engine: Any) -> None:
    """Close the stats of an engine built by :func:`engine_with_stats`."""
    handle = getattr(engine, _ATTR, None)
    if handle is not None:
        handle.close()


@contextlib.contextmanager
def stats_engine(engine_args: Any, path: str | None = None, **kwargs: Any) -> Iterator[Any]:
    """Context manager around :func:`engine_with_stats`; closes the stats on exit."""
    engine = engine_with_stats(engine_args, path=path, **kwargs)
    try:
        yield engine
    finally:
        close_stats(engine)
