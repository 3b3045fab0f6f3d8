"""Adapter names: everything that could address anything but <store>/<name>/ is refused."""

from __future__ import annotations

import logging

import pytest
from lora_store_helpers import make_resolver, run

from vllm_plugin_lora_store.validate import AdapterRefused, check_name

EVIL = [
    "",
    ".",
    "..",
    "../etc",
    "a/../../b",
    "a/b",
    "a\\b",
    "..\\windows",
    "/etc/passwd",
    "~root",
    "foo..bar",
    "%2e%2e",
    "%2fetc",
    "a%00b",
    "a\x00b",
    "a\nb",
    "a\tb",
    "a\x7fb",
    "a\u200bb",          # zero-width space (Cf)
    "a\u202eb",          # right-to-left override
    "ｅｖｉｌ",           # fullwidth: NFKC changes it
    "\uff0e\uff0e",      # fullwidth dots -> ".." under NFKC
    "ﬁle",               # ligature: NFKC changes it
    "é",                 # NFKC-stable but not ASCII
    "caf\u0065\u0301",   # combining accent: not NFKC
    "name with space",
    "a" * 129,
    ".hidden",
    "-rf",
    "a?b",
    "a*b",
    "a|b",
    "a;b",
    "a$b",
    None,
    42,
]

GOOD = ["good", "my-adapter_v2.1", "org:team+exp@3", "A" * 128, "x"]


@pytest.mark.parametrize("name", EVIL, ids=[repr(n)[:30] for n in EVIL])
def test_evil_names_refused(name):
    with pytest.raises(AdapterRefused) as info:
        check_name(name)
    assert info.value.reason == "bad-name"
    assert "refused (bad-name)" in str(info.value)


@pytest.mark.parametrize("name", GOOD)
def test_good_names_accepted(name):
    assert check_name(name) == name


def test_resolver_refuses_evil_name_without_touching_the_store(tmp_path, store, plugin_log):
    r = make_resolver(store, tmp_path / "cache")
    calls = []
    r.store.list_files = lambda name: calls.append(name)  # must never be reached
    for _ in range(3):
        assert run(r.resolve_lora("base", "../good")) is None
    assert calls == []
    warnings = plugin_log.messages(logging.WARNING)
    assert len(warnings) == 1, warnings  # once per (adapter, reason)
    assert "'../good'" in warnings[0] and "path separator" in warnings[0]
