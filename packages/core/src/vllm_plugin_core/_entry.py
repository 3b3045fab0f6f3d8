"""Core's own ``vllm.general_plugins`` entry point.

Runs in every vLLM process, before vLLM validates its environment:

1. announces every declared plugin setting (entry-point group
   ``vllm_plugin_core.settings``) to vLLM's environment validator, so vLLM
   never warns ``Unknown vLLM environment variable detected`` for them;
2. applies the patches named in ``VLLM_PLUGIN_PATCHES`` that are registered.

Imports only the standard library and light core modules; ``vllm.envs`` is
already imported by vLLM when general plugins run.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from vllm_plugin_core.guard import plugin_entry_point

logger = logging.getLogger("vllm.plugins.core")

SETTINGS_GROUP = "vllm_plugin_core.settings"


def declared_env_names() -> list[str]:
    """Every variable declared by an installed package's settings."""
    names: list[str] = []
    for ep in entry_points(group=SETTINGS_GROUP):
        try:
            names.extend(ep.load().env_names())
        except Exception as exc:  # one broken package must not hide the others
            logger.warning("settings of %s (%s) could not be loaded: %s", ep.name, ep.value, exc)
    return names


@plugin_entry_point(
    "vllm-plugin-core",
    fix="reinstall vllm-plugin-core and check the `vllm_plugin_core.settings` entry points of your plugins",
)
def register() -> list[str]:
    from vllm_plugin_core import compat
    from vllm_plugin_core.patches import REGISTRY

    added = compat.register_env_vars(declared_env_names())
    applied = REGISTRY.apply_from_env() if REGISTRY.names() else []
    return [f"{len(added)} plugin settings known to vLLM"] + [f"patch {n}" for n in applied]
