"""Shared fixtures. No vLLM engine is ever started here."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="session")
def vllm_config():
    """A real VllmConfig with defaults (no model: cheap to build)."""
    from vllm.config import VllmConfig

    return VllmConfig()


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int | None = None) -> list[str]:
        return [r.getMessage() for r in self.records if level is None or r.levelno == level]


@pytest.fixture()
def plugin_log():
    """Records of the plugin's logger (a child of vLLM's non-propagating "vllm" logger)."""
    from vllm_plugin_stats._writer import logger

    handler = _ListHandler()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("PATH", "REQUESTS", "MAX_BYTES", "KEEP"):
        monkeypatch.delenv(f"VLLM_PLUGIN_STATS_{var}", raising=False)
    yield
    from vllm_plugin_stats import _writer
    from vllm_plugin_stats import logger as mod

    for stat_logger in list(mod._LIVE):
        stat_logger.close()
    _writer._reset_for_tests()
    mod._INACTIVE_NOTICE_DONE = False
