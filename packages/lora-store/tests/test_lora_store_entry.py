"""Registration through vLLM's own general-plugin loader, and settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from vllm_plugin_core.settings import SettingError
from vllm_plugin_lora_store._settings import SETTINGS, parse_bytes


def _run(script: str, env: dict[str, str]) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_PLUGIN_LORA_STORE_")}
    full.update(env)
    full.pop("VLLM_PLUGINS", None)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=full, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


LOAD = """
    import json, sys
    from vllm.plugins import load_general_plugins
    from vllm.lora.resolver import LoRAResolverRegistry
    load_general_plugins()
    out = {"names": sorted(LoRAResolverRegistry.get_supported_resolvers())}
    if "lora_store" in out["names"]:
        r = LoRAResolverRegistry.get_resolver("lora_store")
        from vllm.lora.resolver import LoRAResolver
        out.update(cls=type(r).__name__, base=isinstance(r, LoRAResolver), uri=r.store.uri,
                   cache=r.cache.root, client=r.store._client is not None)
    print(json.dumps(out))
"""


def test_registered_through_vllm_loader(tmp_path):
    out = _run(LOAD, {
        "VLLM_PLUGIN_LORA_STORE_URI": "s3://bucket/prefix",
        "VLLM_PLUGIN_LORA_STORE_CACHE_DIR": str(tmp_path / "c"),
    })
    assert "lora_store" in out["names"]
    assert out["cls"] == "LoraStoreResolver" and out["base"] is True
    assert out["uri"] == "s3://bucket/prefix" and out["cache"] == str(tmp_path / "c")
    assert out["client"] is False  # the S3 client is created on first use
    assert not (tmp_path / "c").exists()  # and the cache on first resolve


@pytest.fixture()
def fresh_guard():
    from vllm_plugin_core import guard

    guard.reset_for_tests()
    yield
    guard.reset_for_tests()


def test_not_registered_without_uri(monkeypatch, fresh_guard, caplog):
    from vllm.lora.resolver import LoRAResolverRegistry

    from vllm_plugin_lora_store._entry import register

    monkeypatch.delenv("VLLM_PLUGIN_LORA_STORE_URI", raising=False)
    before = dict(LoRAResolverRegistry.resolvers)
    assert "URI is unset" in register()
    assert LoRAResolverRegistry.resolvers == before


def test_bad_setting_does_not_take_vllm_down(monkeypatch, fresh_guard):
    from vllm.lora.resolver import LoRAResolverRegistry

    from vllm_plugin_lora_store._entry import register

    monkeypatch.setenv("VLLM_PLUGIN_LORA_STORE_URI", "relative/dir")
    monkeypatch.delenv("VLLM_PLUGIN_STRICT", raising=False)
    before = dict(LoRAResolverRegistry.resolvers)
    assert register() is None  # logged as one error naming the variable and the fix
    assert LoRAResolverRegistry.resolvers == before


def test_entry_module_imports_nothing_heavy():
    out = _run(
        """
        import json, sys
        import vllm_plugin_lora_store._entry
        import vllm_plugin_lora_store._settings
        print(json.dumps({m: m in sys.modules for m in ("vllm", "boto3", "torch", "botocore")}))
        """,
        {},
    )
    assert not any(out.values()), out


def test_settings_parse():
    assert parse_bytes("10GiB") == 10 << 30
    assert parse_bytes("512MiB") == 512 << 20
    assert parse_bytes("1000") == 1000
    env = {
        "VLLM_PLUGIN_LORA_STORE_URI": "/srv/adapters",
        "VLLM_PLUGIN_LORA_STORE_CACHE_MAX_BYTES": "1GiB",
        "VLLM_PLUGIN_LORA_STORE_ALLOW_PICKLE": "1",
        "VLLM_PLUGIN_LORA_STORE_PINNED": "a, b",
        "VLLM_PLUGIN_LORA_STORE_MAX_LORA_RANK": "16",
    }
    s = SETTINGS.read_all(env)
    assert s["CACHE_MAX_BYTES"] == 1 << 30 and s["ALLOW_PICKLE"] is True
    assert s["PINNED"] == ["a", "b"] and s["MAX_LORA_RANK"] == 16
    assert s["MAX_ADAPTER_BYTES"] == 2 << 30 and s["SKIP_BASE_MODEL_CHECK"] is False
    assert s["CACHE_DIR"] is None and s["IN_USE_SECONDS"] == 0.0


@pytest.mark.parametrize(
    "name,value",
    [("URI", "relative"), ("URI", "http://x"), ("URI", "s3://"), ("URI", "file://rel"),
     ("CACHE_MAX_BYTES", "10 potatoes"), ("MAX_ADAPTER_BYTES", "0"), ("MAX_LORA_RANK", "0"),
     ("ALLOW_PICKLE", "maybe")],
)
def test_bad_settings_name_the_variable(name, value):
    with pytest.raises(SettingError) as info:
        SETTINGS.get(name, {f"VLLM_PLUGIN_LORA_STORE_{name}": value})
    assert f"VLLM_PLUGIN_LORA_STORE_{name}" in str(info.value)


def test_settings_declared_to_core():
    from vllm_plugin_core.settings import all_declared_settings

    assert "VLLM_PLUGIN_LORA_STORE_" in all_declared_settings()
    assert "VLLM_PLUGIN_LORA_STORE_URI" in SETTINGS.env_names()
