"""The platform's GEMM (``mm`` over the transposed weight) against ``F.linear`` (no engine)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vllm_plugin_torch_native.linear import pack_weight, packed_gemm_supported, packed_linear


@pytest.mark.parametrize("shape", [(1, 64), (16, 64), (2, 3, 64)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_linear_equals_f_linear(shape, with_bias):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=g)
    b = torch.randn(96, generator=g) if with_bias else None
    x = torch.randn(*shape, generator=g)
    got = packed_linear(x, pack_weight(w), b)
    assert got.shape == (*shape[:-1], 96)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-4)


def test_no_tokens_gives_an_empty_result():
    assert packed_linear(torch.empty(0, 64), pack_weight(torch.randn(96, 64)), None).shape == (0, 96)


def test_weight_is_laid_out_in_out_and_only_platform_dtypes_are_swapped():
    w = torch.randn(96, 64)
    p = pack_weight(w)
    assert p.shape == (64, 96) and p.is_contiguous() and p.data_ptr() != w.data_ptr()
    assert packed_gemm_supported(torch.float32) and packed_gemm_supported(torch.bfloat16)
    assert not packed_gemm_supported(torch.float16)


def test_weights_reload_into_the_packed_layout():
    """Packed layers release their [out, in] weight; vLLM's own weight loader
    (what reload_weights and RL weight syncs call) writes into the packed
    weight through weights_in_place, and the GEMM then computes with the new
    weights (a kept, tied-like weight is re-packed)."""
    pytest.importorskip("vllm")
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import parallel_state
    from vllm.model_executor.layers.linear import ColumnParallelLinear

    from vllm_plugin_torch_native.linear import pack_linear_layers, weights_in_place

    cfg = VllmConfig()
    with set_current_vllm_config(cfg):
        if not parallel_state.model_parallel_is_initialized():  # one process, gloo, as the CPU worker
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            parallel_state.init_distributed_environment(1, 0, f"tcp://127.0.0.1:{port}", 0, "gloo")
            parallel_state.initialize_model_parallel(1, 1)
        layer = ColumnParallelLinear(8, 6, bias=True, params_dtype=torch.float32)
        layer.weight.data.normal_()
        model = torch.nn.Sequential(layer)
        assert pack_linear_layers(model) == 1
        assert layer.weight.numel() == 0  # released
        x = torch.randn(3, 8)
        new_w, new_b = torch.randn(6, 8), torch.randn(6)
        with weights_in_place(model) as n:
            assert n == 1 and layer.weight.shape == (6, 8)
            layer.weight.weight_loader(layer.weight, new_w)  # vLLM's loader for this layer
            layer.bias.weight_loader(layer.bias, new_b)
        assert layer.weight.numel() == 0
        torch.testing.assert_close(layer(x)[0], F.linear(x, new_w, new_b))
