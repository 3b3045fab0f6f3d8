"""Shared fixtures. No vLLM engine or server is ever started here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lora_store_helpers import ADAPTER_FILES

from vllm_plugin_core.testing.logs import capture_plugin_log


@pytest.fixture()
def plugin_log():
    """Records of ``vllm.plugins.lora_store`` (a child of vLLM's non-propagating logger)."""
    with capture_plugin_log("vllm.plugins.lora_store") as handler:
        yield handler


@pytest.fixture(scope="session")
def base_model() -> Path:
    from vllm_plugin_core.testing.models import build_causal_lm

    return build_causal_lm()


@pytest.fixture(scope="session")
def adapter_src(base_model: Path) -> Path:
    from vllm_plugin_core.testing.models import build_lora_adapter

    return build_lora_adapter(base_model)


@pytest.fixture()
def store(tmp_path: Path, adapter_src: Path) -> Path:
    """A local store holding one good adapter, ``good``."""
    root = tmp_path / "store"
    (root / "good").mkdir(parents=True)
    for f in ADAPTER_FILES:
        shutil.copy(adapter_src / f, root / "good" / f)
    return root
