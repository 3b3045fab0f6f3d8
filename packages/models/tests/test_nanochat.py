"""NanoChat in real vLLM (loaded through vLLM's general-plugin loader) against
transformers' own ``NanoChatForCausalLM`` on the same checkpoints, and LoRA
adapters made by peft against transformers + peft.

One offline engine per shape; the GQA engine is started with LoRA enabled and
carries the LoRA checks (served LoRA through lora-store and the served alias
test live in ``tests/test_served_nanochat_lora.py``)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest
import torch

from vllm_plugin_models.testing import (
    build_nanochat,
    build_nanochat_lora,
    hf_greedy,
    hf_peft_greedy,
    retargeted_copy,
)

pytestmark = pytest.mark.engine

LOGPROB_TOL = 1e-3  # fp32 on both sides; measured differences are ~1e-5


def prompts_for(seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    # Different lengths; two share a long prefix (prefix caching), one is
    # longer than the chunk size (chunked prefill).
    base = torch.randint(3, 500, (40,), generator=g).tolist()
    return [base[:5], base[:23], [*base, 7, 8, 9], torch.randint(3, 500, (90,), generator=g).tolist(), base[:12]]


def run_llm(path, prompts, n, lora_checks=None, **kw):
    """Greedy tokens and top-1 logprobs of an offline ``LLM`` (run twice: the
    second pass hits the prefix cache); ``lora_checks(llm)`` runs on the same
    engine before it shuts down and its result is returned third."""
    from vllm import SamplingParams

    from vllm_plugin_core.testing.pytest_plugin import make_llm

    llm = make_llm(path, enable_prefix_caching=True, enable_chunked_prefill=True,
                   max_num_batched_tokens=64, max_num_seqs=8, **kw)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            SamplingParams(max_tokens=n, temperature=0, logprobs=1, ignore_eos=True),
                            use_tqdm=False)
        again = llm.generate([{"prompt_token_ids": p} for p in prompts],
                             SamplingParams(max_tokens=n, temperature=0, ignore_eos=True), use_tqdm=False)
        extra = lora_checks(llm) if lora_checks is not None else None
    finally:
        engine = getattr(llm, "llm_engine", None)
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()
        del llm
        gc.collect()
    toks = [list(o.outputs[0].token_ids) for o in outs]
    lps = [[lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs, strict=True)]
           for o in outs]
    assert [list(o.outputs[0].token_ids) for o in again] == toks
    return toks, lps, extra


LORA_SHAPE = "gqa-3l"  # q/k/v of different widths in one packed qkv_proj
LORA_TOKENS = 12
#: Modules NanoChat does not have (Llama's MLP names), for a refused adapter.
FOREIGN = {"fc1": "gate_proj", "fc2": "down_proj"}


def lora_checks(adapter, bad_adapter, prompts):
    def check(llm):
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        params = SamplingParams(max_tokens=LORA_TOKENS, temperature=0, ignore_eos=True)
        good = LoRARequest("nano-lora", 1, str(adapter))

        def tokens(lora):
            outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, lora_request=lora,
                                use_tqdm=False)
            return [list(o.outputs[0].token_ids) for o in outs]

        result = {"base": tokens(None), "lora": tokens(good)}
        try:
            llm.llm_engine.add_lora(LoRARequest("nano-foreign", 2, str(bad_adapter)))
        except Exception as exc:
            result["refused"] = f"{type(exc).__name__}: {exc}"
        # The engine still serves, with and without the good adapter.
        result["lora_after"], result["base_after"] = tokens(good), tokens(None)
        return result

    return check


@pytest.fixture(scope="module")
def offline_runs(tmp_path_factory):
    """One engine start per shape, results shared by the tests below."""
    runs = {}

    def get(shape):
        if shape not in runs:
            path = build_nanochat(shape)
            checks = None
            kw = {}
            if shape == LORA_SHAPE:
                adapter = build_nanochat_lora(path)
                bad = retargeted_copy(adapter, tmp_path_factory.mktemp("foreign"), FOREIGN)
                checks = lora_checks(adapter, bad, prompts_for(3))
                kw = {"enable_lora": True, "max_lora_rank": 8, "max_loras": 1}
            runs[shape] = run_llm(path, prompts_for(1), 16, checks, **kw)
        return runs[shape]

    return get


@pytest.mark.parametrize("shape", ["mha-2l", LORA_SHAPE])
def test_offline_greedy_and_logprobs_match_transformers(shape, offline_runs):
    want, want_lp = hf_greedy(build_nanochat(shape), prompts_for(1), 16)
    got, got_lp, _ = offline_runs(shape)
    assert got == want
    worst = max(abs(a - b) for xs, ys in zip(got_lp, want_lp, strict=True) for a, b in zip(xs, ys, strict=True))
    assert worst < LOGPROB_TOL, worst


def test_offline_lora_request_matches_transformers_with_peft(offline_runs):
    """A peft adapter on every projection (q/k/v packed, o, fc1, fc2) through
    ``LoRARequest``: the greedy tokens of transformers + peft."""
    path = build_nanochat(LORA_SHAPE)
    want = hf_peft_greedy(path, build_nanochat_lora(path), prompts_for(3), LORA_TOKENS)
    result = offline_runs(LORA_SHAPE)[2]
    assert result["lora"] == want
    assert result["lora"] != result["base"], "the adapter must change the output"
    assert result["base"] == hf_greedy(path, prompts_for(3), LORA_TOKENS)[0]


def test_offline_adapter_for_modules_nanochat_lacks_is_refused_by_name(offline_runs):
    result = offline_runs(LORA_SHAPE)[2]
    refused = result.get("refused")
    assert refused is not None, "loading the adapter must fail"
    assert "gate_proj" in refused and "down_proj" in refused, refused
    # The engine keeps serving, the good adapter included.
    assert result["lora_after"] == result["lora"] and result["base_after"] == result["base"]


def test_bad_alias_is_one_clear_error_and_vllm_keeps_running():
    code = ("from vllm.plugins import load_general_plugins; load_general_plugins();"
            "from vllm import ModelRegistry; print('NANO', 'NanoChatForCausalLM' in ModelRegistry.get_supported_archs())")
    env = {**os.environ, "VLLM_PLUGIN_MODELS_ALIASES": "Acme=NoSuchArchForCausalLM"}
    env.pop("VLLM_PLUGIN_STRICT", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    log = out.stdout + out.stderr
    assert log.count("Plugin vllm-plugin-models failed to register") == 1
    assert "Acme=NoSuchArchForCausalLM" in log and "NoSuchArchForCausalLM" in log
    assert "NANO True" in out.stdout  # the architecture registered before the bad alias stays
