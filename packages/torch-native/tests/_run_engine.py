"""Run one offline engine and dump what the tests compare (a script, run in a
subprocess so that the torch_native platform and vLLM's CPU platform never
share a process).

Usage: python _run_engine.py MODEL OUT.json [dtype]
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def prompts() -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(1234)
    base = torch.randint(3, 500, (70,), generator=g).tolist()
    # lengths 3..150; two share a 70-token prefix (prefix caching, block 32),
    # one is longer than max_num_batched_tokens=64 (chunked prefill).
    return [
        base[:3],
        [*base, 11, 12, 13],
        torch.randint(3, 500, (150,), generator=g).tolist(),
        base[:40],
        [*base, 21],
        torch.randint(3, 500, (9,), generator=g).tolist(),
    ]


def worker_info(worker):  # runs in the worker (collective_rpc)
    from vllm.platforms import current_platform

    model = worker.model_runner.model
    impls = sorted({type(m.impl).__module__ + "." + type(m.impl).__qualname__
                    for m in model.modules() if hasattr(m, "impl") and hasattr(m, "kv_cache")})
    ops = sorted({type(m).__module__ + "." + type(m).__qualname__ for m in model.modules()
                  if type(m).__name__.startswith("TorchNative")})
    return {"platform": type(current_platform).__module__ + "." + type(current_platform).__qualname__,
            "attn_impls": impls, "op_classes": ops}


def main() -> int:
    model, out_path = sys.argv[1], sys.argv[2]
    dtype = sys.argv[3] if len(sys.argv) > 3 else "float32"
    result: dict = {}
    try:
        from vllm import LLM, SamplingParams
        from vllm.platforms import current_platform

        result["main_platform"] = type(current_platform).__module__ + "." + type(current_platform).__qualname__
        llm = LLM(model=model, dtype=dtype, enforce_eager=True, gpu_memory_utilization=0.2,
                  max_model_len=512, distributed_executor_backend="uni", enable_prefix_caching=True,
                  enable_chunked_prefill=True, max_num_batched_tokens=64, block_size=32, seed=0)
        result["engine"] = llm.llm_engine.collective_rpc(worker_info)[0]
        sp = SamplingParams(temperature=0.0, max_tokens=12, logprobs=5)
        ps = prompts()
        runs = {}
        # batch sizes 1, 2, 6; the last pass repeats prompts (prefix-cache hits)
        for name, batch in (("b1", ps[:1]), ("b2", ps[1:3]), ("b6", ps), ("b6_again", ps)):
            outs = llm.generate([{"prompt_token_ids": p} for p in batch], sp, use_tqdm=False)
            runs[name] = [
                {"tokens": list(o.outputs[0].token_ids),
                 "logprobs": [{str(k): v.logprob for k, v in lp.items()} for lp in o.outputs[0].logprobs]}
                for o in outs
            ]
        result["runs"] = runs
        try:
            from vllm_plugin_torch_native import attention, ops

            result["op_calls"] = dict(ops.CALLS)
            result["attn_calls"] = dict(attention.CALLS)
        except Exception as exc:  # the CPU reference run: not imported there
            result["op_calls"] = {"import_error": repr(exc)}
        result["ok"] = True
    except BaseException as exc:
        result["ok"] = False
        result["error_type"] = type(exc).__name__
        result["error"] = str(exc)
        result["traceback"] = traceback.format_exc()
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
