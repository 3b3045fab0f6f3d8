"""vllm-plugin-lora-store in the shared ``vllm serve --enable-lora``: adapters
loaded on demand from a real S3-compatible server (moto on loopback) through
the AWS SDK, named as ``model`` with the ``openai`` client."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
import torch

pytestmark = pytest.mark.engine

PROMPT = [5, 6, 7, 8, 9, 10]


def complete(client, model, n=12):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=n, temperature=0, logprobs=1,
                                  extra_body={"return_tokens_as_token_ids": True, "ignore_eos": True})
    return [int(t.split(":")[1]) for t in r.choices[0].logprobs.tokens]


def merged_reference(base, adapter, n=12):
    """Greedy tokens of transformers' model with the LoRA merged in by hand:
    W + (alpha / r) * B @ A on every targeted projection."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, a in tensors.items():
            if ".lora_A." not in key:
                continue
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            target = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
            params[target] += scale * (b @ a)
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(PROMPT):].tolist()


def test_adapter_from_s3_changes_output_and_matches_merged_reference(openai_client, tiny_causal_lm,
                                                                     tiny_lora_adapter):
    base = complete(openai_client, "tiny")
    adapted = complete(openai_client, "good")
    assert adapted != base
    assert adapted == merged_reference(tiny_causal_lm, tiny_lora_adapter)


def test_fifty_concurrent_first_requests_one_download(shared_server):
    client = openai.AsyncOpenAI(base_url=shared_server.base_url, api_key="unused", max_retries=0, timeout=300)

    async def one():
        r = await client.completions.create(model="conc", prompt=PROMPT, max_tokens=2, temperature=0)
        return r.choices[0].text

    async def all_of_them():
        return await asyncio.gather(*(one() for _ in range(50)))

    answers = asyncio.run(all_of_them())
    assert len(answers) == 50
    fetched = [ln for ln in shared_server.log_text().splitlines() if "LoRA adapter 'conc' fetched" in ln]
    assert len(fetched) == 1, fetched


@pytest.mark.parametrize("name", ["pickled", "wrongbase", "notlora", "..", "a%2Fb", "café", "x" * 200])
def test_refusals_are_not_found_and_server_keeps_serving(openai_client, shared_server, name):
    for _ in range(2):
        with pytest.raises(openai.NotFoundError):
            complete(openai_client, name, n=2)
    assert len(complete(openai_client, "tiny", n=2)) == 2
    if name in ("pickled", "wrongbase", "notlora"):
        warnings = [ln for ln in shared_server.log_text().splitlines()
                    if "WARNING" in ln and f"'{name}'" in ln and "lora" in ln.lower()]
        assert len(warnings) == 1, f"one warning per adapter and reason: {warnings}"


def test_hostile_patterns_refused_while_plain_requests_keep_their_latency(openai_client, shared_server):
    """Issue 19: adapters whose ``target_modules`` / ``rank_pattern`` backtrack
    exponentially under Python's ``re`` are refused, and a plain request sent at
    the same moment is not delayed by more than 100 ms."""
    import statistics
    import threading
    import time

    def plain() -> float:
        start = time.perf_counter()
        complete(openai_client, "tiny", n=2)
        return time.perf_counter() - start

    plain()  # warm
    baseline = statistics.median(plain() for _ in range(5))
    refused: dict[str, float] = {}

    def hostile(name: str) -> None:
        start = time.perf_counter()
        with pytest.raises(openai.NotFoundError):
            complete(openai_client, name, n=2)
        refused[name] = time.perf_counter() - start

    threads = [threading.Thread(target=hostile, args=(n,)) for n in ("hostile-target", "hostile-rank")]
    for t in threads:
        t.start()
    during = [plain() for _ in range(3)]
    for t in threads:
        t.join()
    assert set(refused) == {"hostile-target", "hostile-rank"}
    assert statistics.median(during) < baseline + 0.1, (
        f"plain request {[round(d * 1000) for d in during]} ms during the hostile resolves, "
        f"{baseline * 1000:.0f} ms before")
    log = shared_server.log_text()
    for name in refused:
        lines = [ln for ln in log.splitlines() if f"'{name}'" in ln and "target_modules / rank_pattern" in ln]
        assert lines, f"no refusal naming the patterns for {name}"
    assert len(complete(openai_client, "tiny", n=2)) == 2
