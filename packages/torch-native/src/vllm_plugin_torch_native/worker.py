"""``TorchNativeWorker``: vLLM's ``CPUWorker`` with the platform's own GEMM,
no op of vLLM's compiled extensions, and the few branches that vLLM takes on
``current_platform.is_cpu()`` (false on an out-of-tree platform) restored for
this CPU-device platform.

``CPUWorker.__init__`` binds memory with ``torch.ops._C.init_cpu_memory_env``
(vLLM's CPU build only): this worker skips it (it initialises the GPU worker
base itself, keeping the CPU worker's memory budget), and routes the per-step
slot mapping to plain PyTorch (:mod:`.slots`).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker

from vllm_plugin_core.compat import cpu_memory_fraction, standalone_cpu_runner_available
from vllm_plugin_torch_native import runner, sampling, slots
from vllm_plugin_torch_native.linear import pack_linear_layers, weights_in_place


def requested_memory(gpu_memory_utilization: float) -> int:
    """The CPU worker's budget: that fraction of the first allowed CPU's NUMA node
    (of the machine where NUMA information is unavailable)."""
    try:
        from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

        total = get_memory_node_info(get_allowed_cpu_list()[0].numa_node).total_memory
    except Exception:
        import psutil

        total = psutil.virtual_memory().total
    return math.ceil(total * gpu_memory_utilization)


def refuse_mixture_of_experts(model: Any) -> None:
    """Refuse at start a model with vLLM's fused mixture-of-experts layer (its
    experts run vLLM's compiled or Triton kernels), whatever its config calls
    the expert count."""
    from vllm_plugin_torch_native.platform import _fail

    for name, module in model.named_modules():
        if any(cls.__name__ == "FusedMoE" for cls in type(module).__mro__):
            _fail(f"mixture-of-experts layers (vLLM's FusedMoE, layer {name})", "Use a dense model.")


def refuse_unequal_value_head_size(model: Any) -> None:
    """Refuse at start a model whose attention layers have values of another
    head size than keys (``head_size_v``, vLLM 0.34): the paged cache here
    holds keys and values at one head size."""
    from vllm_plugin_torch_native.platform import _fail

    for name, module in model.named_modules():
        head_size_v = getattr(module, "head_size_v", None)
        head_size = getattr(module, "head_size", None)
        if isinstance(head_size_v, int) and isinstance(head_size, int) and head_size_v != head_size:
            _fail(f"attention with a value head size ({head_size_v}) other than its key head size "
                  f"({head_size}) in layer {name}", "Use a model whose keys and values share a head size.")


class TorchNativeWorker(CPUWorker):
    def __init__(self, vllm_config: Any, local_rank: int, rank: int, distributed_init_method: str,
                 is_driver_worker: bool = False) -> None:
        # Not CPUWorker.__init__ (a C++ op binds memory there): what it sets, then the base.
        self.requested_cpu_memory = requested_memory(cpu_memory_fraction(vllm_config.cache_config))
        Worker.__init__(self, vllm_config, local_rank, rank, distributed_init_method,
                        is_driver_worker=is_driver_worker)
        self.parallel_config.disable_custom_all_reduce = True
        sampling.install()  # vLLM's top-k/top-p on PyTorch, never Triton on CPU tensors
        if not standalone_cpu_runner_available():
            slots.install()  # V1's BlockTable (vLLM <= 0.33)

    def init_device(self) -> None:
        if standalone_cpu_runner_available():
            # vLLM >= 0.34: CPUWorker builds the standalone CPU runner (the
            # platform says so); its step ops come from cpu_ops.py.
            with runner.runner_in_place() as expected:
                super().init_device()
            if not isinstance(self.model_runner, expected):
                from vllm_plugin_torch_native.platform import _fail

                _fail(f"model runner {type(self.model_runner).__qualname__} (this platform runs its own "
                      "TorchNativeModelRunner, vLLM's standalone CPU runner on PyTorch step ops)",
                      "Leave worker_cls and the platform's runner choice at their defaults.")
            return
        super().init_device()

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, **kwargs)
        model = self.model_runner.get_model()
        refuse_mixture_of_experts(model)
        refuse_unequal_value_head_size(model)
        # The platform's own GEMM (linear.py): weights laid out once ([in, out]), after loading.
        pack_linear_layers(self.model_runner.get_model())

    def reload_weights(self, *args: Any, **kwargs: Any) -> Any:
        # vLLM's loaders write into layer.weight: the packed weights are
        # handed to them as [out, in] views for the duration (linear.py).
        with weights_in_place(self.model_runner.get_model()):
            return super().reload_weights(*args, **kwargs)

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        # GPU workers wrap allocations in the sleep-mode allocator except on
        # the CPU platform; this platform has no sleep mode either.
        return nullcontext()
