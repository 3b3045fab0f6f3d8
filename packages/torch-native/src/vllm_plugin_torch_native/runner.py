"""The platform's model runner on vLLM without Model Runner V1 (0.34+).

vLLM 0.34 runs every engine on Model Runner V2. Its Triton-based runner needs
Triton kernels that do not run on CPU tensors; its standalone CPU runner
(``vllm.v1.worker.cpu.standalone_model_runner``) needs C++ ops that only vLLM's
CPU build has (``vllm._cpu_ops``). :class:`TorchNativeModelRunner` is that
standalone runner with every one of those ops taken from :mod:`.cpu_ops`
(PyTorch): the runner's modules are pointed at it through core's patch
registry (patch :data:`PATCH_NAME`), once per process, before the runner exists.
Why this route rather than the Triton runner: docs/adr/0004-torch-native-runner-on-v2.md.
"""

from __future__ import annotations

from typing import Any

#: Modules of vLLM's standalone CPU runner that call ``vllm._cpu_ops`` (as ``ops``).
OPS_USERS = ("block_table", "input_batch", "gumbel", "logits_processors", "logprob", "rope")
_PACKAGE = "vllm.v1.worker.cpu"
#: Name of the patch in core's registry (``vllm-plugins doctor`` lists it).
PATCH_NAME = "torch-native-cpu-runner-ops"


def _patches() -> list[Any]:
    from vllm_plugin_core.patches import REGISTRY, Patch

    from vllm_plugin_torch_native import cpu_ops

    made = []
    for module in OPS_USERS:
        name = f"{PATCH_NAME}-{module}"
        if name in REGISTRY.names():
            made.append(REGISTRY.get(name))
            continue
        patch = Patch(
            name, f"{_PACKAGE}.{module}",
            why=("vLLM's standalone CPU runner calls C++ ops of vLLM's CPU build (vllm._cpu_ops); "
                 "this platform runs them in PyTorch (vllm_plugin_torch_native.cpu_ops). "
                 "Can go: when vLLM ships PyTorch fallbacks for them."),
            replaces={"ops": cpu_ops},
        )
        made.append(REGISTRY.register(patch, apply_if_selected=False))
    return made


def install() -> list[str]:
    """Point the standalone runner's modules at :mod:`.cpu_ops` (idempotent)."""
    from vllm_plugin_core.patches import REGISTRY

    names = [p.name for p in _patches()]
    REGISTRY.apply(names)
    return [f"patch {n}: vllm._cpu_ops -> vllm_plugin_torch_native.cpu_ops" for n in names]


def make_runner(vllm_config: Any, device: Any) -> Any:
    """The platform's runner: vLLM's standalone CPU runner on this package's ops."""
    install()
    from vllm.v1.worker.cpu.standalone_model_runner import StandaloneCPUModelRunner

    class TorchNativeModelRunner(StandaloneCPUModelRunner):
        """vLLM's standalone CPU runner, every step op from :mod:`.cpu_ops`."""

    return TorchNativeModelRunner(vllm_config, device)
