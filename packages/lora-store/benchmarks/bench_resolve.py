"""Figures of the lora_store resolver. Plain script, no engine started.

Run from the repository root (vLLM installed, for ``LoRARequest``):

    python packages/lora-store/benchmarks/bench_resolve.py [--mib 64] [--hits 20000] [--cold 7]

Prints:

* resolve latency on a cache hit (p50/p99 of one ``await resolve_lora``,
  on one event loop; target p99 < 1 ms);
* a cold fetch from a local store (list, size checks, copy into a temp
  folder, safetensors/config validation, rename into the cache) against a
  plain ``shutil.copytree`` of the same bytes, side by side, medians of
  ``--cold`` interleaved runs, for a tiny adapter and a ``--mib`` MiB one
  (target ratio <= 1.5x);
* how many downloads 100 concurrent resolves of one uncached adapter cause
  (target: 1).

The adapters are synthetic PEFT folders (random bytes, a valid header).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

from vllm_plugin_lora_store.cache import AdapterCache
from vllm_plugin_lora_store.resolver import LoraStoreResolver
from vllm_plugin_lora_store.stores import LocalStore

BASE = "bench-org/bench-base"


def write_adapter(folder: Path, *, hidden: int, layers: int, rank: int = 16) -> int:
    folder.mkdir(parents=True)
    header: dict = {}
    offset = 0
    for layer in range(layers):
        for mod in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            for ab, shape in (("A", [rank, hidden]), ("B", [hidden, rank])):
                n = shape[0] * shape[1] * 4
                header[f"{prefix}.lora_{ab}.weight"] = {
                    "dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n],
                }
                offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(folder / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        left = offset
        chunk = os.urandom(1 << 20)
        while left:
            k = min(left, len(chunk))
            f.write(chunk[:k])
            left -= k
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": BASE, "task_type": "CAUSAL_LM",
    }))
    return sum(p.stat().st_size for p in folder.iterdir())


def make_resolver(store: Path, cache: Path) -> LoraStoreResolver:
    return LoraStoreResolver(LocalStore(str(store)), AdapterCache(str(cache), 64 << 30))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def bench_hits(store: Path, work: Path, n: int) -> tuple[float, float, float]:
    r = make_resolver(store, work / "hit-cache")
    assert await r.resolve_lora(BASE, "tiny") is not None
    for _ in range(200):  # warm up
        await r.resolve_lora(BASE, "tiny")
    times = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        await r.resolve_lora(BASE, "tiny")
        times.append((clock() - t0) / 1e3)
    return pct(times, 0.5), pct(times, 0.99), max(times)


async def bench_cold(store: Path, work: Path, name: str, runs: int) -> tuple[float, float]:
    """Per-adapter cost on a running server: the event loop exists and the
    cache was opened at the first resolve (both outside the timed region)."""
    ours, plain = [], []
    for i in range(runs):
        cache = work / f"cold-{name}-{i}"
        r = make_resolver(store, cache)
        r.cache.open()
        t0 = time.perf_counter()
        req = await r.resolve_lora(BASE, name)
        ours.append(time.perf_counter() - t0)
        assert req is not None
        dst = work / f"copy-{name}-{i}"
        t0 = time.perf_counter()
        shutil.copytree(store / name, dst)
        plain.append(time.perf_counter() - t0)
        shutil.rmtree(cache)
        shutil.rmtree(dst)
    return statistics.median(ours), statistics.median(plain)


async def bench_single_flight(store: Path, work: Path, n: int) -> tuple[int, float]:
    r = make_resolver(store, work / "sf-cache")
    calls = []
    original = r.store.fetch

    def fetch(*args, **kw):
        calls.append(args[0])
        original(*args, **kw)

    r.store.fetch = fetch
    t0 = time.perf_counter()
    results = await asyncio.gather(*(r.resolve_lora(BASE, "big") for _ in range(n)))
    assert all(results)
    return len(calls), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64, help="size of the large adapter")
    ap.add_argument("--hits", type=int, default=20000)
    ap.add_argument("--cold", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-lora-store-") as tmp:
        work = Path(tmp)
        store = work / "store"
        tiny = write_adapter(store / "tiny", hidden=128, layers=2, rank=8)
        layers = max(1, args.mib * (1 << 20) // (2 * 2 * 16 * 4096 * 4))
        big = write_adapter(store / "big", hidden=4096, layers=layers, rank=16)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; adapters: tiny {tiny} B, "
              f"big {big / (1 << 20):.1f} MiB")
        p50, p99, worst = asyncio.run(bench_hits(store, work, args.hits))
        print(f"cache hit: p50 {p50:.1f} us, p99 {p99:.1f} us, max {worst:.1f} us "
              f"over {args.hits} resolves (target p99 < 1000 us)")
        for name in ("tiny", "big"):
            ours, plain = asyncio.run(bench_cold(store, work, name, args.cold))
            print(f"cold fetch {name}: resolver {ours * 1e3:.2f} ms, shutil.copytree {plain * 1e3:.2f} ms, "
                  f"ratio {ours / plain:.2f}x (median of {args.cold}; target <= 1.5x)")
        downloads, secs = asyncio.run(bench_single_flight(store, work, 100))
        print(f"single flight: 100 concurrent resolves of an uncached {big / (1 << 20):.0f} MiB adapter -> "
              f"{downloads} download(s), {secs * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
