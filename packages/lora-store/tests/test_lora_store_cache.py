"""Single flight, crash safety and eviction of the adapter cache."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from lora_store_helpers import cached_names, copy_adapter, make_resolver, run, temp_entries

from vllm_plugin_lora_store.cache import AdapterCache


def _counting_fetch(resolver, delay=0.0, fail_after=None):
    calls = []
    original = resolver.store.fetch

    def fetch(name, files, dest, deadline=None):
        calls.append((name, threading.current_thread().name))
        if delay:
            time.sleep(delay)
        if fail_after is not None:
            original(name, files[:fail_after], dest)
            raise ConnectionResetError("simulated: connection lost half-way")
        original(name, files, dest, deadline)

    resolver.store.fetch = fetch
    return calls


def test_single_flight_50_concurrent(tmp_path, store, base_model):
    r = make_resolver(store, tmp_path / "cache")
    calls = _counting_fetch(r, delay=0.3)
    ticks = []

    async def ticker(stop):
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    async def main():
        stop = asyncio.Event()
        t = asyncio.create_task(ticker(stop))
        results = await asyncio.gather(*(r.resolve_lora(str(base_model), "good") for _ in range(50)))
        stop.set()
        await t
        return results

    results = run(main())
    assert len(calls) == 1, calls
    assert calls[0][1] != threading.main_thread().name  # the download ran in a worker thread
    assert all(x is not None for x in results)
    assert len({(x.lora_path, x.lora_int_id) for x in results}) == 1
    # the event loop kept running during the 0.3 s download
    assert len(ticks) >= 10
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.2


def test_cancelled_waiter_does_not_cancel_the_download(tmp_path, store, base_model):
    r = make_resolver(store, tmp_path / "cache")
    calls = _counting_fetch(r, delay=0.2)

    async def main():
        first = asyncio.create_task(r.resolve_lora(str(base_model), "good"))
        second = asyncio.create_task(r.resolve_lora(str(base_model), "good"))
        await asyncio.sleep(0.05)
        first.cancel()
        return await second

    assert run(main()) is not None
    assert len(calls) == 1


def test_download_failing_half_way_leaves_nothing(tmp_path, store, base_model, plugin_log):
    cache = tmp_path / "cache"
    r = make_resolver(store, cache)
    _counting_fetch(r, fail_after=1)
    assert run(r.resolve_lora(str(base_model), "good")) is None
    assert cached_names(cache) == [] and temp_entries(cache) == []
    assert any("ConnectionResetError" in m for m in plugin_log.messages())
    # and the next attempt succeeds
    r.store.fetch = type(r.store).fetch.__get__(r.store)
    assert run(r.resolve_lora(str(base_model), "good")) is not None


def test_process_killed_half_way_leaves_nothing(tmp_path, store, base_model):
    cache = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import os, sys, types
        # a stand-in for vllm.lora.resolver: this child never builds a LoRARequest,
        # and importing vLLM would cost ~15 s on a small machine
        for mod in ("vllm", "vllm.lora", "vllm.lora.resolver"):
            sys.modules[mod] = types.ModuleType(mod)
        sys.modules["vllm.lora.resolver"].LoRAResolver = object
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from lora_store_helpers import make_resolver, run
        r = make_resolver({str(store)!r}, {str(cache)!r})
        original = r.store.fetch
        def fetch(name, files, dest, deadline=None):
            original(name, files[:1], dest)  # one file written, then killed
            assert os.listdir(dest)
            os._exit(9)
        r.store.fetch = fetch
        run(r.resolve_lora({str(base_model)!r}, "good"))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert cached_names(cache) == []
    assert len(temp_entries(cache)) == 1  # the dead process's partial download...
    c = AdapterCache(str(cache), 1 << 30)
    c.open()  # ...is deleted when the next process opens the cache
    assert temp_entries(cache) == [] and cached_names(cache) == []


def test_temp_folders_of_live_processes_are_kept(tmp_path):
    cache = AdapterCache(str(tmp_path / "c"), 1 << 30)
    cache.open()
    live = cache.new_temp("x")  # ours: alive
    os.makedirs(os.path.join(cache.tmp_dir, "y.999999999.abc"))  # no such pid
    assert cache.clean_stale_temps() == 1
    assert os.path.isdir(live)


def _fill_store(store, adapter_src, names):
    for n in names:
        copy_adapter(adapter_src, store / n)


def test_eviction_keeps_cache_under_bound_and_skips_in_use(tmp_path, store, adapter_src, base_model):
    size = sum(os.path.getsize(store / "good" / f) for f in os.listdir(store / "good"))
    _fill_store(store, adapter_src, ["a1", "a2", "a3", "a4"])
    cache = tmp_path / "cache"
    bound = int(size * 2.5)  # room for two adapters
    # 1) a previous process left a1 and a2 in the cache: not in use by this process
    old = make_resolver(store, cache, cache_max_bytes=bound)
    assert run(old.resolve_lora(str(base_model), "a1")) is not None
    assert run(old.resolve_lora(str(base_model), "a2")) is not None
    assert cached_names(cache) == ["a1", "a2"]
    old.cache.close()  # the previous process exits: its leases go
    # 2) this process: a3 evicts the least recently used (a1)
    r = make_resolver(store, cache, cache_max_bytes=bound)
    assert run(r.resolve_lora(str(base_model), "a3")) is not None
    assert cached_names(cache) == ["a2", "a3"]
    assert r.cache.total_bytes() <= bound
    # 3) a4 evicts a2 (not in use), never a3 (resolved by this process)
    assert run(r.resolve_lora(str(base_model), "a4")) is not None
    assert cached_names(cache) == ["a3", "a4"]
    # 4) everything cached is in use: a new adapter is refused, the bound holds
    assert run(r.resolve_lora(str(base_model), "a1")) is None
    assert cached_names(cache) == ["a3", "a4"] and temp_entries(cache) == []
    assert r.cache.total_bytes() <= bound
    # in-use adapters still resolve from the cache
    assert run(r.resolve_lora(str(base_model), "a3")) is not None


def test_in_use_window_and_pins(tmp_path, store, adapter_src, base_model):
    size = sum(os.path.getsize(store / "good" / f) for f in os.listdir(store / "good"))
    _fill_store(store, adapter_src, ["p", "b", "c"])
    cache = tmp_path / "cache"
    r = make_resolver(store, cache, cache_max_bytes=int(size * 2.5), in_use_seconds=0.2, pinned=["p"],
                      negative_ttl=0)
    assert run(r.resolve_lora(str(base_model), "p")) is not None
    assert run(r.resolve_lora(str(base_model), "b")) is not None
    assert run(r.resolve_lora(str(base_model), "c")) is None  # b resolved < 0.2 s ago: in use
    time.sleep(0.25)
    assert run(r.resolve_lora(str(base_model), "c")) is not None  # b expired; p is pinned
    assert cached_names(cache) == ["c", "p"]


def test_adapter_larger_than_cache_refused(tmp_path, store, base_model, plugin_log):
    r = make_resolver(store, tmp_path / "cache", cache_max_bytes=1000)
    assert run(r.resolve_lora(str(base_model), "good")) is None
    assert any("refused (cache-full)" in m for m in plugin_log.messages())


def test_cached_adapter_deleted_behind_our_back_is_fetched_again(tmp_path, store, base_model):
    import shutil

    r = make_resolver(store, tmp_path / "cache")
    req = run(r.resolve_lora(str(base_model), "good"))
    shutil.rmtree(req.lora_path)
    assert run(r.resolve_lora(str(base_model), "good")) is not None
    assert r.downloads == 2


def test_tampered_cache_entry_is_revalidated(tmp_path, store, base_model):
    cache = tmp_path / "cache"
    assert run(make_resolver(store, cache).resolve_lora(str(base_model), "good")) is not None
    (cache / "adapters" / "good" / "adapter_model.safetensors").write_bytes(b"\0" * 4)
    r = make_resolver(store, cache)  # a new process re-validates what it finds on disk
    assert run(r.resolve_lora(str(base_model), "good")) is None
    assert cached_names(cache) == []  # the bad copy is dropped; the next resolve fetches again
    assert run(r.resolve_lora(str(base_model), "good")) is not None


@pytest.mark.parametrize("n", [100])
def test_many_distinct_names_concurrently(tmp_path, store, adapter_src, base_model, n):
    names = [f"n{i}" for i in range(8)]
    _fill_store(store, adapter_src, names)
    r = make_resolver(store, tmp_path / "cache")
    calls = _counting_fetch(r)

    async def main():
        return await asyncio.gather(*(r.resolve_lora(str(base_model), names[i % 8]) for i in range(n)))

    results = run(main())
    assert all(results) and len(calls) == 8
    assert len({x.lora_int_id for x in results}) == 8
