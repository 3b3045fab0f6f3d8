"""The main job: every installed plugin working in a real vLLM, on models
built here (no hub, no internet).

1. builds (or reuses from the cache) a tiny Llama with a trained tokenizer;
2. starts ``vllm serve`` with the plugins installed and the stats logger on;
3. shows each sampler changing generation through ``vllm_xargs`` with the
   official ``openai`` client, and a bad argument answered with HTTP 400;
   and a LoRA adapter loaded on demand by vllm-plugin-lora-store from a
   directory store, named as the request's ``model``;
4. stops the server with SIGTERM, prints the summary table of the JSON Lines
   stats it wrote and draws their chart (``vllm-plugin-stats summary/plot``);
5. runs a NanoChat checkpoint (vllm-plugin-models) offline, once under its
   own architecture name and once renamed through an alias, next to
   transformers' greedy tokens for the same prompt;
6. runs the same Llama on the torch_native platform (vllm-plugin-torch-native,
   ``VLLM_PLUGIN_TORCH_NATIVE=1``) next to vLLM's CPU platform;
7. embeds a document longer than a tiny BERT's context in one request with
   vllm-plugin-chunked-embeddings.

Each offline part runs in its own process (vLLM spawns processes; a platform
is chosen once per process).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    import openai

    from vllm_plugin_core.testing.models import build_causal_lm, build_lora_adapter
    from vllm_plugin_core.testing.server import VllmServer

    t0 = time.monotonic()
    model = build_causal_lm()
    print(f"[demo] model: {model} ({time.monotonic() - t0:.1f} s)")
    work = Path(tempfile.mkdtemp(prefix="vllm-plugins-demo-"))
    stats = work / "stats.jsonl"
    store = work / "adapters"
    shutil.copytree(build_lora_adapter(model), store / "my-adapter",
                    ignore=shutil.ignore_patterns("spec.json", ".complete"))
    env = {"VLLM_PLUGIN_STATS_PATH": str(stats), "VLLM_PLUGIN_STATS_REQUESTS": "1",
           "VLLM_LOG_STATS_INTERVAL": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
           "VLLM_PLUGIN_LORA_STORE_URI": str(store),
           "VLLM_PLUGIN_LORA_STORE_CACHE_DIR": str(work / "lora-cache")}
    server = VllmServer(model, ["--max-model-len", "512", "--enable-lora", "--max-lora-rank", "8"], env,
                        served_model_name="tiny")
    print("[demo] starting vllm serve (about a minute on 2 CPU cores) ...")
    try:
        server.start()
    except Exception as exc:
        print(f"[demo] server failed: {exc}")
        return 1
    print(f"[demo] vllm serve ready at {server.base_url} after {server.startup_seconds:.0f} s")
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    prompt = [7, 8, 9, 10, 7, 8, 9, 10, 7, 8]  # token ids: a repetitive prompt

    def tokens(model_name: str, xargs: dict | None = None) -> list[int]:
        extra = {"ignore_eos": True, "return_tokens_as_token_ids": True,
                 **({"vllm_xargs": xargs} if xargs else {})}
        r = client.completions.create(model=model_name, prompt=prompt, max_tokens=16, temperature=0,
                                      logprobs=1, extra_body=extra)
        return [int(t.split(":")[1]) for t in r.choices[0].logprobs.tokens]

    try:
        plain = tokens("tiny")
        print(f"[demo] samplers  {'plain greedy':<24} -> {plain}")
        for label, xargs in [
            ("no_repeat_ngram_size=1", {"no_repeat_ngram_size": 1}),
            ("DRY multiplier=50", {"dry_multiplier": 50.0, "dry_allowed_length": 1}),
            ("XTC threshold=0.05 p=1", {"xtc_threshold": 0.05, "xtc_probability": 1.0}),
        ]:
            got = tokens("tiny", xargs)
            print(f"[demo] samplers  {label:<24} -> {got}{'' if got != plain else '  (same as plain: nothing here to penalise)'}")
        print(f"[demo] lora      {'model=my-adapter':<24} -> {tokens('my-adapter')}  "
              "(fetched from the directory store on first use)")
        try:
            client.completions.create(model="tiny", prompt=prompt, max_tokens=4,
                                      extra_body={"vllm_xargs": {"dry_multiplier": 1.0, "dry_allowed_length": 2**31}})
        except openai.BadRequestError as err:
            print(f"[demo] samplers  bad argument -> HTTP {err.status_code}: {err.message[:120]}")
        time.sleep(1.5)
    finally:
        server.stop(signal.SIGTERM)
    stats_demo(stats, work / "stats-report.png")
    nanochat_demo()
    torch_native_demo(model, prompt, plain)
    chunked_embeddings_demo()
    print(f"[demo] done in {time.monotonic() - t0:.0f} s")
    return 0


def stats_demo(stats: Path, chart: Path) -> None:
    """The JSON Lines file the server wrote: its record types, the summary
    table (``vllm-plugin-stats summary``) and the chart (``... plot``)."""
    from vllm_plugin_stats import summary

    kinds: dict[str, int] = {}
    for line in stats.read_text().splitlines():
        kind = json.loads(line)["type"]
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"[demo] stats     {stats}: {kinds}")
    runs = summary.summarize_files([stats], lambda msg: print(f"[demo] stats     warning: {msg}"))
    table = "\n\n".join(summary.format_table(run, i) for i, run in enumerate(runs, 1))
    for line in table.splitlines():
        print(f"[demo]   {line}")
    try:
        from vllm_plugin_stats import plot

        plot.plot_files([stats], chart, print, table)
        print(f"[demo] stats     chart: {chart}  (vllm-plugin-stats plot {stats} -o {chart.name})")
    except ImportError as exc:
        print(f"[demo] stats     no chart: {exc}")


def nanochat_demo() -> None:
    """NanoChat through vllm-plugin-models, offline, in a child process with an alias."""
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



OFFLINE = """
import json, sys
from vllm import SamplingParams
from vllm_plugin_core.testing.pytest_plugin import make_llm
if __name__ == "__main__":
    model, prompt = sys.argv[1], json.loads(sys.argv[2])
    llm = make_llm(model)
    o = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=16, temperature=0,
                     ignore_eos=True), use_tqdm=False)
    from vllm.platforms import current_platform
    print("RESULT", json.dumps({"tokens": list(o[0].outputs[0].token_ids),
                                "platform": type(current_platform).__name__}))
"""


def run_child(code: str, args: list[str], env: dict[str, str]) -> dict | str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", **env})
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    return json.loads(line[7:]) if line else "FAILED: " + out.stderr[-800:]


def torch_native_demo(model: Path, prompt: list[int], cpu_tokens: list[int]) -> None:
    res = run_child(OFFLINE, [str(model), json.dumps(prompt)], {"VLLM_PLUGIN_TORCH_NATIVE": "1"})
    if isinstance(res, str):
        print(f"[demo] platform  torch_native -> {res}")
        return
    same = "same as" if res["tokens"] == cpu_tokens else "DIFFERENT from"
    print(f"[demo] platform  {res['platform']:<24} -> {res['tokens']}  ({same} vLLM's CPU platform)")


CHUNKED = """
import json, sys
from vllm_plugin_core.testing.pytest_plugin import make_llm
if __name__ == "__main__":
    llm = make_llm(sys.argv[1], max_model_len=128, io_processor_plugin="chunked_embeddings")
    doc = " ".join(["Plugins extend vLLM without forking it."] * 120)
    out = llm.encode({"data": {"input": [doc, "A short one."], "chunk_tokens": 100, "overlap_tokens": 10}},
                     pooling_task="plugin", use_tqdm=False)[0].outputs
    print("RESULT", json.dumps(out if isinstance(out, dict) else getattr(out, "__dict__", str(out)),
                               default=str))
"""


def chunked_embeddings_demo() -> None:
    from vllm_plugin_core.testing.models import build_embedding_model

    res = run_child(CHUNKED, [str(build_embedding_model())], {})
    if isinstance(res, str) or "data" not in res:
        print(f"[demo] chunked   -> {str(res)[:600]}")
        return
    for item in res["data"]:
        print(f"[demo] chunked   document {item['index']}: {item['num_tokens']} tokens in "
              f"{item['num_chunks']} chunks -> one {len(item['embedding'])}-dim embedding")


if __name__ == "__main__":
    sys.exit(main())
