"""Prefill and decode throughput: the torch_native platform vs vLLM's CPU platform.

    python packages/torch-native/benchmarks/bench_platform.py [--repeats 3] [--rounds 1] [--eager]

Builds (once, cached in VLLM_PLUGIN_CACHE_DIR) a ~50M-parameter fp32 Llama
(hidden 512, 8 layers, 8 heads, head_dim 64, intermediate 1536, vocab 8192),
then runs each platform in its own interpreter, one after the other, with the
same engine arguments (in-process engine, uni executor, prefix caching off so
that repeats recompute; by default without ``enforce_eager``, as ``vllm serve``
runs, so the built-in CPU platform compiles its model with torch.compile while
torch_native always runs eagerly; ``--eager`` passes ``enforce_eager`` to
both). ``--rounds N`` alternates the platforms N times and keeps each one's
best figures (the machine's noise is shared by both):

* prefill: batch B of 256-token prompts, max_tokens=1 -> prompt tokens/s;
* decode: batch B of 16-token prompts, 65 tokens each (ignore_eos) minus the
  same with 1 token -> generated tokens/s of the 64 decode steps.

B is 1 and 16; each figure is the best of ``--repeats`` runs after a warm-up.
On a vLLM build without CPU kernels (vLLM 0.33's CUDA wheel without GPU) only
the torch_native platform runs and its tokens/s are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

PROMPT_LEN, DECODE_PROMPT_LEN, DECODE_STEPS = 256, 16, 64


def child(model: str, repeats: int, eager: bool) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    llm = LLM(model=model, dtype="float32", enforce_eager=eager, gpu_memory_utilization=0.2,
              max_model_len=512, distributed_executor_backend="uni", enable_prefix_caching=False,
              max_num_batched_tokens=4096, max_num_seqs=16, seed=0)

    def timed(batch: int, prompt_len: int, max_tokens: int) -> float:
        prompts = [{"prompt_token_ids": [(7 * i + 13 * j) % 8000 + 3 for j in range(prompt_len)]}
                   for i in range(batch)]
        sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        best = float("inf")
        llm.generate(prompts, sp, use_tqdm=False)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            llm.generate(prompts, sp, use_tqdm=False)
            best = min(best, time.perf_counter() - t0)
        return best

    out = {"platform": type(current_platform).__name__}
    for b in (1, 16):
        t = timed(b, PROMPT_LEN, 1)
        out[f"prefill_b{b}_tok_s"] = b * PROMPT_LEN / t
        t_full = timed(b, DECODE_PROMPT_LEN, DECODE_STEPS + 1)
        t_first = timed(b, DECODE_PROMPT_LEN, 1)
        out[f"decode_b{b}_tok_s"] = b * DECODE_STEPS / max(t_full - t_first, 1e-9)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--eager", action="store_true", help="enforce_eager on both platforms")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.repeats, args.eager)), flush=True)
        return 0

    from vllm_plugin_core.testing.models import build_causal_lm
    from vllm_plugin_core.testing.platform import vllm_has_cpu_kernels

    model = build_causal_lm(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1536,
                            vocab_size=8192, init_std=0.02)
    results = {}
    # a vLLM build without CPU kernels (the CUDA wheel, no GPU) has no built-in
    # CPU platform to compare with: the platform's tokens/s only
    runs = (("torch_native", True), ("cpu (built-in)", False))[:2 if vllm_has_cpu_kernels() else 1]
    for _ in range(args.rounds):
        for name, native in runs:
            env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGIN_TORCH_NATIVE"}
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            if native:
                env["VLLM_PLUGIN_TORCH_NATIVE"] = "1"
            proc = subprocess.run([sys.executable, __file__, "--child", str(model), "--repeats",
                                   str(args.repeats), *(["--eager"] if args.eager else [])],
                                  env=env, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            got = json.loads(line[len("RESULT "):])
            best = results.setdefault(name, got)
            for k, v in got.items():
                if isinstance(v, float):
                    best[k] = max(best[k], v)

    print(f"{'eager (--eager)' if args.eager else 'as vllm serve runs (no enforce_eager)'}, "
          f"best of {args.repeats} x {args.rounds} round(s)")
    keys = ["prefill_b1_tok_s", "prefill_b16_tok_s", "decode_b1_tok_s", "decode_b16_tok_s"]
    print(f"{'tokens/s':<20}" + "".join(f"{k.replace('_tok_s', ''):>14}" for k in keys))
    for name, r in results.items():
        print(f"{name:<20}" + "".join(f"{r[k]:>14.1f}" for k in keys))
    if len(results) < 2:
        print("(no CPU platform in this vLLM build: no ratio)")
        return 0
    a, b = results["torch_native"], results["cpu (built-in)"]
    print(f"{'ratio native/cpu':<20}" + "".join(f"{a[k] / b[k]:>14.2f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
