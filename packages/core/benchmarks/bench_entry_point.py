"""What core's general-plugin entry point adds to a vLLM process start.

vLLM loads ``vllm.general_plugins`` in every process it starts. This measures,
in fresh interpreters where ``vllm.envs`` is already imported (as it is when
vLLM loads plugins), the wall time of loading and calling core's entry point:
discovering the entry point, importing ``vllm_plugin_core._entry`` and running
``register()`` (reading every declared setting entry point, registering the
variables with vLLM's validator). Import of vLLM itself is excluded.
Target: < 20 ms per process.

Run: ``python packages/core/benchmarks/bench_entry_point.py [runs]``
"""

from __future__ import annotations

import statistics
import subprocess
import sys

CHILD = r"""
import time, importlib.metadata as md
import vllm.envs  # already imported by vLLM before plugins load: excluded
t0 = time.perf_counter()
ep = next(e for e in md.entry_points(group="vllm.general_plugins") if e.name == "core")
t1 = time.perf_counter()
func = ep.load()
t2 = time.perf_counter()
func()
t3 = time.perf_counter()
print((t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000)
"""


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    rows = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
        rows.append([float(x) for x in out.stdout.split()])
    cols = list(zip(*rows, strict=True))
    names = ("discover entry point", "import module", "register()")
    print(f"{'step':<22} {'median ms':>10} {'max ms':>8}   ({runs} fresh processes)")
    for name, col in zip(names, cols, strict=True):
        print(f"{name:<22} {statistics.median(col):>10.2f} {max(col):>8.2f}")
    added = [r[1] + r[2] for r in rows]
    print(f"{'added by core':<22} {statistics.median(added):>10.2f} {max(added):>8.2f}   "
          "import + register(); target < 20 ms")
    print("(discovering the entry point is vLLM's own scan of installed entry points, done "
          "whether or not core is installed)")


if __name__ == "__main__":
    main()
