"""Aliases next to vLLM's own ``--hf-overrides '{"architectures": [...]}'``,
through vLLM's real ``ModelConfig`` and ``ModelRegistry`` (no engine): both
resolve a renamed Llama checkpoint to vLLM's Llama implementation; only the
alias keeps the checkpoint's own architecture name in the config vLLM reports,
and only the alias needs nothing on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def renamed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vllm_plugin_core.testing.models import build_causal_lm
    from vllm_plugin_models.testing import renamed_copy

    return renamed_copy(build_causal_lm(), tmp_path_factory.mktemp("acme") / "acme", "AcmeRenamedForCausalLM")


def _resolved(model_config) -> tuple[str, str]:
    """(architecture vLLM reports, implementation class it would load)."""
    from vllm import ModelRegistry

    cls, arch = ModelRegistry.resolve_model_cls(model_config.architectures, model_config)
    return arch, cls.__name__


def test_alias_and_hf_overrides_load_the_same_implementation(renamed: Path):
    from vllm import ModelRegistry
    from vllm.config import ModelConfig

    from vllm_plugin_models.aliases import register_aliases

    with pytest.raises(Exception, match="AcmeRenamedForCausalLM"):
        _resolved(ModelConfig(model=str(renamed)))  # neither: vLLM does not know the name

    overridden = ModelConfig(model=str(renamed), hf_overrides={"architectures": ["LlamaForCausalLM"]})
    assert _resolved(overridden) == ("LlamaForCausalLM", "LlamaForCausalLM")
    assert overridden.hf_config.architectures == ["LlamaForCausalLM"]  # the checkpoint's name is gone

    builtin = set(ModelRegistry.get_supported_archs())
    register_aliases(ModelRegistry, [("AcmeRenamedForCausalLM", "LlamaForCausalLM")], allow_override=False,
                     builtin=builtin)
    aliased = ModelConfig(model=str(renamed))  # nothing on the command line
    assert _resolved(aliased) == ("AcmeRenamedForCausalLM", "LlamaForCausalLM")
    assert aliased.hf_config.architectures == ["AcmeRenamedForCausalLM"]  # kept as the checkpoint says
