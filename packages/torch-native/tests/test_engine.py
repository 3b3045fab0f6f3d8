"""Real engines: this platform against vLLM's built-in CPU platform.

Three engine starts in all, each in its own interpreter:

1. ``VLLM_PLUGIN_TORCH_NATIVE=1`` (``_run_engine.py``): the platform, its
   attention backend, ops and GEMM, on the fixture Llama and, when
   vllm-plugin-models is installed, on its NanoChat (GQA) in the same process,
   then an engine with ``dtype=float16``, which must be refused at start;
2. the variable unset: the same on vLLM's ``CpuPlatform`` (the reference);
3. ``vllm serve`` with the variable set and ``--tensor-parallel-size 2``,
   queried with the ``openai`` client.

The offline runs use prefix caching, chunked prefill (max_num_batched_tokens=64,
a 150-token prompt), block size 32, batch sizes 1, 2 and 6, prompt lengths 3 to
150, and a repeated batch that hits the prefix cache.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_plugin_core.testing.platform import vllm_has_cpu_kernels
from vllm_plugin_torch_native import PLATFORM_PATH

pytestmark = pytest.mark.engine

SCRIPT = Path(__file__).with_name("_run_engine.py")
#: top-5 logprobs, fp32 on both sides; measured max difference ~2e-5.
LOGPROB_TOL = 1e-3


def nanochat_model() -> Path | None:
    """vllm-plugin-models' NanoChat test checkpoint, or None when it is not installed."""
    try:
        from vllm_plugin_models.testing import build_nanochat
    except ImportError:
        return None
    return build_nanochat("gqa-3l")


def run_engine(model: Path, out: Path, *, native: bool, nanochat: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGIN_TORCH_NATIVE", "VLLM_PLUGINS")}
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if native:
        env["VLLM_PLUGIN_TORCH_NATIVE"] = "1"
    argv = [sys.executable, str(SCRIPT), str(model), str(out), *([str(nanochat)] if nanochat else [])]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    if not out.exists():
        raise AssertionError(f"engine script crashed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(out.read_text())
    result["log"] = proc.stdout[-4000:] + proc.stderr[-4000:]
    return result


def same_greedy(a: dict, b: dict, where: str) -> float:
    """Assert equal tokens and mostly shared top-5s; return the largest logprob gap."""
    assert a["tokens"] == b["tokens"], f"{where}: {a['tokens']} != {b['tokens']}"
    worst = 0.0
    for step, (la, lb) in enumerate(zip(a["logprobs"], b["logprobs"], strict=True)):
        shared = set(la) & set(lb)
        assert len(shared) >= 4, f"{where} step {step}: top-5 differ {la} {lb}"
        worst = max([worst, *(abs(la[tok] - lb[tok]) for tok in shared)])
    return worst


def transformers_reference(model: Path, nanochat: Path | None) -> dict:
    """transformers' greedy generate on the engine script's prompts (no engine start)."""
    from _hf_reference import hf_runs

    all6 = list(range(6))
    runs = hf_runs(model, [("b1", [0]), ("b2", [1, 2]), ("b6", all6), ("b6_again", all6)])
    if nanochat is not None:
        runs.update(hf_runs(nanochat, [("nanochat_b6", all6), ("nanochat_b6_again", all6)]))
    return {"ok": True, "kind": "transformers", "runs": runs}


@pytest.fixture(scope="module")
def runs(tiny_causal_lm, tmp_path_factory):
    """The platform's run and the reference: vLLM's CPU platform on CPU builds,
    transformers where the vLLM build has no CPU kernels (CUDA wheels)."""
    tmp = tmp_path_factory.mktemp("engines")
    nanochat = nanochat_model()
    native = run_engine(tiny_causal_lm, tmp / "native.json", native=True, nanochat=nanochat)
    if vllm_has_cpu_kernels():
        reference = run_engine(tiny_causal_lm, tmp / "cpu.json", native=False, nanochat=nanochat)
        reference["kind"] = "cpu"
    else:
        reference = transformers_reference(tiny_causal_lm, nanochat)
    for r in (native, reference):
        assert r["ok"], r.get("traceback", "") + r.get("log", "")
    return native, reference


def cpu_reference(reference: dict) -> dict:
    if reference["kind"] != "cpu":
        pytest.skip("this vLLM build has no CPU platform to compare with (a CUDA wheel without "
                    "GPU); the platform's output is compared with transformers instead")
    return reference


def test_no_op_of_vllm_compiled_extensions_is_dispatched(runs):
    """No ``torch.ops._C*`` (or other vLLM extension) op is called in the
    platform's engine process (Llama, NanoChat and the refused float16 start),
    and no vLLM extension library is loaded there (test_op_guard.py shows the
    guard records such calls)."""
    native, _ = runs
    guard = native["compiled_ops"]
    assert guard["calls"] == {}, f"vLLM compiled ops called on torch_native: {guard['calls']}"
    assert guard["libraries"] == [], guard["libraries"]  # any .so under vllm/ (cumem_allocator, fa2 ...)


def test_weights_reload_in_place_on_the_platform(runs):
    """vLLM's reload_weights (from the checkpoint) writes into the packed
    weights: the same greedy tokens after it as before."""
    native, _ = runs
    assert "reload_error" not in native, native.get("reload_error")
    after = native["after_reload"]
    assert [o["tokens"] for o in after] == [o["tokens"] for o in native["runs"]["b2"]]


def test_platform_in_main_process_and_engine(runs):
    native, reference = runs
    assert native["main_platform"] == PLATFORM_PATH
    assert native["engine"]["platform"] == PLATFORM_PATH
    reference = cpu_reference(reference)
    assert reference["main_platform"] == reference["engine"]["platform"] == "vllm.platforms.cpu.CpuPlatform"


def test_own_attention_backend_and_ops_are_used(runs):
    native, reference = runs
    assert native["engine"]["attn_impls"] == ["vllm_plugin_torch_native.attention.TorchNativeAttentionImpl"]
    assert set(native["engine"]["op_classes"]) == {
        "vllm_plugin_torch_native.ops.TorchNativeRMSNorm",
        "vllm_plugin_torch_native.ops.TorchNativeRotaryEmbedding",
        "vllm_plugin_torch_native.ops.TorchNativeSiluAndMul",
    }
    calls = native["op_calls"]
    for op in ("rms_norm", "fused_add_rms_norm", "silu_and_mul", "rotary_embedding"):
        assert calls.get(op, 0) > 0, f"vLLM never dispatched to {op}: {calls}"
    assert native["attn_calls"]["forward"] > 0 and native["attn_calls"]["kv_cache_update"] > 0
    # the platform's own GEMM: every linear layer and the LM head (the input
    # embedding keeps vLLM's lookup)
    assert native["engine"]["linear_methods"] == [
        "vllm.model_executor.layers.vocab_parallel_embedding.UnquantizedEmbeddingMethod",
        "vllm_plugin_torch_native.linear.TorchNativeLMHeadMethod",
        "vllm_plugin_torch_native.linear.TorchNativeLinearMethod",
    ]
    assert native["linear_calls"]["linear"] > 0
    # the test model's LM head is not tied: held once (packed), its [vocab, hidden] weight released
    assert native["engine"]["lm_head_weight_numel"] == [0]
    # vLLM 0.34+: the platform's runner (vLLM's standalone CPU runner) with
    # every step op of its modules from cpu_ops.py, none from vllm._cpu_ops
    engine = native["engine"]
    if engine["runner_step_ops"]:
        assert engine["runner"].startswith("vllm_plugin_torch_native.runner."), engine["runner"]
        assert "vllm.v1.worker.cpu.standalone_model_runner.StandaloneCPUModelRunner" in engine["runner_bases"]
        assert engine["runner_step_ops"] == ["vllm_plugin_torch_native.cpu_ops"]
    # the reference never touches this package's code
    reference = cpu_reference(reference)
    assert reference["engine"]["op_classes"] == []
    assert not any("torch_native" in m for m in reference["engine"]["linear_methods"])
    assert reference["engine"]["attn_impls"] == ["vllm.v1.attention.backends.cpu_attn.CPUAttentionBackendImpl"]


def test_greedy_output_and_logprobs_match_reference(runs):
    """Greedy tokens equal, top-5 logprobs within 1e-3 (fp32): against vLLM's CPU
    platform on CPU builds, against transformers' generate elsewhere."""
    native, reference = runs
    assert native["runs"].keys() == reference["runs"].keys()
    worst = 0.0
    for name, outs in native["runs"].items():
        for i, (a, b) in enumerate(zip(outs, reference["runs"][name], strict=True)):
            worst = max(worst, same_greedy(a, b, f"{name}[{i}]"))
    assert worst < LOGPROB_TOL, worst


def test_nanochat_runs_on_the_platform(runs):
    """NanoChat (vllm-plugin-models: its own norms and rotary, vLLM's Attention
    and linear layers) through this platform's attention and GEMM; its tokens
    and logprobs are compared with the CPU platform's in the test above."""
    native, _ = runs
    if "engine_nanochat" not in native:
        pytest.skip("vllm-plugin-models is not installed here: pip install vllm-plugin-models "
                    "(the nox test sessions install it)")
    engine = native["engine_nanochat"]
    assert engine["attn_impls"] == ["vllm_plugin_torch_native.attention.TorchNativeAttentionImpl"]
    assert "vllm_plugin_torch_native.linear.TorchNativeLinearMethod" in engine["linear_methods"]
    assert {"nanochat_b6", "nanochat_b6_again"} <= native["runs"].keys()


def test_served_with_tensor_parallel_2_matches_reference(runs, tiny_causal_lm, vllm_server_factory):
    """``vllm serve`` on this platform with tensor parallelism 2, queried with
    the ``openai`` client: the front end, the engine core and two workers run
    in their own processes (vLLM's CPU communicator between the workers);
    greedy tokens and top-5 logprobs equal the CPU platform's single-worker
    offline run of the same prompts."""
    import openai
    from _run_engine import prompts

    _, reference = runs
    server = vllm_server_factory(
        tiny_causal_lm, ["--max-model-len", "512", "--block-size", "32", "--enable-prefix-caching",
                         "--tensor-parallel-size", "2"],
        env={"VLLM_PLUGIN_TORCH_NATIVE": "1"}, served_model_name="tiny")
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.completions.create(model="tiny", prompt=prompts(), max_tokens=12, temperature=0,
                                  logprobs=5, extra_body={"return_tokens_as_token_ids": True})
    worst = 0.0
    for choice in r.choices:
        served = {"tokens": [int(t.split(":")[1]) for t in choice.logprobs.tokens],
                  "logprobs": [{t.split(":")[1]: v for t, v in top.items()}
                               for top in choice.logprobs.top_logprobs]}
        worst = max(worst, same_greedy(served, reference["runs"]["b6"][choice.index],
                                       f"served b6[{choice.index}]"))
    assert worst < LOGPROB_TOL, worst
    log = server.log_text()
    # only registered where this platform is vLLM's current platform: the engine
    # core and both workers (vLLM configures logging too late to show the front end's)
    pids = re.findall(r"vllm-plugin-torch-native registered \(pid (\d+)\): RMSNorm->TorchNativeRMSNorm", log)
    assert len(set(pids)) >= 3, log[-3000:]
    assert log.count("linear layers use the platform's GEMM") == 2, log[-3000:]  # one per worker


def test_unsupported_dtype_fails_at_start(runs):
    """float16 (the native run's process, after its generations): refused with
    the platform's error while vLLM builds the engine configuration."""
    fp16 = runs[0]["fp16"]
    assert not fp16["started"], "an engine started with dtype=float16"
    # (vLLM's pydantic VllmConfig wraps the platform's ValueError in a ValidationError)
    assert "torch_native platform" in fp16["error"] and "dtype float16 is not supported" in fp16["error"], fp16


def test_sampling_paths_of_the_runner(runs):
    """Beyond greedy decoding (vLLM 0.34: the runner's own Gumbel sampling and
    logit-bias ops): a seeded request gives the same tokens alone and in a
    mixed batch; allowed_token_ids, logit_bias and min_tokens do what they
    say; prompt logprobs are finite and score each prompt token."""
    import math

    native, _ = runs
    got = native["sampling"]
    assert got["seeded_alone"] == got["seeded_batched"]
    assert len(got["seeded_alone"]) == 10
    assert got["allowed"] and set(got["allowed"]) <= {17, 29}
    assert got["biased"] == [41, 41, 41]
    held = got["min_tokens_held"]
    assert got["greedy_first"] not in held[:3], held  # the stop token is masked before min_tokens
    assert len(held) >= 4
    lps = got["prompt_logprobs"]
    assert lps[0] is None and len(lps) == len(got["prompt"])
    for pos, entry in enumerate(lps[1:], start=1):
        assert str(got["prompt"][pos]) in entry, pos  # the actual prompt token is scored
        assert all(math.isfinite(v) for v in entry.values())

