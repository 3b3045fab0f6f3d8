"""vLLM version detection and the version gate."""

from __future__ import annotations

import logging

import pytest
from packaging.version import Version

from vllm_plugin_core import version as v
from vllm_plugin_core.version import UnsupportedVllmVersion, requires_vllm, vllm_distribution, vllm_version


def test_reads_the_installed_distribution_providing_vllm():
    dist = vllm_distribution()
    assert dist is not None, "these tests run with a vLLM installed"
    import importlib.metadata as md

    assert md.version(dist[0]) == dist[1]
    assert vllm_version() == Version(Version(dist[1]).public)
    assert vllm_version() in __import__("packaging.specifiers").specifiers.SpecifierSet(v.SUPPORTED_VLLM)


def test_gate_as_call_and_decorator(caplog, monkeypatch):
    monkeypatch.delenv("VLLM_PLUGIN_STRICT", raising=False)
    v._warned.clear()
    assert requires_vllm(">=0.31").check()
    assert bool(requires_vllm(">=0.31,<0.35"))

    @requires_vllm(">=42", name="future-plugin")
    def register():
        return "ran"

    with caplog.at_level(logging.WARNING, logger="vllm.plugins.core"):
        assert register() is None
        assert register() is None
    warnings = [r.getMessage() for r in caplog.records if "future-plugin" in r.getMessage()]
    assert len(warnings) == 1, "one clear warning, not one per call"
    assert "supports vLLM >=42" in warnings[0] and str(vllm_version()) in warnings[0]

    @requires_vllm(">=0.31", name="present-plugin")
    def ok():
        return "ran"

    assert ok() == "ran"


def test_gate_strict_raises(monkeypatch):
    monkeypatch.setenv("VLLM_PLUGIN_STRICT", "1")
    with pytest.raises(UnsupportedVllmVersion, match="<0.1"):
        requires_vllm("<0.1", name="ancient").check()


def test_bad_spec_is_refused_early():
    with pytest.raises(Exception, match="Invalid specifier"):
        requires_vllm("0.31+")


def test_no_vllm_gives_clear_error(monkeypatch):
    monkeypatch.setattr(v, "vllm_distribution", lambda: None)
    with pytest.raises(v.VllmNotInstalledError, match="needs vLLM.*pip install vllm"):
        v.require_vllm_installed("thing")
