"""Activation on request: the setting, the detection function, vLLM's own
platform resolution (fresh interpreters), ``vllm-plugins doctor --json``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from vllm_plugin_core.testing.platform import vllm_has_cpu_kernels
from vllm_plugin_torch_native import PLATFORM_PATH, _entry
from vllm_plugin_torch_native._settings import ENABLE_VAR, SETTINGS

PLATFORM_PROBE = (
    "from vllm.platforms import current_platform as p; "
    "t = type(p); print('PLATFORM', t.__module__ + '.' + t.__qualname__, p.is_out_of_tree(), p.device_type)"
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (ENABLE_VAR, "VLLM_PLUGINS", "VLLM_TARGET_DEVICE")}
    env.update(extra)
    return env


def probe(env: dict[str, str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PLATFORM_PROBE], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("PLATFORM "))
    return line.split()[1:]


def test_variable_name_is_fixed_and_declared_to_core():
    assert ENABLE_VAR == "VLLM_PLUGIN_TORCH_NATIVE"
    assert SETTINGS.env_names() == ["VLLM_PLUGIN_TORCH_NATIVE"]
    from vllm_plugin_core._entry import declared_env_names

    assert "VLLM_PLUGIN_TORCH_NATIVE" in declared_env_names()


@pytest.fixture
def fresh_detect(monkeypatch):
    monkeypatch.setattr(_entry, "_logged", False)
    monkeypatch.delenv(ENABLE_VAR, raising=False)
    return monkeypatch


def test_detect_off_by_default(fresh_detect, caplog):
    with caplog.at_level(logging.INFO, logger="vllm.plugins.torch_native"):
        assert _entry.detect() is None
        fresh_detect.setenv(ENABLE_VAR, "0")
        assert _entry.detect() is None
    assert not caplog.records


def test_detect_on_logs_once(fresh_detect, caplog):
    fresh_detect.setenv(ENABLE_VAR, "1")
    with caplog.at_level(logging.INFO, logger="vllm.plugins.torch_native"):
        assert _entry.detect() == PLATFORM_PATH
        assert _entry.detect() == PLATFORM_PATH  # vLLM calls it twice
    msgs = [r.getMessage() for r in caplog.records if r.name == "vllm.plugins.torch_native"]
    assert len(msgs) == 1 and "torch_native platform activated" in msgs[0]


def test_detect_bad_value_says_so(fresh_detect, caplog):
    fresh_detect.setenv(ENABLE_VAR, "maybe")
    with caplog.at_level(logging.INFO, logger="vllm.plugins.torch_native"):
        assert _entry.detect() is None
    assert "VLLM_PLUGIN_TORCH_NATIVE='maybe' is not valid" in caplog.text


def test_vllm_loader_finds_the_platform_plugin(assert_entry_point_discovered):
    func = assert_entry_point_discovered("vllm.platform_plugins", "torch_native")
    assert func is _entry.detect


def test_vllm_resolves_this_platform_only_on_request():
    on = probe(clean_env(**{ENABLE_VAR: "1"}))
    assert on == [PLATFORM_PATH, "True", "cpu"]
    off = probe(clean_env())
    if vllm_has_cpu_kernels():
        assert off == ["vllm.platforms.cpu.CpuPlatform", "False", "cpu"]
    else:  # the CUDA wheel without GPU: vLLM finds no platform of its own
        assert off[:2] == ["vllm.platforms.interface.UnspecifiedPlatform", "False"], off


def test_doctor_json_shows_the_active_platform():
    out = subprocess.run([sys.executable, "-m", "vllm_plugin_core.cli", "doctor", "--json"],
                         env=clean_env(**{ENABLE_VAR: "1"}), capture_output=True, text=True, timeout=600)
    data = json.loads(out.stdout)
    assert data["environment"]["platform"] == PLATFORM_PATH, out.stderr[-2000:]
    rows = [(r["group"], r["name"]) for r in data["plugins"]]
    assert ("vllm.platform_plugins", "torch_native") in rows
    assert ("vllm.general_plugins", "torch_native") in rows


def test_detect_stays_off_on_a_vllm_outside_the_range(monkeypatch):
    """The platform and its ops share one version gate: on a vLLM outside the
    supported range detect() returns None (one warning), never a half-active platform."""
    from packaging.version import Version

    from vllm_plugin_core import version
    from vllm_plugin_torch_native import PLATFORM_PATH, _entry

    monkeypatch.setenv("VLLM_PLUGIN_TORCH_NATIVE", "1")
    assert _entry.detect() == PLATFORM_PATH
    monkeypatch.setattr(version, "vllm_version", lambda: Version("0.30.1"))
    monkeypatch.setattr(version, "_warned", set())
    assert _entry.detect() is None
    monkeypatch.setenv("VLLM_PLUGIN_STRICT", "1")  # strict: still None (vLLM would swallow a raise), logged
    assert _entry.detect() is None
