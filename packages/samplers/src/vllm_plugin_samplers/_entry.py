"""The ``vllm.general_plugins`` entry point ``samplers``.

vLLM calls :func:`register` in every process it starts. Importing this module
imports only core's guard; the body installs :mod:`.front_end`, which makes
the front end refuse sampler arguments that speculative decoding on the V1
runner would silently ignore, and resolve custom DRY breakers there.
"""

from __future__ import annotations

from vllm_plugin_core.guard import plugin_entry_point
from vllm_plugin_core.version import SUPPORTED_VLLM

PLUGIN = "vllm-plugin-samplers"


@plugin_entry_point(
    PLUGIN,
    fix="reinstall vllm-plugin-samplers and vllm-plugin-core at matching versions",
    vllm=SUPPORTED_VLLM,
)
def register() -> str:
    from vllm_plugin_samplers.front_end import PATCH_NAME, install

    install()
    return f"patch {PATCH_NAME} (refuses sampler arguments speculative decoding drops; resolves DRY breakers)"
