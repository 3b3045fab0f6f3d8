"""``vllm.io_processor_plugins`` entry point ``chunked_embeddings``.

vLLM calls this function in its front-end process when a model is started with
``--io-processor-plugin chunked_embeddings`` (or ``LLM(...,
io_processor_plugin="chunked_embeddings")``) and imports the class whose dotted
path it returns. Nothing heavy is imported here. Outside the supported vLLM
range it returns None (one warning; ``VLLM_PLUGIN_STRICT=1`` raises), which
vLLM reports as the plugin not being installed.
"""

from __future__ import annotations

from vllm_plugin_core.version import SUPPORTED_VLLM, requires_vllm

PROCESSOR = "vllm_plugin_chunked_embeddings.processor.ChunkedEmbeddingsProcessor"


@requires_vllm(SUPPORTED_VLLM, name="vllm-plugin-chunked-embeddings")
def chunked_embeddings() -> str:
    return PROCESSOR
