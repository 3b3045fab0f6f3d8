"""The GEMM layouts a CPU platform can pick, side by side (no engine).

    python packages/torch-native/benchmarks/bench_gemm.py [--threads 1]

For the linear shapes of the platform benchmark's model (hidden 512,
intermediate 1536, vocab 8192) and of a larger one (hidden 768), times
``y = x @ W.T`` at 1 to 4096 rows three ways, in the same run:

* ``mm``: ``torch.mm(x, Wt)`` over a contiguous ``[in, out]`` copy (the
  platform's GEMM, ``linear.py``);
* ``packed``: oneDNN's prepacked ``torch.ops.mkldnn._linear_pointwise`` (the
  platform's GEMM before 2026-12-03), where this torch has it;
* ``F.linear``: over the ``[out, in]`` weight (vLLM's generic path).

Prints microseconds per call and the ratios to ``mm`` (>1: slower than ``mm``).
vLLM serves with one thread on this 2-core machine, hence the default.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = [(512, 1536), (512, 3072), (1536, 512), (512, 8192), (768, 3072), (3072, 768)]
ROWS = [1, 4, 16, 64, 256, 4096]


def per_call_us(fn, calls: int) -> float:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    has_packed = torch.backends.mkldnn.is_available()
    print(f"torch {torch.__version__}, {args.threads} thread(s); us per call; ratio = x / mm")
    print(f"{'in x out':>11} {'rows':>5} {'mm':>9} {'packed':>9} {'F.linear':>9} {'packed/mm':>10} {'F.linear/mm':>12}")
    for k, n in SHAPES:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(n, k, generator=g)
        wt = w.t().contiguous()
        packed = torch.ops.mkldnn._reorder_linear_weight(w, None) if has_packed else None
        for m in ROWS:
            x = torch.randn(m, k, generator=g)
            calls = max(5, min(300, 2_000_000 // (m * n)))
            t_mm = per_call_us(lambda: torch.mm(x, wt), calls)
            t_pk = (per_call_us(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), calls)
                    if packed is not None else float("nan"))
            t_fl = per_call_us(lambda: F.linear(x, w), calls)
            print(f"{k:>5} x {n:<5} {m:>5} {t_mm:>9.0f} {t_pk:>9.0f} {t_fl:>9.0f} {t_pk / t_mm:>10.2f} {t_fl / t_mm:>12.2f}")


if __name__ == "__main__":
    main()
