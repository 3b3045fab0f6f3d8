"""Cross-package tests: ONE ``vllm serve`` per vLLM version with every plugin
that can be active at once (core, samplers, stats), shared by all modules.

Tests marked ``shutdown`` stop that server and run last.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vllm_plugin_core.testing.server import VllmServer

#: Set for the shared server; a variable no plugin declares, to show that vLLM
#: would warn for it but stays quiet for every declared plugin setting.
UNDECLARED = "VLLM_PLUGIN_NOBODY_DECLARES_THIS"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "shutdown: stops the shared server; runs last")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("shutdown") is not None)


@pytest.fixture(scope="session")
def stats_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stats")


@pytest.fixture(scope="session")
def shared_server(tiny_causal_lm: Path, stats_dir: Path):
    env = {
        "VLLM_PLUGIN_STATS_PATH": str(stats_dir / "stats.jsonl"),
        "VLLM_PLUGIN_STATS_REQUESTS": "1",
        "VLLM_PLUGIN_STRICT": "0",
        "VLLM_LOG_STATS_INTERVAL": "1",
        UNDECLARED: "1",
    }
    env = {**{k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}, **env}
    server = VllmServer(tiny_causal_lm, ["--max-model-len", "512", "--max-num-seqs", "8"], env,
                        served_model_name="tiny")
    server.start()
    print(f"\nshared vllm serve ready in {server.startup_seconds:.0f} s at {server.url}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def openai_client(shared_server: VllmServer):
    import openai

    return openai.OpenAI(base_url=shared_server.base_url, api_key="unused", max_retries=0, timeout=120)
