"""The platform's own GEMM for unquantized linear layers and the LM head.

On an out-of-tree platform vLLM runs unquantized linear layers through
``torch.nn.functional.linear`` over the ``[out, in]`` weight (its CPU GEMM is
chosen only when ``current_platform.is_cpu()``). At a few rows per step that
reads the weight against its grain: 1.4x to 1.8x the time of the same GEMM over
an ``[in, out]`` row-major weight (measured at 4 to 16 rows, benchmarks in the
README). This module is where a platform puts its own GEMM: after the model is
loaded, :func:`pack_linear_layers` (called by the platform's worker) lays each
weight out once as ``weight.T`` contiguous and swaps the layer's
``quant_method`` for a subclass whose ``apply`` runs ``torch.mm`` /
``torch.addmm`` on it. Plain PyTorch, no private op: a hardware team replaces
:func:`pack_weight` and :func:`packed_linear` with its own layout and kernel.

(An earlier version prepacked with oneDNN's ``torch.ops.mkldnn`` ops. On one
thread, as vLLM serves on this machine, ``mm`` over the transposed weight is
10 to 30% faster at one row; from 16 rows up each wins some shapes, the
prepacked GEMM by up to 1.37x (``benchmarks/bench_gemm.py``); same memory.)

Only vLLM's plain ``UnquantizedLinearMethod`` layers and the
``UnquantizedEmbeddingMethod`` of ``ParallelLMHead`` are swapped. A linear
layer's original weight is then released (vLLM's CPU platform does the same);
so is the LM head's when nothing else reads it (:func:`lm_head_weight_unshared`:
not tied to the input embedding, no LoRA, no logits processor projecting in
another dtype), so an untied head is held once. For a dtype
other than float32 / bfloat16 nothing is swapped and vLLM's ``F.linear`` stays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    UnquantizedEmbeddingMethod,
)

logger = logging.getLogger("vllm.plugins.torch_native")

#: Attribute holding a layer's weight laid out for :func:`packed_linear` (``[in, out]``).
WEIGHT_ATTRS = "_torch_native_weight_attrs"
PACKED_ATTR = "torch_native_packed_weight"
#: Calls of the packed GEMM in this process (tests check dispatch).
CALLS: dict[str, int] = {"linear": 0}


def packed_gemm_supported(dtype: torch.dtype) -> bool:
    """Whether the platform's GEMM serves layers of ``dtype`` (the platform's dtypes)."""
    return dtype in (torch.float32, torch.bfloat16)


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (``[out, in]``) as a contiguous ``[in, out]`` tensor, made once at load."""
    return weight.detach().t().contiguous()


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` over a weight from :func:`pack_weight`; any leading dims."""
    CALLS["linear"] += 1
    lead, out_features = x.shape[:-1], packed.shape[1]
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.mm(x2, packed) if bias is None else torch.addmm(bias, x2, packed)
    return out.reshape(*lead, out_features)


def _apply(layer: Any, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return packed_linear(x, getattr(layer, PACKED_ATTR), bias)


class TorchNativeLinearMethod(UnquantizedLinearMethod):
    """vLLM's unquantized linear method with the platform's GEMM as ``apply``."""

    apply = staticmethod(_apply)  # type: ignore[assignment]


class TorchNativeLMHeadMethod(UnquantizedEmbeddingMethod):
    """The LM head's method: embedding lookups unchanged, logits by the platform's GEMM."""

    apply = staticmethod(_apply)  # type: ignore[assignment]


def _swap(layer: Any, method_cls: type, *, release_weight: bool) -> None:
    weight = layer.weight
    setattr(layer, PACKED_ATTR, pack_weight(weight.data))
    old = layer.quant_method
    new = method_cls.__new__(method_cls)
    new.__dict__.update(old.__dict__)
    layer.quant_method = new
    if release_weight:
        # what vLLM's loaders read from the parameter (weight_loader, input_dim, ...), for reloads
        setattr(layer, WEIGHT_ATTRS, (type(weight), dict(weight.__dict__)))
        layer.weight = torch.nn.Parameter(weight.data.new_empty(0), requires_grad=False)


@contextmanager
def weights_in_place(model: torch.nn.Module) -> Iterator[int]:
    """While vLLM (re)loads weights (``reload_weights``, an RL weight sync):
    each released ``[out, in]`` weight is back as a view of its packed
    ``[in, out]`` tensor, with its loader attributes, so loaders write straight
    into what the GEMM reads; weights that were kept are re-packed after.
    Yields the number of layers made loadable."""
    restored, kept = [], []
    for module in model.modules():
        packed = getattr(module, PACKED_ATTR, None)
        weight = getattr(module, "weight", None)
        if packed is None or not isinstance(weight, torch.Tensor):
            continue
        if weight.numel():
            kept.append(module)
            continue
        cls, attrs = getattr(module, WEIGHT_ATTRS, (torch.nn.Parameter, {}))
        # the parameter's own class (vLLM's ModelWeightParameter & co. carry the
        # loading methods), sharing the packed storage, without its __init__
        view = torch.Tensor._make_subclass(cls, packed.t(), False)
        view.__dict__.update(attrs)
        module.weight = view
        restored.append((module, weight))
    try:
        yield len(restored)
    finally:
        for module, empty in restored:
            module.weight = empty
        for module in kept:
            getattr(module, PACKED_ATTR).copy_(module.weight.detach().t())


def lm_head_weight_unshared(model: torch.nn.Module, head: torch.nn.Module) -> bool:
    """Whether the LM head's ``[vocab, hidden]`` weight may go once packed:
    no other module shares its storage (a tied input embedding), no LoRA
    wrapper is in the model, and no logits processor projects in a dtype other
    than the weight's (vLLM then reads ``lm_head.weight`` itself)."""
    ptr = head.weight.data_ptr()
    for m in model.modules():
        if m is head:
            continue
        if hasattr(m, "base_layer"):
            return False
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.numel() and w.data_ptr() == ptr:
            return False
        head_dtype = getattr(m, "head_dtype", None)
        if isinstance(head_dtype, torch.dtype) and head_dtype != head.weight.dtype:
            return False
    return True


def pack_linear_layers(model: torch.nn.Module) -> int:
    """Swap every plain unquantized linear layer and the LM head of ``model``
    to the platform's GEMM; return the number of layers swapped."""
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
            method, release = TorchNativeLMHeadMethod, lm_head_weight_unshared(model, module)
        else:
            continue
        if not packed_gemm_supported(weight.dtype):
            skipped += 1
            continue
        _swap(module, method, release_weight=release)
        swapped += 1
    if skipped:
        logger.warning("torch_native platform: %d linear layers keep F.linear (their dtype is "
                       "neither float32 nor bfloat16)", skipped)
    logger.info("torch_native platform: %d linear layers use the platform's GEMM (transposed "
                "weights)", swapped)
    return swapped
