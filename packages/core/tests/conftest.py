from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_plugin_core.testing.install import install_into

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def test_plugins_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding three real installed plugin distributions (healthy,
    broken import, failing registration), for PYTHONPATH."""
    return install_into(tmp_path_factory.mktemp("plugins"),
                        *(HERE / "plugins" / n for n in ("healthy", "broken", "failing")))


@pytest.fixture
def run_python():
    """Run Python code in a fresh interpreter (how vLLM starts its processes)."""

    def run(code: str, env: dict[str, str] | None = None, pythonpath: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        full = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_PLUGIN_") or k == "VLLM_PLUGIN_CACHE_DIR"}
        full.pop("VLLM_PLUGINS", None)
        if pythonpath is not None:
            full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), full.get("PYTHONPATH")]))
        full.update(env or {})
        return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                              timeout=timeout)

    return run


@pytest.fixture(autouse=True)
def _capture_plugin_logs(caplog):
    """Plugin loggers live under ``vllm.plugins`` so that vLLM's handler prints
    them; once vLLM has configured logging it stops propagation at ``vllm``.
    Capture core's records exactly once either way: caplog's handler sits on
    core's logger, and propagation from it is off during the test."""
    import logging

    log = logging.getLogger("vllm.plugins.core")
    old = log.propagate
    log.addHandler(caplog.handler)
    log.propagate = False
    yield
    log.propagate = old
    log.removeHandler(caplog.handler)
