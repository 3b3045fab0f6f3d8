"""The ``vllm.general_plugins`` entry point ``lora_store``.

vLLM calls :func:`register` in every process it starts. Importing this module
imports only core's guard (no vLLM, boto3 or torch); the body imports the
resolver, and does so only when ``VLLM_PLUGIN_LORA_STORE_URI`` is set. The
S3 client and the cache folder are set up on the first resolve, so processes
that never resolve (engine core, workers) pay nothing more.
"""

from __future__ import annotations

from vllm_plugin_core.guard import plugin_entry_point
from vllm_plugin_core.version import SUPPORTED_VLLM

PLUGIN = "vllm-plugin-lora-store"


@plugin_entry_point(
    PLUGIN,
    fix=(
        "set VLLM_PLUGIN_LORA_STORE_URI to an absolute directory, file:///path or s3://bucket/prefix "
        "(or unset it), and check the other VLLM_PLUGIN_LORA_STORE_* settings "
        "(vllm-plugins doctor lists them)"
    ),
    vllm=SUPPORTED_VLLM,
)
def register():
    from vllm_plugin_lora_store._settings import SETTINGS

    uri = SETTINGS.get("URI")
    if not uri:
        # the guard logs this as the plugin's one INFO line
        return "nothing (VLLM_PLUGIN_LORA_STORE_URI is unset: no LoRA resolver)"

    if uri.startswith("s3://"):
        import importlib.util

        if importlib.util.find_spec("boto3") is None:
            raise RuntimeError(
                f"{uri} is an S3 store but boto3 is not installed; "
                "install it with: pip install 'vllm-plugin-lora-store[s3]'"
            )

    from vllm.lora.resolver import LoRAResolverRegistry

    from vllm_plugin_lora_store.resolver import RESOLVER_NAME, LoraStoreResolver

    resolver = LoraStoreResolver.from_settings()
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, resolver)
    return f"LoRA resolver {RESOLVER_NAME!r} for {uri} (cache {resolver.cache.root})"
