"""Settings of vllm-plugin-models (``VLLM_PLUGIN_MODELS_*``)."""

from vllm_plugin_core.settings import Setting, Settings

SETTINGS = Settings(
    "models",
    [
        Setting(
            "ALIASES",
            str,
            "",
            "Architecture aliases, comma-separated NewArch=ExistingArch pairs.",
            form="comma-separated NewArch=ExistingArch pairs, e.g. AcmeForCausalLM=LlamaForCausalLM",
        ),
        Setting(
            "ALLOW_OVERRIDE",
            bool,
            False,
            "Let an alias replace an architecture vLLM already has.",
        ),
    ],
)
