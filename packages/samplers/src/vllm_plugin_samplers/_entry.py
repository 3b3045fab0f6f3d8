"""The ``vllm.general_plugins`` entry point ``samplers``.

vLLM calls :func:`register` in every process it starts. Importing this module
imports only core's guard; the body installs :mod:`.spec_guard`, which makes
the front end refuse sampler arguments that speculative decoding on the V1
runner would silently ignore.
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
    from vllm_plugin_samplers.spec_guard import PATCH_NAME, install

    install()
    return f"patch {PATCH_NAME} (sampler arguments refused where speculative decoding drops them)"
