"""NanoChat in real vLLM (loaded through vLLM's general-plugin loader) against
transformers' own ``NanoChatForCausalLM`` on the same checkpoints."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys

import pytest
import torch

from vllm_plugin_models.testing import build_nanochat, renamed_copy

pytestmark = pytest.mark.engine

LOGPROB_TOL = 1e-3  # fp32 on both sides; measured differences are ~1e-5


def prompts_for(seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    # Different lengths; two share a long prefix (prefix caching), one is
    # longer than the chunk size (chunked prefill).
    base = torch.randint(3, 500, (40,), generator=g).tolist()
    return [base[:5], base[:23], [*base, 7, 8, 9], torch.randint(3, 500, (90,), generator=g).tolist(), base[:12]]


def hf_greedy(path, prompts, n):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    outs, lps = [], []
    with torch.no_grad():
        for p in prompts:
            ctx, toks, top = list(p), [], []
            for _ in range(n):
                logits = model(torch.tensor([ctx])).logits[0, -1].float()
                lp = torch.log_softmax(logits, -1)
                t = int(lp.argmax())
                toks.append(t)
                top.append(float(lp[t]))
                ctx.append(t)
            outs.append(toks)
            lps.append(top)
    return outs, lps


def run_llm(path, prompts, n, **kw):
    from vllm import SamplingParams

    from vllm_plugin_core.testing.pytest_plugin import make_llm

    llm = make_llm(path, enable_prefix_caching=True, enable_chunked_prefill=True,
                   max_num_batched_tokens=64, max_num_seqs=8, **kw)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            SamplingParams(max_tokens=n, temperature=0, logprobs=1, ignore_eos=True),
                            use_tqdm=False)
        # Run twice: the second pass hits the prefix cache.
        again = llm.generate([{"prompt_token_ids": p} for p in prompts],
                             SamplingParams(max_tokens=n, temperature=0, ignore_eos=True), use_tqdm=False)
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
    return toks, lps


@pytest.mark.parametrize("shape", ["mha-2l", "gqa-3l"])
def test_offline_greedy_and_logprobs_match_transformers(shape):
    path = build_nanochat(shape)
    prompts = prompts_for(1)
    want, want_lp = hf_greedy(path, prompts, 16)
    got, got_lp = run_llm(path, prompts, 16)
    assert got == want
    worst = max(abs(a - b) for xs, ys in zip(got_lp, want_lp, strict=True) for a, b in zip(xs, ys, strict=True))
    assert worst < LOGPROB_TOL, worst


def test_served_through_an_alias_with_openai_client(vllm_server_factory, tmp_path):
    """``vllm serve`` of a NanoChat checkpoint whose config names a renamed
    architecture, loaded through an alias: the same tokens as transformers'
    NanoChat on the original checkpoint (one server start covers serving and
    aliases)."""
    import openai

    path = build_nanochat("mqa-1l")
    renamed = renamed_copy(path, tmp_path / "acme", "AcmeChatForCausalLM")
    prompts = prompts_for(2)[:3]
    want, _ = hf_greedy(path, prompts, 12)
    server = vllm_server_factory(renamed, ["--max-model-len", "512"], served_model_name="nano",
                                 env={"VLLM_PLUGIN_MODELS_ALIASES": "AcmeChatForCausalLM=NanoChatForCausalLM"})
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    for p, w in zip(prompts, want, strict=True):
        r = client.completions.create(model="nano", prompt=p, max_tokens=12, temperature=0, logprobs=1,
                                      extra_body={"return_tokens_as_token_ids": True, "ignore_eos": True})
        assert [int(t.split(":")[1]) for t in r.choices[0].logprobs.tokens] == w
    log = server.log_text()
    pids = re.findall(r"vllm-plugin-models registered \(pid (\d+)\): NanoChatForCausalLM, "
                      r"AcmeChatForCausalLM->NanoChatForCausalLM", log)
    # Serving the renamed checkpoint needs the registration in the front end
    # (architecture resolution) and the engine core (model load); vLLM 0.31
    # configures logging after the front end loads plugins, so only assert
    # the lines that are printed are one per process.
    assert pids and len(pids) == len(set(pids)), "once per process"


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
