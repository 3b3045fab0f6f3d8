"""The compatibility layer: the ONLY module of this repository that branches
on the vLLM version.

Every shim imports vLLM lazily, tries the newest location or interface first,
and states why it exists and when it can go (see ``docs/compat.md`` and the
compat canary tests, which fail once the oldest supported vLLM no longer
needs a shim). Plugins call these functions instead of checking versions.

Shims (see vllm-api-drift.md, numbers refer to its list):

* ``logits_processor_bases`` / ``v1_logits_interface`` (1): V1 (to 0.33) and
  V2 (from 0.31) model-runner bases; 0.34 removed V1.
* ``is_v2_logits_init`` (1): tell which runner constructed a processor.
* ``logits_processors_skipped`` / ``input_processor_class`` (1): V1 loads no
  logits-processor plugin under speculative decoding; where requests are
  validated in the front end.
* ``make_lora_request`` (2): keyword-only ``LoRARequest``; drops
  ``tensorizer_config_dict`` where it no longer exists (0.32).
* ``io_processor_shapes_response_in_post_process`` (4): 0.32 stopped calling
  ``output_to_response``.
* ``platform_method_names`` (5): platform interface renames;
  ``set_kv_cache_layout`` (6): the worker RPC's new argument in 0.33.
* ``model_protocol`` / ``supports_mamba_prefix_caching`` (6): model protocols
  no longer generic in 0.33; the Mamba prefix-caching flag removed there.
* ``register_attention_backend`` (7): named custom backends from 0.32, the
  single ``CUSTOM`` slot before.
* ``standalone_cpu_runner_available`` / ``cpu_memory_fraction`` (8): 0.34
  removed the V1 CPU runner (the standalone V2 CPU runner is what is left)
  and made ``gpu_memory_utilization`` default to None (resolved elsewhere).
* ``register_env_vars``: announce plugin settings to vLLM's env validator
  (same dict in 0.31 to 0.34; kept here so a future move has one home).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from vllm_plugin_core.version import VllmNotInstalledError, require_vllm_installed, version_in

__all__ = [
    "cpu_memory_fraction",
    "input_processor_class",
    "io_processor_shapes_response_in_post_process",
    "is_v2_logits_init",
    "logits_processor_bases",
    "logits_processor_plugin_loaders",
    "logits_processors_skipped",
    "make_lora_request",
    "model_protocol",
    "platform_method_names",
    "register_attention_backend",
    "register_env_vars",
    "set_kv_cache_layout",
    "standalone_cpu_runner_available",
    "supports_mamba_prefix_caching",
    "v1_logits_interface",
    "v2_logits_interface",
]


# --- 1. logits processors: V1 runner everywhere, V2 runner on CUDA from 0.31 ---

def v2_logits_interface() -> Any | None:
    """The V2 model runner's logits-processor module, or None where this vLLM
    lacks it.

    Why: 0.31 added a second interface for the V2 runner that CUDA builds use
    by default; every supported vLLM has it. Feature-detected all the same, so
    that a vLLM outside the window (before 0.31, or one that moves it) gets
    :func:`logits_processor_bases`'s error naming the plugin and the fix.
    """
    require_vllm_installed("logits processors")
    try:
        from vllm.v1.worker.gpu.sample.logits_processor import interface
    except ImportError:
        return None
    return interface


def v1_logits_interface() -> Any | None:
    """The V1 model runner's logits-processor package, or None from 0.34.

    Why: 0.34 removed Model Runner V1 (``vllm.v1.sample.logits_processor``).
    Can go: when 0.33 leaves the matrix (feature-detected).
    """
    require_vllm_installed("logits processors")
    try:
        import vllm.v1.sample.logits_processor as v1
    except ImportError:
        return None
    return v1


def logits_processor_bases(plugin: str = "this logits-processor plugin") -> tuple[type, ...]:
    """Base classes a logits-processor plugin class must derive from.

    V1's ``LogitsProcessor`` where it exists (to 0.33), and V2's (every
    supported vLLM), because each runner's loader checks ``issubclass`` against its
    own base. One class then serves both runners: see
    :func:`is_v2_logits_init`. A vLLM with neither gets an ``ImportError``
    naming ``plugin``, the running vLLM, the supported range and the fix
    (vLLM's loader shows it as the cause of its own fatal error).
    """
    from vllm_plugin_core.version import SUPPORTED_VLLM, vllm_distribution

    require_vllm_installed("logits processors")
    bases = tuple(m.LogitsProcessor for m in (v1_logits_interface(), v2_logits_interface()) if m is not None)
    if not bases:
        name, version = vllm_distribution() or ("vllm", "?")
        raise ImportError(
            f"{plugin} cannot load: the running vLLM ({name} {version}) has neither logits-processor "
            "interface it knows (vllm.v1.worker.gpu.sample.logits_processor, "
            f"vllm.v1.sample.logits_processor); supported vLLM: {SUPPORTED_VLLM}. Fix: install a "
            f"supported vLLM, or a newer {plugin}, or uninstall {plugin} (vLLM loads every installed "
            "logits processor and stops if one fails)")
    return bases


def logits_processor_plugin_loaders() -> list[Callable[[], list[type]]]:
    """vLLM's own loaders of ``vllm.logits_processors`` entry points, newest
    first: V2's (it also checks the V2 base class) and V1's (to 0.33).

    Why: 0.34 removed V1's ``_load_logitsprocs_plugins``; the test helpers
    check discovery through every loader the running vLLM has. Can go: V1's
    when 0.33 leaves the matrix.
    """
    loaders: list[Callable[[], list[type]]] = []
    if v2_logits_interface() is not None:
        from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_plugins

        loaders.append(_load_v2_logitsprocs_plugins)
    v1 = v1_logits_interface()
    if v1 is not None:
        loaders.append(v1._load_logitsprocs_plugins)
    return loaders


def is_v2_logits_init(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``__init__`` was called by the V2 runner.

    V1 calls ``(vllm_config, device, is_pin_memory)``; V2 calls
    ``(vllm_config, req_states)``.
    """
    if "req_states" in kwargs:
        return True
    if "device" in kwargs or "is_pin_memory" in kwargs:
        return False
    return len(args) == 2


def batch_update_types() -> tuple[Any, Any]:
    """``(BatchUpdate, MoveDirectionality)`` of the V1 interface."""
    require_vllm_installed("logits processors")
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    return BatchUpdate, MoveDirectionality


def logits_processors_skipped(vllm_config: Any) -> str | None:
    """Why logits-processor plugins cannot take effect in this engine (with
    what to change), or None if they can.

    Why: V1's ``build_logitsprocs`` loads no plugin when speculative decoding
    is on (0.31 to 0.33), yet the front end still validates and accepts their
    arguments; and with async scheduling (CUDA builds) V1 hands plugins output
    lists holding ``-1`` placeholders, which it repairs only for its own
    penalties and ``--logits-processors``. The V2 runner runs plugins
    with drafts and committed tokens. Can go: when V1 leaves the matrix
    (canary: ``STR_SPEC_DEC_REJECTS_LOGITSPROCS`` disappears).
    """
    if v1_logits_interface() is None:
        return None  # 0.34+: only the V2 runner, which runs plugins with drafts and committed tokens
    if bool(getattr(vllm_config, "use_v2_model_runner", False)):
        return None
    v2_fix = "on a CUDA build, VLLM_USE_V2_MODEL_RUNNER=1 runs them with it"
    if getattr(vllm_config, "speculative_config", None) is not None:
        return ("speculative decoding is enabled (--speculative-config) and vLLM's V1 model runner "
                f"then runs no logits-processor plugin; serve without speculative decoding ({v2_fix})")
    if bool(getattr(getattr(vllm_config, "scheduler_config", None), "async_scheduling", False)):
        return ("async scheduling is enabled and vLLM's V1 model runner then hands logits-processor "
                "plugins placeholder (-1) output tokens, so repeats would be missed; serve with "
                f"--no-async-scheduling ({v2_fix})")
    return None


def input_processor_class() -> type:
    """The front-end class whose ``_validate_params`` checks each request.

    ``vllm.v1.engine.input_processor.InputProcessor`` in 0.31 to 0.34; kept
    here so that a future move has one home.
    """
    require_vllm_installed("request validation")
    from vllm.v1.engine.input_processor import InputProcessor

    return InputProcessor


# --- 2. LoRARequest construction ---

def make_lora_request(
    lora_name: str,
    lora_int_id: int,
    lora_path: str,
    base_model_name: str | None = None,
    **extra: Any,
) -> Any:
    """Build a ``LoRARequest`` with keyword arguments valid for this vLLM.

    Why: the struct is array-like and 0.32 removed ``tensorizer_config_dict``;
    positional construction silently shifts fields. Unknown extras are dropped.
    Can go: when 0.31 leaves the matrix (keep keyword construction).
    """
    require_vllm_installed("LoRA requests")
    from vllm.lora.request import LoRARequest

    fields = set(getattr(LoRARequest, "__struct_fields__", ())) or set(
        inspect.signature(LoRARequest).parameters
    )
    kwargs = {k: v for k, v in extra.items() if k in fields}
    return LoRARequest(
        lora_name=lora_name,
        lora_int_id=lora_int_id,
        lora_path=lora_path,
        base_model_name=base_model_name,
        **kwargs,
    )


# --- 4. IO processor responses ---

def io_processor_shapes_response_in_post_process() -> bool:
    """True where vLLM no longer calls ``IOProcessor.output_to_response``.

    Why: 0.32 dropped the call; the response must be shaped in
    ``post_process``. Before 0.32 vLLM still calls ``output_to_response`` when
    defined. Can go: when 0.31 leaves the matrix.
    """
    require_vllm_installed("IO processors")
    return version_in(">=0.32")


# --- 5. platform interface renames ---

def platform_method_names() -> dict[str, bool]:
    """Which optional platform hooks this vLLM's ``Platform`` has."""
    require_vllm_installed("platforms")
    from vllm.platforms.interface import Platform

    names = (
        "get_lora_vocab_padding_size",  # removed in 0.32
        "get_mla_prefill_backend_cls",  # added in 0.32
        "get_kv_cache_config_builder_cls",  # added in 0.33
        "update_block_size_for_backend",
    )
    return {name: hasattr(Platform, name) for name in names}


def set_kv_cache_layout(worker: Any, kv_cache_layout: str, cp_kv_cache_interleave_size: int = 1) -> None:
    """Call ``worker.set_kv_cache_layout`` with the arguments this vLLM takes.

    Why: 0.33 added a required ``cp_kv_cache_interleave_size`` argument to
    ``WorkerBase.set_kv_cache_layout`` (the engine core's RPC); before, the
    layout alone. A worker that overrides it should accept ``*args`` (tests
    call it through this shim). Can go: when 0.32 leaves the matrix.
    """
    require_vllm_installed("workers")
    if version_in(">=0.33"):
        worker.set_kv_cache_layout(kv_cache_layout, cp_kv_cache_interleave_size)
    else:
        worker.set_kv_cache_layout(kv_cache_layout)


# --- 6. model interfaces ---

def model_protocol(name: str = "VllmModel") -> type:
    """A model protocol of ``interfaces_base`` (``VllmModel``,
    ``VllmModelForTextGeneration``, ``VllmModelForPooling``), usable unsubscripted.

    Why: the protocols were generic (``VllmModel[T]``) up to 0.32 and are not
    from 0.33, where subscripting raises ``TypeError``; the bare class works
    on every version. Can go: when 0.32 leaves the matrix (import it directly).
    """
    require_vllm_installed("model interfaces")
    from vllm.model_executor.models import interfaces_base

    return getattr(interfaces_base, name)


def supports_mamba_prefix_caching(model: Any) -> bool:
    """Whether ``model`` declares Mamba prefix caching (False where vLLM dropped it).

    Why: 0.33 removed ``supports_mamba_prefix_caching`` (function and class
    flag). Can go: when 0.32 leaves the matrix.
    """
    require_vllm_installed("model interfaces")
    from vllm.model_executor.models import interfaces

    check = getattr(interfaces, "supports_mamba_prefix_caching", None)
    return bool(check(model)) if check is not None else False


# --- 7. attention backend registration ---

_ATTENTION_BACKENDS: dict[tuple[str, str], Any] = {}


def register_attention_backend(name: str, class_path: str) -> Any:
    """Register an attention backend (once per process) and return the enum
    member that selects it.

    Why: ``register_backend`` accepts a new string name only from 0.32;
    before, out-of-tree backends use the single ``CUSTOM`` slot.
    Can go: when 0.31 leaves the matrix.
    """
    key = (name, class_path)
    if key in _ATTENTION_BACKENDS:
        return _ATTENTION_BACKENDS[key]
    require_vllm_installed("attention backends")
    from vllm.v1.attention.backends import registry

    if version_in(">=0.32"):
        registry.register_backend(name, class_path)
        member = getattr(registry.AttentionBackendEnum, name, name)
    else:
        registry.register_backend(registry.AttentionBackendEnum.CUSTOM, class_path)
        member = registry.AttentionBackendEnum.CUSTOM
    _ATTENTION_BACKENDS[key] = member
    return member


def attention_backend_name(name: str, class_path: str) -> str:
    """What the backend's ``get_name()`` must return: vLLM's ``Attention``
    layer looks it up with ``AttentionBackendEnum[backend.get_name()]``, so
    before 0.32 a backend in the ``CUSTOM`` slot must call itself ``CUSTOM``.
    Can go with :func:`register_attention_backend`'s branch."""
    member = register_attention_backend(name, class_path)
    return getattr(member, "name", str(member))


def attention_backend_refusals(backend: type, selector_config: Any, device_capability: Any = None) -> list[str]:
    """The reasons ``backend.validate_configuration`` gives for the layer that
    vLLM's attention selector describes (``AttentionSelectorConfig``), or [].

    Why: the selector config gained fields over versions (``use_rswa``,
    ``use_adaptive_verification``); only the ones this vLLM's
    ``validate_configuration`` takes are passed. Feature detection.
    Can go: never (the signature moves with vLLM).
    """
    import inspect

    validate = getattr(backend, "validate_configuration", None)
    as_dict = getattr(selector_config, "_asdict", None)
    if validate is None or as_dict is None:
        return []
    accepted = inspect.signature(validate).parameters
    kwargs = {k: v for k, v in as_dict().items() if k in accepted}
    if "device_capability" in accepted:
        kwargs["device_capability"] = device_capability
    return list(validate(**kwargs))


# --- 8. CPU worker and model runner ---

def standalone_cpu_runner_available() -> bool:
    """Whether this vLLM runs CPU engines on the standalone V2 CPU runner only.

    Why: 0.34 removed Model Runner V1 (``vllm.v1.worker.cpu_model_runner``);
    what is left for a CPU device is ``StandaloneCPUModelRunner``
    (``vllm.v1.worker.cpu``). Feature detection, no import of vLLM.
    Can go: when 0.33 leaves the matrix (always true then).
    """
    import importlib.util

    return (importlib.util.find_spec("vllm.v1.worker.cpu.standalone_model_runner") is not None
            and importlib.util.find_spec("vllm.v1.worker.cpu_model_runner") is None)


def cpu_memory_fraction(cache_config: Any) -> float:
    """The fraction of memory a CPU worker reserves (``--gpu-memory-utilization``).

    Why: 0.34 made ``gpu_memory_utilization`` default to None and added
    ``resolved_gpu_memory_utilization``. Can go: when 0.33 leaves the matrix.
    """
    resolved = getattr(cache_config, "resolved_gpu_memory_utilization", None)
    return float(resolved if resolved is not None else cache_config.gpu_memory_utilization)


def v1_runner_replaced_by_v2(vllm_config: Any) -> bool:
    """Whether vLLM 0.31 to 0.33 would build its V2 runner where a platform
    expects V1's CPU runner (``VLLM_USE_V2_MODEL_RUNNER=1``, or by default
    wherever Triton is usable, such as a GPU host).

    Why: on those versions ``CPUWorker`` builds the Triton-based V2 CPU runner
    when ``vllm_config.use_v2_model_runner`` is true. 0.34 has no V1 runner
    (False there). Can go: when 0.33 leaves the matrix.
    """
    if standalone_cpu_runner_available():
        return False
    return bool(getattr(vllm_config, "use_v2_model_runner", False))


# --- environment variables ---

def register_env_vars(names: Iterable[str]) -> list[str]:
    """Add ``names`` to vLLM's known environment variables; return those added.

    vLLM warns ``Unknown vLLM environment variable detected`` (or fails, with
    ``fail_on_environ_validation``) for any ``VLLM_*`` variable missing from
    ``vllm.envs.environment_variables``.
    """
    import os

    try:
        import vllm.envs as envs
    except ImportError as exc:
        raise VllmNotInstalledError(
            "environment validation needs vLLM, but `import vllm` fails: install vLLM first"
        ) from exc

    added = []
    for name in names:
        if name not in envs.environment_variables:
            envs.environment_variables[name] = lambda n=name: os.environ.get(n)
            added.append(name)
    return added
