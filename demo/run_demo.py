"""The main job: every installed plugin working in a real vLLM, on models
built here (no hub, no internet).

1. builds (or reuses from the cache) a tiny Llama with a trained tokenizer;
2. starts ``vllm serve`` with the plugins installed and the stats logger on;
3. shows each sampler changing generation through ``vllm_xargs`` with the
   official ``openai`` client, and a bad argument answered with HTTP 400;
4. stops the server with SIGTERM and prints the JSON Lines stats it wrote.
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
    print(f"[demo] done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
