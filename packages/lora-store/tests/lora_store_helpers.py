"""Helpers shared by the tests (imported as a plain module: tests/ is on sys.path)."""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
from pathlib import Path
from typing import Any

from vllm_plugin_lora_store.cache import AdapterCache
from vllm_plugin_lora_store.resolver import LoraStoreResolver
from vllm_plugin_lora_store.stores import Store, open_store

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def make_resolver(store: Store | Path | str, cache_dir: Path, **kwargs: Any) -> LoraStoreResolver:
    cache_kw = {k: kwargs.pop(k) for k in ("in_use_seconds", "pinned") if k in kwargs}
    max_bytes = kwargs.pop("cache_max_bytes", 10 << 30)
    if not isinstance(store, Store):
        store = open_store(str(store))
    return LoraStoreResolver(store, AdapterCache(str(cache_dir), max_bytes, **cache_kw), **kwargs)


def copy_adapter(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for f in ADAPTER_FILES:
        shutil.copy(src / f, dest / f)
    return dest


def edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            config.pop(k, None)
        else:
            config[k] = v
    path.write_text(json.dumps(config))


def read_safetensors(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_safetensors(path: Path, header: dict[str, Any], data: bytes) -> None:
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def cached_names(cache_dir: Path) -> list[str]:
    d = cache_dir / "adapters"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def temp_entries(cache_dir: Path) -> list[str]:
    """Temp folders (their ``.lock`` files are not counted)."""
    d = cache_dir / "tmp"
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".lock")) if d.exists() else []


#: A module name that makes ``(a|a)+`` backtrack for minutes under ``re``.
HOSTILE_MODULE = "a" * 40 + "!"


def make_hostile(folder: Path, kind: str) -> None:
    """Spoil a copy of the good adapter: its q_proj of layer 0 becomes module
    ``HOSTILE_MODULE``, and ``target_modules`` (kind ``target``) or a
    ``rank_pattern`` key (kind ``rank``) is the backtracking ``(a|a)+``."""
    path = folder / "adapter_model.safetensors"
    header, data = read_safetensors(path)
    old = "base_model.model.model.layers.0.self_attn.q_proj"
    header = {k.replace(old, f"base_model.model.{HOSTILE_MODULE}"): v for k, v in header.items()}
    write_safetensors(path, header, data)
    config = json.loads((folder / "adapter_config.json").read_text())
    if kind == "target":
        config["target_modules"] = "(a|a)+|.*\\.(q_proj|v_proj)"
    else:
        config["target_modules"] = [*config["target_modules"], HOSTILE_MODULE]
        config["rank_pattern"] = {"(a|a)+": config["r"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
