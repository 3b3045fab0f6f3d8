"""``TorchNativeWorker``: vLLM's ``CPUWorker`` with the platform's own GEMM,
and the few branches that vLLM takes on ``current_platform.is_cpu()`` (false
on an out-of-tree platform) restored for this CPU-device platform.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from vllm.v1.worker.cpu_worker import CPUWorker

from vllm_plugin_torch_native.linear import pack_linear_layers


class TorchNativeWorker(CPUWorker):
    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, **kwargs)
        # The platform's own GEMM (linear.py): prepack weights once, after loading.
        pack_linear_layers(self.model_runner.get_model())

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        # GPU workers wrap allocations in the sleep-mode allocator except on
        # the CPU platform; this platform has no sleep mode either.
        return nullcontext()
