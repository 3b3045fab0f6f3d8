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
