"""Records every op of vLLM's compiled extensions dispatched in this process.

Installed before vLLM builds an engine in the process: each ``torch.ops``
namespace of vLLM's extensions (``_C``, ``_C_cache_ops``, ``_moe_C`` ...) is
replaced by a proxy that counts every call of one of its ops (``hasattr``
probes still answer as before; a missing op still raises). ``report()`` also
lists vLLM's compiled libraries loaded into the process (``/proc/self/maps``):
with none loaded, no op of theirs can run, however a caller got hold of it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

#: torch.ops namespaces of vLLM's C++/CUDA extensions (CPU and CUDA builds).
NAMESPACES = ("_C", "_C_cache_ops", "_C_utils", "_C_custom_ar", "_C_cpu", "_moe_C",
              "_vllm_fa2_C", "_vllm_fa3_C", "_flashmla_C", "_rocm_C", "_qutlass_C")

CALLS: Counter[str] = Counter()


class _RecordingOp:
    def __init__(self, op: Any, name: str) -> None:
        self._op, self._name = op, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        CALLS[self._name] += 1
        return self._op(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:  # overloads (.default ...) are counted too
        value = getattr(self._op, attr)
        return _RecordingOp(value, self._name) if isinstance(value, torch._ops.OpOverload) else value


class _RecordingNamespace:
    def __init__(self, name: str, namespace: Any) -> None:
        self._name, self._namespace = name, namespace

    def __getattr__(self, op: str) -> Any:
        return _RecordingOp(getattr(self._namespace, op), f"{self._name}::{op}")


def install(namespaces: tuple[str, ...] = NAMESPACES) -> None:
    """Start recording calls of ops of ``namespaces`` (idempotent)."""
    for name in namespaces:
        current = getattr(torch.ops, name)
        if not isinstance(current, _RecordingNamespace):
            setattr(torch.ops, name, _RecordingNamespace(name, current))


def loaded_vllm_libraries() -> list[str]:
    """vLLM's compiled extension libraries mapped into this process."""
    import os

    import vllm

    root = os.path.dirname(vllm.__file__)
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(maxsplit=5)[-1].strip() for line in f if root in line}
    except OSError:
        return []
    return sorted(os.path.relpath(p, root) for p in paths if ".so" in p)


def report() -> dict[str, Any]:
    return {"calls": dict(CALLS), "libraries": loaded_vllm_libraries()}
