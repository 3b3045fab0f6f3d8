"""Start-time refusals of check_supported for the parallel layouts the platform
lacks (pure logic: a stand-in config carrying only the fields it reads)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vllm_plugin_torch_native.platform import UnsupportedConfiguration, check_supported


def _config(**parallel):
    pc = SimpleNamespace(pipeline_parallel_size=1, data_parallel_size=1, decode_context_parallel_size=1)
    pc.__dict__.update(parallel)
    return SimpleNamespace(model_config=None, cache_config=None, parallel_config=pc, speculative_config=None)


def test_plain_layout_passes():
    check_supported(_config())


@pytest.mark.parametrize("field", ["pipeline_parallel_size", "data_parallel_size", "decode_context_parallel_size"])
def test_unsupported_parallel_layout_is_refused_naming_the_field(field):
    with pytest.raises(UnsupportedConfiguration, match=f"{field}=2"):
        check_supported(_config(**{field: 2}))


@pytest.mark.parametrize("flag, words", [
    ("use_mm_prefix", "prefix-LM"), ("use_non_causal", "non-causal decoder"),
    ("use_batch_invariant", "VLLM_BATCH_INVARIANT"), ("use_per_head_quant_scales", "per-head"),
    ("use_pcp", "prefill context parallelism"), ("use_dcp", "decode context parallelism"),
    ("use_mla", "MLA"), ("has_sink", "sinks"),
])
def test_attention_features_it_lacks_are_refused_while_the_model_is_built(flag, words):
    """vLLM's attention selector passes what each layer needs; the platform
    refuses what its backend cannot do (before any weight is loaded), naming it."""
    from vllm_plugin_torch_native.platform import TorchNativePlatform

    selector = SimpleNamespace(**{flag: True})
    with pytest.raises(UnsupportedConfiguration, match=words):
        TorchNativePlatform.get_attn_backend_cls(None, selector)


@pytest.mark.parametrize("change, words", [
    ({"dtype": "float16"}, "dtype not supported"),
    ({"kv_cache_dtype": "fp8"}, "kv_cache_dtype not supported"),
    ({"attn_type": "encoder_decoder"}, "attention type encoder_decoder"),
])
def test_the_backends_own_validate_configuration_is_asked(change, words):
    """Beyond the explicit flags, what the backend's validate_configuration
    refuses for a layer (vLLM's real selector config) fails at start, naming it."""
    import torch
    from vllm.v1.attention.selector import AttentionSelectorConfig

    from vllm_plugin_torch_native.platform import TorchNativePlatform

    fields = {"head_size": 64, "dtype": torch.float32, "kv_cache_dtype": "auto", "block_size": 16}
    TorchNativePlatform.get_attn_backend_cls(None, AttentionSelectorConfig(**fields))  # accepted
    if "dtype" in change:
        change = {"dtype": getattr(torch, change["dtype"])}
    with pytest.raises(UnsupportedConfiguration, match=words):
        TorchNativePlatform.get_attn_backend_cls(None, AttentionSelectorConfig(**{**fields, **change}))


def test_v2_runner_on_a_v1_vllm_is_refused_naming_the_variable():
    """On 0.31-0.33 the platform runs V1's CPU runner; a config that makes
    vLLM build its V2 runner there fails at start, naming the fix."""
    from vllm_plugin_core.compat import standalone_cpu_runner_available

    config = _config()
    config.use_v2_model_runner = True
    if standalone_cpu_runner_available():
        check_supported(config)  # 0.34: always the platform's own V2 CPU runner
        return
    with pytest.raises(UnsupportedConfiguration, match="VLLM_USE_V2_MODEL_RUNNER=0"):
        check_supported(config)
    config.use_v2_model_runner = False
    check_supported(config)


def test_a_value_head_size_other_than_the_key_head_size_is_refused():
    import torch

    from vllm_plugin_torch_native.worker import refuse_unequal_value_head_size

    model = torch.nn.Sequential(torch.nn.Module(), torch.nn.Module())
    model[0].head_size, model[0].head_size_v = 64, 64
    refuse_unequal_value_head_size(model)
    model[1].head_size, model[1].head_size_v = 64, 128
    with pytest.raises(UnsupportedConfiguration, match=r"value head size \(128\).*layer 1"):
        refuse_unequal_value_head_size(model)


def test_a_fused_mixture_of_experts_layer_is_refused_whatever_the_config_calls_it():
    """Configs name the expert count in many ways (moe_num_experts, ffn_config...):
    after loading, any vLLM FusedMoE layer is refused, naming the layer."""
    import torch

    from vllm_plugin_torch_native.worker import refuse_mixture_of_experts

    class FusedMoE(torch.nn.Module):  # stands for vLLM's class, matched by name through the MRO
        pass

    class ErnieMoE(FusedMoE):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    refuse_mixture_of_experts(model)
    model.append(ErnieMoE())
    with pytest.raises(UnsupportedConfiguration, match=r"mixture-of-experts.*layer 1"):
        refuse_mixture_of_experts(model)
