"""The main job: every installed plugin working in a real vLLM, on models
built here (no hub, no internet).

1. builds (or reuses from the cache) a tiny Llama with a trained tokenizer;
2. starts ``vllm serve`` with the plugins installed and the stats logger on;
3. shows each sampler changing generation through ``vllm_xargs`` with the
   official ``openai`` client, and a bad argument answered with HTTP 400;
4. stops the server with SIGTERM and prints the JSON Lines stats it wrote;
5. serves a NanoChat checkpoint (vllm-plugin-models) offline, once under its
   own architecture name and once renamed through an alias, next to
   transformers' greedy tokens for the same prompt.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    import openai

    from vllm_plugin_core.testing.models import build_causal_lm
    from vllm_plugin_core.testing.server import VllmServer

    t0 = time.monotonic()
    model = build_causal_lm()
    print(f"[demo] model: {model} ({time.monotonic() - t0:.1f} s)")
    stats = Path(tempfile.mkdtemp(prefix="vllm-plugins-demo-")) / "stats.jsonl"
    env = {"VLLM_PLUGIN_STATS_PATH": str(stats), "VLLM_PLUGIN_STATS_REQUESTS": "1",
           "VLLM_LOG_STATS_INTERVAL": "1"}
    server = VllmServer(model, ["--max-model-len", "512"], env, served_model_name="tiny")
    print("[demo] starting vllm serve (about a minute on 2 CPU cores) ...")
    try:
        server.start()
    except Exception as exc:
        print(f"[demo] server failed: {exc}")
        return 1
    print(f"[demo] vllm serve ready at {server.base_url} after {server.startup_seconds:.0f} s")
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    prompt = "again and again and again"
    try:
        for label, xargs in [
            ("plain greedy", None),
            ("no_repeat_ngram_size=1", {"no_repeat_ngram_size": 1}),
            ("DRY multiplier=2", {"dry_multiplier": 2.0, "dry_allowed_length": 1}),
            ("XTC threshold=0.05 p=1", {"xtc_threshold": 0.05, "xtc_probability": 1.0}),
        ]:
            extra = {"ignore_eos": True, **({"vllm_xargs": xargs} if xargs else {})}
            r = client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0,
                                          extra_body=extra)
            print(f"[demo] samplers  {label:<24} -> {r.choices[0].text!r}")
        try:
            client.completions.create(model="tiny", prompt=prompt, max_tokens=4,
                                      extra_body={"vllm_xargs": {"xtc_threshold": 0.9, "xtc_probability": 1}})
        except openai.BadRequestError as err:
            print(f"[demo] samplers  bad argument -> HTTP {err.status_code}: {err.message[:120]}")
        time.sleep(1.5)
    finally:
        server.stop(signal.SIGTERM)
    print(f"[demo] stats     {stats}:")
    for line in stats.read_text().splitlines():
        rec = json.loads(line)
        keys = {k: rec[k] for k in list(rec)[:8]}
        print(f"[demo]   {rec['type']:<8} {json.dumps(keys)[:150]}")
    nanochat_demo()
    print(f"[demo] done in {time.monotonic() - t0:.0f} s")
    return 0


def nanochat_demo() -> None:
    """NanoChat through vllm-plugin-models, offline, in a child process with an alias."""
    import os
    import subprocess

    import torch
    from transformers import AutoModelForCausalLM

    from vllm_plugin_models.testing import build_nanochat, renamed_copy

    path = build_nanochat("gqa-3l")
    renamed = renamed_copy(path, Path(tempfile.mkdtemp()) / "acme", "AcmeChatForCausalLM")
    prompt = [11, 42, 7, 99, 42, 7]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    print(f"[demo] models    transformers NanoChat greedy      -> {ref[0, len(prompt):].tolist()}")
    code = (
        "from vllm import SamplingParams\n"
        "from vllm_plugin_core.testing.pytest_plugin import make_llm\n"
        "if __name__ == '__main__':\n"
        "    import sys\n"
        "    llm = make_llm(sys.argv[1])\n"
        f"    o = llm.generate([{{'prompt_token_ids': {prompt!r}}}], SamplingParams(max_tokens=12, temperature=0,"
        " ignore_eos=True), use_tqdm=False)\n"
        "    print('TOKENS', list(o[0].outputs[0].token_ids))\n"
    )
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_PLUGIN_MODELS_ALIASES": "AcmeChatForCausalLM=NanoChatForCausalLM"}
    for label, target in (("vLLM NanoChatForCausalLM", path), ("vLLM alias AcmeChatForCausalLM", renamed)):
        out = subprocess.run([sys.executable, "-c", code, str(target)], env=env, capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("TOKENS")), None)
        print(f"[demo] models    {label:<32} -> {line[7:] if line else 'FAILED: ' + out.stderr[-500:]}")


if __name__ == "__main__":
    sys.exit(main())
