"""Typed settings: parsing, validation errors, declaration (pure logic)."""

from __future__ import annotations

import pytest

from vllm_plugin_core.settings import Setting, SettingError, Settings, all_declared_settings


def make() -> Settings:
    def positive(v: int) -> None:
        if v <= 0:
            raise ValueError("must be > 0")

    return Settings("demo-pkg", [
        Setting("PATH", str, None, "Where to write."),
        Setting("MAX_BYTES", int, 0, "Rotate past this size.", check=lambda v: None),
        Setting("RATE", float, 0.5, "A rate."),
        Setting("ON", bool, False, "Turn it on."),
        Setting("NAMES", list, [], "Names."),
        Setting("WORKERS", int, 1, "Workers.", check=positive),
    ])


def test_names_follow_the_convention():
    s = make()
    assert s.env_names() == [
        "VLLM_PLUGIN_DEMO_PKG_PATH", "VLLM_PLUGIN_DEMO_PKG_MAX_BYTES", "VLLM_PLUGIN_DEMO_PKG_RATE",
        "VLLM_PLUGIN_DEMO_PKG_ON", "VLLM_PLUGIN_DEMO_PKG_NAMES", "VLLM_PLUGIN_DEMO_PKG_WORKERS",
    ]
    assert all_declared_settings()["VLLM_PLUGIN_DEMO_PKG_"] is s


def test_defaults_when_unset():
    assert make().read_all({}) == {
        "PATH": None, "MAX_BYTES": 0, "RATE": 0.5, "ON": False, "NAMES": [], "WORKERS": 1,
    }


@pytest.mark.parametrize(("name", "raw", "value"), [
    ("PATH", "/tmp/x", "/tmp/x"),
    ("MAX_BYTES", "1024", 1024),
    ("RATE", "0.25", 0.25),
    ("ON", "yes", True),
    ("ON", "0", False),
    ("ON", "TRUE", True),
    ("NAMES", "a, b,,c", ["a", "b", "c"]),
    ("WORKERS", "3", 3),
])
def test_valid_values(name, raw, value):
    assert make().get(name, {f"VLLM_PLUGIN_DEMO_PKG_{name}": raw}) == value


@pytest.mark.parametrize(("name", "raw", "form"), [
    ("MAX_BYTES", "10MB", "an integer"),
    ("RATE", "fast", "a number"),
    ("ON", "maybe", "a boolean"),
    ("WORKERS", "0", "must be > 0"),
])
def test_bad_values_name_variable_value_and_form(name, raw, form):
    with pytest.raises(SettingError) as err:
        make().get(name, {f"VLLM_PLUGIN_DEMO_PKG_{name}": raw})
    msg = str(err.value)
    assert f"VLLM_PLUGIN_DEMO_PKG_{name}" in msg
    assert repr(raw) in msg
    assert form in msg


def test_setting_error_is_a_value_error():
    assert issubclass(SettingError, ValueError)


def test_describe_rows_for_docs():
    rows = make().describe()
    assert rows[0] == {"variable": "VLLM_PLUGIN_DEMO_PKG_PATH", "form": "a string", "default": None,
                       "help": "Where to write."}
