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
