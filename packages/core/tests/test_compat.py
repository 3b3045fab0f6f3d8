"""One test per compatibility shim, run against the real vLLM of each session,
plus compat canaries that fail once the oldest supported vLLM no longer needs
a shim (delete the shim then)."""

from __future__ import annotations

import os

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from vllm_plugin_core import compat
from vllm_plugin_core.version import SUPPORTED_VLLM, version_in, vllm_version

#: shim -> first vLLM version that no longer needs it (None: still needed at the newest).
SHIM_NEEDED_BEFORE = {
    "make_lora_request": "0.32",
    "io_processor_shapes_response_in_post_process": "0.32",
    "register_attention_backend": "0.32",
    "set_kv_cache_layout": "0.33",
    "model_protocol": "0.33",
    "supports_mamba_prefix_caching": "0.33",
    "platform_method_names": "0.33",
    "standalone_cpu_runner_available": "0.34",
    "cpu_memory_fraction": "0.34",
    "v1_runner_replaced_by_v2": "0.34",
}


def oldest_supported() -> Version:
    return min(Version(s.version) for s in SpecifierSet(SUPPORTED_VLLM) if s.operator in (">=", "=="))


@pytest.mark.parametrize("shim", sorted(SHIM_NEEDED_BEFORE))
def test_canary_shim_still_needed(shim):
    """When this fails, the oldest supported vLLM has the new interface: delete the shim."""
    assert hasattr(compat, shim)
    assert oldest_supported() < Version(SHIM_NEEDED_BEFORE[shim]), (
        f"vLLM {oldest_supported()} no longer needs compat.{shim}; remove it and call vLLM directly"
    )


def test_logits_processor_bases():
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2

    bases = compat.logits_processor_bases()
    has_v1 = os.path.isdir(os.path.join(os.path.dirname(__import__("vllm").__file__),
                                        "v1", "sample", "logits_processor"))
    assert has_v1 == (compat.v1_logits_interface() is not None) == version_in("<0.34")
    if has_v1:
        from vllm.v1.sample.logits_processor import LogitsProcessor as V1

        assert bases == (V1, V2)
    else:  # vLLM 0.34 removed Model Runner V1
        assert bases == (V2,)
        return

    class Both(*bases):
        def __init__(self, *args, **kwargs):
            self.v2 = compat.is_v2_logits_init(args, kwargs)

        def apply(self, logits, ctx=None):
            return logits

        def is_argmax_invariant(self):
            return True

        def update_state(self, batch_update):
            pass

    assert Both(None, "cpu", False).v2 is False
    assert Both(None, req_states=None).v2 is True
    assert Both(None, object()).v2 is True


def test_make_lora_request_keyword_only():
    req = compat.make_lora_request("ad", 3, "/tmp/ad", base_model_name="base",
                                   tensorizer_config_dict=None, load_inplace=False)
    assert (req.lora_name, req.lora_int_id, req.lora_path, req.base_model_name) == ("ad", 3, "/tmp/ad", "base")
    from vllm.lora.request import LoRARequest

    assert ("tensorizer_config_dict" in LoRARequest.__struct_fields__) == version_in("<0.32")


def test_io_processor_response_shaping_flag():
    from vllm.entrypoints.pooling.pooling import io_processor

    still_called = "output_to_response" in open(io_processor.__file__).read()
    assert compat.io_processor_shapes_response_in_post_process() is (not still_called)


def test_platform_method_names():
    names = compat.platform_method_names()
    assert names["get_lora_vocab_padding_size"] == version_in("<0.32")
    assert names["get_mla_prefill_backend_cls"] == version_in(">=0.32")
    assert names["get_kv_cache_config_builder_cls"] == version_in(">=0.33")


def test_set_kv_cache_layout_passes_what_this_vllm_takes():
    import inspect

    from vllm.v1.worker.worker_base import WorkerBase

    params = list(inspect.signature(WorkerBase.set_kv_cache_layout).parameters)[1:]
    assert (params == ["kv_cache_layout", "cp_kv_cache_interleave_size"]) == version_in(">=0.33")
    assert (params == ["kv_cache_layout"]) == version_in("<0.33")
    seen = []

    class Worker:  # the real method's signature, recorded
        def set_kv_cache_layout(self, *args):
            inspect.signature(WorkerBase.set_kv_cache_layout).bind(self, *args)
            seen.append(args)

    compat.set_kv_cache_layout(Worker(), "NHD", 1)
    assert seen == [("NHD", 1) if version_in(">=0.33") else ("NHD",)]


@pytest.mark.parametrize("name", ["VllmModel", "VllmModelForTextGeneration", "VllmModelForPooling"])
def test_model_protocol_unsubscripted(name):
    proto = compat.model_protocol(name)

    class Tiny(proto):  # a plugin's model class may list it as a base, unsubscripted
        pass

    assert proto in Tiny.__mro__
    generic = bool(getattr(proto, "__parameters__", ()))
    assert generic == version_in("<0.33")


def test_supports_mamba_prefix_caching():
    from vllm.model_executor.models import interfaces

    class Plain:
        pass

    class Flagged:
        supports_mamba_prefix_caching = True

    assert compat.supports_mamba_prefix_caching(Plain) is False
    assert compat.supports_mamba_prefix_caching(Flagged) is version_in("<0.33")
    assert hasattr(interfaces, "supports_mamba_prefix_caching") == version_in("<0.33")


def test_register_attention_backend():
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    path = "vllm_plugin_core.compat:register_attention_backend"  # any importable dotted path
    member = compat.register_attention_backend("VPC_TEST_BACKEND", path)
    if version_in(">=0.32"):
        assert member is not AttentionBackendEnum.CUSTOM
    else:
        assert member is AttentionBackendEnum.CUSTOM
    assert member.get_path() == path


def test_register_env_vars():
    import vllm.envs as envs

    name = "VLLM_PLUGIN_COMPAT_TEST_VAR"
    assert compat.register_env_vars([name]) == [name]
    assert compat.register_env_vars([name]) == []
    assert name in envs.environment_variables


def test_running_version_is_in_supported_range():
    assert vllm_version() in SpecifierSet(SUPPORTED_VLLM)


needs_v1 = pytest.mark.skipif(compat.v1_logits_interface() is None,
                              reason="vLLM 0.34+ has no V1 model runner (its case: test_logits_processors_never_skipped_without_v1)")


def test_logits_processors_never_skipped_without_v1():
    """vLLM 0.34+: only the V2 runner, which runs plugins under speculative
    decoding and async scheduling alike."""
    from types import SimpleNamespace

    if compat.v1_logits_interface() is not None:
        pytest.skip("vLLM 0.31 to 0.33: the V1 cases are tested below")
    for spec, sched in ((object(), False), (None, True), (object(), True)):
        cfg = SimpleNamespace(speculative_config=spec, use_v2_model_runner=False,
                              scheduler_config=SimpleNamespace(async_scheduling=sched))
        assert compat.logits_processors_skipped(cfg) is None


def test_standalone_cpu_runner_and_memory_fraction():
    from types import SimpleNamespace

    assert compat.standalone_cpu_runner_available() == version_in(">=0.34")
    assert compat.cpu_memory_fraction(SimpleNamespace(gpu_memory_utilization=0.3)) == 0.3
    resolved = SimpleNamespace(gpu_memory_utilization=None, resolved_gpu_memory_utilization=0.4)
    assert compat.cpu_memory_fraction(resolved) == 0.4


@needs_v1
def test_logits_processors_skipped_under_speculative_decoding_on_v1():
    """Canary: V1 still builds no plugin under speculative decoding (the
    message below goes when it applies them; then drop the shim)."""
    from types import SimpleNamespace

    import vllm.v1.sample.logits_processor as lp

    assert "speculative decoding" in lp.STR_SPEC_DEC_REJECTS_LOGITSPROCS
    assert compat.logits_processors_skipped(SimpleNamespace(speculative_config=None)) is None
    v1 = SimpleNamespace(speculative_config=object(), use_v2_model_runner=False)
    assert "speculative decoding" in compat.logits_processors_skipped(v1)
    v2 = SimpleNamespace(speculative_config=object(), use_v2_model_runner=True)
    assert compat.logits_processors_skipped(v2) is None
    # Async scheduling (CUDA): V1 hands plugins -1 placeholders; V2 reads committed tokens.
    sync = SimpleNamespace(speculative_config=None, scheduler_config=SimpleNamespace(async_scheduling=False))
    assert compat.logits_processors_skipped(sync) is None
    v1_async = SimpleNamespace(speculative_config=None, use_v2_model_runner=False,
                               scheduler_config=SimpleNamespace(async_scheduling=True))
    assert "--no-async-scheduling" in compat.logits_processors_skipped(v1_async)
    v2_async = SimpleNamespace(speculative_config=None, use_v2_model_runner=True,
                               scheduler_config=SimpleNamespace(async_scheduling=True))
    assert compat.logits_processors_skipped(v2_async) is None


@needs_v1
def test_v1_async_scheduling_still_leaves_placeholders_for_plugins():
    """Canary of the async-scheduling refusal: V1 still fills output placeholders
    only when its own penalties or ``--logits-processors`` need them."""
    import inspect

    from vllm.v1.worker import gpu_input_batch, gpu_model_runner

    assert "logitsprocs_need_output_token_ids=bool(custom_logitsprocs)" in inspect.getsource(gpu_model_runner)
    assert "def update_async_output_token_ids" in inspect.getsource(gpu_input_batch)


def test_input_processor_class_validates_requests():
    cls = compat.input_processor_class()
    assert cls.__name__ == "InputProcessor" and callable(cls._validate_params)


def test_v1_runner_replaced_by_v2():
    """True only on a vLLM with V1's CPU runner where the config asks for V2."""
    from types import SimpleNamespace

    v2 = SimpleNamespace(use_v2_model_runner=True)
    assert compat.v1_runner_replaced_by_v2(v2) == version_in("<0.34")
    assert compat.v1_runner_replaced_by_v2(SimpleNamespace(use_v2_model_runner=False)) is False
    assert compat.v1_runner_replaced_by_v2(SimpleNamespace()) is False


def test_attention_backend_refusals_through_the_real_selector_config():
    """The backend's own validate_configuration, with the fields this vLLM's
    signature takes, for vLLM's AttentionSelectorConfig."""
    import torch
    from vllm.v1.attention.backend import AttentionBackend
    from vllm.v1.attention.selector import AttentionSelectorConfig

    class Fp32Only(AttentionBackend):
        supported_dtypes = [torch.float32]

    ok = AttentionSelectorConfig(head_size=64, dtype=torch.float32, kv_cache_dtype="auto", block_size=16)
    assert compat.attention_backend_refusals(Fp32Only, ok) == []
    bad = AttentionSelectorConfig(head_size=64, dtype=torch.bfloat16, kv_cache_dtype="auto", block_size=16)
    assert compat.attention_backend_refusals(Fp32Only, bad) == ["dtype not supported"]
    assert compat.attention_backend_refusals(Fp32Only, object()) == []  # not a selector config

