"""Settings of the core package itself (``VLLM_PLUGIN_*``, and the project-wide
``VLLM_PLUGINS_ALLOW_UNTESTED_VLLM``)."""

from vllm_plugin_core.settings import Setting, Settings

SETTINGS = Settings(
    "",
    [
        Setting(
            "STRICT",
            bool,
            False,
            "Let a failing plugin registration raise and stop vLLM instead of logging one error.",
        ),
        Setting(
            "PATCHES",
            list,
            [],
            "Patches to apply, by name (comma-separated), or * for every registered patch.",
        ),
        Setting(
            "CACHE_DIR",
            str,
            None,
            "Where the test helpers cache the small models they build (default: ~/.cache/vllm-plugins).",
        ),
    ],
    prefix="VLLM_PLUGIN_",
)

#: Switches that apply to every plugin, named ``VLLM_PLUGINS_*`` (plural, like
#: vLLM's own ``VLLM_PLUGINS``): a second declared ``Settings`` (entry point
#: ``core-gate``), so vLLM's environment validator knows them too.
GATE_SETTINGS = Settings(
    "plugins",
    [
        Setting(
            "ALLOW_UNTESTED_VLLM",
            bool,
            False,
            "On a vLLM newer than a plugin's tested range, load the plugin anyway with one warning "
            "instead of refusing it (an older vLLM is still refused).",
        ),
    ],
    prefix="VLLM_PLUGINS_",
)
