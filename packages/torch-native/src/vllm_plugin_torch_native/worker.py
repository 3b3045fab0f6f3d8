"""``TorchNativeWorker``: vLLM's ``CPUWorker`` with the few branches that vLLM
takes on ``current_platform.is_cpu()`` (false on an out-of-tree platform)
restored for this CPU-device platform.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from vllm.v1.worker.cpu_worker import CPUWorker


class TorchNativeWorker(CPUWorker):
    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        # GPU workers wrap allocations in the sleep-mode allocator except on
        # the CPU platform; this platform has no sleep mode either.
        return nullcontext()
