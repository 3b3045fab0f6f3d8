"""Settings of vllm-plugin-torch-native.

The activation variable is fixed by the issue as ``VLLM_PLUGIN_TORCH_NATIVE``
(no suffix): the prefix is the whole name and the setting's name is empty.
"""

from vllm_plugin_core.settings import Setting, Settings

SETTINGS = Settings(
    "torch_native",
    [
        Setting(
            "",
            bool,
            False,
            "Activate the torch_native platform (vllm-plugin-torch-native) instead of vLLM's own.",
        ),
    ],
    prefix="VLLM_PLUGIN_TORCH_NATIVE",
)

#: The variable that activates the platform.
ENABLE_VAR = SETTINGS.env_name("")


def enabled() -> bool:
    """Whether ``VLLM_PLUGIN_TORCH_NATIVE`` asks for the platform (bad values raise)."""
    return bool(SETTINGS.get(""))
