"""Settings of the core package itself (``VLLM_PLUGIN_*``)."""

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
