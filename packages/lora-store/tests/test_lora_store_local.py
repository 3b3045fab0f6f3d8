"""Local directory store: happy path and every refusal, no engine."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
from lora_store_helpers import (
    cached_names,
    copy_adapter,
    edit_config,
    make_resolver,
    read_safetensors,
    run,
    temp_entries,
    write_safetensors,
)

from vllm_plugin_lora_store.validate import AdapterRefused, validate_adapter_dir


def test_happy_path(tmp_path, store, base_model):
    from vllm.lora.request import LoRARequest

    cache = tmp_path / "cache"
    r = make_resolver(store, cache)
    req = run(r.resolve_lora(str(base_model), "good"))
    assert isinstance(req, LoRARequest)
    assert req.lora_name == "good"
    assert req.lora_int_id > 0
    assert req.lora_path == str(cache / "adapters" / "good")
    assert req.base_model_name == str(base_model)
    assert sorted(os.listdir(req.lora_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (cache / "adapters" / "good" / "adapter_model.safetensors").read_bytes() == (
        store / "good" / "adapter_model.safetensors"
    ).read_bytes()
    assert temp_entries(cache) == []
    # a second resolve is a cache hit: same path, same id, no download
    again = run(r.resolve_lora(str(base_model), "good"))
    assert again.lora_path == req.lora_path and again.lora_int_id == req.lora_int_id
    assert r.downloads == 1


def test_ids_are_stable_and_unique(tmp_path, store, adapter_src, base_model):
    copy_adapter(adapter_src, store / "other")
    r = make_resolver(store, tmp_path / "cache")
    a = run(r.resolve_lora(str(base_model), "good")).lora_int_id
    b = run(r.resolve_lora(str(base_model), "other")).lora_int_id
    assert a != b and a > 0 and b > 0
    assert run(r.resolve_lora(str(base_model), "good")).lora_int_id == a


def test_file_url_and_cache_reuse_across_processes(tmp_path, store, base_model):
    cache = tmp_path / "cache"
    r1 = make_resolver(f"file://{store}", cache)
    assert run(r1.resolve_lora(str(base_model), "good")) is not None
    # a new resolver (new process) on the same cache re-validates instead of downloading
    r2 = make_resolver(store, cache)
    req = run(r2.resolve_lora(str(base_model), "good"))
    assert req is not None and r2.downloads == 0


def test_not_found(tmp_path, store, base_model, plugin_log):
    r = make_resolver(store, tmp_path / "cache")
    assert run(r.resolve_lora(str(base_model), "missing")) is None
    assert run(r.resolve_lora(str(base_model), "missing")) is None
    assert plugin_log.messages(logging.WARNING) == []
    assert len([m for m in plugin_log.messages(logging.INFO) if "not found" in m]) == 1


def test_base_model_match_by_basename_and_skip(tmp_path, store, base_model):
    r = make_resolver(store, tmp_path / "cache")
    # same last path component, different parent: accepted
    assert run(r.resolve_lora(f"someorg/{base_model.name}", "good")) is not None
    r2 = make_resolver(store, tmp_path / "cache2")
    assert run(r2.resolve_lora("other/model", "good")) is None
    r3 = make_resolver(store, tmp_path / "cache3", skip_base_model_check=True)
    assert run(r3.resolve_lora("other/model", "good")) is not None


def _refusal(tmp_path, store, base_model, plugin_log, name, reason, **kwargs):
    cache = tmp_path / "cache"
    r = make_resolver(store, cache, **kwargs)
    for _ in range(2):
        assert run(r.resolve_lora(str(base_model), name)) is None
    warnings = [m for m in plugin_log.messages(logging.WARNING)]
    assert len(warnings) == 1, warnings
    assert f"LoRA adapter '{name}' refused ({reason})" in warnings[0], warnings[0]
    assert cached_names(cache) == []  # nothing refused ever reaches the cache
    assert temp_entries(cache) == []
    return warnings[0]


def test_base_model_mismatch_refused(tmp_path, store, base_model, plugin_log):
    edit_config(store / "good", base_model_name_or_path="meta-llama/Llama-3-8B")
    msg = _refusal(tmp_path, store, base_model, plugin_log, "good", "base-model")
    assert "Llama-3-8B" in msg and "SKIP_BASE_MODEL_CHECK" in msg


def test_peft_type_refused(tmp_path, store, base_model, plugin_log):
    edit_config(store / "good", peft_type="IA3")
    msg = _refusal(tmp_path, store, base_model, plugin_log, "good", "peft-type")
    assert "'IA3'" in msg


def test_rank_refused(tmp_path, store, base_model, plugin_log):
    msg = _refusal(tmp_path, store, base_model, plugin_log, "good", "rank", max_lora_rank=4)
    assert "rank 8 exceeds" in msg
    r = make_resolver(store, tmp_path / "ok", max_lora_rank=8)
    assert run(r.resolve_lora(str(base_model), "good")) is not None


def test_size_refused_before_download(tmp_path, store, base_model, plugin_log):
    fetched = []
    cache = tmp_path / "cache"
    r = make_resolver(store, cache, max_adapter_bytes=1000)
    r.store.fetch = lambda *a: fetched.append(a)
    assert run(r.resolve_lora(str(base_model), "good")) is None
    assert fetched == []
    assert "refused (size)" in plugin_log.messages(logging.WARNING)[0]


def test_pickle_only_refused_unless_allowed(tmp_path, store, base_model, plugin_log):
    folder = store / "good"
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    msg = _refusal(tmp_path, store, base_model, plugin_log, "good", "pickle")
    assert "ALLOW_PICKLE" in msg
    r = make_resolver(store, tmp_path / "allowed", allow_pickle=True)
    req = run(r.resolve_lora(str(base_model), "good"))
    assert req is not None and os.path.exists(os.path.join(req.lora_path, "adapter_model.bin"))


def test_pickle_next_to_safetensors_is_not_fetched(tmp_path, store, base_model):
    (store / "good" / "adapter_model.bin").write_bytes(b"\x80\x04evil")
    r = make_resolver(store, tmp_path / "cache")
    req = run(r.resolve_lora(str(base_model), "good"))
    assert req is not None
    assert "adapter_model.bin" not in os.listdir(req.lora_path)


def test_symlinked_adapter_folder_outside_store_refused(tmp_path, store, adapter_src, base_model, plugin_log):
    outside = copy_adapter(adapter_src, tmp_path / "outside" / "secret")
    os.symlink(outside, store / "escape")
    _refusal(tmp_path, store, base_model, plugin_log, "escape", "symlink-escape")


def test_symlinked_file_outside_store_refused(tmp_path, store, base_model, plugin_log):
    outside = tmp_path / "outside.safetensors"
    shutil.move(store / "good" / "adapter_model.safetensors", outside)
    os.symlink(outside, store / "good" / "adapter_model.safetensors")
    _refusal(tmp_path, store, base_model, plugin_log, "good", "symlink-escape")


def test_symlinks_inside_store_allowed(tmp_path, store, base_model):
    os.symlink(store / "good", store / "alias")
    r = make_resolver(store, tmp_path / "cache")
    req = run(r.resolve_lora(str(base_model), "alias"))
    assert req is not None and not os.path.islink(req.lora_path)


def test_store_root_itself_is_not_an_adapter(tmp_path, store, base_model):
    os.symlink(".", store / "self")  # resolves to the store root
    r = make_resolver(store, tmp_path / "cache")
    assert run(r.resolve_lora(str(base_model), "self")) is None


# --- safetensors header and weights vs config ---

def _corrupt(folder, mutate):
    path = folder / "adapter_model.safetensors"
    header, data = read_safetensors(path)
    header, data = mutate(header, data)
    write_safetensors(path, header, data)


def _first(header):
    return next(k for k in header if k != "__metadata__")


def _bad_header_cases():
    def truncated(folder):
        p = folder / "adapter_model.safetensors"
        p.write_bytes(p.read_bytes()[:5])

    def huge_length(folder):
        p = folder / "adapter_model.safetensors"
        raw = p.read_bytes()
        p.write_bytes((2**62).to_bytes(8, "little") + raw[8:])

    def not_json(folder):
        p = folder / "adapter_model.safetensors"
        p.write_bytes((16).to_bytes(8, "little") + b"{not json at all" + b"\0" * 64)

    def offsets_outside(folder):
        def m(h, d):
            k = _first(h)
            h[k]["data_offsets"] = [0, len(d) + 1000]
            return h, d
        _corrupt(folder, m)

    def unknown_dtype(folder):
        def m(h, d):
            h[_first(h)]["dtype"] = "Q7"
            return h, d
        _corrupt(folder, m)

    def not_lora(folder):
        def m(h, d):
            k = _first(h)
            h["model.embed_tokens.weight"] = h.pop(k)
            return h, d
        _corrupt(folder, m)

    def untargeted_module(folder):
        def m(h, d):
            k = next(k for k in h if "q_proj" in k)
            h[k.replace("q_proj", "gate_proj")] = h.pop(k)
            return h, d
        _corrupt(folder, m)

    def wrong_rank(folder):
        edit_config(folder, r=4)

    def empty(folder):
        write_safetensors(folder / "adapter_model.safetensors", {}, b"")

    def size_mismatch(folder):
        def m(h, d):
            k = next(k for k in h if "lora_A" in k)
            h[k]["shape"] = [8, 64]
            return h, d
        _corrupt(folder, m)

    return {
        "truncated": (truncated, "bad-safetensors"),
        "huge_length": (huge_length, "bad-safetensors"),
        "not_json": (not_json, "bad-safetensors"),
        "offsets_outside": (offsets_outside, "bad-safetensors"),
        "unknown_dtype": (unknown_dtype, "bad-safetensors"),
        "not_lora": (not_lora, "bad-weights"),
        "untargeted_module": (untargeted_module, "bad-weights"),
        "wrong_rank": (wrong_rank, "bad-weights"),
        "empty": (empty, "bad-safetensors"),
        "size_mismatch": (size_mismatch, "bad-safetensors"),
    }


@pytest.mark.parametrize("case", sorted(_bad_header_cases()))
def test_bad_weights_refused(case, tmp_path, store, base_model, plugin_log):
    mutate, reason = _bad_header_cases()[case]
    mutate(store / "good")
    _refusal(tmp_path, store, base_model, plugin_log, "good", reason)


def test_missing_config_refused(tmp_path, store, base_model, plugin_log):
    (store / "good" / "adapter_config.json").unlink()
    _refusal(tmp_path, store, base_model, plugin_log, "good", "missing-config")


def test_rank_pattern_and_regex_targets(tmp_path, adapter_src):
    folder = copy_adapter(adapter_src, tmp_path / "a")
    edit_config(folder, target_modules=r".*\.(q_proj|v_proj)")
    summary = validate_adapter_dir("a", str(folder))
    assert summary.rank == 8
    edit_config(folder, r=4, rank_pattern={"q_proj": 8, "v_proj": 8})
    assert validate_adapter_dir("a", str(folder)).rank == 8
    edit_config(folder, target_modules=r".*\.q_proj")
    with pytest.raises(AdapterRefused) as info:
        validate_adapter_dir("a", str(folder))
    assert info.value.reason == "bad-weights"


def test_config_must_be_json_object(tmp_path, adapter_src):
    folder = copy_adapter(adapter_src, tmp_path / "a")
    (folder / "adapter_config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(AdapterRefused) as info:
        validate_adapter_dir("a", str(folder))
    assert info.value.reason == "bad-config"
