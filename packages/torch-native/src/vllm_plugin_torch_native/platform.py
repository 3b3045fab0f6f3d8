"""``TorchNativePlatform``: vLLM's ``CpuPlatform`` plumbing, this package's compute.

Own (this package):

* identity: ``PlatformEnum.OOT``, ``get_device_name() == "torch_native"``
  (``device_name`` stays ``"cpu"``: vLLM turns an OOT platform's
  ``device_name`` into a torch device);
* ``get_attn_backend_cls``: always this package's attention backend
  (:mod:`.attention`), registered in vLLM's attention-backend registry;
* custom ops (:mod:`.ops`): RMSNorm, fused add-RMSNorm, SiLU-and-mul, rotary
  embedding, dispatched through ``forward_oot`` because the platform is OOT;
* the GEMM of unquantized linear layers and the LM head (:mod:`.linear`):
  weights laid out once ([in, out], ``torch.mm``) after loading by the worker (:mod:`.worker`);
* ``check_and_update_config``: refuses at engine start what is not supported
  (dtype other than float32/bfloat16, quantization, quantized KV cache,
  pipeline parallelism > 1, speculative decoding, MLA); LoRA runs on the
  CPU platform's PyTorch punica wrapper (``PunicaWrapperCPU``),
  and runs the model eagerly (no torch.compile).

Reused from ``CpuPlatform`` (inherited, unchanged): the worker
(``vllm.v1.worker.cpu_worker.CPUWorker``, subclassed by :mod:`.worker` to
lay out linear weights and skip the sleep-mode allocator; its runner is
V1's ``CPUModelRunner`` on vLLM 0.31 to 0.33 and, on 0.34+, :mod:`.runner`'s
subclass of vLLM's standalone V2 CPU runner with its step ops from
:mod:`.cpu_ops`: memory accounting, thread binding, KV-cache allocation,
sampling), the device
communicator, memory queries, block-size defaults and environment set-up
(OpenMP/tcmalloc preloads). vLLM picks its own CPU GEMM only when
``is_cpu()`` is true, which it is not for an OOT platform: without
:mod:`.linear` the linear layers would run ``F.linear`` (half the decode speed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from vllm.platforms.cpu import CpuPlatform
from vllm.platforms.interface import PlatformEnum

from vllm_plugin_torch_native import BACKEND_NAME, BACKEND_PATH

logger = logging.getLogger("vllm.plugins.torch_native")

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
WORKER_PATH = "vllm_plugin_torch_native.worker.TorchNativeWorker"


class UnsupportedConfiguration(ValueError):
    """The engine configuration asks for something the torch_native platform lacks."""


def _fail(what: str, fix: str) -> None:
    raise UnsupportedConfiguration(
        f"torch_native platform (VLLM_PLUGIN_TORCH_NATIVE=1): {what} is not supported. {fix} "
        "Or unset VLLM_PLUGIN_TORCH_NATIVE to use vLLM's own CPU platform."
    )


def check_supported(vllm_config: Any) -> None:
    """Raise :class:`UnsupportedConfiguration` for what the platform does not do."""
    model_config = vllm_config.model_config
    if model_config is not None:
        dtype = model_config.dtype
        if dtype not in SUPPORTED_DTYPES:
            _fail(f"dtype {str(dtype).replace('torch.', '')}",
                  "Pass dtype='float32' (--dtype float32) or dtype='bfloat16'.")
        if getattr(model_config, "quantization", None):
            _fail(f"quantization ({model_config.quantization})", "Use an unquantized checkpoint.")
        if getattr(model_config, "use_mla", False):
            _fail("multi-head latent attention (MLA models)", "Use a model with standard attention.")
        if getattr(model_config, "uses_mrope", False):
            _fail("M-RoPE (multimodal rotary positions)", "Use a model with standard rotary embeddings.")
        if getattr(model_config, "is_hybrid", False) or getattr(model_config, "has_inner_state", False):
            _fail("Mamba and hybrid (state-space) models", "Use a transformer model.")
        hf_config = getattr(model_config, "hf_text_config", None)
        counts = [getattr(hf_config, k, None) for k in ("num_experts", "num_local_experts", "n_routed_experts")]
        experts = max([c for c in counts if isinstance(c, int)], default=0)
        if experts > 0:
            _fail(f"mixture-of-experts models ({experts} experts)", "Use a dense model.")
        runner = getattr(model_config, "runner_type", "generate")
        if runner not in ("generate", "pooling", None):
            _fail(f"the {runner!r} runner", "Use a generative or a pooling model.")
    cache_config = vllm_config.cache_config
    if cache_config is not None and cache_config.cache_dtype not in ("auto", "float32", "bfloat16"):
        _fail(f"kv_cache_dtype={cache_config.cache_dtype!r}", "Leave kv_cache_dtype at 'auto'.")
    pc = vllm_config.parallel_config
    # Tensor parallelism runs on vLLM's CPU communicator (tested with 2 workers);
    # pipeline parallelism is not tested here, so it is refused.
    if pc.pipeline_parallel_size > 1:
        _fail(f"pipeline_parallel_size={pc.pipeline_parallel_size} (not yet)",
              "Use tensor_parallel_size instead.")
    if getattr(pc, "data_parallel_size", 1) > 1:
        _fail(f"data_parallel_size={pc.data_parallel_size}", "Run one engine.")
    if getattr(pc, "decode_context_parallel_size", 1) > 1:
        # (the platform's slot mapping has no DCP split: refuse at start, not at the first step)
        _fail(f"decode_context_parallel_size={pc.decode_context_parallel_size}",
              "Leave decode_context_parallel_size at 1.")
    if getattr(vllm_config, "speculative_config", None) is not None:
        _fail("speculative decoding", "Drop speculative_config.")
    from vllm_plugin_core.compat import v1_runner_replaced_by_v2

    if v1_runner_replaced_by_v2(vllm_config):
        _fail("vLLM's V2 model runner on vLLM 0.31 to 0.33 (chosen by VLLM_USE_V2_MODEL_RUNNER=1, "
              "or by default where Triton is usable; this platform runs V1's CPU runner there)",
              "Set VLLM_USE_V2_MODEL_RUNNER=0, or use vLLM 0.34, where the platform runs its own "
              "V2 CPU runner.")


@contextmanager
def _cpu_runner_needs_no_triton() -> Iterator[None]:
    """Around ``CpuPlatform.check_and_update_config``: vLLM 0.34 refuses x86
    CPUs without Triton there, because its own x86 CPU runner is the Triton
    one; this platform runs the standalone runner (:mod:`.runner`), which needs
    no Triton. The refusal reads ``vllm.triton_utils.HAS_TRITON`` when called."""
    from vllm_plugin_core.compat import standalone_cpu_runner_available

    if not standalone_cpu_runner_available():
        yield
        return
    import vllm.triton_utils as triton_utils

    had = triton_utils.HAS_TRITON
    triton_utils.HAS_TRITON = True
    try:
        yield
    finally:
        triton_utils.HAS_TRITON = had


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def install_accelerator_noops() -> list[str]:
    """No-op ``torch.accelerator`` cache calls when there is no accelerator.

    vLLM's shutdown (``cleanup_dist_env_and_memory``) calls
    ``torch.accelerator.empty_cache()``/``empty_host_cache()`` on every
    platform whose ``is_cpu()`` is false; on a CPU-only torch they raise
    ``Cannot access accelerator device when none is available``. vLLM's own
    ``CPUModelRunner`` no-ops ``synchronize``/``empty_cache`` the same way.
    """
    acc = getattr(torch, "accelerator", None)
    if acc is None or acc.is_available():
        return []
    done = []
    for name in ("empty_cache", "empty_host_cache", "synchronize"):
        if hasattr(acc, name) and getattr(acc, name) is not _noop:
            setattr(acc, name, _noop)
            done.append(f"torch.accelerator.{name} (no accelerator: no-op)")
    return done


class TorchNativePlatform(CpuPlatform):
    _enum = PlatformEnum.OOT
    #: vLLM builds ``torch.device(f"{device_name}:{rank}")`` and the
    #: torch.distributed device from ``device_name`` on out-of-tree platforms
    #: (``GroupCoordinator``), so it must be a torch device type: "cpu".
    #: The platform's own name is :attr:`platform_name` / ``get_device_name()``.
    device_name: str = "cpu"
    platform_name: str = "torch_native"
    device_type: str = "cpu"
    dispatch_key: str = "CPU"
    supported_quantization: list[str] = []

    @property
    def supported_dtypes(self) -> list[torch.dtype]:
        return list(SUPPORTED_DTYPES)

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return "torch_native"

    @classmethod
    def check_if_supports_dtype(cls, dtype: torch.dtype) -> None:
        if dtype not in SUPPORTED_DTYPES:
            _fail(f"dtype {dtype}", "Use float32 or bfloat16.")

    @classmethod
    def get_attn_backend_cls(cls, selected_backend: Any = None, attn_selector_config: Any = None,
                             num_heads: int | None = None, **kwargs: Any) -> str:
        from vllm_plugin_core.compat import register_attention_backend

        if attn_selector_config is not None:
            for flag, what in (("use_mla", "MLA"), ("use_sparse", "sparse attention"),
                               ("has_sink", "attention sinks"), ("use_rswa", "R-SWA"),
                               ("use_mm_prefix", "prefix-LM attention over multimodal tokens "
                                                 "(Gemma3-MM, PaliGemma)"),
                               ("use_non_causal", "non-causal decoder attention "
                                                  "(attention_config.use_non_causal)"),
                               ("use_batch_invariant", "batch-invariant kernels (VLLM_BATCH_INVARIANT)"),
                               ("use_per_head_quant_scales", "per-head quantization scales"),
                               ("use_pcp", "prefill context parallelism"),
                               ("use_dcp", "decode context parallelism")):
                # getattr: the selector config gained fields over versions (use_rswa in 0.30).
                if getattr(attn_selector_config, flag, False):
                    _fail(what, "Use a model without it.")
            # Then whatever else the backend's own validate_configuration
            # refuses (head size, dtype, KV-cache dtype, block size, attention
            # type, KV connector, ...), as vLLM's in-tree platforms ask it.
            from vllm_plugin_core.compat import attention_backend_refusals
            from vllm_plugin_torch_native.attention import TorchNativeAttentionBackend

            reasons = attention_backend_refusals(TorchNativeAttentionBackend, attn_selector_config)
            if reasons:
                _fail(f"this attention layer ({'; '.join(reasons)}: {attn_selector_config!r})",
                      "Use a model and settings its attention backend supports.")
        member = register_attention_backend(BACKEND_NAME, BACKEND_PATH)
        path = member.get_path() if callable(getattr(member, "get_path", None)) else BACKEND_PATH
        if selected_backend is not None and selected_backend != member:
            logger.info("torch_native platform ignores attention backend %s; using %s",
                        getattr(selected_backend, "name", selected_backend), BACKEND_NAME)
        return path

    @classmethod
    def check_and_update_config(cls, vllm_config: Any) -> None:
        check_supported(vllm_config)
        if vllm_config.parallel_config.worker_cls == "auto":
            vllm_config.parallel_config.worker_cls = WORKER_PATH
        with _cpu_runner_needs_no_triton():
            super().check_and_update_config(vllm_config)
        from vllm.config import CompilationMode

        cc = vllm_config.compilation_config
        if cc.mode != CompilationMode.NONE:
            logger.info("torch_native platform runs the model eagerly (compilation mode %s -> NONE)",
                        cc.mode)
            cc.mode = CompilationMode.NONE
        # Make sure vLLM dispatches to this platform's ops (forward_oot), with
        # or without --enforce-eager: CustomOp.enabled() matches "+<name>", and
        # the class vLLM instantiates is ours, named by register_oot after the
        # upstream class ("RMSNorm"); upstream's own name ("rms_norm") is
        # enabled too, for what vLLM reports and checks by that name.
        from vllm_plugin_torch_native.ops import OPS

        for upstream in OPS:
            for op in dict.fromkeys((upstream.__name__, getattr(upstream, "name", upstream.__name__))):
                if f"+{op}" not in cc.custom_ops and f"-{op}" not in cc.custom_ops:
                    cc.custom_ops.append(f"+{op}")
        from vllm_plugin_torch_native.ops import register_custom_ops

        register_custom_ops()
        install_accelerator_noops()

    @classmethod
    def uses_standalone_cpu_model_runner(cls) -> bool:
        # vLLM >= 0.34: the standalone V2 CPU runner, on this package's ops (runner.py).
        from vllm_plugin_core.compat import standalone_cpu_runner_available

        return standalone_cpu_runner_available()

    @classmethod
    def import_kernels(cls) -> None:
        # CpuPlatform loads vLLM's compiled CPU kernels (``vllm._C``) here; this
        # platform uses none of them (the CUDA wheel has none for the CPU).
        return None

    @classmethod
    def register_triton_kernel_overrides(cls) -> None:
        # CpuPlatform swaps vLLM's Triton kernels for C++ ops of its CPU build.
        # On 0.31 to 0.33 the only one reached here, V1's slot mapping, is
        # replaced with PyTorch by the worker (slots.py); on 0.34+ the
        # standalone runner calls no Triton kernel and its C++ step ops come
        # from cpu_ops.py (runner.py). The others serve speculative decoding
        # and Mamba, refused at start.
        return None

    @classmethod
    def opaque_attention_op(cls) -> bool:
        return True

    @classmethod
    def is_pin_memory_available(cls) -> bool:
        return False
