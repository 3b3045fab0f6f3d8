"""vllm-plugin-lora-store: LoRA adapters on demand from a directory or S3.

The ``vllm.general_plugins`` entry point ``lora_store`` registers a LoRA
resolver named ``lora_store`` when ``VLLM_PLUGIN_LORA_STORE_URI`` is set.
vLLM calls it (with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``) for a requested
model name it does not know; the resolver fetches ``<store>/<name>/`` into a
local cache, validates it, and hands vLLM a ``LoRARequest``.

Importing this package imports nothing but the standard library.
"""

__version__ = "0.1.0"
