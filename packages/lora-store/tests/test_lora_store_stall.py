"""A stalled S3 store (a real slow-drip S3-compatible server on loopback):
the fetch deadline holds, other adapters are not delayed; ETag pinning and the
streaming byte cap. No engine."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from lora_store_helpers import ADAPTER_FILES, cached_names, make_resolver, run
from slow_s3 import SlowS3

pytest.importorskip("boto3", reason="boto3 is needed for the S3 store: pip install boto3")

from vllm_plugin_lora_store.stores import S3Store


@pytest.fixture()
def s3(monkeypatch, adapter_src):
    with SlowS3() as server:
        for k, v in {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        for name in ("good", "slow"):
            for f in ADAPTER_FILES:
                server.objects[("b", f"x/{name}/{f}")] = (adapter_src / f).read_bytes()
        server.drip.add("x/slow/adapter_model.safetensors")
        yield server


def test_stalled_adapter_hits_deadline_and_others_are_not_delayed(tmp_path, s3, base_model, plugin_log):
    # A 3 s deadline: the good fetch (its first boto3 client included) took up to
    # 1 s on a loaded 2-core CI machine; held behind the stall it would take >= 3 s.
    r = make_resolver(S3Store("s3://b/x", read_timeout=5.0), tmp_path / "cache", fetch_deadline=3.0)

    async def main():
        t0 = time.perf_counter()
        slow = asyncio.create_task(r.resolve_lora(str(base_model), "slow"))
        await asyncio.sleep(0.1)  # the stalled download is under way
        good = await r.resolve_lora(str(base_model), "good")
        t_good = time.perf_counter() - t0
        return good, t_good, await slow, time.perf_counter() - t0

    good, t_good, slow, t_slow = run(main())
    assert good is not None and t_good < 2.0, t_good  # not held up by the stall
    assert slow is None and 2.9 < t_slow < 5.0, t_slow  # the deadline, not the drip (~55 s)
    warnings = [m for m in plugin_log.messages(logging.WARNING) if "'slow'" in m]
    assert len(warnings) == 1 and "FETCH_DEADLINE_SECONDS" in warnings[0]
    # the worker stops at its next read and closes the stream: the pool thread is free again
    until = time.monotonic() + 2.0
    while s3.drips_ended == 0 and time.monotonic() < until:
        time.sleep(0.05)
    assert s3.drips_ended == 1 and cached_names(tmp_path / "cache") == ["good"]
    # and the next request within the stall's TTL does not start another stalled fetch
    gets = len(s3.gets)
    assert run(r.resolve_lora(str(base_model), "slow")) is None and len(s3.gets) == gets


def test_object_replaced_between_listing_and_download_is_not_mixed(tmp_path, s3, base_model, plugin_log):
    r = make_resolver(S3Store("s3://b/x"), tmp_path / "cache")
    original = r.store.list_files

    def list_then_replace(name):
        files = original(name)  # listed; then a new upload replaces the weights
        s3.objects[("b", "x/good/adapter_model.safetensors")] = b"\0" * 64
        return files

    r.store.list_files = list_then_replace
    assert run(r.resolve_lora(str(base_model), "good")) is None
    assert cached_names(tmp_path / "cache") == []
    assert any("changed since it was listed" in m for m in plugin_log.messages(logging.WARNING))


def test_body_longer_than_listed_is_cut_while_streaming(tmp_path, s3, base_model, plugin_log):
    r = make_resolver(S3Store("s3://b/x"), tmp_path / "cache")
    original = r.store.list_files

    def understate(name):  # the listing says 100 bytes; the object is larger
        return [f if f.name != "adapter_model.safetensors" else type(f)(f.name, 100, f.source) for f in original(name)]

    r.store.list_files = understate
    assert run(r.resolve_lora(str(base_model), "good")) is None
    assert any("larger than the 100 bytes listed" in m for m in plugin_log.messages(logging.WARNING))
