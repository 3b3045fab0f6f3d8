"""Negative cache, cache-full before download, in-flight reservations, and two
resolver processes sharing one cache directory. No engine."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

from lora_store_helpers import cached_names, copy_adapter, edit_config, make_resolver, run


def _size(folder):
    return sum(os.path.getsize(folder / f) for f in os.listdir(folder))


def test_refused_adapter_downloaded_at_most_once(tmp_path, store, base_model):
    edit_config(store / "good", base_model_name_or_path="someone/else")
    r = make_resolver(store, tmp_path / "cache", negative_ttl=0.3)

    async def burst():
        return await asyncio.gather(*(r.resolve_lora(str(base_model), "good") for _ in range(50)))

    assert run(burst()) == [None] * 50
    for _ in range(50):
        assert run(r.resolve_lora(str(base_model), "good")) is None
    assert r.downloads == 1 and r.listings == 1  # 100 requests: one download
    # after the TTL: listed again; unchanged (same sizes and mtimes): refused without a download
    time.sleep(0.35)
    assert run(r.resolve_lora(str(base_model), "good")) is None
    assert r.downloads == 1 and r.listings == 2
    # a new upload (new listing): fetched again, now accepted
    time.sleep(0.35)
    edit_config(store / "good", base_model_name_or_path=str(base_model))
    os.utime(store / "good" / "adapter_config.json", ns=(1, 1))
    assert run(r.resolve_lora(str(base_model), "good")) is not None
    assert r.downloads == 2


def test_missing_name_listed_once_per_ttl(tmp_path, store, base_model):
    r = make_resolver(store, tmp_path / "cache")
    for _ in range(100):
        assert run(r.resolve_lora(str(base_model), "nobody")) is None
    assert r.listings == 1 and r.downloads == 0


def test_cache_full_decided_before_download(tmp_path, store, adapter_src, base_model, plugin_log):
    size = _size(store / "good")
    copy_adapter(adapter_src, store / "b")
    r = make_resolver(store, tmp_path / "cache", cache_max_bytes=int(size * 1.5))
    assert run(r.resolve_lora(str(base_model), "good")) is not None
    assert run(r.resolve_lora(str(base_model), "b")) is None  # good is in use
    assert r.downloads == 1  # b was never downloaded
    assert any("refused (cache-full)" in m for m in plugin_log.messages())


def test_in_flight_bytes_count_against_the_bound(tmp_path, store, adapter_src, base_model):
    size = _size(store / "good")
    copy_adapter(adapter_src, store / "b")
    r = make_resolver(store, tmp_path / "cache", cache_max_bytes=int(size * 1.5))
    original = r.store.fetch

    def slow(name, files, dest, deadline=None):
        time.sleep(0.3)
        original(name, files, dest, deadline)

    r.store.fetch = slow

    async def both():
        return await asyncio.gather(r.resolve_lora(str(base_model), "good"), r.resolve_lora(str(base_model), "b"))

    results = run(both())
    assert sum(x is not None for x in results) == 1  # the second did not fit beside the first's download
    assert r.downloads == 1
    assert r.cache.total_bytes() <= int(size * 1.5)


_HOLDER = """
import os, sys, types
for mod in ("vllm", "vllm.lora", "vllm.lora.resolver"):
    sys.modules[mod] = types.ModuleType(mod)
sys.modules["vllm.lora.resolver"].LoRAResolver = object
import vllm_plugin_core.compat as compat
compat.make_lora_request = lambda **kw: kw  # this child never builds a real LoRARequest
sys.path.insert(0, {here!r})
from lora_store_helpers import make_resolver, run
r = make_resolver({store!r}, {cache!r}, cache_max_bytes={bound})
for name in {names!r}:
    print(name, run(r.resolve_lora({base!r}, name)) is not None, flush=True)
sys.stdin.readline()  # hold the leases until told to exit
"""


def _holder(tmp_path, store, cache, base_model, bound, names):
    script = textwrap.dedent(_HOLDER).format(here=os.path.dirname(__file__), store=str(store), cache=str(cache),
                                             bound=bound, names=names, base=str(base_model))
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = [proc.stdout.readline().split() for _ in names]
    assert all(ok == "True" for _, ok in lines), (lines, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def test_two_processes_on_one_cache_never_evict_in_use(tmp_path, store, adapter_src, base_model):
    size = _size(store / "good")
    copy_adapter(adapter_src, store / "b")
    cache = tmp_path / "cache"
    bound = int(size * 1.5)
    other = _holder(tmp_path, store, cache, base_model, bound, ["good"])  # another server process
    try:
        r = make_resolver(store, cache, cache_max_bytes=bound, negative_ttl=0)
        assert run(r.resolve_lora(str(base_model), "b")) is None  # 'good' is in use over there
        assert cached_names(cache) == ["good"] and r.downloads == 0
        # this process may share it: it resolves from the cache, no download
        assert run(r.resolve_lora(str(base_model), "good")) is not None and r.downloads == 0
        r.cache.close()
    finally:
        other.stdin.write("\n")
        other.stdin.flush()
        other.wait(30)
    # the other process is gone (its leases with it, whatever its pid namespace): evictable now
    r = make_resolver(store, cache, cache_max_bytes=bound, negative_ttl=0)
    assert run(r.resolve_lora(str(base_model), "b")) is not None
    assert cached_names(cache) == ["b"]


def test_killed_process_leaves_no_lease(tmp_path, store, adapter_src, base_model):
    size = _size(store / "good")
    copy_adapter(adapter_src, store / "b")
    cache = tmp_path / "cache"
    other = _holder(tmp_path, store, cache, base_model, int(size * 1.5), ["good"])
    other.kill()
    other.wait(30)
    r = make_resolver(store, cache, cache_max_bytes=int(size * 1.5))
    assert run(r.resolve_lora(str(base_model), "b")) is not None
    assert cached_names(cache) == ["b"]
