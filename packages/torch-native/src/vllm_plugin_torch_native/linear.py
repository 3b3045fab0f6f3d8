"""The platform's own GEMM for unquantized linear layers and the LM head.

On an out-of-tree platform vLLM runs unquantized linear layers through
``torch.nn.functional.linear`` (its packed CPU GEMM is chosen only when
``current_platform.is_cpu()``). With the weights streamed from memory at every
decode step, that is about half the speed of a GEMM over prepacked weights.
This module is where a platform puts its own GEMM: after the model is loaded,
:func:`pack_linear_layers` (called by the platform's worker) prepacks each
weight once with PyTorch's oneDNN ops (``torch.ops.mkldnn._reorder_linear_weight``)
and swaps the layer's ``quant_method`` for a subclass whose ``apply`` calls
``torch.ops.mkldnn._linear_pointwise``. A hardware team replaces those two
calls with its own weight layout and kernel.

Only vLLM's plain ``UnquantizedLinearMethod`` layers and the
``UnquantizedEmbeddingMethod`` of ``ParallelLMHead`` are swapped. A linear
layer's original weight is then released (vLLM's CPU platform does the same);
the LM head keeps it, since it may be tied to the input embedding. Without a
oneDNN-enabled torch, or for a dtype oneDNN cannot run here, nothing is
swapped and vLLM's ``F.linear`` path stays.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    UnquantizedEmbeddingMethod,
)

logger = logging.getLogger("vllm.plugins.torch_native")

#: Attribute holding a layer's prepacked weight.
PACKED_ATTR = "torch_native_packed_weight"
#: Calls of the packed GEMM in this process (tests check dispatch).
CALLS: dict[str, int] = {"linear": 0}


def packed_gemm_supported(dtype: torch.dtype) -> bool:
    """Whether this torch can run the prepacked oneDNN GEMM for ``dtype``."""
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (``[out, in]``) in oneDNN's blocked layout (an opaque tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` over a weight from :func:`pack_weight`; any leading dims."""
    CALLS["linear"] += 1
    lead, out_features = x.shape[:-1], packed.shape[0]  # the packed weight keeps [out, in]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] == 0:
        return x.new_empty(*lead, out_features)
    out = torch.ops.mkldnn._linear_pointwise(x2.contiguous(), packed, bias, "none", [], "")
    return out.reshape(*lead, out_features)


def _apply(layer: Any, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return packed_linear(x, getattr(layer, PACKED_ATTR), bias)


class TorchNativeLinearMethod(UnquantizedLinearMethod):
    """vLLM's unquantized linear method with the prepacked GEMM as ``apply``."""

    apply = staticmethod(_apply)  # type: ignore[assignment]


class TorchNativeLMHeadMethod(UnquantizedEmbeddingMethod):
    """The LM head's method: embedding lookups unchanged, logits by the prepacked GEMM."""

    apply = staticmethod(_apply)  # type: ignore[assignment]


def _swap(layer: Any, method_cls: type, *, release_weight: bool) -> None:
    weight = layer.weight
    setattr(layer, PACKED_ATTR, pack_weight(weight.data))
    old = layer.quant_method
    new = method_cls.__new__(method_cls)
    new.__dict__.update(old.__dict__)
    layer.quant_method = new
    if release_weight:
        layer.weight = torch.nn.Parameter(weight.data.new_empty(0), requires_grad=False)


def pack_linear_layers(model: torch.nn.Module) -> int:
    """Prepack every plain unquantized linear layer and the LM head of ``model``.

    Returns the number of layers swapped (0 when the packed GEMM is not
    available for the model's dtype).
    """
    swapped = skipped = 0
    for module in model.modules():
        if hasattr(module, "base_layer"):
            # A LoRA wrapper (vllm.lora.layers): its ``weight`` is its base layer's, which
            # model.modules() yields too and gets packed; the wrapper calls the base
            # layer's quant_method.
            continue
        qm = getattr(module, "quant_method", None)
        weight = getattr(module, "weight", None)
        if qm is None or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        if type(qm) is UnquantizedLinearMethod:
            method, release = TorchNativeLinearMethod, True
        elif type(qm) is UnquantizedEmbeddingMethod and isinstance(module, ParallelLMHead):
            method, release = TorchNativeLMHeadMethod, False
        else:
            continue
        if not packed_gemm_supported(weight.dtype):
            skipped += 1
            continue
        _swap(module, method, release_weight=release)
        swapped += 1
    if skipped:
        logger.warning("torch_native platform: %d linear layers keep F.linear (no oneDNN GEMM for "
                       "their dtype in this torch build)", skipped)
    logger.info("torch_native platform: %d linear layers use the prepacked GEMM", swapped)
    return swapped
