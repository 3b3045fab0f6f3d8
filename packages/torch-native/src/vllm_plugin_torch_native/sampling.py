"""Sampling on this platform: vLLM's sampler, always on its PyTorch top-k/top-p.

vLLM's ``apply_top_k_top_p`` (and V1's ``TopKTopPSampler.forward_native``)
takes a Triton kernel whenever ``HAS_TRITON`` is true: on the CUDA wheels
(0.33, 0.34) with an active GPU driver, or with ``CUDA_VISIBLE_DEVICES=""``.
This platform's logits are CPU tensors, so the first top-k/top-p request would
fail inside the engine step. :func:`install` points that module's flag at
False in the process that samples (the worker); vLLM then takes its PyTorch
path, as on its own CPU platform.
"""

from __future__ import annotations

from typing import Any

#: Name of the patch in core's registry (``vllm-plugins doctor`` lists it).
PATCH_NAME = "torch-native-topk-topp-without-triton"
TARGET = "vllm.v1.sample.ops.topk_topp_sampler"


def _patch() -> Any:
    from vllm_plugin_core.patches import REGISTRY, Patch

    if PATCH_NAME in REGISTRY.names():
        return REGISTRY.get(PATCH_NAME)
    patch = Patch(
        PATCH_NAME, TARGET,
        why=("vLLM's top-k/top-p takes a Triton kernel whenever Triton is importable; this platform's "
             "logits are CPU tensors. Can go: when vLLM picks the kernel by the logits' device."),
        replaces={"HAS_TRITON": False},
    )
    return REGISTRY.register(patch, apply_if_selected=False)


def install() -> list[str]:
    """Make vLLM's top-k/top-p take its PyTorch path in this process (idempotent)."""
    from vllm_plugin_core.patches import REGISTRY

    REGISTRY.apply([_patch().name])
    return [f"patch {PATCH_NAME}: {TARGET}.HAS_TRITON -> False"]
