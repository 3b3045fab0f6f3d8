"""Shared fixtures. No vLLM engine is ever started here."""

from __future__ import annotations

import pytest

from vllm_plugin_core.testing.logs import capture_plugin_log


@pytest.fixture(scope="session")
def vllm_config():
    """A real VllmConfig with defaults (no model: cheap to build)."""
    from vllm.config import VllmConfig

    return VllmConfig()


@pytest.fixture()
def plugin_log():
    """Records of the plugin's logger (a child of vLLM's non-propagating "vllm" logger)."""
    from vllm_plugin_stats._writer import logger

    with capture_plugin_log(logger.name) as handler:
        yield handler


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("PATH", "REQUESTS", "MAX_BYTES", "KEEP", "IDLE_S", "QUEUE_MAX"):
        monkeypatch.delenv(f"VLLM_PLUGIN_STATS_{var}", raising=False)
    yield
    from vllm_plugin_stats import _writer
    from vllm_plugin_stats import logger as mod

    for stat_logger in list(mod._LIVE):
        stat_logger.close()
    _writer._reset_for_tests()
    mod._INACTIVE_NOTICE_DONE = False
