"""Generated tokens/s of NanoChat: vLLM (offline ``LLM``) against transformers'
``generate``, and vLLM with one LoRA adapter active, side by side in one run.

Same checkpoint (transformers' ``NanoChatForCausalLM``, random weights,
``bench-768x12``: hidden 768, 12 layers, 12 heads, MLP 1536, vocab 512), same
prompts (``--prompt-len`` random token ids each, one per sequence), same output
length (``--tokens``, ``ignore_eos``/``min_new_tokens``), same dtype, greedy.
The clock covers prefill and decode of the whole batch; tokens/s counts
generated tokens only. Each measurement follows a warm-up generate.

* ``transformers``: ``model.generate`` on the batch (equal lengths: no padding);
* ``vllm``: an ``LLM`` without LoRA, the batch as one ``generate`` call;
* ``vllm+lora``: an ``LLM`` with ``enable_lora`` and one peft adapter (rank 8
  on q/k/v/o/fc1/fc2) as the ``LoRARequest`` of every sequence
  (``--lora-batches``, default 32: on CPU it is slow).

Each side runs in a fresh process, one after the other (vLLM with
``enforce_eager``, as the tests); each figure is the best of ``--repeats``
runs, since the machine may be shared. ``--profile`` adds a
``torch.profiler`` table of one run at the largest batch per engine (the
reason behind a missed ratio).

Run: ``python packages/models/benchmarks/bench_throughput.py [--batches 1,8,32]
[--lora-batches 32] [--tokens 32] [--prompt-len 32] [--dtype float32]
[--repeats 3] [--profile]`` (needs vLLM, transformers, peft and this package;
``VLLM_PLUGIN_CACHE_DIR`` to reuse the built checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

SHAPE = "bench-768x12"


def prompts_for(batch: int, length: int, seed: int = 0) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed + batch)
    return torch.randint(3, 500, (batch, length), generator=g).tolist()


def best_rate(run, batch: int, n: int, repeats: int) -> tuple[float, list]:
    """Generated tokens/s of the fastest of ``repeats`` runs (the machine is
    shared: the best run is the least disturbed one) and its tokens."""
    best, out = 0.0, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = run()
        best = max(best, batch * n / (time.perf_counter() - t))
    return best, out


def worker_transformers(path, batches, n, plen, dtype, repeats) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    kw = {"do_sample": False, "max_new_tokens": n, "min_new_tokens": n, "pad_token_id": 0}
    rates, outs = {}, {}
    with torch.no_grad():
        model.generate(torch.tensor(prompts_for(1, plen, seed=99)), **{**kw, "max_new_tokens": 4,
                                                                       "min_new_tokens": 4})
        for b in batches:
            ids = torch.tensor(prompts_for(b, plen))

            def run(ids=ids):
                return model.generate(ids, attention_mask=torch.ones_like(ids), **kw)[:, plen:].tolist()

            rates[b], outs[b] = best_rate(run, b, n, repeats)
    return {"rates": rates, "outs": outs}


def worker_vllm(path, batches, n, plen, dtype, repeats, adapter=None, profile=False) -> dict[str, Any]:
    """One engine (with LoRA enabled and the adapter active when ``adapter``)."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from vllm_plugin_core.testing.pytest_plugin import make_llm

    kw: dict[str, Any] = {"dtype": dtype, "max_num_seqs": max(batches), "enable_prefix_caching": False}
    if adapter is not None:
        kw.update(enable_lora=True, max_lora_rank=8, max_loras=1)
    llm = make_llm(path, **kw)
    params = SamplingParams(max_tokens=n, min_tokens=n, temperature=0, ignore_eos=True)
    lora = LoRARequest("bench", 1, str(adapter)) if adapter is not None else None
    warm = [{"prompt_token_ids": p} for p in prompts_for(2, plen, seed=99)]
    llm.generate(warm, SamplingParams(max_tokens=4, temperature=0), lora_request=lora, use_tqdm=False)
    rates, outs = {}, {}
    for b in batches:
        prompts = [{"prompt_token_ids": p} for p in prompts_for(b, plen)]

        def run(prompts=prompts):
            res = llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
            return [list(r.outputs[0].token_ids) for r in res]

        rates[b], outs[b] = best_rate(run, b, n, repeats)
    table = ""
    if profile:
        import torch

        prompts = [{"prompt_token_ids": p} for p in prompts_for(max(batches), plen)]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return {"rates": rates, "outs": outs, "profile": table}


def run_worker(kind: str, args: argparse.Namespace, batches: list[int]) -> dict[str, Any]:
    """Each side in a fresh process (as it would run for a user); results as
    one JSON line on stdout."""
    cmd = [sys.executable, __file__, "--worker", kind, "--batches", ",".join(map(str, batches)),
           "--tokens", str(args.tokens), "--prompt-len", str(args.prompt_len), "--dtype", args.dtype,
           "--repeats", str(args.repeats), *(["--profile"] if args.profile else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(RESULT)]
    if out.returncode != 0 or not lines:
        sys.exit(f"{kind} worker failed ({out.returncode}):\n{out.stderr[-4000:]}")
    res = json.loads(lines[-1][len(RESULT):])
    res["rates"] = {int(k): v for k, v in res["rates"].items()}
    res["outs"] = {int(k): v for k, v in res["outs"].items()}
    return res


RESULT = "BENCH-RESULT "


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--lora-batches", default="32", help="batches measured with the adapter active")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure; the best counts")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--worker", choices=["transformers", "vllm", "vllm+lora"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    from vllm_plugin_models.testing import build_nanochat, build_nanochat_lora

    path = build_nanochat(SHAPE)
    adapter = build_nanochat_lora(path)
    common = (path, batches, args.tokens, args.prompt_len, args.dtype, args.repeats)
    if args.worker == "transformers":
        print(RESULT + json.dumps(worker_transformers(*common)), flush=True)
        return
    if args.worker == "vllm":
        print(RESULT + json.dumps(worker_vllm(*common, profile=args.profile)), flush=True)
        return
    if args.worker == "vllm+lora":
        print(RESULT + json.dumps(worker_vllm(*common, adapter=adapter, profile=args.profile)), flush=True)
        return

    import torch

    lora_batches = [int(b) for b in args.lora_batches.split(",")]
    t0 = time.perf_counter()
    hf = run_worker("transformers", args, batches)
    v = run_worker("vllm", args, batches)
    lo = run_worker("vllm+lora", args, lora_batches)
    print(f"NanoChat {SHAPE} (hidden 768, 12 layers), {args.dtype}, prompts of {args.prompt_len} tokens, "
          f"{args.tokens} generated tokens each, greedy, best of {args.repeats}; vLLM {_vllm_version()}, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs; run took {time.perf_counter() - t0:.0f} s")
    print(f"{'batch':>5} {'transformers':>13} {'vllm':>10} {'vllm/hf':>8} {'vllm+lora':>10} {'lora/vllm':>10} "
          f"{'same tokens vllm=hf':>20}")
    for b in batches:
        same = sum(a == c for a, c in zip(hf["outs"][b], v["outs"][b], strict=True))
        lora = (f"{lo['rates'][b]:>8.1f}/s {lo['rates'][b] / v['rates'][b]:>9.2f}x" if b in lo["rates"]
                else f"{'-':>10} {'-':>10}")
        print(f"{b:>5} {hf['rates'][b]:>11.1f}/s {v['rates'][b]:>8.1f}/s {v['rates'][b] / hf['rates'][b]:>7.2f}x "
              f"{lora} {same:>17}/{b}")
    for name, res in (("vllm", v), ("vllm+lora", lo)):
        if res.get("profile"):
            print(f"\nprofile of one batch-{max(res['rates'])} run, {name}:\n{res['profile']}")


def _vllm_version() -> str:
    from vllm_plugin_core.version import vllm_version

    return str(vllm_version())


if __name__ == "__main__":
    main()
