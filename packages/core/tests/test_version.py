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
    monkeypatch.delenv(v.ALLOW_UNTESTED_VAR, raising=False)  # the canary sets it
    with pytest.raises(UnsupportedVllmVersion, match="<0.1"):
        requires_vllm("<0.1", name="ancient").check()


def test_bad_spec_is_refused_early():
    with pytest.raises(Exception, match="Invalid specifier"):
        requires_vllm("0.31+")


def test_no_vllm_gives_clear_error(monkeypatch):
    monkeypatch.setattr(v, "vllm_distribution", lambda: None)
    with pytest.raises(v.VllmNotInstalledError, match="needs vLLM.*pip install vllm"):
        v.require_vllm_installed("thing")


# VLLM_PLUGINS_ALLOW_UNTESTED_VLLM: the running vLLM is monkeypatched (no engine).

ALLOW = v.ALLOW_UNTESTED_VAR


@pytest.fixture
def running(monkeypatch):
    """Pretend the running vLLM is ``version``; fresh warning state, no strict mode."""
    from vllm_plugin_core import guard

    def set_version(version: str) -> None:
        monkeypatch.setattr(v, "vllm_version", lambda: Version(version))

    monkeypatch.delenv("VLLM_PLUGIN_STRICT", raising=False)
    monkeypatch.delenv(ALLOW, raising=False)
    monkeypatch.setattr(v, "_warned", set())
    monkeypatch.setattr(v, "_untested_warned", set())
    monkeypatch.setattr(v, "_bad_allow_reported", False)
    guard.reset_for_tests()
    yield set_version
    guard.reset_for_tests()


def _core_messages(caplog, level=logging.WARNING):
    return [r.getMessage() for r in caplog.records
            if r.name == "vllm.plugins.core" and r.levelno == level]


@pytest.mark.parametrize(("spec", "version", "newer"), [
    (">=0.31,<0.35", "0.35.0", True),
    (">=0.31,<0.35", "0.35.0rc1", True),
    (">=0.31,<0.35", "1.2.3", True),
    (">=0.31,<0.35", "0.34.9", False),  # in range
    (">=0.31,<0.35", "0.30.2", False),  # older
    ("<0.35,>=0.31", "0.36.1", True),  # as distribution metadata writes it
    (">=0.31,<=0.34.2", "0.34.3", True),
    ("==0.33.*", "0.34.0", True),
    ("==0.33.*", "0.32.0", False),
    ("~=0.33.0", "0.34.0", True),
    (">=0.31,<0.35,!=0.33.1", "0.33.1", False),  # excluded, not newer
    (">=42", "0.34.0", False),
])
def test_newer_than(spec, version, newer):
    assert v.newer_than(spec, Version(version)) is newer


def _plugins():
    """Two entry points gated the way this project's plugins are, and a
    ``requires_vllm``-decorated one (chunked-embeddings' way)."""
    from vllm_plugin_core.guard import plugin_entry_point

    @plugin_entry_point("vllm-plugin-a", vllm=v.SUPPORTED_VLLM)
    def a():
        return "a"

    @plugin_entry_point("vllm-plugin-b", vllm=v.SUPPORTED_VLLM)
    def b():
        return "b"

    @requires_vllm(v.SUPPORTED_VLLM, name="vllm-plugin-c")
    def c():
        return "c"

    return a, b, c


def test_untested_newer_vllm_loads_every_plugin_with_one_warning(running, monkeypatch, caplog):
    running("0.35.1")
    monkeypatch.setenv(ALLOW, "1")
    with caplog.at_level(logging.INFO, logger="vllm.plugins.core"):
        assert [f() for f in _plugins()] == ["a", "b", "c"]
        assert requires_vllm(v.SUPPORTED_VLLM).check()
    warnings = _core_messages(caplog)
    assert len(warnings) == 1, warnings
    assert "0.35.1" in warnings[0] and v.SUPPORTED_VLLM in warnings[0] and f"{ALLOW}=1" in warnings[0]
    assert v.untested_allowed(v.SUPPORTED_VLLM)


def test_untested_wins_over_strict_for_a_newer_vllm_only(running, monkeypatch):
    monkeypatch.setenv(ALLOW, "true")
    monkeypatch.setenv("VLLM_PLUGIN_STRICT", "1")
    running("0.36.0")
    assert requires_vllm(v.SUPPORTED_VLLM, name="x").check()
    running("0.30.0")
    with pytest.raises(UnsupportedVllmVersion, match="0.30.0"):
        requires_vllm(v.SUPPORTED_VLLM, name="x").check()


def test_older_vllm_is_still_refused(running, monkeypatch, caplog):
    running("0.30.0")
    monkeypatch.setenv(ALLOW, "1")
    with caplog.at_level(logging.WARNING, logger="vllm.plugins.core"):
        assert [f() for f in _plugins()] == [None, None, None]
    warnings = _core_messages(caplog)
    assert len(warnings) == 3 and all("found vLLM 0.30.0" in w and "skipping" in w for w in warnings)
    assert not any(ALLOW in w for w in warnings), "the variable cannot help on an older vLLM"
    assert not v.untested_allowed(v.SUPPORTED_VLLM)


def test_newer_vllm_without_the_variable_is_refused_and_the_message_names_it(running, caplog):
    running("0.35.0")
    with caplog.at_level(logging.WARNING, logger="vllm.plugins.core"):
        assert [f() for f in _plugins()] == [None, None, None]
    warnings = _core_messages(caplog)
    assert len(warnings) == 3 and all(f"set {ALLOW}=1" in w for w in warnings)


@pytest.mark.parametrize("off", ["0", "false", "no", "off", ""])
def test_off_values_keep_the_check(running, monkeypatch, off):
    running("0.35.0")
    monkeypatch.setenv(ALLOW, off)
    assert not requires_vllm(v.SUPPORTED_VLLM, name="x").check()


def test_malformed_value_gives_one_error_and_stays_strict(running, monkeypatch, caplog):
    running("0.35.0")
    monkeypatch.setenv(ALLOW, "maybe")
    with caplog.at_level(logging.WARNING, logger="vllm.plugins.core"):
        assert [f() for f in _plugins()] == [None, None, None]
        assert not v.untested_allowed(v.SUPPORTED_VLLM)
    errors = _core_messages(caplog, logging.ERROR)
    assert len(errors) == 1, errors
    assert f"{ALLOW}='maybe' is not valid" in errors[0] and "1/0, true/false, yes/no or on/off" in errors[0]
    assert "stays strict" in errors[0]
    monkeypatch.setenv("VLLM_PLUGIN_STRICT", "1")
    with pytest.raises(UnsupportedVllmVersion):
        requires_vllm(v.SUPPORTED_VLLM, name="x").check()


def test_patch_ranges_are_not_widened(running, monkeypatch):
    """A patch's range says where it is needed: the variable leaves it exact."""
    running("0.35.0")
    monkeypatch.setenv(ALLOW, "1")
    assert not requires_vllm("<0.35", name="patch p", allow_untested=False).check()
    assert requires_vllm("<0.35", name="plugin p").check()


def test_the_variable_is_a_declared_setting():
    """Declared like core's other settings, so vLLM's validator knows it (no
    ``Unknown vLLM environment variable`` warning)."""
    from vllm_plugin_core._core_settings import GATE_SETTINGS
    from vllm_plugin_core._entry import declared_env_names
    from vllm_plugin_core.settings import all_declared_settings

    assert GATE_SETTINGS.env_names() == [ALLOW]
    assert all_declared_settings()["VLLM_PLUGINS_"] is GATE_SETTINGS
    assert GATE_SETTINGS.get("ALLOW_UNTESTED_VLLM", environ={}) is False
    assert GATE_SETTINGS.get("ALLOW_UNTESTED_VLLM", environ={ALLOW: "1"}) is True
    assert ALLOW in declared_env_names(), "core's `core-gate` settings entry point (reinstall core)"


def test_malformed_allow_value_lists_the_accepted_values_once(running, monkeypatch, caplog):
    running("0.35.0")
    monkeypatch.setenv(ALLOW, "maybe")
    with caplog.at_level(logging.WARNING, logger="vllm.plugins.core"):
        assert not v.untested_allowed(v.SUPPORTED_VLLM)
    (error,) = _core_messages(caplog, logging.ERROR)
    assert error.count("true/false") == 1, error


def test_malformed_strict_value_on_an_out_of_range_vllm_does_not_raise(running, monkeypatch, caplog):
    """``VLLM_PLUGIN_STRICT=maybe`` on an out-of-range vLLM: the gate reads it
    through the guard's reader (one error, not strict) and never raises the
    SettingError that would end vLLM's general-plugin loading."""
    running("0.30.0")
    monkeypatch.setenv("VLLM_PLUGIN_STRICT", "maybe")
    with caplog.at_level(logging.WARNING, logger="vllm.plugins.core"):
        assert not requires_vllm(v.SUPPORTED_VLLM, name="x").check()
        assert [f() for f in _plugins()] == [None, None, None]
    errors = _core_messages(caplog, logging.ERROR)
    assert len(errors) == 1, errors
    assert "VLLM_PLUGIN_STRICT='maybe' is not valid" in errors[0] and "stays off" in errors[0]
    assert any("supports vLLM" in w for w in _core_messages(caplog))
