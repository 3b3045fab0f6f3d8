"""Hostile adapters: backtracking patterns, fractional ranks, loose safetensors
data, oversized headers, credentials in the store URI. No engine."""

from __future__ import annotations

import threading
import time

import pytest
from lora_store_helpers import (
    HOSTILE_MODULE,
    copy_adapter,
    edit_config,
    make_hostile,
    read_safetensors,
    write_safetensors,
)

from vllm_plugin_lora_store.patterns import PatternBudget, rank_matcher
from vllm_plugin_lora_store.validate import AdapterRefused, validate_adapter_dir


def _refused(folder, reason, **kw):
    with pytest.raises(AdapterRefused) as info:
        validate_adapter_dir("a", str(folder), **kw)
    assert info.value.reason == reason, info.value
    return str(info.value)


@pytest.mark.parametrize("kind", ["target", "rank"])
def test_backtracking_pattern_refused_within_50ms_and_other_threads_run(tmp_path, adapter_src, kind):
    folder = copy_adapter(adapter_src, tmp_path / "a")
    make_hostile(folder, kind)
    gaps = []
    stop = threading.Event()

    def ticker():  # another thread of the server: it must keep running
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.01)
    took = []
    for _ in range(5):
        start = time.perf_counter()
        msg = _refused(folder, "bad-config")
        took.append(time.perf_counter() - start)
    stop.set()
    t.join()
    assert "target_modules / rank_pattern" in msg and "ms" in msg
    # the bound, 50 ms (median of 5: one run on this shared machine can be descheduled)
    assert sorted(took)[2] < 0.05, f"refused in {[round(x * 1000, 1) for x in took]} ms"
    assert max(gaps) < 0.05, f"another thread stalled {max(gaps) * 1000:.1f} ms"


def test_same_patterns_on_plain_modules_pass(tmp_path, adapter_src):
    # the regex is only hostile against the hostile module names: a target_modules
    # regex and a regex rank_pattern key on ordinary names are accepted
    folder = copy_adapter(adapter_src, tmp_path / "a")
    edit_config(folder, target_modules="(a|a)+|.*\\.(q_proj|v_proj)", rank_pattern={"(q|k)_proj": 8})
    assert validate_adapter_dir("a", str(folder)).rank == 8


def test_rank_pattern_is_grouped_as_vllm_groups_it():
    budget = PatternBudget(1.0)
    first = rank_matcher(budget, ["q_proj|zzz", "v_proj"])
    assert first("model.layers.0.self_attn.q_proj") == 0
    assert first("model.layers.0.self_attn.v_proj") == 1
    # ungrouped, "(.*\.)?q_proj|zzz$" would match any name starting with ...q_proj
    assert first("model.layers.0.self_attn.q_proj_extra.v_proj") == 1
    assert first("model.layers.0.self_attn.q_proj_extra") is None


@pytest.mark.parametrize("value", [64.0, True, "8", 0, -8])
def test_rank_pattern_values_must_be_positive_integers(tmp_path, adapter_src, value):
    folder = copy_adapter(adapter_src, tmp_path / "a")
    edit_config(folder, rank_pattern={"q_proj": value})
    assert "is not a positive integer" in _refused(folder, "bad-config")


def test_fractional_rank_cannot_bypass_max_rank(tmp_path, store, base_model, plugin_log):
    from lora_store_helpers import make_resolver, run

    edit_config(store / "good", rank_pattern={"q_proj": 64.0})
    r = make_resolver(store, tmp_path / "cache", max_lora_rank=16)
    assert run(r.resolve_lora(str(base_model), "good")) is None
    assert "refused (bad-config)" in plugin_log.messages()[0]


def test_safetensors_gap_and_trailing_bytes_refused(tmp_path, adapter_src):
    folder = copy_adapter(adapter_src, tmp_path / "a")
    path = folder / "adapter_model.safetensors"
    header, data = read_safetensors(path)
    write_safetensors(path, header, data + b"\0" * 8)
    assert "trailing bytes" in _refused(folder, "bad-safetensors")
    shifted = {k: {**v, "data_offsets": [v["data_offsets"][0] + 8, v["data_offsets"][1] + 8]}
               for k, v in header.items()}
    write_safetensors(path, shifted, b"\0" * 8 + data)
    assert "unused bytes" in _refused(folder, "bad-safetensors")
    last = max(header, key=lambda k: header[k]["data_offsets"][0])
    gapped = {k: ({**v, "data_offsets": [v["data_offsets"][0] + 4, v["data_offsets"][1] + 4]} if k == last else v)
              for k, v in header.items()}
    write_safetensors(path, gapped, data[: header[last]["data_offsets"][0]] + b"\0" * 4
                      + data[header[last]["data_offsets"][0]:])
    assert "unused bytes" in _refused(folder, "bad-safetensors")


def test_header_bound(tmp_path, adapter_src):
    folder = copy_adapter(adapter_src, tmp_path / "a")
    path = folder / "adapter_model.safetensors"
    header, data = read_safetensors(path)
    header["__metadata__"] = {"pad": "x" * (1 << 20)}
    write_safetensors(path, header, data)
    assert "MAX_HEADER_BYTES" in _refused(folder, "bad-safetensors")
    assert validate_adapter_dir("a", str(folder), max_header_bytes=2 << 20).rank == 8


def test_tensor_name_length_bound(tmp_path, adapter_src):
    folder = copy_adapter(adapter_src, tmp_path / "a")
    path = folder / "adapter_model.safetensors"
    header, data = read_safetensors(path)
    header = {k.replace("model.layers.0", "m" * 600): v for k, v in header.items()}
    write_safetensors(path, header, data)
    _refused(folder, "bad-weights")


def test_hostile_module_name_without_patterns_is_cheap(tmp_path, adapter_src):
    folder = copy_adapter(adapter_src, tmp_path / "a")
    make_hostile(folder, "rank")
    edit_config(folder, rank_pattern={HOSTILE_MODULE: 8})  # a plain key: no regex engine at all
    assert validate_adapter_dir("a", str(folder)).rank == 8


@pytest.mark.parametrize("uri", ["s3://AKIA:s3cr3t@bucket/x", "file://u:s3cr3t@/srv/a", "s3://tok3n@b"])
def test_credentials_in_store_uri_refused_and_not_echoed(uri):
    from vllm_plugin_lora_store._settings import SETTINGS, CredentialsInURI

    with pytest.raises(CredentialsInURI) as info:
        SETTINGS.get("URI", {"VLLM_PLUGIN_LORA_STORE_URI": uri})
    msg = str(info.value)
    assert "credentials" in msg and "***@" in msg
    assert "s3cr3t" not in msg and "tok3n" not in msg and "AKIA" not in msg
