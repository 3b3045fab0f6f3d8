"""Worst cases of hostile adapters, measured side by side in one run.

    python packages/lora-store/benchmarks/bench_hostile.py

Prints: the time to refuse an adapter whose target_modules / rank_pattern
backtracks (regex module under the budget), what Python's ``re`` takes on
the same pattern with a shorter name, the longest stall another thread sees
meanwhile, and the GIL stall of parsing a safetensors header at the bound.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from lora_store_helpers import copy_adapter, make_hostile

from vllm_plugin_core.testing.models import build_causal_lm, build_lora_adapter
from vllm_plugin_lora_store.validate import MAX_HEADER_BYTES, AdapterRefused, validate_adapter_dir


def stall_during(fn) -> tuple[float, float]:
    """(seconds fn took, longest gap of a 1 ms ticker thread meanwhile)."""
    gaps, stop = [0.0], threading.Event()

    def tick():
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    t = threading.Thread(target=tick)
    t.start()
    time.sleep(0.01)
    t0 = time.perf_counter()
    fn()
    took = time.perf_counter() - t0
    stop.set()
    t.join()
    return took, max(gaps)


def main() -> None:
    adapter = build_lora_adapter(build_causal_lm())
    tmp = Path(tempfile.mkdtemp())
    for kind in ("target", "rank"):
        folder = copy_adapter(adapter, tmp / kind)
        make_hostile(folder, kind)

        def refuse(folder=folder):
            try:
                validate_adapter_dir("h", str(folder))
            except AdapterRefused as exc:
                assert exc.reason == "bad-config"
            else:
                raise AssertionError("not refused")

        runs = [stall_during(refuse) for _ in range(20)]
        took = [a for a, _ in runs]
        print(f"hostile {kind}: refused in p50 {statistics.median(took) * 1e3:.1f} ms, "
              f"max {max(took) * 1e3:.1f} ms; other thread's longest stall {max(b for _, b in runs) * 1e3:.1f} ms")
    n = 22
    took, gap = stall_during(lambda: re.match(r"(.*\.)?((a|a)+)$", "a" * n + "!"))
    print(f"python re, same pattern, {n}-char name: {took:.2f} s, other thread stalled {gap:.2f} s "
          "(doubles per extra character; the hostile adapter uses 40)")
    header = json.dumps({f"k{i}": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
                         for i in range(MAX_HEADER_BYTES // 60)})[:MAX_HEADER_BYTES].rsplit(", \"k", 1)[0] + "}"
    took, gap = stall_during(lambda: json.loads(header))
    print(f"safetensors header at the {MAX_HEADER_BYTES >> 20} MiB bound ({len(header)} bytes): json.loads "
          f"{took * 1e3:.1f} ms, other thread's longest stall {gap * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
