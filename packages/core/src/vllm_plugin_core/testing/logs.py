"""Capture a plugin logger's records in tests.

Plugin loggers are children of vLLM's ``vllm`` logger (ADR 0002), which stops
propagation once vLLM configures logging, so pytest's ``caplog`` may not see
them. :func:`capture_plugin_log` attaches a list handler to the logger itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ListHandler", "capture_plugin_log"]


class ListHandler(logging.Handler):
    """Keeps every record; ``messages(level)`` returns their text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int | None = None) -> list[str]:
        return [r.getMessage() for r in self.records if level is None or r.levelno == level]


@contextmanager
def capture_plugin_log(name: str) -> Iterator[ListHandler]:
    """Records of logger ``name`` at DEBUG and above while the block runs."""
    logger = logging.getLogger(name)
    handler = ListHandler()
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
