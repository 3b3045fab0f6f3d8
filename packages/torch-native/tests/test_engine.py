"""Real engines: this platform against vLLM's built-in CPU platform.

Three engine starts in all, each in its own interpreter (``_run_engine.py``)
so that the two platforms never share a process:

1. ``VLLM_PLUGIN_TORCH_NATIVE=1``: the platform, its attention backend and ops;
2. the variable unset: vLLM's ``CpuPlatform`` (the reference);
3. ``VLLM_PLUGIN_TORCH_NATIVE=1`` with ``dtype=float16``: refused at start.

Both runs use prefix caching, chunked prefill (max_num_batched_tokens=64, a
150-token prompt), block size 32, batch sizes 1, 2 and 6, prompt lengths 3 to
150, and a repeated batch that hits the prefix cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_plugin_torch_native import PLATFORM_PATH

pytestmark = pytest.mark.engine

SCRIPT = Path(__file__).with_name("_run_engine.py")
#: top-5 logprobs, fp32 on both sides; measured max difference ~2e-5.
LOGPROB_TOL = 1e-3


def run_engine(model: Path, out: Path, *, native: bool, dtype: str = "float32") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGIN_TORCH_NATIVE", "VLLM_PLUGINS")}
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if native:
        env["VLLM_PLUGIN_TORCH_NATIVE"] = "1"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(model), str(out), dtype], env=env,
                          capture_output=True, text=True, timeout=900)
    if not out.exists():
        raise AssertionError(f"engine script crashed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(out.read_text())
    result["log"] = proc.stdout[-4000:] + proc.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def runs(tiny_causal_lm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engines")
    native = run_engine(tiny_causal_lm, tmp / "native.json", native=True)
    reference = run_engine(tiny_causal_lm, tmp / "cpu.json", native=False)
    for r in (native, reference):
        assert r["ok"], r.get("traceback", "") + r["log"]
    return native, reference


def test_platform_in_main_process_and_engine(runs):
    native, reference = runs
    assert native["main_platform"] == PLATFORM_PATH
    assert native["engine"]["platform"] == PLATFORM_PATH
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
    # the reference never touches this package's code
    assert reference["engine"]["op_classes"] == []
    assert reference["engine"]["attn_impls"] == ["vllm.v1.attention.backends.cpu_attn.CPUAttentionBackendImpl"]


def test_greedy_output_and_logprobs_match_builtin_cpu(runs):
    native, reference = runs
    assert native["runs"].keys() == reference["runs"].keys()
    worst = 0.0
    for name, outs in native["runs"].items():
        for i, (a, b) in enumerate(zip(outs, reference["runs"][name], strict=True)):
            assert a["tokens"] == b["tokens"], f"{name}[{i}]: {a['tokens']} != {b['tokens']}"
            for step, (la, lb) in enumerate(zip(a["logprobs"], b["logprobs"], strict=True)):
                shared = set(la) & set(lb)
                assert len(shared) >= 4, f"{name}[{i}] step {step}: top-5 differ {la} {lb}"
                for tok in shared:
                    worst = max(worst, abs(la[tok] - lb[tok]))
    assert worst < LOGPROB_TOL, worst


def test_unsupported_dtype_fails_at_start(tiny_causal_lm, tmp_path):
    r = run_engine(tiny_causal_lm, tmp_path / "fp16.json", native=True, dtype="float16")
    assert not r["ok"]
    assert "torch_native platform" in r["error"] and "dtype float16 is not supported" in r["error"], r["error"]
    assert "runs" not in r  # nothing was generated: it failed while building the engine
