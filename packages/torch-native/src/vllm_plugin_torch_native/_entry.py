"""Entry points of vllm-plugin-torch-native (kept light: no vLLM, no torch at import).

* ``detect`` (``vllm.platform_plugins``, name ``torch_native``): returns the
  platform's dotted path when ``VLLM_PLUGIN_TORCH_NATIVE`` is true, else None.
  vLLM calls it in every process when it first resolves ``current_platform``
  (twice: once to probe, once to load); it logs the activation once per process.
* ``register_ops`` (``vllm.general_plugins``, name ``torch_native``): registers
  the platform's own custom ops with ``CustomOp.register_oot`` in every vLLM
  process, only when this platform is the active one (``register_oot`` swaps
  the class vLLM instantiates whatever the platform, so it must not run
  otherwise); and no-ops ``torch.accelerator``'s cache calls on a torch
  without accelerator (see ``platform.install_accelerator_noops``).
"""

from __future__ import annotations

import logging

from vllm_plugin_core.guard import plugin_entry_point
from vllm_plugin_core.version import SUPPORTED_VLLM
from vllm_plugin_torch_native import PLATFORM_PATH

logger = logging.getLogger("vllm.plugins.torch_native")

_logged = False


def detect() -> str | None:
    """The ``vllm.platform_plugins`` detection function."""
    global _logged
    from vllm_plugin_core.settings import SettingError
    from vllm_plugin_torch_native._settings import ENABLE_VAR, enabled

    try:
        on = enabled()
    except SettingError as exc:
        # vLLM swallows exceptions of detection functions (debug log only):
        # say it loudly, once, and stay inactive.
        if not _logged:
            _logged = True
            logger.error("torch_native platform not activated: %s", exc)
        return None
    if not on:
        return None
    if not _vllm_in_range():
        return None
    if not _logged:
        _logged = True
        import os

        logger.info(
            "torch_native platform activated by %s=%s (pid %d): %s",
            ENABLE_VAR, os.environ.get(ENABLE_VAR), os.getpid(), PLATFORM_PATH,
        )
    return PLATFORM_PATH


def _vllm_in_range() -> bool:
    """The same version gate as the ops' registration, so the platform never
    half-activates on a vLLM outside the supported range (reads package
    metadata only: vLLM is still resolving its platform here)."""
    from vllm_plugin_core.version import UnsupportedVllmVersion, requires_vllm

    try:
        return requires_vllm(SUPPORTED_VLLM, name="vllm-plugin-torch-native").check()
    except UnsupportedVllmVersion as exc:  # strict mode: vLLM would swallow the raise (debug log)
        logger.error("torch_native platform not activated: %s", exc)
        return False


def platform_is_active() -> bool:
    """Whether vLLM's ``current_platform`` is this package's platform."""
    from vllm.platforms import current_platform

    from vllm_plugin_torch_native.platform import TorchNativePlatform

    return isinstance(current_platform, TorchNativePlatform)


@plugin_entry_point(
    "vllm-plugin-torch-native",
    fix="unset VLLM_PLUGIN_TORCH_NATIVE to use vLLM's own CPU platform, or reinstall vllm-plugin-torch-native",
    vllm=SUPPORTED_VLLM,
)
def register_ops() -> list[str]:
    from vllm_plugin_torch_native._settings import enabled

    if not enabled() or not platform_is_active():
        return []
    from vllm_plugin_torch_native.ops import register_custom_ops
    from vllm_plugin_torch_native.platform import install_accelerator_noops

    return register_custom_ops() + install_accelerator_noops()
