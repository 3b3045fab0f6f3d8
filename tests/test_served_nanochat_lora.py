"""vllm-plugin-models with vllm-plugin-lora-store in one ``vllm serve
--enable-lora`` of a NanoChat checkpoint whose config names a renamed
architecture (loaded through an alias), queried with the ``openai`` client:

* the base model's greedy tokens equal transformers' NanoChat on the original
  checkpoint, and the registration ran once per process;
* a peft adapter made for transformers' ``NanoChatForCausalLM``, fetched by
  lora-store from a local directory when a client names it as ``model``:
  greedy tokens equal transformers + peft with the same adapter;
* an adapter for modules NanoChat lacks: HTTP 400, the server log names the
  modules, and the server keeps serving.

One server start covers all of it (the alias test of the models package lives
here so that serving NanoChat costs one start per vLLM version).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import openai
import pytest

from vllm_plugin_models.testing import (
    build_nanochat,
    build_nanochat_lora,
    hf_greedy,
    hf_peft_greedy,
    renamed_copy,
    retargeted_copy,
)

pytestmark = pytest.mark.engine

SHAPE = "mqa-1l"
N = 12
#: Modules NanoChat does not have (Llama's MLP names).
FOREIGN = {"fc1": "gate_proj", "fc2": "down_proj"}


def prompts() -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(2)
    base = torch.randint(3, 500, (40,), generator=g).tolist()
    return [base[:5], base[:23], [*base, 7, 8, 9]]


def to_store(adapter: Path, store: Path, name: str, served: Path) -> None:
    """Put the adapter's two files in ``<store>/<name>/``, naming the served
    checkpoint as its base (what a user who trained on it would have)."""
    dst = store / name
    dst.mkdir(parents=True)
    shutil.copy(adapter / "adapter_model.safetensors", dst)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(served)}))


@pytest.fixture(scope="module")
def nano_server(vllm_server_factory, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nano")
    path = build_nanochat(SHAPE)
    renamed = renamed_copy(path, tmp / "acme", "AcmeChatForCausalLM")
    adapter = build_nanochat_lora(path)
    store = tmp / "store"
    to_store(adapter, store, "nano-lora", renamed)
    to_store(retargeted_copy(adapter, tmp / "foreign", FOREIGN), store, "nano-foreign", renamed)
    server = vllm_server_factory(
        renamed, ["--max-model-len", "512", "--enable-lora", "--max-lora-rank", "8", "--max-loras", "1"],
        served_model_name="nano",
        env={"VLLM_PLUGIN_MODELS_ALIASES": "AcmeChatForCausalLM=NanoChatForCausalLM",
             "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
             "VLLM_PLUGIN_LORA_STORE_URI": str(store),
             "VLLM_PLUGIN_LORA_STORE_CACHE_DIR": str(tmp / "lora-cache")})
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
    return server, client, path, adapter


def complete(client, model: str, prompt: list[int]) -> list[int]:
    r = client.completions.create(model=model, prompt=prompt, max_tokens=N, temperature=0, logprobs=1,
                                  extra_body={"return_tokens_as_token_ids": True, "ignore_eos": True})
    return [int(t.split(":")[1]) for t in r.choices[0].logprobs.tokens]


def test_served_through_an_alias_matches_transformers(nano_server):
    server, client, path, _ = nano_server
    want, _ = hf_greedy(path, prompts(), N)
    assert [complete(client, "nano", p) for p in prompts()] == want
    pids = re.findall(r"vllm-plugin-models registered \(pid (\d+)\): NanoChatForCausalLM, "
                      r"AcmeChatForCausalLM->NanoChatForCausalLM", server.log_text())
    # Serving the renamed checkpoint needs the registration in the front end
    # (architecture resolution) and the engine core (model load); vLLM 0.31
    # configures logging after the front end loads plugins, so only assert
    # the lines that are printed are one per process.
    assert pids and len(pids) == len(set(pids)), "once per process"


def test_peft_adapter_from_lora_store_matches_transformers_with_peft(nano_server):
    _, client, path, adapter = nano_server
    want = hf_peft_greedy(path, adapter, prompts(), N)
    got = [complete(client, "nano-lora", p) for p in prompts()]
    assert got == want
    assert got != hf_greedy(path, prompts(), N)[0], "the adapter must change the output"


def test_adapter_for_modules_nanochat_lacks_is_400_and_server_keeps_serving(nano_server):
    server, client, path, adapter = nano_server
    for _ in range(2):
        with pytest.raises(openai.BadRequestError, match="nano-foreign"):
            complete(client, "nano-foreign", prompts()[0])
    refusals = [ln for ln in server.log_text().splitlines() if "nano-foreign" in ln and "gate_proj" in ln]
    assert refusals and all("down_proj" in ln for ln in refusals), "the log names the modules"
    assert complete(client, "nano", prompts()[0]) == hf_greedy(path, prompts()[:1], N)[0][0]
    assert complete(client, "nano-lora", prompts()[0]) == hf_peft_greedy(path, adapter, prompts()[:1], N)[0]
