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

from collections.abc import Iterator
from contextlib import contextmanager
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


class _Buffer:
    """A runner buffer as V2 logits processors read it (``.gpu``, ``.cpu``,
    ``.np``): the standalone CPU runner keeps plain CPU tensors, so the three
    are views of one memory."""

    def __init__(self, tensor: Any) -> None:
        self.gpu = self.cpu = tensor
        self.np = tensor.numpy()


def _v2_request_state(req_states: Any) -> Any:
    """What ``build_custom_logits_processors`` reads of the runner's request
    state, from the standalone runner's ``CPURequestState``."""
    from types import SimpleNamespace

    return SimpleNamespace(
        device=req_states.device, max_num_reqs=req_states.max_num_reqs, vocab_size=req_states.vocab_size,
        all_token_ids=_Buffer(req_states.all_token_ids), prompt_len=_Buffer(req_states.prompt_len),
        prefill_len=_Buffer(req_states.prefill_len), total_len=_Buffer(req_states.total_len))


def custom_logits_processors(vllm_config: Any, req_states: Any, is_pooling: bool) -> list[Any]:
    """vLLM's ``vllm.logits_processors`` plugins, built by vLLM's own V2 loader
    (``build_custom_logits_processors``) over the standalone runner's buffers.
    ``--logits-processors`` (class names) stays refused by vLLM's config check
    for this runner; plugins are not in it."""
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors

    return build_custom_logits_processors(vllm_config, _v2_request_state(req_states), is_pooling)


def _wrap(processor: Any) -> Any:
    """A V2 processor as a stage of the standalone runner's sampler. Its
    ``LogitsContext`` has the V2 fields under the same names, so it is passed on."""
    from vllm.v1.worker.cpu.logits_processors import LogitsProcessor as CPUStage

    class V2Stage(CPUStage):
        def __init__(self) -> None:
            self.processor = processor

        def add_request(self, req_idx: int, sampling_params: Any) -> bool:
            return bool(self.processor.add_request(req_idx, sampling_params))

        def apply(self, logits: Any, ctx: Any) -> Any:
            return self.processor.apply(logits, ctx)

    V2Stage.__qualname__ = f"V2Stage[{type(processor).__qualname__}]"
    return V2Stage()


def make_runner_class() -> type:
    """The platform's runner class: vLLM's standalone CPU runner on this
    package's ops, running ``vllm.logits_processors`` plugins through vLLM's
    V2 interface at the stage vLLM's V2 runner runs them (after logit bias,
    penalties and bad words; before thinking-budget forcing, temperature,
    min_p and top-k/top-p), with ``apply_staged_writes`` after every step's
    admissions, once the request state holds the new requests' tokens."""
    install()
    from vllm.v1.worker.cpu.standalone_model_runner import StandaloneCPUModelRunner

    class TorchNativeModelRunner(StandaloneCPUModelRunner):
        custom_logits_processors: list[Any] = []

        def load_model(self, *args: Any, **kwargs: Any) -> None:
            super().load_model(*args, **kwargs)  # builds the sampler
            sampler = getattr(self, "sampler", None)
            if sampler is not None:
                self.custom_logits_processors = custom_logits_processors(
                    self.vllm_config, self.req_states, self.is_pooling_model)
                sampler.logits_processors.extend(_wrap(p) for p in self.custom_logits_processors)

        def add_requests(self, scheduler_output: Any) -> None:
            super().add_requests(scheduler_output)
            if scheduler_output.scheduled_new_reqs:
                for processor in self.custom_logits_processors:
                    processor.apply_staged_writes()

    return TorchNativeModelRunner


@contextmanager
def runner_in_place() -> Iterator[type]:
    """While ``CPUWorker.init_device`` runs: the standalone runner's module
    hands out :func:`make_runner_class`'s class (the worker imports the class
    from that module when it builds its runner); yields that class."""
    from vllm.v1.worker.cpu import standalone_model_runner as module

    original = module.StandaloneCPUModelRunner
    cls = module.StandaloneCPUModelRunner = make_runner_class()
    try:
        yield cls
    finally:
        module.StandaloneCPUModelRunner = original
