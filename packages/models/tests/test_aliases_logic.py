"""Alias parsing and registration rules (pure logic; vLLM's registry used as is)."""

from __future__ import annotations

import pytest

from vllm_plugin_models.aliases import AliasError, parse_aliases, register_aliases


def test_parse():
    assert parse_aliases("") == []
    assert parse_aliases(" A=LlamaForCausalLM , B = Qwen2ForCausalLM,") == [
        ("A", "LlamaForCausalLM"), ("B", "Qwen2ForCausalLM")]


@pytest.mark.parametrize(("raw", "says"), [
    ("NoEquals", "'NoEquals' is malformed: expected NewArch=ExistingArch"),
    ("=LlamaForCausalLM", "malformed"),
    ("A=", "malformed"),
    ("Bad Name=LlamaForCausalLM", "'Bad Name' is not an architecture name"),
    ("A=A", "maps an architecture to itself"),
    ("A=LlamaForCausalLM,A=Qwen2ForCausalLM", "names 'A' twice"),
])
def test_malformed_entries_name_the_entry(raw, says):
    with pytest.raises(AliasError, match=None) as err:
        parse_aliases(raw)
    assert says in str(err.value)


def test_register_rules():
    from vllm import ModelRegistry

    builtin = set(ModelRegistry.get_supported_archs())
    assert register_aliases(ModelRegistry, [("AcmeTestForCausalLM", "LlamaForCausalLM")],
                            allow_override=False, builtin=builtin) == ["AcmeTestForCausalLM->LlamaForCausalLM"]
    assert "AcmeTestForCausalLM" in ModelRegistry.get_supported_archs()
    with pytest.raises(AliasError, match="vLLM has no architecture 'NoSuchForCausalLM'"):
        register_aliases(ModelRegistry, [("X", "NoSuchForCausalLM")], allow_override=False, builtin=builtin)
    with pytest.raises(AliasError, match="would replace vLLM's own Qwen2ForCausalLM.*ALLOW_OVERRIDE=1"):
        register_aliases(ModelRegistry, [("Qwen2ForCausalLM", "LlamaForCausalLM")], allow_override=False,
                         builtin=builtin)
