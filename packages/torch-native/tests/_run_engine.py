"""Run one offline engine and dump what the tests compare (a script, run in a
subprocess so that the torch_native platform and vLLM's CPU platform never
share a process).

Usage: python _run_engine.py MODEL OUT.json [NANOCHAT_MODEL]
"""

from __future__ import annotations

import gc
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
    linear = sorted({type(m.quant_method).__module__ + "." + type(m.quant_method).__qualname__
                     for m in model.modules() if getattr(m, "quant_method", None) is not None})
    heads = [m for m in model.modules() if type(m).__name__ == "ParallelLMHead"]
    lm_head_weight = [int(m.weight.numel()) for m in heads]
    runner = type(worker.model_runner)
    step_ops = sorted({getattr(m, "ops", None).__name__ for m in _standalone_runner_modules()})
    return {"platform": type(current_platform).__module__ + "." + type(current_platform).__qualname__,
            "attn_impls": impls, "op_classes": ops, "linear_methods": linear,
            "runner": runner.__module__ + "." + runner.__qualname__,
            "runner_bases": [b.__module__ + "." + b.__qualname__ for b in runner.__mro__[1:3]],
            "runner_step_ops": step_ops, "lm_head_weight_numel": lm_head_weight}


def _standalone_runner_modules() -> list:
    """vLLM's standalone CPU runner modules that call step ops (vLLM 0.34+; none before)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("vllm.v1.worker.cpu.standalone_model_runner") is None:
        return []
    from vllm_plugin_torch_native.runner import OPS_USERS

    return [importlib.import_module(f"vllm.v1.worker.cpu.{m}") for m in OPS_USERS]


def greedy(llm, batches) -> dict:
    from vllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=12, logprobs=5)
    runs = {}
    for name, batch in batches:
        outs = llm.generate([{"prompt_token_ids": p} for p in batch], sp, use_tqdm=False)
        runs[name] = [
            {"tokens": list(o.outputs[0].token_ids),
             "logprobs": [{str(k): v.logprob for k, v in lp.items()} for lp in o.outputs[0].logprobs]}
            for o in outs
        ]
    return runs


def sampling_paths(llm, ps) -> dict:
    """What the runner's sampling ops produce beyond greedy decoding, as
    properties the test checks: a seeded request alone and in a batch,
    allowed_token_ids, logit_bias, min_tokens against a stop token, prompt logprobs."""
    from vllm import SamplingParams

    def tokens(prompts, sp):
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    seeded = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=10, ignore_eos=True)
    other = SamplingParams(temperature=1.0, seed=99, max_tokens=10, ignore_eos=True)
    alone = tokens([ps[3]], seeded)[0]
    outs = llm.generate([{"prompt_token_ids": p} for p in (ps[0], ps[3], ps[2])], [other, seeded, other],
                        use_tqdm=False)
    batched = list(outs[1].outputs[0].token_ids)
    first = tokens([ps[3]], SamplingParams(temperature=0.0, max_tokens=1))[0][0]
    allowed = tokens([ps[3]], SamplingParams(temperature=1.0, seed=5, max_tokens=6, ignore_eos=True,
                                             allowed_token_ids=[17, 29]))[0]
    biased = tokens([ps[3]], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True,
                                            logit_bias={41: 100.0}))[0]
    held = tokens([ps[3]], SamplingParams(temperature=0.0, max_tokens=6, min_tokens=4,
                                          stop_token_ids=[first]))[0]
    out = llm.generate([{"prompt_token_ids": ps[3]}], SamplingParams(max_tokens=1, prompt_logprobs=1),
                       use_tqdm=False)[0]
    prompt_lp = [None if d is None else {str(k): v.logprob for k, v in d.items()} for d in out.prompt_logprobs]
    return {"seeded_alone": alone, "seeded_batched": batched, "greedy_first": first, "allowed": allowed,
            "biased": biased, "min_tokens_held": held, "prompt": ps[3], "prompt_logprobs": prompt_lp}


def main() -> int:
    model, out_path = sys.argv[1], sys.argv[2]
    nanochat = sys.argv[3] if len(sys.argv) > 3 else None
    result: dict = {}
    try:
        import _op_guard

        if os.environ.get("VLLM_PLUGIN_TORCH_NATIVE") == "1":
            _op_guard.install()  # (tested on its own in test_op_guard.py)
        from vllm import LLM
        from vllm.platforms import current_platform

        result["main_platform"] = type(current_platform).__module__ + "." + type(current_platform).__qualname__
        # torch-native without --enforce-eager, as `vllm serve` users run it: its
        # ops must be dispatched to all the same (the CPU reference stays eager).
        native = os.environ.get("VLLM_PLUGIN_TORCH_NATIVE") == "1"
        engine_args = dict(dtype="float32", enforce_eager=not native, gpu_memory_utilization=0.2,
                           kv_cache_memory_bytes=256 * 1024 * 1024, max_model_len=512,
                           distributed_executor_backend="uni", enable_prefix_caching=True,
                           enable_chunked_prefill=True, max_num_batched_tokens=64, block_size=32,
                           seed=0)
        llm = LLM(model=model, **engine_args)
        result["engine"] = llm.llm_engine.collective_rpc(worker_info)[0]
        ps = prompts()
        # batch sizes 1, 2, 6; the last pass repeats prompts (prefix-cache hits)
        runs = greedy(llm, (("b1", ps[:1]), ("b2", ps[1:3]), ("b6", ps), ("b6_again", ps)))
        result["sampling"] = sampling_paths(llm, ps)
        if native:
            # vLLM's in-place reload from the checkpoint (the path RL weight syncs
            # take) writes into the platform's packed weights (linear.py)
            try:
                llm.collective_rpc("reload_weights")
                result["after_reload"] = greedy(llm, (("b2", ps[1:3]),))["b2"]
            except Exception as exc:
                result["reload_error"] = f"{type(exc).__name__}: {exc}"
        if nanochat:  # vllm-plugin-models' NanoChat (GQA), same prompts (ids < its vocab of 512)
            del llm
            gc.collect()
            llm = LLM(model=nanochat, **engine_args)
            result["engine_nanochat"] = llm.llm_engine.collective_rpc(worker_info)[0]
            runs.update(greedy(llm, (("nanochat_b6", ps), ("nanochat_b6_again", ps))))
        result["runs"] = runs
        if "torch_native" in result["main_platform"]:
            # an unsupported dtype: refused while the engine is configured
            del llm
            gc.collect()
            try:
                LLM(model=model, **{**engine_args, "dtype": "float16"})
                result["fp16"] = {"started": True}
            except Exception as exc:
                result["fp16"] = {"started": False, "error_type": type(exc).__name__, "error": str(exc)}
        try:
            from vllm_plugin_torch_native import attention, linear, ops

            result["op_calls"] = dict(ops.CALLS)
            result["attn_calls"] = dict(attention.CALLS)
            result["linear_calls"] = dict(linear.CALLS)
        except Exception as exc:  # the CPU reference run: not imported there
            result["op_calls"] = {"import_error": repr(exc)}
        result["compiled_ops"] = _op_guard.report()
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
