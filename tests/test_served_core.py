"""Core inside a real ``vllm serve``: its general plugin runs in every vLLM
process, once each, and keeps vLLM quiet about declared plugin settings."""

from __future__ import annotations

import re

import pytest

#: Set on the shared server by tests/conftest.py; declared by no package.
UNDECLARED = "VLLM_PLUGIN_NOBODY_DECLARES_THIS"

pytestmark = pytest.mark.engine


def test_core_registered_once_in_each_process(shared_server):
    log = shared_server.log_text()
    pids = re.findall(r"vllm-plugin-core registered \(pid (\d+)\)", log)
    assert len(set(pids)) >= 2, "front end and engine core each load general plugins"
    assert len(pids) == len(set(pids)), "the body runs once per process"


def test_declared_settings_raise_no_unknown_variable_warning(shared_server):
    log = shared_server.log_text()
    found = re.findall(r"Unknown vLLM environment variable detected: (\S+)", log)
    unknown = {name for name in found if name.startswith("VLLM_PLUGIN")}
    assert UNDECLARED in unknown, "control: vLLM does warn for a variable nobody declares"
    assert unknown == {UNDECLARED}, f"declared plugin settings were reported: {unknown - {UNDECLARED}}"
