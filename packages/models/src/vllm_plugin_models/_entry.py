"""``vllm.general_plugins`` entry point ``models`` (runs in every vLLM process).

Registers ``NanoChatForCausalLM`` lazily by dotted path (nothing heavy is
imported here) and the aliases from ``VLLM_PLUGIN_MODELS_ALIASES``.
"""

from __future__ import annotations

from vllm_plugin_core.guard import plugin_entry_point
from vllm_plugin_core.version import SUPPORTED_VLLM

ARCHITECTURES = {
    "NanoChatForCausalLM": "vllm_plugin_models.nanochat:NanoChatForCausalLM",
}


@plugin_entry_point(
    "vllm-plugin-models",
    fix="check VLLM_PLUGIN_MODELS_ALIASES (NewArch=ExistingArch pairs, comma-separated)",
    vllm=SUPPORTED_VLLM,
)
def register() -> list[str]:
    from vllm import ModelRegistry

    from vllm_plugin_models._settings import SETTINGS
    from vllm_plugin_models.aliases import parse_aliases, register_aliases

    builtin = set(ModelRegistry.get_supported_archs())
    done = []
    for arch, path in ARCHITECTURES.items():
        if arch not in builtin:  # never shadow an upstream implementation
            ModelRegistry.register_model(arch, path)
            done.append(arch)
    pairs = parse_aliases(SETTINGS.get("ALIASES"))
    done += register_aliases(ModelRegistry, pairs, allow_override=SETTINGS.get("ALLOW_OVERRIDE"),
                             builtin=builtin)
    return done
