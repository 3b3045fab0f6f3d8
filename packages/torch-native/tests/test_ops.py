"""The platform's custom ops against vLLM's own PyTorch-native versions (no engine)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def vllm_ctx():
    from vllm.config import VllmConfig, set_current_vllm_config

    with set_current_vllm_config(VllmConfig()):
        yield


def test_rms_norm_and_fused_add(vllm_ctx):
    from vllm_plugin_torch_native.ops import CALLS, TorchNativeRMSNorm

    op = TorchNativeRMSNorm(64, eps=1e-5)
    with torch.no_grad():
        op.weight.copy_(torch.randn(64))
    x, r = torch.randn(5, 64), torch.randn(5, 64)
    before = dict(CALLS)
    torch.testing.assert_close(op.forward_oot(x), op.forward_native(x.clone()))
    out, res = op.forward_oot(x, r)
    ref_out, ref_res = op.forward_native(x.clone(), r.clone())
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(res, ref_res)
    assert CALLS["rms_norm"] == before.get("rms_norm", 0) + 1
    assert CALLS["fused_add_rms_norm"] == before.get("fused_add_rms_norm", 0) + 1


def test_rms_norm_bfloat16_activation_with_a_float32_weight(vllm_ctx):
    """A norm built in float32 (some models' q/k norms) over bfloat16
    activations returns bfloat16, as vLLM's native op, with equal values."""
    from vllm_plugin_torch_native.ops import TorchNativeRMSNorm

    op = TorchNativeRMSNorm(64, eps=1e-5, dtype=torch.float32)
    with torch.no_grad():
        op.weight.copy_(torch.randn(64))
    x, r = torch.randn(5, 64).bfloat16(), torch.randn(5, 64).bfloat16()
    got, want = op.forward_oot(x), op.forward_native(x.clone())
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)
    out, res = op.forward_oot(x, r)
    ref_out, ref_res = op.forward_native(x.clone(), r.clone())
    assert out.dtype == ref_out.dtype and res.dtype == ref_res.dtype
    torch.testing.assert_close(out, ref_out)


def test_silu_and_mul(vllm_ctx):
    from vllm_plugin_torch_native.ops import TorchNativeSiluAndMul

    op = TorchNativeSiluAndMul()
    x = torch.randn(3, 2, 32)
    torch.testing.assert_close(op.forward_oot(x), op.forward_native(x))


@pytest.mark.parametrize(("neox", "rotary_dim"), [(True, 64), (False, 64), (True, 32)])
def test_rotary_embedding(vllm_ctx, neox, rotary_dim):
    from vllm_plugin_torch_native.ops import TorchNativeRotaryEmbedding

    op = TorchNativeRotaryEmbedding(64, rotary_dim, 512, 10000.0, neox, torch.float32)
    pos = torch.tensor([0, 5, 17, 300])
    q, k = torch.randn(4, 4 * 64), torch.randn(4, 2 * 64)
    got_q, got_k = op.forward_oot(pos, q.clone(), k.clone())
    ref_q, ref_k = op.forward_native(pos, q.clone(), k.clone())
    torch.testing.assert_close(got_q, ref_q)
    torch.testing.assert_close(got_k, ref_k)
