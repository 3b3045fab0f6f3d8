"""vLLM's top-k/top-p on this platform takes its PyTorch path even where
Triton is importable (a GPU host, or ``CUDA_VISIBLE_DEVICES=""`` on the CUDA
wheel): the Triton kernel on CPU logits fails inside the engine step."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")


def test_top_k_top_p_takes_the_pytorch_path_where_triton_is_importable(monkeypatch):
    from vllm.v1.sample.ops import topk_topp_sampler as module

    from vllm_plugin_core.patches import REGISTRY
    from vllm_plugin_torch_native import sampling

    def triton_on_cpu(*args, **kwargs):
        raise RuntimeError("0 active drivers ([]). There should only be one.")  # what Triton says here

    patch = sampling._patch()
    was_applied = patch.applied  # by an in-process engine of an earlier test
    if was_applied:
        REGISTRY.revert(sampling.PATCH_NAME)
    monkeypatch.setattr(module, "HAS_TRITON", True)  # as on a GPU host
    monkeypatch.setattr(module, "apply_top_k_top_p_triton", triton_on_cpu, raising=False)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 97, generator=g)
    k = torch.tensor([1, 5, 97, 20, 3])
    p = torch.tensor([0.9, 1.0, 0.5, 0.99, 0.3])
    with pytest.raises(RuntimeError, match="active drivers"):
        module.apply_top_k_top_p(logits.clone(), k, p)  # without the patch: the engine-step failure
    try:
        sampling.install()
        got = module.apply_top_k_top_p(logits.clone(), k, p)
        want = module.apply_top_k_top_p_pytorch(logits.clone(), k, p, allow_cpu_sync=True)
        assert torch.equal(got, want)
        assert (got[0] > float("-inf")).sum() == 1  # top-k 1 kept one token
    finally:
        REGISTRY.revert(sampling.PATCH_NAME)
    assert module.HAS_TRITON is True  # reverted to what it was
    monkeypatch.undo()
    if was_applied:
        sampling.install()
